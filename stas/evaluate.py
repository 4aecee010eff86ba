"""Evaluation: prompts x seeds x methods, paired by seed, the metric functions you choose, one table.

    rows, extra = evaluate(pipe, prompts, seeds, methods={"baseline": None, "stas": cfg, "enhance": ecfg})
    summary = summarize_rows(rows, kid_by_method(extra["features"], real))   # means, bootstrap CIs, Holm, KID
    summary_frame(summary)                                                   # the same as a pandas table

    python -m stas evaluate --prompts house:32 --seeds 2 --out results/evaluate.csv
    accelerate launch --num_processes 4 -m stas evaluate ...   # prompts sharded over 4 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m stas evaluate ...   # 2 CPU processes (gloo), no GPU
    torchrun --nproc_per_node 2 -m stas evaluate ...           # the same, on GPUs or CPU

(``accelerate launch --cpu`` starts one process whatever ``--num_processes`` says: accelerate 1.x
runs several CPU processes only through MPI, ``--mpirun_hostfile``. ``--multi_gpu`` picks its
torch.distributed launcher, which on a machine without GPUs starts CPU processes.)

A method is ``None`` (the stock pipeline), a `stas.STASConfig` (`stas.steer`; with ``control=`` the
matched-size null controls), a `stas.enhance_a_video.EnhanceConfig` (`stas.enhance`), or any
callable ``pipe -> context manager``. Every (prompt, seed) runs every method from the same noise, so
differences are paired.

Per clip (one row): generation seconds; the validated temporal metrics of `stas.metrics` (chunks from
the adapter's true temporal factor) — ``first`` (the 0 → 1 first-frame transition, on its own),
``seam_mean``, ``within_mean``, ``seam_excess`` (seam − within change; NaN for temporal factor 1),
``per_transition`` (mean change over transitions 1.., the measure for temporal factor 1), ``flicker``
(MAD), ``flicker_score`` (VBench, NaN for a moving clip), ``warp_error`` (flow-warp error),
``object_speed`` (px/frame of the moving objects) and the per-transition changes ``d_00 ..
d_{F-2}`` — and the columns of every extra metric function ``fn(video, prompt) -> dict`` passed in
``metrics``. By default these are the ones the model registered (`stas.registry`; the house model:
house-world ground truth, NaN on prompts outside its world); a model with none gets none.
Reference rows: ``real`` (ground-truth clips) and ``vae_floor`` (the same clips after the model's
VAE round trip: what the VAE alone does to a clip, no transformer involved), unpaired. Per method, when a
feature extractor is given (default: the model's registered one), KID to the real clips with a CI
(`stas.statistics.kid`). Differences to the baseline: paired bootstrap CIs resampling prompts
(`stas.statistics.paired_bootstrap_ci`), Holm-adjusted across the methods of each metric.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np

from . import metrics

TEMPORAL_METRICS = ("first", "seam_mean", "within_mean", "seam_excess", "per_transition", "flicker", "flicker_score",
                    "warp_error", "object_speed")
SUMMARY_METRICS = TEMPORAL_METRICS + ("adherence", "colour_ok", "persist_ok", "shape_acc", "motion_acc", "traj_jerk",
                                      "size_cv", "seconds")
REFERENCE_METHODS = ("real", "vae_floor")   # unpaired reference rows
# Fewer prompts give no CI and no p: a prompt bootstrap over 2-5 prompts has too few distinct replicates
# (2 prompts of one sign: p = 0). Tables of CI-size runs then show differences without stars.
MIN_PROMPTS_FOR_CI = 6
# direction of "better" per metric, for tables (None: no direction; object_speed is the dynamic degree)
BETTER = {"first": "lower", "seam_mean": "lower", "within_mean": None, "seam_excess": "lower", "per_transition": None,
          "flicker": "lower", "flicker_score": "higher", "warp_error": "lower", "object_speed": None,
          "adherence": "higher", "colour_ok": "higher", "persist_ok": "higher", "shape_acc": "higher",
          "motion_acc": "higher", "traj_jerk": "lower", "size_cv": "lower", "seconds": "lower", "kid": "lower"}


def method_context(pipe, method):
    """The context manager that applies ``method`` (see module docstring) to ``pipe``."""
    from .enhance_a_video import EnhanceConfig, enhance
    from .steer import STASConfig, steer

    if method is None:
        return contextlib.nullcontext()
    if isinstance(method, STASConfig):
        return steer(pipe, method)
    if isinstance(method, EnhanceConfig):
        return enhance(pipe, method)
    if callable(method):
        return method(pipe)
    raise TypeError(f"unknown method {method!r}")


def default_metrics(pipe) -> dict:
    """The extra metric functions ``{name: fn(video, prompt) -> dict}`` registered for ``pipe``'s model
    (`stas.registry`); ``{}`` for a model without any."""
    from .registry import entry_of

    e = entry_of(pipe)
    return dict(e.metrics) if e is not None else {}


def clip_metrics(video, prompt: str | None = None, temporal_factor: int = 4, metrics_: dict | None = None) -> dict:
    """The temporal metrics of one (F, 3, H, W) clip in [0, 1] plus the columns of every function in
    ``metrics_`` (``{name: fn(video, prompt) -> dict}``; see module docstring)."""
    v = metrics.as_video(video)
    prof = metrics.seam_profile(v, temporal_factor, strict=False)
    flows = metrics.optical_flow(v)
    row = {k: prof[k] for k in ("first", "seam_mean", "within_mean", "seam_excess", "per_transition")}
    row.update(flicker=metrics.flicker(v), flicker_score=metrics.flicker_score(v, flows=flows),
               warp_error=metrics.flow_warp_error(v, flows), object_speed=metrics.object_speed(v, flows))
    for fn in (metrics_ or {}).values():
        row.update(fn(v, prompt))
    row.update({f"d_{i:02d}": float(d) for i, d in enumerate(prof["diffs"])})
    return row


def evaluate(pipe, prompts, seeds, methods: dict, call: dict | None = None, metrics_: dict | None = None,
             features=None, keep_videos: bool = False, progress: bool = True, desc: str = "evaluate",
             warmup: bool = True):
    """Run every (prompt, seed, method); returns ``(rows, extra)``.

    ``call``: the pipeline call settings (default: the adapter's native call). ``metrics_``: extra
    metric functions ``{name: fn(video, prompt) -> dict}`` (default `default_metrics`; ``{}`` for the
    temporal metrics only). ``features``: ``fn(list of clips) -> (N, D)`` feature extractor, ``True``
    for the model's registered one, None / False for none.
    ``rows``: one dict per clip (``prompt, seed, method, seconds`` + `clip_metrics`), ordered prompt,
    seed, method (generation order rotates the methods per prompt/seed pair). ``extra``:
    ``{"features": {method: (N, D) array}}`` with a feature extractor, ``{"videos": {(prompt, seed,
    method): clip}}`` when ``keep_videos``.
    """
    from tqdm.auto import tqdm

    from .adapters import get_adapter
    from .load import call_settings, generate
    from .registry import entry_of

    kw = dict(call) if call is not None else call_settings(pipe)
    tf = get_adapter(pipe).temporal_factor
    mets = default_metrics(pipe) if metrics_ is None else dict(metrics_)
    if features is True:
        e = entry_of(pipe)
        if e is None or e.features is None:
            raise ValueError("features=True, but this model registered no feature extractor: pass a function")
        features = e.features
    rows, feats, videos = [], {m: [] for m in methods}, {}
    names = list(methods)
    pairs = [(p, int(s)) for p in prompts for s in seeds]
    # method order rotates from pair to pair, so drifts in machine load do not favour one method's timing
    jobs = [(p, s, names[(i + j) % len(names)]) for j, (p, s) in enumerate(pairs) for i in range(len(names))]
    if warmup and jobs:  # one untimed 1-step call, so the first timed clip pays no start-up cost
        generate(pipe, jobs[0][0], seed=0, **dict(kw, num_inference_steps=1))
    for p, s, m in tqdm(jobs, desc=desc, disable=not progress, leave=False):
        t0 = time.perf_counter()
        with method_context(pipe, methods[m]):
            video = generate(pipe, p, seed=s, **kw)
        row = dict(prompt=p, seed=s, method=m, seconds=time.perf_counter() - t0)
        row.update(clip_metrics(video, p, tf, mets))
        rows.append(row)
        if features:
            feats[m].append(np.asarray(features([video]))[0])
        if keep_videos:
            videos[(p, s, m)] = video
    extra = {}
    order = {(p, s, m): i for i, (p, s, m) in enumerate((p, s, m) for p, s in pairs for m in names)}
    rows.sort(key=lambda r: order[(r["prompt"], r["seed"], r["method"])])
    if features:
        extra["features"] = {m: np.stack(f) for m, f in feats.items() if f}
    if keep_videos:
        extra["videos"] = videos
    return rows, extra


def reference_rows(clips, temporal_factor: int = 4, metrics_: dict | None = None, method: str = "real") -> list:
    """`clip_metrics` rows (``method``, default ``real``) of reference clips ``[(prompt, seed, clip)]``
    (e.g. a registered model's ``reference``): what the metrics give on ground-truth video (not paired)."""
    return [dict(prompt=p, seed=s, method=method, seconds=float("nan"), **clip_metrics(c, p, temporal_factor, metrics_))
            for p, s, c in clips]


def floor_rows(pipe, clips, metrics_: dict | None = None) -> list:
    """Rows ``real`` and ``vae_floor`` for reference clips ``[(prompt, seed, clip)]``: the clips and
    the same clips after the VAE round trip the model registered (`stas.registry.ModelEntry.round_trip`;
    only ``real`` when it registered none), with the adapter's temporal factor."""
    from .adapters import get_adapter
    from .registry import entry_of

    tf = get_adapter(pipe).temporal_factor
    e = entry_of(pipe)
    mets = default_metrics(pipe) if metrics_ is None else metrics_
    rows = []
    if e is not None and e.round_trip is not None and clips:
        rec = e.round_trip(pipe, [c for _, _, c in clips])
        rows += reference_rows([(p, s, r) for (p, s, _), r in zip(clips, rec)], tf, mets, "vae_floor")
    return reference_rows(clips, tf, mets, "real") + rows


def kid_by_method(feats: dict, real) -> dict:
    """``{method: stas.statistics.kid(...)}``: KID of each method's clip features ``(N, D)`` to
    ``real`` ``(M, D)`` with its CI; NaN entries where either set has fewer than 3 clips."""
    from .statistics import kid

    nan = float("nan")
    out = {}
    for m, f in feats.items():
        f = np.asarray(f, float).reshape(len(f), -1)
        ok = len(f) >= 3 and len(real) >= 3
        out[m] = kid(f, real) if ok else dict(kid=nan, se=nan, lo=nan, hi=nan, m=int(len(f)), n=int(len(real)))
    return out


# ------------------------------------------------------------------------------------ summaries
def paired(rows, metric: str, method: str, baseline: str = "baseline", groups: bool = False):
    """(method values, baseline values) paired by (prompt, seed); with ``groups`` also their prompts."""
    base = {(r["prompt"], r["seed"]): r.get(metric, math.nan) for r in rows if r["method"] == baseline}
    a, b, g = [], [], []
    for r in rows:
        if r["method"] == method and (r["prompt"], r["seed"]) in base:
            a.append(r.get(metric, math.nan))
            b.append(base[(r["prompt"], r["seed"])])
            g.append(r["prompt"])
    return (np.array(a, float), np.array(b, float)) + ((g,) if groups else ())


def summarize_rows(rows, kid: dict | None = None, baseline: str = "baseline", metrics_=SUMMARY_METRICS,
                   seed: int = 0) -> list:
    """One dict per (method, metric): mean, sem, n, and the paired difference to ``baseline``
    (``diff``, ``lo``, ``hi``, ``p``: `stas.statistics.paired_bootstrap_ci` resampling prompts, NaN
    with fewer than ``MIN_PROMPTS_FOR_CI`` prompts;
    ``p_holm``: Holm-adjusted across the methods compared on that metric; NaN for the baseline and
    the unpaired reference rows). KID (`kid_by_method`) is added as metric ``kid`` with its CI in
    ``lo``/``hi`` (not a difference) when given."""
    from .statistics import holm, paired_bootstrap_ci

    nan = math.nan
    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics_ = [k for k in metrics_ if any(k in r for r in rows)]   # metrics that were computed
    has_base = any(r["method"] == baseline for r in rows)
    out = []
    for m in methods:
        for k in metrics_:
            vals = [r[k] for r in rows if r["method"] == m and k in r]
            s = metrics.summarize({k: vals})[k]
            d = dict(method=m, metric=k, mean=s["mean"], sem=s["sem"], n=s["n"], diff=nan, lo=nan, hi=nan, p=nan,
                     p_holm=nan, n_prompts=nan, better=BETTER.get(k))
            if m != baseline and m not in REFERENCE_METHODS and has_base:
                a, b, g = paired(rows, k, m, baseline, groups=True)
                ci = paired_bootstrap_ci(a, b, g, seed=seed, min_groups=MIN_PROMPTS_FOR_CI)
                d.update(diff=ci["mean_diff"], lo=ci["lo"], hi=ci["hi"], p=ci["p"], n_prompts=ci["n_groups"])
            out.append(d)
        if kid and m in kid:
            v = kid[m]
            out.append(dict(method=m, metric="kid", mean=v["kid"], sem=v["se"], n=v["m"], diff=nan, lo=v["lo"],
                            hi=v["hi"], p=nan, p_holm=nan, n_prompts=nan, better="lower"))
    for k in metrics_:   # Holm: one family per metric (the methods compared with the baseline on it)
        fam = [d for d in out if d["metric"] == k and np.isfinite(d["p"])]
        for d, q in zip(fam, holm([d["p"] for d in fam])):
            d["p_holm"] = float(q)
    return out


def summary_frame(summary, baseline: str = "baseline"):
    """`summarize_rows` output as a pandas table: one row per metric, per method ``mean ± sem (n)`` and,
    for every other method, the paired difference to ``baseline`` with its 95 % prompt-bootstrap CI
    (``*`` where the Holm-adjusted p < 0.05); the column is ``Δ method [95% CI]``, or ``Δ method`` when
    no metric of that method has a CI (fewer than ``MIN_PROMPTS_FOR_CI`` prompts)."""
    import pandas as pd

    df = pd.DataFrame(summary)
    if df.empty:
        return df
    fmt = lambda x: "" if x is None or not np.isfinite(x) else f"{x:.4g}"  # noqa: E731
    cell = df["mean"].map(fmt) + df["sem"].map(lambda x: "" if not np.isfinite(x) else f" ± {x:.2g}") \
        + " (n=" + df["n"].astype(str) + ")"
    out = df.assign(cell=cell).pivot(index="metric", columns="method", values="cell")
    for m in [m for m in df["method"].unique() if m != baseline and m not in REFERENCE_METHODS]:
        d = df[(df["method"] == m) & (df["metric"] != "kid")].set_index("metric")
        ci = d.apply(lambda r: diff_text(r) if np.isfinite(r["diff"]) else "", axis=1)
        out[f"Δ {m}" + (" [95% CI]" if np.isfinite(d["lo"]).any() else "")] = ci
    order = list(dict.fromkeys(df["metric"]))
    return out.reindex(order)[[c for c in out.columns]].rename_axis(None, axis=1)


def ci_note(n_prompts: int) -> str:
    """``""`` with at least ``MIN_PROMPTS_FOR_CI`` prompts, else why the table has no CI, p-value or Holm
    star: `` (no CI: N prompts, fewer than the 6 a prompt bootstrap needs; so no p-value and no Holm star)``."""
    if n_prompts >= MIN_PROMPTS_FOR_CI:
        return ""
    return (f" (no CI: {n_prompts} prompts, fewer than the {MIN_PROMPTS_FOR_CI} a prompt bootstrap needs; "
            "so no p-value and no Holm star)")


def diff_text(d, fmt: str = "+.3g") -> str:
    """A paired difference (one `summarize_rows` or `stas.ablations.ablation_table` record, a dict or
    pandas row with ``diff``, ``lo``, ``hi``, ``p_holm``) as text: ``diff [lo, hi]`` (the CI only when
    it is finite), ``*`` when the Holm-adjusted p < 0.05; ``n/a`` for None or a NaN difference."""
    if d is None or not np.isfinite(d["diff"]):
        return "n/a"
    ci = f" [{d['lo']:{fmt}}, {d['hi']:{fmt}}]" if np.isfinite(d["lo"]) else ""
    return f"{d['diff']:{fmt}}{ci}" + ("*" if d["p_holm"] < 0.05 else "")


def floor_comparison(summary, metrics_, baseline: str = "baseline", floor: str = "vae_floor",
                     z: float = 2.0) -> list:
    """The baseline against the VAE-round-trip reference per metric, from `summarize_rows` output: one
    dict per metric both have (finite means) with ``metric``, ``baseline``, ``baseline_se``, ``floor``,
    ``floor_se``, ``real`` (the ``real`` rows' mean, NaN when absent) and ``relation``: ``"above"`` /
    ``"below"`` when the baseline mean differs from the floor mean by more than ``z`` combined standard
    errors (sqrt(se_b² + se_f²), unpaired clip-level se: descriptive, not a test), else ``"within"``."""
    s = {(d["method"], d["metric"]): d for d in summary}
    out = []
    for k in metrics_:
        b, f, r = s.get((baseline, k)), s.get((floor, k)), s.get(("real", k))
        if b is None or f is None or not (np.isfinite(b["mean"]) and np.isfinite(f["mean"])):
            continue
        se = math.hypot(np.nan_to_num(b["sem"]), np.nan_to_num(f["sem"]))
        gap = b["mean"] - f["mean"]
        out.append(dict(metric=k, baseline=b["mean"], baseline_se=b["sem"], floor=f["mean"], floor_se=f["sem"],
                        real=r["mean"] if r else math.nan,
                        relation="within" if abs(gap) <= z * se else ("above" if gap > 0 else "below")))
    return out


def steering_text(config: str, num_steps: int) -> str:
    """A `stas.STASConfig` repr, as a table's meta stores it, in words for ``num_steps`` denoising steps:
    ``K=2 of 2 steps (every step), blocks [4], α=1, channels [257, 234], positions first_frame+boundary
    (boundary 1 token), CFG branches cond+uncond`` (+ mode and control when set). Raises ``ValueError``
    for a string that is not a ``STASConfig(...)`` call of literal keyword arguments."""
    import ast

    try:
        call = ast.parse(config.strip(), mode="eval").body
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "STASConfig"):
            raise ValueError
        f = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"not a STASConfig repr of literals: {config!r}") from e
    k = f["steps"]
    when = "every step" if k >= num_steps else f"the first {k}"
    unit = f.get("boundary_unit", "tokens").rstrip("s")
    w = f.get("boundary_width", 1)
    txt = (f"K={k} of {num_steps} steps ({when}), blocks {list(f['blocks'])}, α={f.get('alpha', 1.0):g}, "
           f"channels {list(f['channels'])}, positions {'+'.join(f.get('positions', ()))} (boundary {w} "
           f"{unit}{'s' * (w > 1)}), CFG branches {'+'.join(f.get('branches', ()))}")
    if f.get("mode", "stas") != "stas":
        txt += f", mode {f['mode']}"
    return txt + (f", control {f['control']}" if f.get("control") else "")


def seam_table(rows) -> dict:
    """``{method: (T,) mean per-transition change}`` over that method's clips (for the seam plot)."""
    out = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == m]
        keys = sorted(k for k in mine[0] if k.startswith("d_"))
        out[m] = np.array([[r[k] for k in keys] for r in mine]).mean(0)
    return out


def write_table(rows, path, summary=None, meta=None) -> dict:
    """Write ``rows`` to ``path`` (.csv) and ``path.with_suffix('.json')`` (rows + summary + meta) and
    the summary to ``<stem>_summary.csv``; returns the paths."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    out = {"csv": path, "json": path.with_suffix(".json")}
    clean = lambda x: None if isinstance(x, float) and not math.isfinite(x) else x  # noqa: E731
    doc = dict(meta=meta or {}, rows=[{k: clean(v) for k, v in r.items()} for r in rows],
               summary=[{k: clean(v) for k, v in d.items()} for d in (summary or [])])
    out["json"].write_text(json.dumps(doc, indent=1))
    if summary:
        out["summary"] = path.with_name(path.stem + "_summary.csv")
        pd.DataFrame(summary).to_csv(out["summary"], index=False)
    return out


# ------------------------------------------------------------------------------------------ CLI
def read_prompts(spec: str) -> list:
    """Prompts from a file (one per line, ``#`` comments) or ``MODEL[:N]``: the first N evaluation
    prompts a registered model brings (e.g. ``house:8``). Raises ``ValueError`` for more than it has."""
    from .registry import entry

    name, _, n = spec.partition(":")
    e = entry(name)
    if e is not None and not Path(spec).exists():
        if not e.prompts:
            raise ValueError(f"model {name!r} registered no prompts")
        return default_prompts(e.prompts, int(n) if n else len(e.prompts))
    lines = [ln.strip() for ln in Path(spec).read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def default_prompts(prompts, n: int) -> list:
    """The first ``n`` of ``prompts``; ``ValueError`` when there are fewer (never a silent cut)."""
    if n > len(prompts):
        raise ValueError(f"asked for {n} prompts, only {len(prompts)} exist")
    return list(prompts[:n])


METHOD_NAMES = ("baseline", "stas", "zero", "control_positions", "control_channel", "enhance")
DEFAULT_METHODS = "baseline,stas,control_positions,control_channel,enhance"


def all_ma_channels(pipe, call: dict | None = None, prompt: str = "a red square moves left") -> dict:
    """Every channel `stas.find_massive` reports on one recorded clip (not only the top few):
    ``{"ma": [channels], "peak/median": {channel: ratio}}``; ``ma`` is empty when none passes."""
    from .defaults import ma_channels

    ch = ma_channels(pipe, prompt, call=call)
    return {"ma": ch["all_ma"], "peak/median": ch["peak/median"]}


def build_methods(pipe, names, num_steps: int, channels=None, temperature=None, control_seed: int = 0,
                  call: dict | None = None) -> tuple:
    """``({name: method}, info)`` for the CLI method names of ``METHOD_NAMES``: baseline, stas (on
    every MA channel `all_ma_channels` measures, unless ``channels`` are given), zero, the two
    matched-size null controls of STAS (``control_positions``: random tokens of the MA channels;
    ``control_channel``: STAS's tokens of random non-MA channels; `stas.STASConfig.control`) and
    enhance (the Enhance-A-Video peer), with the defaults of `stas.defaults`. Raises ``ValueError``
    for an unknown name, or when no channel passes the MA criteria and none are given."""
    from .defaults import ENHANCE, stas_config
    from .enhance_a_video import EnhanceConfig

    bad = [n for n in names if n not in METHOD_NAMES]
    if bad:
        raise ValueError(f"unknown methods {bad}; choose from {', '.join(METHOD_NAMES)}")
    info = {}
    if any(n not in ("baseline", "enhance") for n in names) and channels is None:
        ch = all_ma_channels(pipe, call)
        if not ch["ma"]:
            raise ValueError("no channel of this model passes the MA criteria; pass --channels to steer chosen channels")
        channels, info["channels"] = ch["ma"], ch
    controls = {"control_positions": "random_positions", "control_channel": "random_channel"}
    methods = {}
    for n in names:
        if n == "baseline":
            methods[n] = None
        elif n == "stas":
            methods[n] = stas_config(pipe, channels, num_steps)
        elif n == "zero":
            methods[n] = stas_config(pipe, channels, num_steps, mode="zero")
        elif n in controls:
            methods[n] = stas_config(pipe, channels, num_steps, control=controls[n], control_seed=control_seed)
        else:
            methods[n] = EnhanceConfig(**dict(ENHANCE, **({} if temperature is None else {"temperature": temperature})))
    info["methods"] = {k: repr(v) for k, v in methods.items()}
    return methods, info


def target_metric(pipe) -> str:
    """The seam measure for ``pipe``'s VAE: ``seam_excess``, or ``per_transition`` for temporal factor 1
    (no within-chunk transition to compare with)."""
    from .adapters import get_adapter

    return "seam_excess" if get_adapter(pipe).temporal_factor > 1 else "per_transition"


def ablation_methods(pipe, call: dict, channels=None, control_seed: int = 0, families=None) -> tuple:
    """``(methods, info)`` of the ablation grid (`stas.ablations.ablation_groups` around the model's
    STAS defaults on every MA channel; ``families``: a subset of its family names, default all);
    ``info`` keeps the groups, the (family, setting) -> method map and the base config under
    ``_groups``, ``_where``, ``_base``. Raises ``ValueError`` for an unknown family."""
    from .ablations import ablation_groups, unique_configs
    from .adapters import get_adapter
    from .defaults import ma_channels, stas_config

    ch = ma_channels(pipe, n=3, call=call)      # one recorded clip: every MA channel and the controls' channels
    ma = list(channels) if channels else ch["all_ma"]
    if not ma:
        raise ValueError("no channel of this model passes the MA criteria; pass --channels to ablate chosen channels")
    n = call["num_inference_steps"]
    base = stas_config(pipe, ma, n)
    ad = get_adapter(pipe)
    lay = ad.layout_for_call(call["num_frames"], call["height"], call["width"])
    half = lay.tokens_per_frame // 2     # a boundary may cover at most half a token-frame at each end
    groups = ablation_groups(base, dict(ch, ma=ma), ad.num_blocks, n, control_seed=control_seed,
                             boundary_widths=[w for w in (1, 2, 4) if w <= half], boundary_rows=lay.width <= half)
    if families:
        bad = [f for f in families if f not in groups]
        if bad:
            raise ValueError(f"unknown ablation families {bad}; choose from {list(groups)}")
        groups = {f: groups[f] for f in families}
    methods, where = unique_configs(groups)
    settings = {f"{g}/{lab}": m for (g, lab), m in where.items()}
    return methods, dict(channels=ma, weak=ch["weak"], plain=ch["plain"], base=repr(base), settings=settings,
                         methods={k: repr(v) for k, v in methods.items()}, _groups=groups, _where=where, _base=base)


def provenance(pipe) -> dict:
    """What every results row carries: ``commit`` (git HEAD of this checkout, ``+dirty`` with
    uncommitted changes; ``unknown`` outside git: `code_commit`), ``weights`` (`stas.study.weights_hash`:
    transformers, text encoder, scheduler), ``vae`` (`stas.study.vae_hash`: the decoder every metric reads
    through; ``None`` without one), ``device`` and ``dtype`` of the transformer."""
    from .adapters import get_adapter
    from .study import vae_hash, weights_hash

    t = get_adapter(pipe).transformers[0]
    p = next(t.parameters())
    return dict(commit=code_commit(), weights=weights_hash(pipe), vae=vae_hash(pipe), device=str(p.device),
                dtype=str(p.dtype).replace("torch.", ""))


def weights_text(meta: dict, pipe) -> str:
    """One sentence (markdown) saying whether a results table (its ``meta``, `finish_table`) was made with
    the transformer / text encoder / scheduler (`stas.study.weights_hash`) and the VAE
    (`stas.study.vae_hash`) of ``pipe``. A table made before the VAE entered the provenance has no
    ``vae`` key: the sentence says it is unknown."""
    from .study import vae_hash, weights_hash

    w, v = weights_hash(pipe), vae_hash(pipe)
    wt = "the ones loaded here" if meta.get("weights") == w else f"not the ones loaded here, `{w}`"
    if "vae" not in meta:
        vt = "VAE not recorded (the table predates the VAE hash): whether it decoded with this VAE is unknown"
    else:
        vt = _vae_name(meta["vae"]) + (" (as loaded here)" if meta["vae"] == v else f" (loaded here: {_vae_name(v)})")
    return f"Model {meta.get('model')}, weights `{meta.get('weights')}` ({wt}), {vt}."


def _vae_name(h, quote: str = "`") -> str:
    """``VAE `<hash>``` (markdown; ``quote=""``: plain), or ``no VAE`` for a pipeline without one
    (`stas.study.vae_hash` None)."""
    return "no VAE" if h is None else f"VAE {quote}{h}{quote}"


def _git(*args) -> str:
    """stdout of ``git args`` in the checkout holding this package; raises OSError or CalledProcessError."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def code_commit() -> str:
    """git HEAD of the checkout holding this package (12 hex digits), ``+dirty`` with uncommitted
    changes to tracked files; ``unknown`` outside git."""
    import subprocess

    try:
        commit = _git("rev-parse", "--short=12", "HEAD")
        return commit + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# Modules that only the house trainers' command lines reach (``train_vae``: the VAE trainer; ``gates``: the
# house gates, imported by ``stas.house.train``'s ``gates_cli``; ``nonfinite``: the DiT trainer's check): no evaluation runs their code, so commits
# that change only these leave a table's rows as they were and `table_provenance` does not count them
# (tests/test_table_text.py checks every import of them in stas/ against that).
TRAINING_ONLY = ("stas/house/train_vae.py", "stas/house/gates.py", "stas/house/nonfinite.py")


def table_provenance(meta: dict) -> str:
    """One sentence (markdown) on what made a results table, from its ``meta`` (`finish_table`): model,
    weights and VAE hashes (`provenance`), device, dtype, prompts x seeds, call size and steps, and the commit, compared with
    this checkout's HEAD (`code_commit` without ``+dirty``): when the table's commit is an ancestor of
    HEAD, how many later commits there are and how many of them change ``stas/`` outside `TRAINING_ONLY`
    (then the table predates the current code)."""
    import subprocess

    c = meta["call"]
    made, head = str(meta.get("commit", "unknown")), code_commit().split("+")[0]   # HEAD, not the work tree
    vae = _vae_name(meta["vae"], quote="") if "vae" in meta else "VAE not recorded"
    run = (f"{meta.get('model')}, weights {meta.get('weights')}, {vae}, "
           f"{meta.get('device')} {meta.get('dtype')}; "
           f"{len(meta['prompts'])} prompts × {len(meta['seeds'])} seeds, "
           f"{c['height']}x{c['width']}x{c['num_frames']}, {c['num_inference_steps']} steps; made at commit {made}")
    if head == "unknown":
        return run + " (this checkout is outside git: not compared with the current code)"
    if made.split("+")[0] == head:
        return run + " = this checkout's HEAD" + (" (with uncommitted changes)" if made != head else "")
    try:
        base = made.split("+")[0]
        _git("merge-base", "--is-ancestor", base, "HEAD")
        code = ("--", "stas", *(f":(exclude){f}" for f in TRAINING_ONLY))
        n, n_stas = (_git("rev-list", "--count", f"{base}..HEAD", *path) for path in ((), code))
    except (OSError, subprocess.CalledProcessError):
        return run + f", not in this checkout's history (HEAD {head}): other code than the current one"
    return run + (f", {n} commit{'s' * (n != '1')} before this checkout's HEAD {head}, {n_stas} of them "
                  "changing `stas/` (the house trainers aside)"
                  + (": **the table predates the current code**" if int(n_stas) else ""))


def run_cli(a) -> dict | None:
    """``python -m stas evaluate`` (see `stas.__main__`): shard prompts over accelerate processes,
    merge on the main process, write the table. Returns the written paths on the main process."""
    import torch
    from accelerate import PartialState

    from .load import call_settings, load
    from .registry import entry_of

    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: several CPU processes use gloo
    if state.num_processes == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" \
            and "MASTER_ADDR" in os.environ:   # what `accelerate launch --cpu --num_processes N>1` leaves
        warnings.warn("accelerate launch --cpu started one process (several CPU processes need MPI); for N CPU "
                      "processes use `accelerate launch --multi_gpu --num_processes N` or `torchrun "
                      "--nproc_per_node N`", stacklevel=1)
    prompts = read_prompts(a.prompts)
    seeds = list(range(a.seed0, a.seed0 + a.seeds))
    names = [m.strip() for m in a.methods.split(",") if m.strip()]
    pipe = load(a.model, device=state.device, dtype=getattr(torch, a.dtype) if a.dtype else None)
    over = {k: v for k, v in dict(num_inference_steps=a.steps, num_frames=a.frames, height=a.size, width=a.size,
                                  guidance_scale=a.guidance).items() if v is not None}
    kw = call_settings(pipe, a.preset, **over)
    if a.grid == "ablations":
        methods, info = ablation_methods(pipe, kw, a.channels, a.control_seed,
                                         [f.strip() for f in a.families.split(",")] if a.families else None)
        names = list(methods)
    else:
        methods, info = build_methods(pipe, names, kw["num_inference_steps"], a.channels, a.temperature,
                                      a.control_seed, kw)
    e = entry_of(pipe)
    feats_on = not a.no_features and e is not None and e.features is not None and a.grid == "methods"
    prov = provenance(pipe)    # before the run: the code and weights that made the rows
    out = Path(a.out)
    shard = out.with_name(f".{out.stem}.rank{state.process_index}.json")
    with state.split_between_processes(prompts) as mine:
        rows, extra = evaluate(pipe, mine, seeds, methods, kw, features=feats_on or None,
                               progress=state.is_local_main_process, desc=f"evaluate[{state.process_index}]")
    shard.parent.mkdir(parents=True, exist_ok=True)
    shard.write_text(json.dumps(dict(rows=rows, feats={m: f.tolist() for m, f in extra.get("features", {}).items()})))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    rows, feats = [], {m: [] for m in methods}
    for r in range(state.num_processes):
        p = out.with_name(f".{out.stem}.rank{r}.json")
        d = json.loads(p.read_text())
        rows += d["rows"]
        for m, f in d["feats"].items():
            feats[m] += f
        p.unlink()
    order = {p: i for i, p in enumerate(prompts)}
    rows.sort(key=lambda r: (order[r["prompt"]], r["seed"], names.index(r["method"])))
    return finish_table(pipe, rows, feats if feats_on else None, prompts, seeds, kw, info, out, a.model,
                        a.real_per_prompt, a.grid, state.num_processes, prov)


def finish_table(pipe, rows, feats, prompts, seeds, call: dict, info: dict, out, model: str | None = None,
                 real_per_prompt: int = 4, grid: str = "methods", processes: int = 1, prov: dict | None = None) -> dict:
    """The single-process end of an evaluation: add the ``real`` / ``vae_floor`` rows of
    ``real_per_prompt`` reference clips per prompt (`floor_rows`), KID per method when ``feats``
    (``{method: list of feature vectors}``) are given, the `provenance` columns on every row, the
    summary (``grid="methods"``: `summarize_rows`; ``"ablations"``: `stas.ablations.ablation_table`
    and `stas.ablations.pick_defaults` in the meta), and write it all with `write_table` to ``out``.
    ``prov``: `provenance` taken before the run (default: now). Returns the written paths."""
    from .registry import entry_of

    e = entry_of(pipe)
    clips = e.reference(prompts, real_per_prompt, call["num_frames"]) if e is not None and e.reference \
        and real_per_prompt else []
    rows = list(rows) + floor_rows(pipe, clips)
    kd = None
    if feats and clips and e.features is not None:
        kd = kid_by_method({m: f for m, f in feats.items() if len(f)}, e.features([c for _, _, c in clips]))
    info = dict(info, real_clips=len(clips))
    prov = prov or provenance(pipe)
    rows = [dict(r, **prov) for r in rows]
    meta = dict(model=model, prompts=list(prompts), seeds=list(seeds), call=call, processes=processes, **prov,
                **{k: v for k, v in info.items() if not k.startswith("_")})
    if grid == "ablations":
        from .ablations import PICK_RULE, ablation_table, pick_defaults

        table = ablation_table(rows, info["_where"], info["_groups"])
        picks = pick_defaults(table, info["_groups"], info["_base"], target_metric(pipe))
        meta.update(pick_rule=PICK_RULE, picks=[dict(p, value=repr(p["value"])) for p in picks])
        summary = table.to_dict("records")
    else:
        summary = summarize_rows(rows, kd)
    paths = write_table(rows, out, summary, meta)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return paths


def read_table(path) -> tuple:
    """``(rows, summary, meta)`` of a table `write_table` wrote (its ``.json``); NaN where it stored null."""
    doc = json.loads(Path(path).with_suffix(".json").read_text())
    nanify = lambda d: {k: math.nan if v is None else v for k, v in d.items()}  # noqa: E731
    return [nanify(r) for r in doc["rows"]], [nanify(d) for d in doc["summary"]], doc["meta"]


def add_cli(sub):
    """Register the ``evaluate`` subcommand on an argparse subparsers object."""
    e = sub.add_parser("evaluate", help="prompts x seeds x methods, paired by seed; one results table (CSV + JSON)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       epilog="Columns of the tables: stas.evaluate.clip_metrics and stas.metrics (docstrings).")
    e.add_argument("--prompts", default="house", help="a file (one prompt per line) or MODEL[:N] (a registered "
                   "model's evaluation prompts, e.g. house:8)")
    e.add_argument("--seeds", type=int, default=2, help="seeds per prompt (seed0 .. seed0+N-1)")
    e.add_argument("--seed0", type=int, default=0, help="first seed")
    e.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma list of {','.join(METHOD_NAMES)}")
    e.add_argument("--control-seed", type=int, default=0, help="seed of the controls' random entries")
    e.add_argument("--families", default=None, help="--grid ablations: comma list of families (default all)")
    e.add_argument("--grid", default="methods", choices=["methods", "ablations"], help="methods: the --methods "
                   "list; ablations: every family of stas.ablations.ablation_groups (then --methods is ignored)")
    e.add_argument("--out", default="results/evaluate.csv", help="table path (.csv; beside it .json and "
                   "_summary.csv); an existing table is overwritten")
    e.add_argument("--model", default=None, help="a registered name, a diffusers dir or hub id (default $STAS_MODEL "
                   "or house)")
    e.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="transformer and "
                   "text encoder dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    e.add_argument("--preset", default="native", choices=["native", "quick"], help="call settings preset")
    e.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    e.add_argument("--frames", type=int, default=None, help="frames per clip (default: the preset's)")
    e.add_argument("--size", type=int, default=None, help="height = width")
    e.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the preset's)")
    e.add_argument("--channels", type=int, nargs="*", default=None, help="MA channels (default: measured)")
    e.add_argument("--temperature", type=float, default=None, help="Enhance-A-Video temperature")
    e.add_argument("--real-per-prompt", type=int, default=4, help="real clips per prompt (reference rows, the "
                   "VAE-round-trip floor and KID; 0: none)")
    e.add_argument("--no-features", action="store_true", help="skip clip features and KID")
    e.set_defaults(fn=run_cli)
    return e
