"""Model adapters: the only place that knows how each video DiT family is laid out.

An adapter answers, for one pipeline (or a bare transformer):

* which transformer modules run (Wan2.2-A14B has two), and their block lists;
* how to take the video tokens (B, L, D) out of a block's output (CogVideoX blocks return a
  tuple ``(video, text)``; Wan blocks return the video tokens);
* the `TokenLayout` of a transformer call, from the latent it is called with;
* how classifier-free guidance runs: Wan calls the transformer twice per step (cond, then
  uncond); CogVideoX once, with the batch ``[uncond, cond]``;
* the family's native call defaults (size, frames, steps, guidance and ``max_sequence_length``,
  the family's real text limit) and small presets for a quick run (for `stas.generate`); a
  registered model (`stas.registry`) brings its own adapter subclass with its own numbers.

Supported: ``WanTransformer3DModel`` (Wan2.1, Wan2.2 incl. TI2V's ``expand_timesteps``, and the
house model) and ``CogVideoXTransformer3DModel``.
"""

from __future__ import annotations

import torch
from torch import nn

from .layout import TokenLayout

BRANCHES = ("cond", "uncond")


class UnsupportedModelError(TypeError):
    """Raised for a pipeline whose transformer no adapter knows."""


class Adapter:
    """Base adapter. Subclasses set ``family`` and implement the hooks' model-specific parts."""

    family = "?"
    transformer_classes: tuple[str, ...] = ()
    native: dict | None = None  # a subclass for one model sets its native call here (else the family's)

    def __init__(self, obj):
        self.pipe = None if isinstance(obj, nn.Module) else obj
        if self.pipe is None:
            self.transformers = [obj]
        else:
            self.transformers = [m for m in (getattr(obj, "transformer", None), getattr(obj, "transformer_2", None))
                                 if m is not None]
        t = self.transformers[0]
        self.config = t.config

    # --- structure -------------------------------------------------------------------------
    def blocks(self, transformer: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def num_blocks(self) -> int:
        return len(self.blocks(self.transformers[0]))

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    @property
    def call_temporal_factor(self) -> int:
        """The pipeline's own frame arithmetic: it asks for 1 + (num_frames - 1) // this latent frames."""
        return int(getattr(self.pipe, "vae_scale_factor_temporal", 4) or 4)

    @property
    def temporal_factor(self) -> int:
        """Pixel frames per latent frame in the video the pipeline returns (the layout's ``r``)."""
        return self.call_temporal_factor

    @property
    def spatial_factor(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor_spatial", 8) or 8)

    # --- a call ------------------------------------------------------------------------------
    @staticmethod
    def video_tokens(output) -> torch.Tensor:
        """The video tokens (B, L, D) of a block's output (a view: writing to it edits the output)."""
        raise NotImplementedError

    def latent_shape(self, args, kwargs) -> tuple[int, int, int, int]:
        """(batch, latent frames, latent height, latent width) of the transformer's input."""
        raise NotImplementedError

    def layout(self, args, kwargs) -> TokenLayout:
        _, f, h, w = self.latent_shape(args, kwargs)
        return TokenLayout(f, h, w, self.patch_size, self.temporal_factor, self.spatial_factor)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def cfg_on(self) -> bool:
        """Whether the running pipeline call uses classifier-free guidance (guidance scale > 1).

        Wan and CogVideoX pipelines set ``_guidance_scale`` before they set the scheduler's timesteps."""
        g = getattr(self.pipe, "_guidance_scale", None) if self.pipe is not None else None
        return g is not None and float(g) > 1.0

    def branches(self, name: str | None, call_in_step: int, batch: int, cfg: bool) -> list[tuple[str, slice]]:
        """[(branch name, batch slice)] of a transformer call: ``name`` is the pipeline's cache-context
        name (None when it set none), ``call_in_step`` the call's index within its denoising step."""
        raise NotImplementedError

    def family_defaults(self) -> dict:
        """Published sampling defaults of the family (height, width, num_frames, steps, guidance)."""
        return {}

    def max_sequence_length(self) -> int | None:
        """Text tokens the model can take (the family's real limit); None when unknown."""
        return None

    def defaults(self) -> dict:
        """Native call defaults: ``native`` of a registered model's adapter, else the family's
        published defaults with ``max_sequence_length`` from the family's real text limit."""
        if self.native is not None:
            return dict(self.native)
        d = self.family_defaults()
        n = self.max_sequence_length()
        if n is not None:
            d["max_sequence_length"] = n
        return d

    def preset(self, name: str = "native") -> dict:
        """Call settings by preset: ``"native"`` (`defaults`) or ``"quick"`` (a short, small run of a
        real checkpoint: a quarter of the native area rounded to what the VAE and patch take, 17 frames
        or fewer, 10 steps or fewer; the same guidance and text length). Raises ``ValueError`` for
        another name."""
        d = self.defaults()
        if name == "native":
            return d
        if name != "quick":
            raise ValueError(f"unknown preset {name!r}; choose 'native' or 'quick'")
        m = self.spatial_factor * max(self.patch_size[1], self.patch_size[2])
        q = dict(d)
        for k in ("height", "width"):
            if k in d:
                q[k] = max(m, d[k] // 2 // m * m)
        if "num_frames" in d:
            r = self.call_temporal_factor
            q["num_frames"] = min(d["num_frames"], 1 + 4 * r)
        if "num_inference_steps" in d:
            q["num_inference_steps"] = min(d["num_inference_steps"], 10)
        return q

    def layout_for_call(self, num_frames: int, height: int, width: int) -> TokenLayout:
        """The `TokenLayout` a pipeline call with this size produces, from the pipeline's own frame
        arithmetic (`call_temporal_factor`) and the returned video's (`temporal_factor`).

        Raises ``ValueError`` for a size the VAE and patch cannot take (before any denoising)."""
        from .layout import latent_frames_for

        lf = latent_frames_for(num_frames, self.call_temporal_factor)
        p, s = self.patch_size, self.spatial_factor
        if height % (s * p[1]) or width % (s * p[2]):
            raise ValueError(f"height x width = {height}x{width} must be multiples of {s * p[1]}x{s * p[2]} "
                             f"(VAE {s}x, patch {p[1]}x{p[2]})")
        if lf % p[0]:
            raise ValueError(f"num_frames={num_frames} gives {lf} latent frames, not a multiple of the "
                             f"temporal patch {p[0]}")
        return TokenLayout(lf, height // s, width // s, p, self.temporal_factor, s)

    def describe(self) -> dict:
        """What matters about the model, for printing."""
        t = self.transformers[0]
        return {
            "family": self.family,
            "transformer": type(t).__name__,
            "parameters (M)": round(sum(p.numel() for p in t.parameters()) / 1e6, 2),
            "blocks": self.num_blocks,
            "hidden size": self.hidden_size,
            "heads": self.config.num_attention_heads,
            "patch (t, h, w)": self.patch_size,
            "VAE temporal x spatial": (self.temporal_factor, self.spatial_factor),
            "transformers": len(self.transformers),
        }


class WanAdapter(Adapter):
    family = "wan"
    transformer_classes = ("WanTransformer3DModel",)

    def blocks(self, transformer):
        return transformer.blocks

    @property
    def hidden_size(self):
        return self.config.num_attention_heads * self.config.attention_head_dim

    @property
    def patch_size(self):
        return tuple(self.config.patch_size)

    @staticmethod
    def video_tokens(output):
        return output

    def latent_shape(self, args, kwargs):
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        b, _, f, h, w = x.shape  # (B, C, F, H, W)
        return b, f, h, w

    def branches(self, name, call_in_step, batch, cfg):
        # WanPipeline: transformer(cond) then, with guidance > 1, transformer(uncond), each a full batch,
        # inside cache_context("cond" / "uncond"); video-to-video sets no context: call order says it.
        if name in BRANCHES:
            return [(name, slice(None))]
        if cfg and call_in_step % 2 == 1:
            return [("uncond", slice(None))]
        return [("cond", slice(None))]

    def family_defaults(self):
        if self.config.in_channels == 48:  # Wan2.2-TI2V-5B (16x spatial VAE)
            return dict(height=704, width=1280, num_frames=121, num_inference_steps=50, guidance_scale=5.0)
        return dict(height=480, width=832, num_frames=81, num_inference_steps=50, guidance_scale=5.0)

    def max_sequence_length(self):
        # WanPipeline pads every prompt to max_sequence_length (default 512) and runs the text encoder
        # on it: the limit is the tokenizer's and the encoder's (UMT5 has relative positions: 512 from
        # the tokenizer; a BERT encoder has max_position_embeddings).
        return text_encoder_limit(self.pipe)


class CogVideoXAdapter(Adapter):
    family = "cogvideox"
    transformer_classes = ("CogVideoXTransformer3DModel",)

    def blocks(self, transformer):
        return transformer.transformer_blocks

    @property
    def hidden_size(self):
        return self.config.num_attention_heads * self.config.attention_head_dim

    @property
    def patch_size(self):
        p = self.config.patch_size
        return (self.config.patch_size_t or 1, p, p)

    @staticmethod
    def video_tokens(output):
        return output[0]  # CogVideoXBlock returns (video hidden states, text hidden states)

    def latent_shape(self, args, kwargs):
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        b, f, _, h, w = x.shape  # (B, F, C, H, W)
        return b, f, h, w

    def branches(self, name, call_in_step, batch, cfg):
        # CogVideoXPipeline: one call per step on torch.cat([uncond, cond]) (cache context "cond_uncond").
        if cfg:
            half = batch // 2
            return [("uncond", slice(0, half)), ("cond", slice(half, batch))]
        return [("cond", slice(None))]

    def family_defaults(self):
        return dict(height=480, width=720, num_frames=49, num_inference_steps=50, guidance_scale=6.0)

    def max_sequence_length(self):
        # CogVideoX's positional embedding covers max_text_seq_length text tokens (226 for the 2B/5B).
        return int(self.config.max_text_seq_length)


def text_encoder_limit(pipe) -> int | None:
    """The most tokens ``pipe``'s tokenizer and text encoder take: the smallest of the tokenizer's
    ``model_max_length`` and the encoder config's ``max_position_embeddings`` / ``n_positions``
    (None when the pipeline has neither a bounded tokenizer nor such an encoder)."""
    lims = []
    tok = getattr(pipe, "tokenizer", None)
    if tok is not None and 0 < int(getattr(tok, "model_max_length", 0) or 0) < 1_000_000:
        lims.append(int(tok.model_max_length))
    cfg = getattr(getattr(pipe, "text_encoder", None), "config", None)
    for k in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, k, None)
        if isinstance(v, int) and v > 0:
            lims.append(v)
    return min(lims) if lims else None


ADAPTERS = (WanAdapter, CogVideoXAdapter)


def get_adapter(obj) -> Adapter:
    """The adapter for a diffusers pipeline or a bare transformer module.

    Raises `UnsupportedModelError` naming the supported families when none fits.
    """
    from .registry import entry_of

    e = None if isinstance(obj, nn.Module) else entry_of(obj)
    if e is not None and e.adapter is not None:
        return e.adapter(obj)
    t = obj if isinstance(obj, nn.Module) else getattr(obj, "transformer", None)
    name = type(t).__name__
    for cls in ADAPTERS:
        if name in cls.transformer_classes:
            return cls(obj)
    supported = ", ".join(f"{c.family} ({'/'.join(c.transformer_classes)})" for c in ADAPTERS)
    raise UnsupportedModelError(
        f"no STAS adapter for {type(obj).__name__} with transformer {name}; supported families: {supported}")
