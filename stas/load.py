"""Loading pipelines and generating clips: ``stas.load`` and ``stas.generate``.

``stas.load(name)`` accepts

* ``"house"`` (the default of ``$STAS_MODEL``): the repo's own miniature Wan text-to-video model,
  trained by ``python -m stas.house.train`` and shipped in ``data/house/`` ("house-uniform" gives the
  per-frame-encoder variant);
* ``"tiny-random-wan"`` / ``"tiny-random-cogvideox"``: randomly initialised, seconds-fast pipelines
  of the real diffusers classes, for tests (no learned behaviour at all);
* a local diffusers pipeline directory or a hub id (Wan2.1, Wan2.2, CogVideoX), loaded with
  ``DiffusionPipeline.from_pretrained``.

Device and dtype default to CUDA + bfloat16 when a GPU is there, else CPU + float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .adapters import get_adapter
from .layout import latent_frames_for

TINY = ("tiny-random-wan", "tiny-random-cogvideox")


def default_device_dtype(device=None, dtype=None):
    """(device, dtype): CUDA + bf16 when available, else CPU + float32; explicit values win."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return torch.device(device), dtype


def load(name_or_path: str | None = None, device=None, dtype=None):
    """A diffusers video pipeline for ``name_or_path`` (default ``$STAS_MODEL`` or ``"house"``).

    The pipeline gets a ``stas_name`` attribute (the name it was loaded by) that `generate` uses to
    choose native defaults. Raises `stas.adapters.UnsupportedModelError` for a pipeline whose
    transformer no adapter supports.
    """
    name = name_or_path or os.environ.get("STAS_MODEL", "house")
    device, dtype = default_device_dtype(device, dtype)
    if name in ("house", "house-causal", "house-uniform"):
        from . import house

        pipe = house.load_pipeline("uniform" if name.endswith("uniform") else "causal", device=device, dtype=dtype)
    elif name in TINY:
        pipe = tiny_random_pipeline(name.split("-")[-1]).to(device)
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    else:
        from diffusers import DiffusionPipeline

        if not Path(name).exists() and "/" not in name:
            raise ValueError(f"{name!r} is neither 'house', {TINY}, a local directory nor a hub id (org/name)")
        pipe = DiffusionPipeline.from_pretrained(name, torch_dtype=dtype).to(device)
    get_adapter(pipe)  # fail early, with the supported families named
    pipe.stas_name = name
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_text_encoder(dim: int, seed: int):
    """A 1-layer random BERT (dim ``dim``) with a small word vocabulary built on the fly."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "a an the red green blue yellow white black square circle triangle ball moves left right up down " \
            "past bounces slowly quickly over under and".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(seed)
    enc = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=dim, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=2 * dim, max_position_embeddings=64), add_pooling_layer=False)
    return tok, enc.eval()


def tiny_random_pipeline(family: str = "wan", seed: int = 0, text_encoder: bool = True):
    """A randomly initialised, tiny pipeline of the real diffusers classes (CPU, well under a second).

    ``family`` is ``"wan"`` (WanPipeline: 2 blocks, hidden 24, 16 latent channels, VAE 4x temporal /
    8x spatial) or ``"cogvideox"`` (CogVideoXPipeline: 2 blocks, hidden 32). With ``text_encoder``
    it carries a 1-layer random BERT so ``pipe(prompt=...)`` works; otherwise pass ``prompt_embeds``.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    if family == "wan":
        from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

        text_dim = 32
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                            in_channels=16, out_channels=16, text_dim=text_dim, freq_dim=256,
                                            ffn_dim=32, num_layers=2, cross_attn_norm=True,
                                            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
        tok, enc = _tiny_text_encoder(text_dim, seed) if text_encoder else (None, None)
        return WanPipeline(tokenizer=tok, text_encoder=enc, vae=vae, transformer=transformer,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    if family == "cogvideox":
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, \
            CogVideoXTransformer3DModel

        text_dim = 32
        vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3,
                                     down_block_types=("CogVideoXDownBlock3D",) * 4,
                                     up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                     latent_channels=4, layers_per_block=1, norm_num_groups=2,
                                     temporal_compression_ratio=4)
        transformer = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                                  out_channels=4, time_embed_dim=2, text_embed_dim=text_dim,
                                                  num_layers=2, sample_width=8, sample_height=8, sample_frames=9,
                                                  patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16)
        tok, enc = _tiny_text_encoder(text_dim, seed) if text_encoder else (None, None)
        return CogVideoXPipeline(tokenizer=tok, text_encoder=enc, vae=vae, transformer=transformer,
                                 scheduler=CogVideoXDDIMScheduler())
    raise ValueError(f"unknown tiny family {family!r}; choose 'wan' or 'cogvideox'")


TINY_DEFAULTS = dict(height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=2.0,
                     max_sequence_length=16)


def native_defaults(pipe) -> dict:
    """Native call defaults: the house model's training size, tiny sizes for tiny models, else the
    family's published defaults (Wan2.1: 81x480x832, 50 steps, guidance 5; CogVideoX: 49x480x720, 6)."""
    name = getattr(pipe, "stas_name", None)
    if name in ("house", "house-causal", "house-uniform"):
        from . import house

        return dict(house.DEFAULTS["uniform" if name.endswith("uniform") else "causal"])
    if name in TINY:
        return dict(TINY_DEFAULTS)
    return get_adapter(pipe).defaults()


def check_call(pipe, num_frames: int, height: int, width: int):
    """Raise ``ValueError`` for a size the pipeline's VAE cannot take (before any denoising)."""
    ad = get_adapter(pipe)
    latent_frames_for(num_frames, ad.temporal_factor)
    p = ad.patch_size
    s = ad.spatial_factor
    if height % (s * p[1]) or width % (s * p[2]):
        raise ValueError(f"height x width = {height}x{width} must be multiples of {s * p[1]}x{s * p[2]} "
                         f"(VAE {s}x, patch {p[1]}x{p[2]})")


@torch.no_grad()
def generate(pipe, prompt: str | None = None, seed: int = 0, **pipeline_kwargs) -> torch.Tensor:
    """Generate one clip; returns a float tensor (frames, 3, H, W) in [0, 1] on the CPU.

    Native defaults (see `native_defaults`) fill what ``pipeline_kwargs`` leaves out; the noise is
    drawn from ``torch.Generator(device).manual_seed(seed)``, so the same seed gives the same clip.
    Frame counts and sizes the VAE cannot take raise ``ValueError`` before any denoising.
    """
    kw = {**native_defaults(pipe), **pipeline_kwargs}
    if "prompt_embeds" not in kw:
        if prompt is None:
            raise ValueError("give a prompt (or prompt_embeds)")
        kw["prompt"] = prompt
    if getattr(pipe, "text_encoder", None) is None and "prompt_embeds" not in kw:
        raise ValueError("this pipeline has no text encoder: pass prompt_embeds")
    check_call(pipe, kw["num_frames"], kw["height"], kw["width"])
    device = pipe._execution_device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    out = pipe(generator=gen, output_type="pt", **kw).frames[0]  # (F, 3, H, W) in [0, 1]
    return out.float().clamp(0, 1).cpu()


def save_video(video: torch.Tensor, path, fps: int = 8):
    """Write a (frames, 3, H, W) float video in [0, 1] to ``path`` (.mp4 via imageio-ffmpeg, .gif otherwise).

    Returns the path. Needs the ``notebooks`` extra (imageio, imageio-ffmpeg)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if path.suffix == ".mp4":
        imageio.mimwrite(path, list(frames), fps=fps, codec="libx264", quality=8, macro_block_size=1)
    else:
        imageio.mimwrite(path, list(frames), duration=1000 / fps, loop=0)
    return path
