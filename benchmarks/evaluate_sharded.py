"""`python -m stas evaluate` in 1 process vs W processes (one GPU each) in one run: wall time and the
gathered table against the single-process table, row for row (issue 13, part 1).

    python benchmarks/evaluate_sharded.py --processes 2 -- --prompts house:16 --seeds 2   # W GPUs: writes
                                                             # benchmarks/results/evaluate_sharded.json
    python benchmarks/evaluate_sharded.py --readme            # README table from the committed JSON

Everything after ``--`` goes to ``python -m stas evaluate`` unchanged (not ``--out``). The single
process runs ``python -m stas evaluate`` (the first visible GPU), the W processes ``accelerate launch
--multi_gpu --num_processes W -m stas evaluate``; on a machine without GPUs both run on the CPU (gloo)
and nothing is written unless ``--out`` says where. Seconds are wall-clock seconds of each whole
command (start-up, model load, every clip, the reference rows and the summary), so the speed-up is
what a user waits, not the ideal W. Rows are compared on every column but ``seconds`` (each clip's
own wall time) and ``device`` (each process writes its own GPU): ``rows_equal`` counts rows equal bit
for bit (CSV floats are written round-trip exact), ``max_abs_diff`` lists the columns that differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from overhead import replace_between  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "evaluate_sharded.json"
MARKERS = ("<!-- evaluate-sharded-table:begin -->", "<!-- evaluate-sharded-table:end -->")
PER_PROCESS = ("seconds", "device")   # the columns that legitimately differ between the two tables


def launch(cmd: list, out: Path) -> float:
    """Run ``cmd + ["--out", out]`` from the repo root; wall seconds. Raises RuntimeError with the
    command's last output when it fails."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd + ["--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    return time.perf_counter() - t0


def compare(one: pd.DataFrame, many: pd.DataFrame) -> dict:
    """Row-for-row comparison of two results tables (same prompts, seeds, methods, same order)."""
    if list(one.columns) != list(many.columns) or len(one) != len(many):
        return dict(same_shape=False, rows=[len(one), len(many)])
    a, b = one.drop(columns=list(PER_PROCESS)), many.drop(columns=list(PER_PROCESS))
    same = (a == b) | (a.isna() & b.isna())
    num = a.select_dtypes("number").columns
    diff = (a[num] - b[num]).abs().max()
    return dict(same_shape=True, rows=len(one), rows_equal=int(same.all(axis=1).sum()),
                columns_differing=[c for c in a.columns if not same[c].all()],
                max_abs_diff={c: float(v) for c, v in diff.items() if v > 0})


def table(res: dict) -> str:
    """The README's sharded-evaluation table (markdown) from a results dict (evaluate_sharded.json)."""
    w, c = res["processes"], res["compare"]
    return "\n".join([
        f"Measured {res['date']} on {res['device']} (torch {res['torch']}, diffusers {res['diffusers']}), "
        f"`python benchmarks/evaluate_sharded.py --processes {w} -- {' '.join(res['evaluate_args'])}`: "
        f"{c['rows']} rows. Seconds are wall-clock seconds of the whole command.", "",
        f"| processes | seconds | speed-up | rows equal to 1 process (all columns but seconds, device) |",
        "|---|---|---|---|",
        f"| 1 (`python -m stas evaluate`) | {res['seconds']['one']:.1f} | 1.00x | |",
        f"| {w} (`accelerate launch --multi_gpu --num_processes {w}`) | {res['seconds']['many']:.1f} | "
        f"{res['speedup']:.2f}x | {c.get('rows_equal', 0)} of {c['rows']}"
        + (f"; differing: {', '.join(c['columns_differing'])} (max abs {max(c['max_abs_diff'].values()):.1e})"
           if c.get("columns_differing") else "") + " |"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--port", type=int, default=29541)
    ap.add_argument("--out", default=None, help=f"results JSON (default on GPUs: {RESULTS.relative_to(ROOT)})")
    ap.add_argument("--readme", action="store_true", help="write the README table from --out (or the committed "
                                                           "JSON) and exit")
    ap.add_argument("evaluate_args", nargs="*", help="after --: arguments of python -m stas evaluate")
    args = ap.parse_args()
    if args.readme:
        replace_between(ROOT / "README.md", MARKERS, table(json.loads(Path(args.out or RESULTS).read_text())))
        return
    if any(a == "--out" or a.startswith("--out=") for a in args.evaluate_args):
        ap.error("--out is set by this script")
    import diffusers
    import torch

    cuda = torch.cuda.is_available()
    if cuda and torch.cuda.device_count() < args.processes:
        ap.error(f"{args.processes} processes need {args.processes} GPUs; {torch.cuda.device_count()} visible")
    ev = ["-m", "stas", "evaluate", *args.evaluate_args]
    acc = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           str(args.processes), "--main_process_port", str(args.port)]
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one" / "ev.csv", Path(tmp) / "many" / "ev.csv"
        secs = {"one": launch([sys.executable, *ev], one)}
        print(f"1 process: {secs['one']:.1f} s", flush=True)
        secs["many"] = launch(acc + ev, many)
        print(f"{args.processes} processes: {secs['many']:.1f} s", flush=True)
        cmp = compare(pd.read_csv(one), pd.read_csv(many))
        meta = [json.loads(p.with_suffix(".json").read_text())["meta"] for p in (one, many)]
    res = dict(date=time.strftime("%Y-%m-%d"), processes=args.processes, evaluate_args=args.evaluate_args,
               device=f"{args.processes} x {torch.cuda.get_device_name(0)}" if cuda else "CPU",
               torch=torch.__version__, diffusers=diffusers.__version__, seconds=secs,
               speedup=secs["one"] / secs["many"], meta_processes=[m["processes"] for m in meta],
               weights=meta[0].get("weights"), compare=cmp)
    print(json.dumps(res, indent=1))
    print(table(res))
    out = args.out or (str(RESULTS) if cuda else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=1))
        print(f"wrote {out}; README table: python benchmarks/evaluate_sharded.py --readme")


if __name__ == "__main__":
    main()
