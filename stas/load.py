"""Loading pipelines and generating clips: ``stas.load`` and ``stas.generate``.

``stas.load(name)`` accepts

* a name registered in `stas.registry` by a model plug-in (``stas.registry.names()``; e.g. the repo's
  house model) or one of the tiny random test pipelines ``"tiny-random-wan"`` /
  ``"tiny-random-cogvideox"`` (seconds-fast, real diffusers classes, no learned behaviour);
* a local diffusers pipeline directory or a hub id (Wan2.1, Wan2.2, CogVideoX), loaded with
  ``DiffusionPipeline.from_pretrained``.

Device and dtype default to CUDA + bfloat16 when a GPU is there, else CPU + float32. Native call
defaults (size, frames, steps, guidance, text length) come from the model's adapter
(`stas.adapters`); ``save_tiny`` writes a tiny random pipeline to a directory (for tests of the
directory path).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from . import registry
from .adapters import CogVideoXAdapter, WanAdapter, get_adapter


def default_device_dtype(device=None, dtype=None):
    """(device, dtype): CUDA + bf16 when available, else CPU + float32; explicit values win.

    An indexed CPU device (``cpu:0``, what accelerate's ``PartialState.device`` is in a CPU process
    group) is returned as ``cpu``: ``.to("cpu:0")`` copies every weight into freshly allocated
    (64-byte aligned) memory, while ``.to("cpu")`` keeps the tensors `from_pretrained` read (8-byte
    aligned safetensors offsets), and CPU matrix products round differently by alignment, so the same
    weights would give clips one float32 rounding apart."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return (torch.device("cpu") if device.type == "cpu" else device), dtype


def load(name_or_path: str, device=None, dtype=None):
    """A diffusers video pipeline for ``name_or_path``: a registered name (`stas.registry.names`),
    a local diffusers directory or a hub id.

    The pipeline gets a ``stas_name`` attribute (the name it was loaded by), through which
    `get_adapter` finds a registered model's adapter. Raises ``ValueError`` for a name that is none of
    these, `stas.adapters.UnsupportedModelError` for a pipeline whose transformer no adapter supports.
    """
    name = str(name_or_path)
    device, dtype = default_device_dtype(device, dtype)
    e = registry.entry(name)
    if e is not None:
        pipe = e.load(device=device, dtype=dtype)
    else:
        from diffusers import DiffusionPipeline

        if not Path(name).exists() and "/" not in name:
            raise ValueError(f"{name!r} is neither a registered model {registry.names()}, a local directory "
                             f"nor a hub id (org/name)")
        pipe = DiffusionPipeline.from_pretrained(name, dtype=dtype).to(device)
    get_adapter(pipe)  # fail early, with the supported families named
    pipe.stas_name = name
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_text_encoder(dim: int, seed: int, positions: int = 64):
    """A 1-layer random BERT (dim ``dim``, ``positions`` text positions) with a small word vocabulary
    built on the fly."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "a an the red green blue yellow white black square circle triangle ball moves left right up down " \
            "past bounces slowly quickly over under and".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(seed)
    enc = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=dim, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=2 * dim, max_position_embeddings=positions), add_pooling_layer=False)
    return tok, enc.eval()


def tiny_random_pipeline(family: str = "wan", seed: int = 0, text_encoder: bool = True):
    """A randomly initialised, tiny pipeline of the real diffusers classes (CPU, well under a second).

    ``family`` is ``"wan"`` (WanPipeline: 2 blocks, hidden 24, 16 latent channels, VAE 4x temporal /
    8x spatial) or ``"cogvideox"`` (CogVideoXPipeline: 2 blocks, hidden 32, 16 text tokens). With
    ``text_encoder`` it carries a 1-layer random BERT (64 positions for Wan; 16 for CogVideoX, its
    transformer's ``max_text_seq_length``) so ``pipe(prompt=...)`` works; otherwise pass ``prompt_embeds``.
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
        tok, enc = _tiny_text_encoder(text_dim, seed, positions=16) if text_encoder else (None, None)
        return CogVideoXPipeline(tokenizer=tok, text_encoder=enc, vae=vae, transformer=transformer,
                                 scheduler=CogVideoXDDIMScheduler())
    raise ValueError(f"unknown tiny family {family!r}; choose 'wan' or 'cogvideox'")


def save_tiny(family: str, path, seed: int = 0) -> Path:
    """Write `tiny_random_pipeline` ``family`` (with its tiny text encoder) to directory ``path`` with
    ``save_pretrained`` (safetensors), so that ``stas.load(path)`` takes the real-checkpoint path.
    Returns the path. For tests; the weights are random."""
    path = Path(path)
    tiny_random_pipeline(family, seed).save_pretrained(str(path), safe_serialization=True)
    return path


def _load_tiny(family, device, dtype):
    pipe = tiny_random_pipeline(family).to(device)
    return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe


# The tiny pipelines' native call (small enough for CI on a CPU; 16 text tokens fit both encoders).
TINY_DEFAULTS = dict(height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=2.0,
                     max_sequence_length=16)
for _family, _base in (("wan", WanAdapter), ("cogvideox", CogVideoXAdapter)):
    registry.register(registry.ModelEntry(
        name=f"tiny-random-{_family}",
        load=lambda device, dtype, f=_family: _load_tiny(f, device, dtype),
        adapter=type(f"Tiny{_base.__name__}", (_base,), {"native": TINY_DEFAULTS})))


def native_defaults(pipe) -> dict:
    """Native call defaults of ``pipe`` (from its adapter: `stas.adapters.Adapter.defaults`)."""
    return get_adapter(pipe).defaults()


def call_settings(pipe, preset: str = "native", **over) -> dict:
    """The call settings of a run: the adapter's ``preset`` (``"native"`` or ``"quick"``), then every
    ``over`` that is not None. Raises ``ValueError`` for a size the VAE cannot take; warns
    (`warn_cpu_native_call`) when the native preset fills in a call too large for the CPU."""
    kw = get_adapter(pipe).preset(preset)
    given = {k for k, v in over.items() if v is not None}
    kw.update({k: over[k] for k in given})
    check_call(pipe, kw["num_frames"], kw["height"], kw["width"])
    if preset == "native":
        warn_cpu_native_call(pipe, kw, given)
    return kw


# A native call on the CPU above this many video tokens x denoising steps gets a warning. The house
# model's native call is 512 tokens x 10 steps = 5 120; Wan2.1's (480x832, 81 frames, 50 steps) is
# 32 760 x 50 = 1 638 000, its "quick" preset 1 950 x 10 = 19 500.
CPU_TOKEN_STEPS = 100_000
SIZE_KEYS = ("height", "width", "num_frames", "num_inference_steps")


def warn_cpu_native_call(pipe, kw: dict, given=()) -> bool:
    """Warn (``UserWarning``) when call settings ``kw`` about to run on a CPU pipeline took a size or
    step count from the native preset (one of `SIZE_KEYS` not in ``given``) and exceed
    `CPU_TOKEN_STEPS` video tokens x steps; the message gives the estimate and how to shrink the call.
    Returns whether it warned."""
    dev = getattr(pipe, "_execution_device", None)
    if dev is None or torch.device(dev).type != "cpu" or set(SIZE_KEYS) <= set(given):
        return False
    tokens = get_adapter(pipe).layout_for_call(kw["num_frames"], kw["height"], kw["width"]).num_tokens
    steps = kw["num_inference_steps"]
    if tokens * steps <= CPU_TOKEN_STEPS:
        return False
    warnings.warn(f"this call ({kw['height']}x{kw['width']}, {kw['num_frames']} frames, {steps} steps; the model's native "
                  f"settings where none were given) is about to run on the CPU: {tokens} video tokens x {steps} steps = "
                  f"{tokens * steps:,} token-steps (over {CPU_TOKEN_STEPS:,}), which may take hours; for a short run "
                  f"use `--preset quick` or `--size/--frames/--steps` "
                  f"(python -m stas), stas.call_settings(pipe, 'quick') or generate(..., height=, width=, "
                  f"num_frames=, num_inference_steps=)", UserWarning, stacklevel=3)
    return True


def check_call(pipe, num_frames: int, height: int, width: int):
    """Raise ``ValueError`` for a size the pipeline's VAE cannot take (before any denoising)."""
    get_adapter(pipe).layout_for_call(num_frames, height, width)


@torch.no_grad()
def generate(pipe, prompt: str | None = None, seed: int = 0, **pipeline_kwargs) -> torch.Tensor:
    """Generate one clip; returns a float tensor (frames, 3, H, W) in [0, 1] on the CPU.

    Native defaults (see `native_defaults`) fill what ``pipeline_kwargs`` leaves out; the noise is
    drawn from ``torch.Generator(device).manual_seed(seed)``, so the same seed gives the same clip.
    Frame counts and sizes the VAE cannot take raise ``ValueError`` before any denoising; a native
    size or step count too large for the CPU warns (`warn_cpu_native_call`).
    """
    kw = {**native_defaults(pipe), **pipeline_kwargs}
    if "prompt_embeds" not in kw:
        if prompt is None:
            raise ValueError("give a prompt (or prompt_embeds)")
        kw["prompt"] = prompt
    if getattr(pipe, "text_encoder", None) is None and "prompt_embeds" not in kw:
        raise ValueError("this pipeline has no text encoder: pass prompt_embeds")
    check_call(pipe, kw["num_frames"], kw["height"], kw["width"])
    warn_cpu_native_call(pipe, kw, pipeline_kwargs)
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
