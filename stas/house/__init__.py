"""The house model: a miniature Wan2.1-style text-to-video DiT with a causal video VAE, trained on a
procedural world and shipped in ``data/house/<variant>/{transformer,vae}``.

    from stas.house import load_pipeline, DEFAULTS
    pipe = load_pipeline("causal")                       # a stock diffusers WanPipeline
    video = pipe(prompt="a red square moves left", **DEFAULTS["causal"], output_type="pt").frames[0]

Variants: "causal" (Wan's VAE layout: frame 0 alone, then 4 frames per latent frame; 29 frames out)
and "uniform" (per-frame image VAE on every 4th frame; same 8 latent frames and 512 tokens; its
pipeline returns 8 frames = pixel frames 0, 4, ..., 28 of the world clip).
"""
from __future__ import annotations

import os
from pathlib import Path

from .models import FLOW_SHIFT, NUM_FRAMES, SIZE, VARIANTS

DATA_DIR = Path(os.environ.get("STAS_HOUSE_DIR", Path(__file__).resolve().parents[2] / "data" / "house"))

_COMMON = dict(height=SIZE, width=SIZE, num_frames=NUM_FRAMES, num_inference_steps=10, guidance_scale=4.0,
               max_sequence_length=32)
# Native call kwargs per variant (identical: the uniform pipeline also takes num_frames=29 -> 8 latent frames).
DEFAULTS = {"causal": dict(_COMMON), "uniform": dict(_COMMON)}
# frames a default call returns
OUTPUT_FRAMES = {"causal": NUM_FRAMES, "uniform": 1 + (NUM_FRAMES - 1) // 4}


def variant_dir(variant: str = "causal", root=None) -> Path:
    if variant not in VARIANTS:
        raise ValueError(f"unknown house variant {variant!r}; choose from {VARIANTS}")
    return Path(root or DATA_DIR) / variant


def load_pipeline(variant: str = "causal", device=None, dtype=None, root=None):
    """A stock ``diffusers.WanPipeline`` from the shipped safetensors, MiniLM text encoder wired in.

    device None -> cuda if available else cpu; dtype None -> bf16 on cuda, float32 on cpu.
    """
    import torch
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    from ..load import default_device_dtype
    from .models import make_scheduler
    from .text import load_text_encoder

    device, dtype = default_device_dtype(device, dtype)
    d = variant_dir(variant, root)
    if not (d / "transformer").is_dir():
        raise FileNotFoundError(f"no house weights at {d} (train them: python -m stas.house.train)")
    transformer = WanTransformer3DModel.from_pretrained(str(d / "transformer"), torch_dtype=dtype)
    vae = AutoencoderKLWan.from_pretrained(str(d / "vae"), torch_dtype=torch.float32)  # VAE in fp32 (as Wan)
    tok, enc = load_text_encoder(device=device, dtype=dtype)
    pipe = WanPipeline(tokenizer=tok, text_encoder=enc, transformer=transformer, vae=vae,
                       scheduler=make_scheduler(FLOW_SHIFT))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = ["load_pipeline", "DEFAULTS", "OUTPUT_FRAMES", "DATA_DIR", "variant_dir", "VARIANTS"]
