"""`python -m stas evaluate` sharded over 2 CPU processes (gloo) gathers the single-process table,
row for row (issue 13, part 1): 3 prompts x 1 seed (uneven shards 2 + 1) x 3 methods on the tiny Wan."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

ARGS = ["--seeds", "1", "--methods", "baseline,stas,enhance", "--preset", "quick", "--steps", "2", "--frames", "5",
        "--size", "32", "--real-per-prompt", "0", "--no-features", "--channels", "0"]
TIMING = ["seconds"]   # wall time of each clip: the one column that legitimately differs between runs


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sharded")
    subprocess.run([sys.executable, "-m", "stas", "save-tiny", "wan", str(d / "wan")], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True)
    return d / "wan"


@pytest.fixture(scope="module")
def runs(wan_dir):
    d = wan_dir.parent
    env = dict(os.environ, OMP_NUM_THREADS="1")
    py = [sys.executable]
    (d / "prompts.txt").write_text("a red ball\na blue cube\na green cone\n")
    launchers = {
        "python": py,
        "torchrun1": py + ["-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29531"],
        "torchrun2": py + ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29532"],
        "accelerate2": py + ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--main_process_port", "29533"],
    }
    out = {}
    for name, launch in launchers.items():
        csv = d / name / "ev.csv"
        r = subprocess.run(launch + ["-m", "stas", "evaluate", "--model", str(d / "wan"), "--prompts",
                                     str(d / "prompts.txt"), *ARGS, "--out", str(csv)], env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        out[name] = (pd.read_csv(csv), json.loads(csv.with_suffix(".json").read_text())["meta"])
    return out


@pytest.mark.parametrize("name", ["torchrun2", "accelerate2"])
def test_two_processes_gather_the_one_process_table(runs, name):
    one, meta1 = runs["torchrun1"]
    two, meta2 = runs[name]
    assert (meta1["processes"], meta2["processes"]) == (1, 2)
    assert len(two) == 9 and list(two.columns) == list(one.columns)
    # same rows, same order, same values (bit for bit: CSV floats are written round-trip exact)
    pd.testing.assert_frame_equal(two.drop(columns=TIMING), one.drop(columns=TIMING), check_exact=True)
    assert list(zip(two.prompt, two.method))[:3] == [("a red ball", "baseline"), ("a red ball", "stas"),
                                                     ("a red ball", "enhance")]


def test_launched_table_equals_plain_python_bit_for_bit(runs):
    """A process started by torchrun gives the plain ``python`` table bit for bit. It once differed by
    a float32 rounding in the clip metrics: in a process group accelerate's device is ``cpu:0``, and
    loading to ``cpu:0`` copied the weights into differently aligned memory (see
    `test_indexed_cpu_device_loads_the_cpu_pipeline`)."""
    plain, _ = runs["python"]
    launched, _ = runs["torchrun2"]
    assert list(launched.columns) == list(plain.columns)
    pd.testing.assert_frame_equal(launched.drop(columns=TIMING), plain.drop(columns=TIMING), check_exact=True)


def test_indexed_cpu_device_loads_the_cpu_pipeline(wan_dir):
    """``load(dir, device="cpu:0")`` (accelerate's ``PartialState.device`` in a CPU process group) is
    ``load(dir, device="cpu")``: same device, the weights `from_pretrained` read left in place (a copy
    to fresh, 64-byte aligned memory would change CPU matrix products by a float32 rounding), so the
    same seed gives the same clip bit for bit."""
    import torch

    from stas.load import call_settings, default_device_dtype, generate, load

    assert default_device_dtype("cpu:0") == (torch.device("cpu"), torch.float32)
    a, b = load(str(wan_dir), device="cpu"), load(str(wan_dir), device="cpu:0")
    call = call_settings(a, "quick", num_inference_steps=2, num_frames=5, height=32, width=32)
    va, vb = generate(a, "a red ball", seed=0, **call), generate(b, "a red ball", seed=0, **call)
    assert torch.equal(torch.as_tensor(va), torch.as_tensor(vb))
