"""The paper's ablations and the before/after view of STAS, as functions the notebooks call.

* `trace_steering` (notebook 05): one prompt/seed, baseline and steered, with `stas.record` on the
  MA channel(s) at every block — the clips and the channel's magnitude before/after at the steered
  block and downstream.
* `ablation_groups` / `run_ablations` / `ablation_table` (notebook 07): α sweep, K sweep (early
  steps only ... all steps), block choice, positions (first frame / boundary / both / all tokens),
  channel choice (true MA / weak MA / non-MA, by measured peak/mean ratio), zeroing the MA channels;
  every setting run on the same prompts x seeds as an unsteered baseline, compared paired by seed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import metrics
from .evaluate import evaluate, paired
from .steer import STASConfig

ABLATION_METRICS = ("seam_jump", "flicker", "warp_error", "motion", "adherence", "persist_ok", "traj_jerk")


# ------------------------------------------------------------------------------------ notebook 05
def trace_steering(pipe, prompt: str, seed: int, config: STASConfig, call: dict | None = None) -> dict:
    """Generate ``prompt``/``seed`` without and with ``config``, recording every block with the
    per-token values of ``config.channels``. Returns ``{"videos": {name: clip}, "stats": {name: Recording}}``
    (names ``baseline``, ``stas``; with steering the record hook sees the steered block output)."""
    from .load import call_settings, generate
    from .record import record
    from .steer import steer

    kw = dict(call) if call is not None else call_settings(pipe)
    videos, stats = {}, {}
    for name in ("baseline", "stas"):
        with record(pipe, channels=list(config.channels)) as rec:
            if name == "stas":
                with steer(pipe, config):
                    videos[name] = generate(pipe, prompt, seed=seed, **kw)
            else:
                videos[name] = generate(pipe, prompt, seed=seed, **kw)
        stats[name] = rec.stats
    return {"videos": videos, "stats": stats}


def block_profile(stats, channel: int, steps=None, what: str = "chan_max") -> np.ndarray:
    """(NB,) ``what`` (chan_max or chan_mean) of ``channel`` per block, mean over the given steps
    (default all), branches and runs."""
    x = stats.get(what, channel=channel)                  # (R, S, NB, Br)
    if steps is not None:
        x = x[:, list(steps)]
    return np.nanmean(x.numpy(), axis=(0, 1, 3))


def token_values(stats, block: int, channel: int, step: int = 0, branch: str = "cond") -> np.ndarray:
    """(L,) signed per-token value of ``channel`` at ``block``, ``step``, run 0."""
    return stats.get("tokens", run=0, step=step, block=block, branch=branch, channel=channel).numpy()


# ------------------------------------------------------------------------------------ notebook 07
def ablation_groups(base: STASConfig, chosen: dict, num_blocks: int, num_steps: int,
                    alphas=(0.5, 1.0, 2.0, 4.0), ks=None, blocks=None) -> dict:
    """``{group: {label: STASConfig}}`` for the paper's ablations around ``base``.

    ``chosen``: `stas.massive.choose_channels` output (``ma``, ``weak``, ``plain`` channel ids).
    K values default to 1, 2, N/2 and N (all steps); blocks to early / mid / late."""
    ks = ks or sorted({1, 2, max(1, num_steps // 2), num_steps})
    blocks = blocks or sorted({1 if num_blocks > 2 else 0, num_blocks // 2, num_blocks - 1})
    ma = tuple(chosen["ma"])
    g = {
        "alpha": {f"α={a:g}": replace(base, alpha=float(a)) for a in alphas},
        "K (steps)": {(f"K={k}" if k < num_steps else f"all {k}"): replace(base, steps=int(k)) for k in ks},
        "block": {f"block {b}": replace(base, blocks=(int(b),)) for b in blocks},
        "positions": {"first frame": replace(base, positions=("first_frame",)),
                      "boundary": replace(base, positions=("boundary",)),
                      "both": replace(base, positions=("first_frame", "boundary")),
                      "all tokens": replace(base, positions=("all",))},
        "channel": {f"MA c{ma[0]}": replace(base, channels=ma),
                    f"weak c{chosen['weak']}": replace(base, channels=(int(chosen["weak"]),)),
                    f"non-MA c{chosen['plain']}": replace(base, channels=(int(chosen["plain"]),))},
        "zero MAs": {"STAS": replace(base, channels=ma), "zero (first+bnd)": replace(base, channels=ma, mode="zero"),
                     "zero (all tokens)": replace(base, channels=ma, mode="zero", positions=("all",))},
    }
    return g


def unique_configs(groups: dict) -> dict:
    """``{name: STASConfig}`` with each distinct config once (names ``s0``, ``s1``, ...) plus
    ``baseline``; and the map (group, label) -> name, as ``(methods, where)``."""
    methods, where, seen = {"baseline": None}, {}, {}
    for g, d in groups.items():
        for lab, cfg in d.items():
            if cfg not in seen:
                seen[cfg] = f"s{len(seen)}"
                methods[seen[cfg]] = cfg
            where[(g, lab)] = seen[cfg]
    return methods, where


def run_ablations(pipe, prompts, seeds, groups: dict, call: dict | None = None, progress: bool = True):
    """Evaluate every distinct setting of ``groups`` and the baseline on prompts x seeds (paired).
    Returns ``(rows, where)`` for `ablation_table`."""
    methods, where = unique_configs(groups)
    rows, _ = evaluate(pipe, prompts, seeds, methods, call, progress=progress, desc="ablations")
    return rows, where


def ablation_table(rows, where: dict, groups: dict, metrics_=ABLATION_METRICS) -> dict:
    """``{group: {label: {metric: (paired mean diff, lo, hi)}}}`` against the baseline."""
    out = {}
    for g, d in groups.items():
        out[g] = {}
        for lab in d:
            m = where[(g, lab)]
            out[g][lab] = {}
            for k in metrics_:
                ci = metrics.paired_ci(*paired(rows, k, m))
                out[g][lab][k] = (ci["mean_diff"], ci["lo"], ci["hi"])
    return out


def ablation_frame(table: dict, metrics_=ABLATION_METRICS):
    """The ablation table as a pandas DataFrame indexed by (group, setting): the paired mean difference
    per metric, as text with ``*`` where the 95 % CI excludes 0."""
    import pandas as pd

    def cell(v):
        mu, lo, hi = v
        return f"{mu:+.4f}" + ("*" if np.isfinite(lo) and (lo > 0 or hi < 0) else "")

    return pd.DataFrame.from_dict({(g, lab): {k: cell(vals[k]) for k in metrics_}
                                   for g, d in table.items() for lab, vals in d.items()}, orient="index")
