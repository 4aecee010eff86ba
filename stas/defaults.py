"""Default settings of STAS and of the Enhance-A-Video peer: the ONE place they live.

``HOUSE_STAS`` is the house model's STAS default. It is chosen by notebooks/07_ablations.ipynb
(α sweep, K sweep, block choice, positions, channel choice): change it only together with that
notebook's "What we saw" cell. The MA channels are not fixed here: they are measured on the model
at hand (`ma_channels`, one recorded clip, `stas.find_massive`).

``PAPER_STAS`` is the paper's setting for real checkpoints (Wan2.1-1.3B: block 15 of 30, K = 20 of
50 steps, α = 1, first-frame + boundary tokens), scaled to the model's depth and step count by
`stas_config`.
"""

from __future__ import annotations

from .massive import find_massive
from .steer import STASConfig

# Chosen in notebooks/07_ablations.ipynb (see its "What we saw"); house model: 8 blocks, 10 steps. On the
# early checkpoint (11:39 UTC) no ablation setting beat it on both seam jump and flicker, so the paper's
# setting, scaled (K = 4 of 10 ~ 20 of 50, mid block), stays; re-check on the final checkpoint.
HOUSE_STAS = dict(alpha=1.0, steps=4, blocks=(4,), positions=("first_frame", "boundary"), boundary_width=1,
                  branches=("cond", "uncond"))
# The paper (Wan2.1-1.3B): mid block, first 40 % of the steps, alpha 1, first frame + boundary.
PAPER_STAS = dict(alpha=1.0, step_fraction=0.4, block_fraction=0.5, positions=("first_frame", "boundary"),
                  boundary_width=1, branches=("cond", "uncond"))
# Enhance-A-Video: the reference code's temperature ("enhance_weight") in its examples; all blocks, all steps.
ENHANCE = dict(temperature=1.0)

HOUSE_NAMES = ("house", "house-causal", "house-uniform")


def ma_channels(pipe, prompt: str = "a red square moves left", seed: int = 0, n: int = 1, **call) -> dict:
    """MA channels of ``pipe`` measured on one recorded clip: ``{"ma": [...], "weak", "plain", "fallback",
    "peak/mean": {channel: ratio}}``
    (`stas.cache.choose_channels`: when the model has no MA channel by `find_massive`'s test — e.g. a
    random test model — the top channels by peak/median, flagged ``fallback``)."""
    from .cache import choose_channels, record_blocks

    st = record_blocks(pipe, [prompt], [seed], **call)
    rep = find_massive(st)
    ch = choose_channels(rep, n)
    ch["peak/mean"] = {int(c): round(rep.channel_summary(int(c))["peak/mean"], 2)
                       for c in ch["ma"] + [ch["weak"], ch["plain"]]}
    return ch


def stas_config(pipe, channels, num_steps: int, **override) -> STASConfig:
    """The default `STASConfig` for ``pipe``: ``HOUSE_STAS`` for the house model, else ``PAPER_STAS``
    scaled to the model (mid block, K = round(0.4 N) >= 1). ``override`` replaces any field."""
    from .adapters import get_adapter

    name = getattr(pipe, "stas_name", None)
    if name in HOUSE_NAMES:
        kw = dict(HOUSE_STAS)
        kw["steps"] = min(kw["steps"], num_steps)
    else:
        p = dict(PAPER_STAS)
        nb = get_adapter(pipe).num_blocks
        kw = dict(alpha=p["alpha"], steps=max(1, round(p["step_fraction"] * num_steps)),
                  blocks=(min(nb - 1, int(p["block_fraction"] * nb)),), positions=p["positions"],
                  boundary_width=p["boundary_width"], branches=p["branches"])
    kw.update(channels=tuple(int(c) for c in channels))
    kw.update(override)
    return STASConfig(**kw)
