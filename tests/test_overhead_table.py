"""The README performance table is generated from benchmarks/results/overhead.json (benchmarks/overhead.py)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("overhead", ROOT / "benchmarks" / "overhead.py")
overhead = importlib.util.module_from_spec(spec)
spec.loader.exec_module(overhead)

ERR = {"max_rel_err": 0.0, "mean_rel_err": 2e-7, "tokens_max_abs_err": 0.0, "median_rel_err": 0.004,
       "median_rank": [0.499, 0.501], "median_in_band_99": True}
RESULTS = {
    "date": "2026-12-01", "device": "NVIDIA H200", "torch": "2.11.0", "diffusers": "0.42.1", "triton": "3.5.0",
    "shape": [32760, 1536], "tokens": 32760, "blocks": 30, "cuda_backend": "triton",
    "kernel": {"read_floor_us": 30.6, "backends": {
        "torch": {"torch.bfloat16": ERR, "us_per_block": 180.0},
        "torch_compiled": {"torch.bfloat16": ERR, "us_per_block": 60.0},
        "triton": {"torch.bfloat16": dict(ERR, mean_rel_err=3e-6), "us_per_block": 30.0}}},
    "eager": {"forward": {"none": {"median_ms": 600.0, "vs_none_pct": 0.0, "graphs_added": 0},
                          "record (30 blocks)": {"median_ms": 601.0, "vs_none_pct": 0.1667, "graphs_added": 0}},
              "no_host_sync": {"record (30 blocks) [torch]": True, "record (30 blocks) [triton]": True},
              "hooks": {"torch": {"us_per_block": 181.0, "pct_of_forward": 0.905},
                        "triton": {"us_per_block": 31.0, "pct_of_forward": 0.155},
                        "torch_compiled": {"error": "RuntimeError: x"}},
              "graph_breaks": 0},
    "compiled": {"forward": {"none": {"median_ms": 510.0, "vs_none_pct": 0.0, "graphs_added": 1},
                             "record (30 blocks)": {"median_ms": 511.0, "vs_none_pct": 0.2, "graphs_added": 1}},
                 "no_host_sync": {"record (30 blocks) [triton]": "sync: boom"},
                 "hooks": {"rounds": 15, "triton": {"us_per_block": 33.0, "q25": 31.0, "q75": 36.5,
                                                    "pct_of_forward": 0.194}},
                 "graph_breaks": 0},
    "pipeline": {"mode": "eager", "steps": 10, "repeats": 2, "ratio": {"none": 1.0, "record": 1.0021, "STAS": 0.9999},
                 "record_memory": {"measured_bytes": 204_000_000, "formula_bytes": 203_942_400}},
}


def test_table_from_results():
    res = json.loads(json.dumps(RESULTS))  # what the JSON file holds
    res["decision"] = overhead.decide(res)
    assert res["decision"]["recommend_cuda_backend"] == "triton" and res["decision"]["best_torch"] == "torch_compiled"
    assert res["decision"]["speedup_vs_best_torch"] == pytest.approx(2.0)
    lines = overhead.table(res).splitlines()
    assert lines[0].startswith("Measured 2026-12-01 on NVIDIA H200 (torch 2.11.0, diffusers 0.42.1, triton 3.5.0)")
    assert "| `triton` | 30.0 | 31.0 | 0.155 % | 33.0 [31.0, 36.5] | 0.194 % | 3.0e-06 |" in lines
    assert "| `torch_compiled` | 60.0 | — | — | — | — | 2.0e-07 |" in lines
    assert "| eager | record (30 blocks) | 601.0 | +0.17 % | 0 | none |" in lines
    assert "| compiled | record (30 blocks) | 511.0 | +0.20 % | 1 | sync: boom |" in lines
    assert "| compiled | graph breaks | 0 | | | |" in lines
    assert any("record 1.0021" in ln and "10 steps" in ln for ln in lines)
    assert any("took 204 MB" in ln and "formula: 204 MB" in ln for ln in lines)
    assert any("2.00x the speed of the best torch path (`torch_compiled`); CUDA default by this run: `triton`" in ln
               for ln in lines)


def test_decision_needs_a_clear_win():
    res = json.loads(json.dumps(RESULTS))
    res["kernel"]["backends"]["triton"]["us_per_block"] = 55.0  # 1.09x: not a clear win
    assert overhead.decide(res)["recommend_cuda_backend"] == "torch_compiled"
    res["kernel"]["backends"]["triton"]["us_per_block"] = 20.0
    res["kernel"]["backends"]["triton"]["torch.bfloat16"]["mean_rel_err"] = 2e-3  # fast but wrong
    assert overhead.decide(res)["recommend_cuda_backend"] == "torch_compiled"


def test_readme_update_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    begin, end = overhead.MARKERS
    readme.write_text(f"# x\n\n## Performance\n\nintro\n\n{begin}\nold\n{end}\n\nafter\n")
    overhead.update_readme(RESULTS, readme)
    text = readme.read_text()
    assert "old" not in text and text.startswith("# x\n\n## Performance\n\nintro\n\n")
    assert text.endswith(f"{end}\n\nafter\n") and overhead.table(RESULTS) in text


@pytest.mark.skipif(not overhead.RESULTS.exists(), reason="no committed GPU results yet")
def test_readme_table_is_the_committed_results():
    res = json.loads(overhead.RESULTS.read_text())
    assert overhead.table(res) in (ROOT / "README.md").read_text()


def test_small_benchmark_runs_on_cpu(tmp_path):
    """``benchmarks/overhead.py --small``: every part runs on the CPU, statistics equal float64, one compiled
    graph per hook configuration, no graph breaks, the profiler finds the hook's ops, the README table
    renders from its JSON."""
    import subprocess
    import sys

    out = tmp_path / "o.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--small", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env={**__import__("os").environ,
                                                                                  "TRITON_INTERPRET": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    row = res["kernel"]["backends"]["torch"]["torch.float32"]
    assert row["max_rel_err"] == 0 and row["mean_rel_err"] < 1e-6 and row["median_in_band_99"]
    assert res["compiled"]["graph_breaks"] == 0 and res["compiled"]["graphs_added_while_timing_hooks"] == 0
    assert res["compiled"]["forward"]["record (4 blocks)"]["graphs_added"] == 1
    assert set(res["pipeline"]["ratio"]) == {"none", "record", "STAS"}
    prof = res["compiled_profile"]  # CPU ops of the compiled forwards under torch.profiler
    assert prof["activity"] == "CPU" and prof["graphs_added_while_profiling"] == 0
    row = prof["backends"]["torch"]
    assert row["kernels_added"]["stas::block_stats"]["calls"] == 4  # one opaque op per block and forward
    assert row["kernels_added"]["aten::aminmax"]["calls"] == 4 and row["kernels_removed"] == {}
    assert row["us_per_block"] > 0 and len(row["repeats_us_per_block"]) == prof["repeats"] == 2
    assert overhead.table(res) in r.stdout
