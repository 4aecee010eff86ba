"""Configs of the house model's VAE, DiT and scheduler (stock diffusers classes).

Sizes were chosen for two hard bounds: one default clip in <= 10 s on a 2-core CPU and <= 40 MB
shipped per variant. DiT: dim 384 (6 heads x 64), 8 blocks, ffn 1024, text_dim 384 (MiniLM),
patch (1,2,2): 17.3 M parameters, 34.6 MB in bf16. VAE: AutoencoderKLWan base_dim 32, dim_mult
[1,1,1,1], num_res_blocks 0 (one res block per decoder stage; the encoder keeps only its
down-sampling convs and mid block): 0.52 M parameters, 2.1 MB in fp32, 8x spatial. The decoder at
128x128x29 frames is the CPU bottleneck (~3 s of a clip); on this CPU oneDNN ran base_dim 32 faster
than 16 or 24, and one res block per stage instead of two halved the time (nrb=0 needs equal
channel multipliers, hence [1,1,1,1]).
"""
from __future__ import annotations

VARIANTS = ("causal", "uniform")
NUM_FRAMES = 29  # 1 + 4*7 -> 8 latent frames
SIZE = 128  # 128 px / 8 (VAE) / 2 (patch) = 8x8 tokens per latent frame
FLOW_SHIFT = 3.0

VAE_CONFIG = dict(base_dim=32, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=0, attn_scales=[],
                  dropout=0.0, scale_factor_temporal=4, scale_factor_spatial=8)
# causal: Wan's layout (frame 0 alone, then each 4 frames -> one latent frame).
# uniform: no temporal compression at all; every latent frame is one pixel frame encoded alone (an
# image VAE). To keep the DiT's token count equal (8 latent frames), the uniform variant models
# every 4th pixel frame (0, 4, ..., 28). scale_factor_temporal stays 4 in its config so WanPipeline
# (num_frames=29) asks for 8 latent frames; its decoder returns those 8 frames.
TEMPORAL = {"causal": [False, True, True], "uniform": [False, False, False]}

DIT_CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=6, attention_head_dim=64, in_channels=16,
                  out_channels=16, text_dim=384, freq_dim=256, ffn_dim=1024, num_layers=8,
                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
                  added_kv_proj_dim=None, rope_max_seq_len=1024)


def make_vae(variant: str = "causal", **overrides):
    from diffusers import AutoencoderKLWan

    cfg = dict(VAE_CONFIG, temperal_downsample=TEMPORAL[variant])
    cfg.update(overrides)
    return AutoencoderKLWan(**cfg)


def make_dit(**overrides):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**dict(DIT_CONFIG, **overrides))


def make_scheduler(flow_shift: float = FLOW_SHIFT):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   num_train_timesteps=1000, flow_shift=flow_shift)


def pixel_frames(variant: str, num_frames: int = NUM_FRAMES):
    """Which pixel frames of a world clip the variant's VAE encodes."""
    return list(range(num_frames)) if variant == "causal" else list(range(0, num_frames, 4))
