"""STAS: steering video diffusion transformers with massive activations (Cheng et al., 2026).

The public surface::

    pipe = stas.load("house")                    # a registered name, or a local diffusers dir / hub id (Wan, Wan2.2, CogVideoX)
    with stas.record(pipe) as rec:               # per (step, block, branch) statistics, reduced on the device
        video = stas.generate(pipe, "a red square moves left", seed=0)
    ma = stas.find_massive(rec.stats)            # MA channels with peak/median and peak/mean ratios
    cfg = stas.STASConfig(alpha=1.0, steps=K, blocks=[mid], channels=ma.channels)   # or STASConfig.paper(pipe, ma.channels, N)
    with stas.steer(pipe, cfg):
        steered = stas.generate(pipe, "a red square moves left", seed=0)
"""

from .adapters import UnsupportedModelError, get_adapter
from .layout import POSITION_CLASSES, TokenLayout, latent_frame_of, latent_frames_for, pixel_frames_of
from .load import call_settings, generate, load, native_defaults, save_tiny, save_video, tiny_random_pipeline
from .massive import MassiveReport, find_massive
from .record import Recording, record
from .steer import STASConfig, steer
from .enhance_a_video import EnhanceConfig, enhance  # the Enhance-A-Video peer (notebook 06)

__all__ = [
    "load", "generate", "save_video", "native_defaults", "call_settings", "tiny_random_pipeline", "save_tiny", "TokenLayout", "POSITION_CLASSES",
    "latent_frames_for", "latent_frame_of", "pixel_frames_of", "record", "Recording", "find_massive",
    "MassiveReport", "STASConfig", "steer", "get_adapter", "UnsupportedModelError", "EnhanceConfig", "enhance",
]
__version__ = "0.1.0"
