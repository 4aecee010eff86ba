"""The paper's ablations and the before/after view of STAS, as functions the notebooks call.

* `trace_steering` (notebook 05): one prompt/seed, baseline and steered, with `stas.record` on the
  MA channel(s) at every block — the clips and the channel's magnitude before/after at the steered
  block and downstream.
* `ablation_groups` / `run_ablations` / `ablation_table` / `pick_defaults` (notebook 07,
  ``python -m stas evaluate --grid ablations``): families of settings around one base — α and K
  sweeps, the choices the paper leaves open (CFG branch, one block vs several, boundary width and
  unit, channel set incl. the matched-size null controls), block, positions, zeroing — every setting
  run on the same prompts x seeds as an unsteered baseline, paired by seed; paired bootstrap CIs
  resampling prompts, Holm across the settings of each family (per metric); the defaults picked
  by `PICK_RULE`, stated here before any run, with the table row that chose each value.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .evaluate import MIN_PROMPTS_FOR_CI, evaluate, paired
from .statistics import holm, paired_bootstrap_ci
from .steer import STASConfig

ABLATION_METRICS = ("seam_excess", "first", "per_transition", "flicker", "warp_error", "object_speed", "adherence",
                    "persist_ok", "traj_jerk")
# The families whose winner sets a default (the others are the paper's ablations, reported only).
DECISIONS = {"CFG branch": "branches", "blocks": "blocks", "boundary": ("boundary_width", "boundary_unit"),
             "channel set": "channels", "alpha": "alpha", "K (steps)": "steps"}
PICK_RULE = ("Per decision family, among settings whose flicker and adherence CIs do not lie wholly on the "
             "harmful side (Holm-adjusted p >= 0.05 or a change for the better), the setting with the largest "
             "reduction of the seam target (seam_excess; per_transition for temporal factor 1) whose "
             "Holm-adjusted p < 0.05 and difference < 0; when no setting qualifies, the base value stays.")


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
                    alphas=(0.5, 1.0, 2.0, 4.0), ks=None, blocks=None, control_seed: int = 0,
                    boundary_widths=(1, 2, 4), boundary_rows: bool = True) -> dict:
    """``{family: {label: STASConfig}}`` around ``base`` (which steers every MA channel in ``chosen["ma"]``).

    ``chosen``: ``{"ma": every MA channel, "weak", "plain"}`` (`stas.evaluate.all_ma_channels`,
    `stas.massive.choose_channels`). Families: ``alpha``, ``K (steps)`` (default 1, 2, N/2, N),
    ``CFG branch`` (cond / uncond / both), ``blocks`` (the base block alone / with its neighbours /
    every block), ``block`` (early / mid / late, one each), ``boundary`` (``boundary_widths`` tokens;
    1 row when ``boundary_rows``; pass only widths the model's token layout holds),
    ``positions``, ``channel set`` (all MA, the top MA alone, weak, non-MA, and the matched-size null
    controls of `stas.STASConfig.control`), ``zero MAs``."""
    ks = ks or sorted({1, 2, max(1, num_steps // 2), num_steps})
    blocks = blocks or sorted({1 if num_blocks > 2 else 0, num_blocks // 2, num_blocks - 1})
    ma = tuple(chosen["ma"])
    b0 = base.blocks[0]
    near = tuple(b for b in (b0 - 1, b0, b0 + 1) if 0 <= b < num_blocks)
    return {
        "alpha": {f"α={a:g}": replace(base, alpha=float(a)) for a in alphas},
        "K (steps)": {(f"K={k}" if k < num_steps else f"all {k}"): replace(base, steps=int(k)) for k in ks},
        "CFG branch": {"cond": replace(base, branches=("cond",)), "uncond": replace(base, branches=("uncond",)),
                       "both": replace(base, branches=("cond", "uncond"))},
        "blocks": {f"block {b0}": replace(base, blocks=(b0,)), f"blocks {near[0]}-{near[-1]}": replace(base, blocks=near),
                   "all blocks": replace(base, blocks=tuple(range(num_blocks)))},
        "block": {f"block {b}": replace(base, blocks=(int(b),)) for b in blocks},
        "boundary": {**{f"{w} token{'s' * (w > 1)}": replace(base, boundary_width=int(w), boundary_unit="tokens")
                        for w in boundary_widths},
                     **({"1 row": replace(base, boundary_width=1, boundary_unit="rows")} if boundary_rows else {})},
        "positions": {"first frame": replace(base, positions=("first_frame",)),
                      "boundary": replace(base, positions=("boundary",)),
                      "both": replace(base, positions=("first_frame", "boundary")),
                      "all tokens": replace(base, positions=("all",))},
        "channel set": {f"all MA {list(ma)}": replace(base, channels=ma),
                        f"top MA c{ma[0]}": replace(base, channels=ma[:1]),
                        f"weak c{chosen['weak']}": replace(base, channels=(int(chosen["weak"]),)),
                        f"non-MA c{chosen['plain']}": replace(base, channels=(int(chosen["plain"]),)),
                        "control: random positions": replace(base, channels=ma, control="random_positions",
                                                             control_seed=control_seed),
                        "control: random channel": replace(base, channels=ma, control="random_channel",
                                                           control_seed=control_seed)},
        "zero MAs": {"STAS": replace(base, channels=ma), "zero (first+bnd)": replace(base, channels=ma, mode="zero"),
                     "zero (all tokens)": replace(base, channels=ma, mode="zero", positions=("all",))},
    }


def family_names() -> list:
    """The family names `ablation_groups` builds, in its order (whatever the model: the families do not
    depend on it)."""
    base = STASConfig(steps=1, blocks=(0,), channels=(0,))
    return list(ablation_groups(base, {"ma": [0], "weak": 1, "plain": 2}, 1, 1))


def missing_families(table) -> list:
    """The families of `family_names` with no row in an `ablation_table` (a pandas table with a
    ``family`` column), in `ablation_groups` order."""
    have = set(table["family"])
    return [f for f in family_names() if f not in have]


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


def ablation_table(rows, where: dict, groups: dict, metrics_=ABLATION_METRICS, seed: int = 0):
    """Long pandas table, one row per (family, setting, metric): the paired difference to the
    baseline (``diff``, ``lo``, ``hi``, ``p``: `stas.statistics.paired_bootstrap_ci` resampling
    prompts; NaN with fewer than ``MIN_PROMPTS_FOR_CI`` prompts), ``p_holm`` (Holm across the settings of that family, per metric), ``n`` pairs,
    ``n_prompts``, ``method`` (the row key in ``rows``), ``row`` (a stable id ``family/setting/metric``)."""
    import pandas as pd

    out = []
    for g, d in groups.items():
        for k in metrics_:
            fam = []
            for lab in d:
                a, b, grp = paired(rows, k, where[(g, lab)], groups=True)
                ci = paired_bootstrap_ci(a, b, grp, seed=seed, min_groups=MIN_PROMPTS_FOR_CI)
                fam.append(dict(family=g, setting=lab, metric=k, method=where[(g, lab)], diff=ci["mean_diff"],
                                lo=ci["lo"], hi=ci["hi"], p=ci["p"], n=ci["n"], n_prompts=ci["n_groups"],
                                row=f"{g}/{lab}/{k}"))
            for r, q in zip(fam, holm([r["p"] for r in fam])):
                r["p_holm"] = float(q)
            out += fam
    return pd.DataFrame(out)


def ablation_frame(table, metrics_=ABLATION_METRICS):
    """The ablation table as a wide pandas DataFrame indexed by (family, setting): the paired mean
    difference per metric, as text with ``*`` where the Holm-adjusted p < 0.05."""
    t = table[table["metric"].isin(metrics_)]
    cell = t.apply(lambda r: f"{r['diff']:+.4g}" + ("*" if r["p_holm"] < 0.05 else ""), axis=1)
    wide = t.assign(cell=cell).pivot_table(index=["family", "setting"], columns="metric", values="cell",
                                           aggfunc="first", sort=False)
    return wide[[k for k in metrics_ if k in wide.columns]].rename_axis(None, axis=1)


def _harmful(table, family, setting, metric, better) -> bool:
    r = table[(table["family"] == family) & (table["setting"] == setting) & (table["metric"] == metric)]
    if r.empty or not np.isfinite(r["p_holm"].iloc[0]):
        return False
    d = r["diff"].iloc[0]
    return bool(r["p_holm"].iloc[0] < 0.05 and (d > 0 if better == "lower" else d < 0))


def pick_defaults(table, groups: dict, base: STASConfig, target: str = "seam_excess") -> list:
    """Apply `PICK_RULE` to an `ablation_table`: one dict per decision family (`DECISIONS`) with the
    ``field`` it sets, the ``value`` (the base's when nothing qualifies), ``setting``, and ``row``:
    the table row that chose it (``None`` when the base value stays)."""
    out = []
    for fam, field_ in DECISIONS.items():
        if fam not in groups:
            continue
        fields = field_ if isinstance(field_, tuple) else (field_,)
        t = table[(table["family"] == fam) & (table["metric"] == target)]
        ok = [r for _, r in t.iterrows() if np.isfinite(r["p_holm"]) and r["p_holm"] < 0.05 and r["diff"] < 0
              and not _harmful(table, fam, r["setting"], "flicker", "lower")
              and not _harmful(table, fam, r["setting"], "adherence", "higher")]
        if ok:
            best = min(ok, key=lambda r: r["diff"])
            cfg = groups[fam][best["setting"]]
            out.append(dict(family=fam, field=fields, value=tuple(getattr(cfg, f) for f in fields),
                            setting=best["setting"], row=best["row"], diff=float(best["diff"])))
        else:
            out.append(dict(family=fam, field=fields, value=tuple(getattr(base, f) for f in fields), setting=None,
                            row=None, diff=float("nan")))
    return out


def ablation_dict(table) -> dict:
    """An `ablation_table` as ``{family: {setting: {metric: (diff, lo, hi)}}}`` (for `stas.plots.ablation_grid`)."""
    out = {}
    for r in table.itertuples(index=False):
        out.setdefault(r.family, {}).setdefault(r.setting, {})[r.metric] = (r.diff, r.lo, r.hi)
    return out


def sweep_values(table, family: str) -> dict:
    """``{setting: numeric value}`` of a sweep family's labels (``α=2`` -> 2.0, ``K=3`` / ``all 4`` -> 3 / 4)."""
    import re

    return {s: float(re.findall(r"[-+]?\d*\.?\d+", s)[-1]) for s in dict.fromkeys(table[table["family"] == family]["setting"])}
