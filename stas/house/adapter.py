"""The house model's adapters: a stock Wan transformer, with the house's native call and the true
frame layout of each variant.

The uniform variant's VAE encodes each kept world frame alone. Its config keeps
``scale_factor_temporal`` 4, so ``WanPipeline`` called with ``num_frames=29`` asks for
1 + 28 // 4 = 8 latent frames (the pipeline's own arithmetic, `call_temporal_factor`), and the
decoder returns 8 frames, one per latent frame: in the returned video the temporal factor is 1, every
transition crosses latent frames, and there is no within-chunk transition.
"""
from __future__ import annotations

from ..adapters import WanAdapter
from . import DEFAULTS


class HouseAdapter(WanAdapter):
    """The causal house model: Wan's layout (frame 0 alone, then 4 pixel frames per latent frame)."""

    native = DEFAULTS["causal"]


class HouseUniformAdapter(WanAdapter):
    """The uniform control: each returned frame is its own latent frame (temporal factor 1)."""

    native = DEFAULTS["uniform"]

    @property
    def temporal_factor(self) -> int:
        return 1


ADAPTERS = {"causal": HouseAdapter, "uniform": HouseUniformAdapter}
