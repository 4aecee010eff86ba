"""Evaluation: prompts x seeds x methods, paired by seed, every metric, one results table.

    rows = evaluate(pipe, prompts, seeds, methods={"baseline": None, "stas": cfg, "enhance": ecfg})
    summary = summarize_rows(rows, feats)          # means, paired CIs vs baseline, Fréchet distances

    python -m stas evaluate --prompts FILE --seeds 4 --methods baseline,stas,enhance --out results.csv
    accelerate launch --num_processes 4 -m stas evaluate ...   # prompts sharded over 4 GPUs
    torchrun --nproc_per_node 2 -m stas evaluate ...           # or CPU processes (gloo)

A method is ``None`` (the stock pipeline), a `stas.STASConfig` (`stas.steer`), a
`stas.peers.EnhanceConfig` (`stas.peers.enhance`), or any callable ``pipe -> context manager``.
Every (prompt, seed) runs every method from the same noise, so differences are paired.

Per clip (one row): generation seconds; flicker (VBench MAD), chunk-seam jump (seam / within-chunk
change) with its seam and within means and the per-transition changes ``d_00 .. d_{F-2}``;
flow-warp error and motion magnitude (Farnebäck); house-world ground truth from the prompt through
`stas.house.detect.score_clip` (``adherence`` = every named object's colour present with the right
shape, ``colour_ok``, ``persist_ok``, ``shape_acc``, ``motion_acc``) and, for the first named object,
trajectory smoothness (``traj_jerk``: mean |second difference| of the detected centroid, px/frame²)
and size stability (``size_cv``: std / mean of its detected area). Per method: the Fréchet distance
of `stas.featnet` features of its clips to real world clips whose first object matches each
prompt (colour, shape, motion) — "FID for MNIST", reported with the number of clips behind it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np

from . import metrics

FIXED = ("prompt", "seed", "method", "seconds")
SUMMARY_METRICS = ("flicker", "seam_jump", "seam_mean", "within_mean", "warp_error", "motion", "adherence",
                   "colour_ok", "persist_ok", "shape_acc", "motion_acc", "traj_jerk", "size_cv", "seconds")
# direction of "better" per metric, for tables (None: no direction; motion is the dynamic degree)
BETTER = {"flicker": "lower", "seam_jump": "lower", "seam_mean": "lower", "within_mean": None, "warp_error": "lower",
          "motion": None, "adherence": "higher", "colour_ok": "higher", "persist_ok": "higher", "shape_acc": "higher",
          "motion_acc": "higher", "traj_jerk": "lower", "size_cv": "lower", "seconds": "lower", "frechet": "lower"}


def method_context(pipe, method):
    """The context manager that applies ``method`` (see module docstring) to ``pipe``."""
    from .peers import EnhanceConfig, enhance
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


def house_metrics(video, prompt: str) -> dict:
    """Ground-truth metrics of one clip against its prompt (NaN where nothing is detectable)."""
    from .house.detect import detect, score_clip

    nan = float("nan")
    sc = score_clip(video, prompt)
    objs = sc["objects"]
    out = dict(adherence=float(sc["ok"]), colour_ok=float(sc["colour_ok"]), persist_ok=float(sc["persist_ok"]),
               shape_acc=float(np.mean([o["shape_ok"] for o in objs])) if objs else nan,
               traj_jerk=nan, size_cv=nan)
    mo = [o["motion_ok"] for o in objs if o["motion_ok"] is not None]
    out["motion_acc"] = float(np.mean(mo)) if mo else nan
    if not objs:
        return out
    det = [d for d in detect(video, objs[0]["colour"]) if d["present"]]
    if len(det) >= 3:
        c = np.array([d["centroid"] for d in det])
        out["traj_jerk"] = float(np.linalg.norm(np.diff(c, 2, axis=0), axis=1).mean())
        a = np.array([d["area"] for d in det], dtype=float)
        out["size_cv"] = float(a.std() / a.mean())
    return out


def clip_metrics(video, prompt: str | None = None, temporal_factor: int = 4, house: bool = True) -> dict:
    """Every per-clip metric of one (F, 3, H, W) clip in [0, 1] (see module docstring)."""
    v = metrics.as_video(video)
    prof = metrics.seam_profile(v, temporal_factor, strict=False)
    flows = metrics.optical_flow(v)
    row = dict(flicker=metrics.flicker(v), seam_jump=prof["seam_jump"], seam_mean=prof["seam_mean"],
               within_mean=prof["within_mean"], warp_error=metrics.flow_warp_error(v, flows),
               motion=metrics.motion_magnitude(v, flows))
    if house and prompt is not None:
        row.update(house_metrics(v, prompt))
    row.update({f"d_{i:02d}": float(d) for i, d in enumerate(prof["diffs"])})
    return row


def evaluate(pipe, prompts, seeds, methods: dict, call: dict | None = None, features: bool = True,
             keep_videos: bool = False, progress: bool = True, desc: str = "evaluate", warmup: bool = True):
    """Run every (prompt, seed, method); returns ``(rows, extra)``.

    ``rows``: one dict per clip (``prompt, seed, method, seconds`` + `clip_metrics`), ordered prompt,
    seed, method (generation order rotates the methods per prompt/seed pair). ``extra``: ``{"features": {method: (N, 64) array}}`` when ``features`` (needs the
    trained `stas.featnet`), ``{"videos": {(prompt, seed, method): clip}}`` when ``keep_videos``.
    """
    from tqdm.auto import tqdm

    from .adapters import get_adapter
    from .cache import call_kwargs
    from .load import generate

    kw = call_kwargs(pipe, **(call or {}))
    tf = get_adapter(pipe).temporal_factor
    rows, feats, videos = [], {m: [] for m in methods}, {}
    net = None
    if features:
        from . import featnet
        net = featnet.load()
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
        row.update(clip_metrics(video, p, tf))
        rows.append(row)
        if net is not None:
            from . import featnet
            feats[m].append(featnet.features(video, net)[0])
        if keep_videos:
            videos[(p, s, m)] = video
    extra = {}
    order = {(p, s, m): i for i, (p, s, m) in enumerate((p, s, m) for p, s in pairs for m in names)}
    rows.sort(key=lambda r: order[(r["prompt"], r["seed"], r["method"])])
    if features:
        extra["features"] = {m: np.stack(f) if f else np.zeros((0, 64), np.float32) for m, f in feats.items()}
    if keep_videos:
        extra["videos"] = videos
    return rows, extra


# ------------------------------------------------------------------------------- real clips, FD
def matched_world_seeds(prompts, per_prompt: int = 4, start: int = 4_000_000_000, max_scan: int = 200_000) -> list:
    """World seeds whose first object matches each prompt's first named object (colour, shape and,
    when named, motion): ``per_prompt`` per prompt (fewer if not found within ``max_scan`` seeds)."""
    from .house import world

    want = []
    for p in prompts:
        objs = world.parse_prompt(p)
        want.append(objs[0] if objs else None)
    found = [[] for _ in prompts]
    s = start
    while s < start + max_scan and any(w is not None and len(f) < per_prompt for w, f in zip(want, found)):
        par = world.sample_params(range(s, s + 2000))
        for j in range(2000):
            key = (world.COLOURS[par.colour[j, 0]], world.SHAPES[par.shape[j, 0]], world.MOTIONS[par.motion[j, 0]])
            for w, f in zip(want, found):
                if w is not None and len(f) < per_prompt and key[:2] == (w["colour"], w["shape"]) \
                        and (w["motion"] is None or w["motion"] == key[2]):
                    f.append(s + j)
                    break
        s += 2000
    return [x for f in found for x in f]


def real_clips(prompts, per_prompt: int = 4, num_frames: int | None = None):
    """Real world clips matched to ``prompts`` (`matched_world_seeds`), rendered at the world's
    128 x 128 (``num_frames`` default 29): a list of ``(prompt, seed, clip)``."""
    from .house import world

    nf = num_frames or world.NUM_FRAMES
    out = []
    for p in prompts:
        seeds = matched_world_seeds([p], per_prompt)
        if seeds:
            v, _, _ = world.render_batch(world.sample_params(seeds, num_frames=nf), nf)
            out += [(p, s, clip) for s, clip in zip(seeds, v)]
    return out


def real_features(prompts, per_prompt: int = 4, num_frames: int | None = None, clips=None) -> np.ndarray:
    """Featnet features (N, 64) of real world clips matched to ``prompts`` (or of ``clips`` from
    `real_clips`)."""
    from . import featnet

    clips = real_clips(prompts, per_prompt, num_frames) if clips is None else clips
    if not clips:
        return np.zeros((0, 64), np.float32)
    return np.concatenate([featnet.features([c for _, _, c in clips[i:i + 16]]) for i in range(0, len(clips), 16)])


def real_rows(clips, temporal_factor: int = 4) -> list:
    """`clip_metrics` rows (method ``real``) of real clips from `real_clips`: the world's own
    numbers, a reference for what the metrics give on ground-truth video (not paired with any seed)."""
    return [dict(prompt=p, seed=s, method="real", seconds=float("nan"), **clip_metrics(c, p, temporal_factor))
            for p, s, c in clips]


def frechet_by_method(feats: dict, real: np.ndarray) -> dict:
    """``{method: {"frechet", "n"}}``: Fréchet distance of each method's clip features to ``real``
    (NaN with fewer than 2 clips)."""
    out = {}
    for m, f in feats.items():
        ok = len(f) >= 2 and len(real) >= 2
        out[m] = dict(frechet=metrics.frechet_distance(f, real) if ok else float("nan"), n=int(len(f)))
    return out


# ------------------------------------------------------------------------------------ summaries
def metric_columns(rows) -> list:
    keys = [k for k in rows[0] if k not in FIXED[:3]]
    return [k for k in keys if isinstance(rows[0][k], (int, float))]


def paired(rows, metric: str, method: str, baseline: str = "baseline"):
    """(method values, baseline values) paired by (prompt, seed)."""
    base = {(r["prompt"], r["seed"]): r[metric] for r in rows if r["method"] == baseline}
    a, b = [], []
    for r in rows:
        if r["method"] == method and (r["prompt"], r["seed"]) in base:
            a.append(r[metric])
            b.append(base[(r["prompt"], r["seed"])])
    return np.array(a, float), np.array(b, float)


def summarize_rows(rows, frechet: dict | None = None, baseline: str = "baseline", metrics_=SUMMARY_METRICS) -> list:
    """One dict per (method, metric): mean, sem, n, and the paired difference to ``baseline``
    (``diff``, ``lo``, ``hi``, ``p``; NaN for the baseline itself). Fréchet distances (one number per
    method, no CI) are added as metric ``frechet`` when given."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for m in methods:
        for k in metrics_:
            vals = [r[k] for r in rows if r["method"] == m and k in r]
            s = metrics.summarize({k: vals})[k]
            d = dict(method=m, metric=k, mean=s["mean"], sem=s["sem"], n=s["n"], diff=math.nan, lo=math.nan,
                     hi=math.nan, p=math.nan, better=BETTER.get(k))
            if m != baseline and any(r["method"] == baseline for r in rows):
                ci = metrics.paired_ci(*paired(rows, k, m, baseline))
                d.update(diff=ci["mean_diff"], lo=ci["lo"], hi=ci["hi"], p=ci["p"])
            out.append(d)
        if frechet and m in frechet:
            out.append(dict(method=m, metric="frechet", mean=frechet[m]["frechet"], sem=math.nan, n=frechet[m]["n"],
                            diff=frechet[m]["frechet"] - frechet.get(baseline, {}).get("frechet", math.nan)
                            if m != baseline else math.nan, lo=math.nan, hi=math.nan, p=math.nan, better="lower"))
    return out


def pivot(summary, value: str = "mean", metrics_=None) -> dict:
    """``{metric: {method: value}}`` from `summarize_rows` output (for printing / plots)."""
    out = {}
    for d in summary:
        if metrics_ is None or d["metric"] in metrics_:
            out.setdefault(d["metric"], {})[d["method"]] = d[value]
    return out


def format_summary(summary, metrics_=None, baseline: str = "baseline") -> str:
    """Text table: per metric, each method's mean ± sem and its paired difference to the baseline
    with the 95% CI (``*`` where the CI excludes 0)."""
    methods = list(dict.fromkeys(d["method"] for d in summary))
    mets = list(dict.fromkeys(d["metric"] for d in summary if metrics_ is None or d["metric"] in metrics_))
    head = f"{'metric':<12}" + "".join(f"{m:>26}" for m in methods) + "".join(
        f"{'Δ ' + m + ' [95% CI]':>34}" for m in methods if m != baseline)
    lines = [head]
    for k in mets:
        cells, diffs = [], []
        for m in methods:
            d = next((x for x in summary if x["method"] == m and x["metric"] == k), None)
            if d is None:
                cells.append(f"{'':>26}")
                continue
            se = "" if d["sem"] is None or not math.isfinite(d["sem"]) else f" ± {d['sem']:.3g}"
            cells.append(f"{d['mean']:.4g}{se} (n={d['n']})".rjust(26))
            if m != baseline:
                lo, hi = d["lo"], d["hi"]
                ci = f" [{lo:+.3g}, {hi:+.3g}]" if lo is not None and math.isfinite(lo) else ""
                star = "*" if ci and (lo > 0 or hi < 0) else " "
                diffs.append(f"{d['diff']:+.3g}{ci}{star}".rjust(34))
        lines.append(f"{k:<12}" + "".join(cells) + "".join(diffs))
    return "\n".join(lines)


def seam_table(rows) -> dict:
    """``{method: (T,) mean per-transition change}`` over that method's clips (for the seam plot)."""
    out = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        keys = sorted(k for k in rows[0] if k.startswith("d_"))
        out[m] = np.array([[r[k] for k in keys] for r in rows if r["method"] == m]).mean(0)
    return out


def write_table(rows, path, summary=None, meta=None) -> dict:
    """Write ``rows`` to ``path`` (.csv) and ``path.with_suffix('.json')`` (rows + summary + meta) and
    the summary to ``<stem>_summary.csv``; returns the paths."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    out = {"csv": path, "json": path.with_suffix(".json")}
    clean = lambda x: None if isinstance(x, float) and not math.isfinite(x) else x  # noqa: E731
    doc = dict(meta=meta or {}, rows=[{k: clean(v) for k, v in r.items()} for r in rows],
               summary=[{k: clean(v) for k, v in d.items()} for d in (summary or [])])
    out["json"].write_text(json.dumps(doc, indent=1))
    if summary:
        out["summary"] = path.with_name(path.stem + "_summary.csv")
        with open(out["summary"], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(summary[0]))
            w.writeheader()
            w.writerows(summary)
    return out


# ------------------------------------------------------------------------------------------ CLI
def read_prompts(spec: str) -> list:
    """Prompts from a file (one per line, ``#`` comments) or ``house[:N]`` (the world's eval captions)."""
    from .house.world import EVAL_PROMPTS

    if spec.startswith("house") and not Path(spec).exists():
        n = int(spec.split(":")[1]) if ":" in spec else len(EVAL_PROMPTS)
        return list(EVAL_PROMPTS[:n])
    lines = [ln.strip() for ln in Path(spec).read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def build_methods(pipe, names, num_steps: int, channels=None, temperature=None) -> tuple:
    """``({name: method}, info)`` for CLI method names baseline / stas / zero / enhance, with the
    defaults of `stas.defaults` (MA channels measured on the model unless given)."""
    from .defaults import ENHANCE, ma_channels, stas_config
    from .peers import EnhanceConfig

    info = {}
    if any(n in ("stas", "zero") for n in names) and channels is None:
        ch = ma_channels(pipe)
        channels, info["channels"] = ch["ma"], ch
    methods = {}
    for n in names:
        if n == "baseline":
            methods[n] = None
        elif n == "stas":
            methods[n] = stas_config(pipe, channels, num_steps)
        elif n == "zero":
            methods[n] = stas_config(pipe, channels, num_steps, mode="zero")
        elif n == "enhance":
            methods[n] = EnhanceConfig(**dict(ENHANCE, **({} if temperature is None else {"temperature": temperature})))
        else:
            raise ValueError(f"unknown method {n!r}; choose from baseline, stas, zero, enhance")
    info["methods"] = {k: repr(v) for k, v in methods.items()}
    return methods, info


def run_cli(a) -> dict | None:
    """``python -m stas evaluate`` (see `stas.__main__`): shard prompts over accelerate processes,
    merge on the main process, write the table. Returns the written paths on the main process."""
    import torch
    from accelerate import PartialState

    from .cache import call_kwargs
    from .load import load

    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: several CPU processes use gloo
    prompts = read_prompts(a.prompts)
    seeds = list(range(a.seed0, a.seed0 + a.seeds))
    names = [m.strip() for m in a.methods.split(",") if m.strip()]
    pipe = load(a.model, device=state.device)
    over = {k: v for k, v in dict(num_inference_steps=a.steps, num_frames=a.frames, height=a.size, width=a.size,
                                  guidance_scale=a.guidance).items() if v is not None}
    kw = call_kwargs(pipe, **over)
    methods, info = build_methods(pipe, names, kw["num_inference_steps"], a.channels, a.temperature)
    feats_on = not a.no_features
    out = Path(a.out)
    shard = out.with_name(f".{out.stem}.rank{state.process_index}.json")
    with state.split_between_processes(prompts) as mine:
        rows, extra = evaluate(pipe, mine, seeds, methods, kw, features=feats_on,
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
    fd = None
    if feats_on:
        real = real_features(prompts, a.real_per_prompt)
        fd = frechet_by_method({m: np.array(f, float).reshape(-1, 64) for m, f in feats.items()}, real)
        info["real_clips"] = int(len(real))
    summary = summarize_rows(rows, fd)
    meta = dict(model=a.model or getattr(pipe, "stas_name", None), prompts=prompts, seeds=seeds, call=kw,
                processes=state.num_processes, **info)
    paths = write_table(rows, out, summary, meta)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return paths


def add_cli(sub):
    """Register the ``evaluate`` subcommand on an argparse subparsers object."""
    e = sub.add_parser("evaluate", help="prompts x seeds x methods, paired by seed; one results table (CSV + JSON)")
    e.add_argument("--prompts", default="house", help="a file (one prompt per line) or house[:N] (world captions)")
    e.add_argument("--seeds", type=int, default=2, help="seeds per prompt (seed0 .. seed0+N-1)")
    e.add_argument("--seed0", type=int, default=0)
    e.add_argument("--methods", default="baseline,stas,enhance", help="comma list of baseline,stas,zero,enhance")
    e.add_argument("--out", default="results/evaluate.csv")
    e.add_argument("--model", default=None, help="house (default, or $STAS_MODEL), a diffusers dir or hub id")
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--frames", type=int, default=None)
    e.add_argument("--size", type=int, default=None, help="height = width")
    e.add_argument("--guidance", type=float, default=None)
    e.add_argument("--channels", type=int, nargs="*", default=None, help="MA channels (default: measured)")
    e.add_argument("--temperature", type=float, default=None, help="Enhance-A-Video temperature")
    e.add_argument("--real-per-prompt", type=int, default=4, help="real world clips per prompt for the FD")
    e.add_argument("--no-features", action="store_true", help="skip featnet features and Fréchet distances")
    e.set_defaults(fn=run_cli)
    return e
