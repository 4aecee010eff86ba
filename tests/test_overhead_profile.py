"""benchmarks/overhead.py ``compiled_profile``: the hook's kernel time attributed from profiler events
(torch's own `FunctionEvent`s, built by hand: the sums are computed here by hand)."""

import json
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from test_overhead_table import RESULTS, overhead


def gpu(name, *durations, act="kernel", t0=0.0):
    """One FunctionEvent per duration (µs) of a GPU activity, as `prof.events()` gives them."""
    out = []
    for d in durations:
        out.append(FunctionEvent(id=1, name=name, thread=7, start_us=t0, end_us=t0 + d, device_type=DeviceType.CUDA,
                                 activity_type=act, use_device="cuda"))
        t0 += d + 1
    return out


def cpu(name, start, end, **kw):
    return FunctionEvent(id=2, name=name, thread=1, start_us=start, end_us=end, use_device="cuda", **kw)


# two hook-free forwards
WITHOUT = (gpu("triton_red_fused_mean_3", 10, 12, 10, 12) + gpu("sm90_xmma_gemm_bf16", 500, 510)
           + gpu("triton_poi_fused_clone_7", 8, 8) + gpu("triton_poi_fused_abs_2", 5, 5)
           + gpu("ProfilerStep#1", 2000, act="gpu_user_annotation") + [cpu("aten::mm", 0, 600)])
# two hooked forwards: the mean kernel renamed by inductor's index (same code), the clone no longer run,
# abs launched twice per forward instead of once, the stas kernels and a memcpy added
WITH = (gpu("triton_red_fused_mean_5", 11, 11, 11, 11) + gpu("sm90_xmma_gemm_bf16", 505, 507)
        + gpu("_main_pass", *[30] * 5) + [SimpleNamespace(name="_main_pass", device_type=DeviceType.CUDA,
                                                           self_device_time_total=30.0)]
        + gpu("_final_pass", *[2] * 6) + gpu("Memcpy DtoD (Device -> Device)", 1.5, 1.5, act="gpu_memcpy")
        + gpu("triton_poi_fused_abs_2", 5, 7, 5, 7) + gpu("cudaStreamSynchronize", 100, act="cuda_sync")
        + [cpu("stas::block_stats", 0, 50), cpu("ProfilerStep#1", 0, 5000, is_user_annotation=True)])


def test_kernel_times_gpu_events():
    tab = overhead.kernel_times(WITH, device=True)
    assert tab == {"triton_red_fused_mean": [4, 44.0], "sm90_xmma_gemm_bf16": [2, 1012.0], "_main_pass": [6, 180.0],
                   "_final_pass": [6, 12.0], "Memcpy DtoD (Device -> Device)": [2, 3.0],
                   "triton_poi_fused_abs": [4, 24.0]}  # the sync wait, CPU ops and annotations left out
    assert overhead.kernel_times(WITHOUT)["triton_poi_fused_clone"] == [2, 16.0]
    assert "ProfilerStep#1" not in overhead.kernel_times(WITHOUT)


def test_attribute_equals_hand_sum():
    a = overhead.attribute(overhead.kernel_times(WITH), overhead.kernel_times(WITHOUT), 2, 2)
    # per forward: _main_pass 3 x 30, _final_pass 3 x 2, memcpy 1.5, one more abs at its mean with the hook (6)
    assert a["added"] == {"_main_pass": {"calls": 3, "us": 90.0}, "_final_pass": {"calls": 3, "us": 6.0},
                          "Memcpy DtoD (Device -> Device)": {"calls": 1, "us": 1.5},
                          "triton_poi_fused_abs": {"calls": 1, "us": 6.0}}
    assert a["removed"] == {"triton_poi_fused_clone": {"calls": 1, "us": 8.0}}  # the clone no longer run
    assert a["added_us"] == 103.5 and a["removed_us"] == 8.0 and a["us"] == 95.5 and a["stas_us"] == 96.0
    assert a["total_without_us"] == (44 + 1010 + 16 + 10) / 2 == 540.0
    assert a["total_with_us"] == (44 + 1012 + 180 + 12 + 3 + 24) / 2 == 637.5
    assert a["diff_us"] == 97.5  # the renamed mean and the slower gemm are noise in this difference only
    # forwards of different counts: per-forward rates are compared
    b = overhead.attribute(overhead.kernel_times(WITH), overhead._merge_tables([overhead.kernel_times(WITHOUT)] * 2),
                           2, 4)
    assert b["us"] == 95.5 and b["total_without_us"] == 540.0


def test_cpu_profile_self_time():
    parent, child = cpu("aten::linear", 0, 100), cpu("aten::addmm", 10, 40)
    parent.append_cpu_child(child)
    note = cpu("my range", 0, 200, is_user_annotation=True)
    gpu_ev = gpu("_main_pass", 30)
    assert overhead.kernel_times([parent, child, note, *gpu_ev], device=False) == \
        {"aten::linear": [1, 70.0], "aten::addmm": [1, 30.0]}


def test_names():
    assert overhead.canonical_kernel("triton_per_fused_native_layer_norm_12") == "triton_per_fused_native_layer_norm"
    assert overhead.canonical_kernel("Torch-Compiled Region: 0/1") == "Torch-Compiled Region"
    assert overhead.canonical_kernel("_main_pass") == "_main_pass"
    cuda_kernel = "void at::native::reduce_kernel<512, 1>"
    assert overhead.canonical_kernel(cuda_kernel) == cuda_kernel
    assert all(map(overhead.is_stas_kernel, ["_main_pass", "triton__final_pass", "triton_main_pass_0"]))
    assert not any(map(overhead.is_stas_kernel, ["main_pass_x", "triton_poi_fused_abs_0", "aten::abs"]))


def test_spread():
    assert overhead.spread([4.0, 1.0, 3.0, 2.0, 5.0]) == {"median": 3.0, "q25": 2.0, "q75": 4.0, "min": 1.0, "max": 5.0}


PROFILE = {"date": "2026-12-02", "device": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0", "activity": "CUDA",
           "forwards_per_profile": 2, "repeats": 5, "blocks": 30, "forward_kernel_ms": 505.2,
           "backends": {"triton": {"us_per_block": 38.25, "us_min": 38.0, "us_max": 38.61,
                                   "pct_of_forward_kernels": 0.2271, "pct_min": 0.2256, "pct_max": 0.2293,
                                   "diff_us_per_block": 41.0, "diff_q25": -120.0, "diff_q75": 150.5,
                                   "kernels_added": {"_main_pass": {"calls": 30, "us": 1100.4},
                                                     "_final_pass": {"calls": 30, "us": 46.0}},
                                   "kernels_removed": {}},
                        "torch": {"error": "RuntimeError: x"}}}


def test_table_shows_profiler_rows():
    res = json.loads(json.dumps(dict(RESULTS, compiled_profile=PROFILE)))
    lines = overhead.table(res).splitlines()
    assert "| `triton` | 38.2 [38.0, 38.6] | 0.227 % [0.226, 0.229] | 41.0 [-120.0, 150.5] | " \
           "`_main_pass` 30x 1100; `_final_pass` 30x 46 |" in lines
    assert "| `torch` | RuntimeError: x | | | |" in lines
    head = next(ln for ln in lines if "torch.profiler" in ln)
    assert "GPU kernel time" in head and "not wall clock" in head and "measured 2026-12-02 on NVIDIA H200" in head
    assert "505.2 ms" in head and "5 profiles of 2 forward(s)" in head
    assert any("compiled, wall clock, µs/block" in ln for ln in lines)
    assert not any("torch.profiler" in ln for ln in overhead.table(RESULTS).splitlines())  # not measured: no rows


def test_partial_run_keeps_other_parts(tmp_path):
    """``--parts compiled_profile`` into an existing file keeps the file's other parts and header."""
    out = tmp_path / "o.json"
    old = dict(RESULTS, small=True, compiled_profile={"old": 1}, skipped={"compiled_profile": "budget"})
    out.write_text(json.dumps(old))
    b = SimpleNamespace(args=SimpleNamespace(out=str(out)), log=lambda m: None,
                        res={"small": True, "shape": RESULTS["shape"], "date": "new"})
    assert overhead.merge_previous(b, ["compiled_profile"])
    assert b.res["date"] == "2026-12-01" and b.res["kernel"] == RESULTS["kernel"] and "compiled_profile" not in b.res
    b.res = {"small": False, "shape": RESULTS["shape"], "date": "new"}  # another configuration: not merged
    assert not overhead.merge_previous(b, ["compiled_profile"]) and b.res["date"] == "new"
    b.res = {"small": True, "shape": RESULTS["shape"], "date": "new"}
    assert not overhead.merge_previous(b, list(overhead.PARTS))  # a full run starts afresh


@pytest.mark.parametrize("attr", ["self_device_time_total", "device_time_total", "cuda_time_total"])
def test_event_duration_attributes(attr):
    ev = SimpleNamespace(name="k", device_type=DeviceType.CUDA, **{attr: 12.5})
    assert overhead.kernel_times([ev]) == {"k": [1, 12.5]}
