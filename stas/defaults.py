"""Default settings of STAS and of the Enhance-A-Video peer: the ONE place they live.

``PAPER_STAS`` is the paper's setting for real checkpoints (Wan2.1-1.3B: block 15 of 30, K = 20 of
50 steps, α = 1, first-frame + boundary tokens), scaled to the model's depth and step count by
`paper_config` (= `stas.STASConfig.paper`). A registered model (`stas.registry`) may bring its own
STAS defaults (the house model's: the paper's setting scaled, to be confirmed by
notebooks/07_ablations.ipynb's rule); `stas_config` uses them, else the paper's. The MA channels are never fixed here: they are measured on the model at hand
(`ma_channels`, one recorded clip, `stas.find_massive`).
"""

from __future__ import annotations

from .massive import choose_channels, find_massive
from .steer import STASConfig

# The paper (Wan2.1-1.3B): mid block, first 40 % of the steps, alpha 1, first frame + boundary.
PAPER_STAS = dict(alpha=1.0, step_fraction=0.4, block_fraction=0.5, positions=("first_frame", "boundary"),
                  boundary_width=1, branches=("cond", "uncond"))
# Enhance-A-Video: the reference code's temperature ("enhance_weight") in its examples; all blocks, all steps.
ENHANCE = dict(temperature=1.0)


def ma_channels(pipe, prompt: str = "a red square moves left", seed: int = 0, n: int = 3, call: dict | None = None) -> dict:
    """Channels of ``pipe`` measured on one recorded clip (`stas.massive.choose_channels`): ``{"ma",
    "top", "fallback", "weak", "plain", "peak/mean": {channel: ratio}, "all_ma": every channel
    `find_massive` reports, "peak/median": {channel: ratio} of those}``; ``ma`` / ``all_ma`` are empty
    and ``fallback`` True when no channel passes `find_massive`'s criteria (e.g. a random test model)."""
    from .study import record_blocks

    st = record_blocks(pipe, [prompt], [seed], call=call)
    rep = find_massive(st)
    ch = choose_channels(rep, n)
    ch["peak/mean"] = {int(c): round(rep.channel_summary(int(c))["peak/mean"], 2)
                       for c in ch["top"] + [ch["weak"], ch["plain"]]}
    ch["all_ma"] = [int(c) for c in rep.channels]
    ch["peak/median"] = {c: round(rep.channel_summary(c)["peak/median"], 2) for c in ch["all_ma"]}
    return ch


def paper_config(pipe, channels, num_steps: int, **override) -> STASConfig:
    """``PAPER_STAS`` scaled to ``pipe`` (mid block, K = round(0.4 N) >= 1); ``override`` replaces any field."""
    from .adapters import get_adapter

    p = dict(PAPER_STAS)
    nb = get_adapter(pipe).num_blocks
    kw = dict(alpha=p["alpha"], steps=max(1, round(p["step_fraction"] * num_steps)),
              blocks=(min(nb - 1, int(p["block_fraction"] * nb)),), positions=p["positions"],
              boundary_width=p["boundary_width"], branches=p["branches"], channels=tuple(int(c) for c in channels))
    kw.update(override)
    return STASConfig(**kw)


def stas_config(pipe, channels, num_steps: int, **override) -> STASConfig:
    """The default `STASConfig` for ``pipe``: its registered model's STAS defaults (K capped at
    ``num_steps``), else `paper_config`. ``override`` replaces any field."""
    from .registry import entry_of

    e = entry_of(pipe)
    if e is None or e.stas_defaults is None:
        return paper_config(pipe, channels, num_steps, **override)
    kw = dict(e.stas_defaults)
    kw["steps"] = min(kw["steps"], num_steps)
    kw.update(channels=tuple(int(c) for c in channels))
    kw.update(override)
    return STASConfig(**kw)
