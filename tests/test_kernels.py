"""The fused Triton reduction (`stas._kernels.block_stats`) equals a float64 brute force, checked in
Triton's CPU interpreter (skipped where Triton is not installed: it is optional and GPU-only)."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

CHECK = """
import torch
from stas import _kernels
from stas.record import reduce_block_output

torch.manual_seed(0)
cfgs = [dict(block_n=16, block_d=32, rows_per_program=64, num_warps=4),  # several tiles and partials
        dict(block_n=8, block_d=64, rows_per_program=32, num_warps=4, acc2d=True, stages=3)]
cases = [  # (b, L, D, K, channels, dtype, column stride of a wider tensor or None)
    ((1, 300, 96), 512, [3, 1], torch.bfloat16, None),
    ((2, 77, 40), 100_000, [5], torch.float16, None),     # K > numel: every entry, exact median
    ((1, 250, 72), 1000, [], torch.float32, None),        # no channels: no token programs
    ((2, 90, 48), 700, [0, 47], torch.bfloat16, 64),     # rows strided (a view of a wider tensor)
]
for (shape, k, chans, dt, wide), cfg in [(c, f) for c in cases for f in cfgs]:
    b, L, D = shape
    base = torch.randn(b, L, wide or D) * 3
    base[0, 5, 7] = -300.0  # a massive activation
    x = base[..., :D].to(dt) if wide is None else base.to(dt)[..., :D]
    key = torch.randint(2 ** 31 - 1, (k,), generator=torch.Generator().manual_seed(1))
    chan = torch.tensor(chans or [0], dtype=torch.long)
    out = torch.full((4, 2 * D + k), float("nan"))
    tok = torch.full((4, L, len(chans)), float("nan")) if chans else None
    _kernels.block_stats(x, torch.tensor([2]), out, tok, chan, key, config=cfg)
    x64 = x.double().abs().reshape(-1, D)
    assert torch.equal(out[2, :D].double(), x64.amax(0)), shape
    torch.testing.assert_close(out[2, D:2 * D].double(), x64.mean(0), rtol=1e-6, atol=0)
    pos = _kernels.sample_positions(x.numel(), key)
    n = min(k, x.numel())
    assert torch.equal(out[2, 2 * D:2 * D + n].double(), x64.flatten()[pos]), shape
    assert torch.isnan(out[2, 2 * D + n:]).all()
    if chans:
        torch.testing.assert_close(tok[2].double(), x.double()[..., chans].mean(0), rtol=1e-6, atol=0)
        assert torch.isnan(tok[[0, 1, 3]]).all()
    assert torch.isnan(out[[0, 1, 3]]).all()  # other rows untouched
    row, t = reduce_block_output(x, chan if chans else None, key)  # the torch path: the same row
    assert torch.equal(row[:D], out[2, :D]) and torch.equal(row[2 * D:].nan_to_num(-1), out[2, 2 * D:].nan_to_num(-1))
    torch.testing.assert_close(row[D:2 * D], out[2, D:2 * D], rtol=1e-6, atol=0)
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (optional, GPU only)")
def test_fused_reduction_equals_float64_bruteforce_in_interpreter():
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "TRITON_INTERPRET": "1"})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (optional, GPU only)")
@pytest.mark.parametrize("cfg", ["default", dict(block_n=32, block_d=256, rows_per_program=256, num_warps=4)])
def test_kernel_compiles_for_hopper_with_wide_loads(cfg):
    """Ahead-of-time compilation for sm_90 (no GPU needed): the column tiles load 16-byte vectors along
    channels (or stream them with cp.async when pipelined), given the alignment Triton sees at run time
    (16-byte aligned pointers, row stride a multiple of 16)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from stas import _kernels

    cfg = _kernels.CONFIG if cfg == "default" else cfg
    ints = ["N", "D", "rs", "n_col", "n_samp", "n_gather", "M", "S", "K", "OUT_W", "L", "LG", "T0"]
    sig = {"x_ptr": "*bf16", **{p: "*fp32" for p in ["pmax_ptr", "psum_ptr", "out_ptr", "tok_ptr"]},
           **{p: "*i64" for p in ["at_ptr", "key_ptr", "chan_ptr"]}, **{i: "i32" for i in ints}}
    const = {"NB": 1, "C": 2, "ROWS": cfg["rows_per_program"], "BLOCK_N": cfg["block_n"], "BLOCK_D": cfg["block_d"], "BLOCK_S": 1024,
             "BLOCK_T": 1024, "ACC2D": cfg.get("acc2d", False), "STAGES": cfg.get("stages", 1)}
    sig.update({k: "constexpr" for k in const})
    names = list(sig)
    aligned = {(names.index(n),): [["tt.divisibility", 16]] for n in names[:8] + ["D", "rs", "M", "OUT_W"]}
    k = triton.compile(ASTSource(fn=_kernels._main_pass, signature=sig, constexprs=const, attrs=aligned),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg["num_warps"]})
    ptx = k.asm["ptx"]
    wide = len(re.findall(r"ld\.global(\.\w+)*\.v4\.b32", ptx)) + \
        len(re.findall(r"cp\.async\.cg\.shared\.global \[[^]]*\], \[[^]]*\], 0x10", ptx))  # 16-byte loads
    assert wide > 0  # (the sample and token gathers load single values: 16-bit loads there)
    sig2 = {"pmax_ptr": "*fp32", "psum_ptr": "*fp32", "out_ptr": "*fp32", "at_ptr": "*i64", "P": "i32", "D": "i32",
            "OUT_W": "i32", "inv_n": "fp32", "BLOCK_P": "constexpr", "BLOCK_F": "constexpr"}
    triton.compile(ASTSource(fn=_kernels._final_pass, signature=sig2, constexprs={"BLOCK_P": 128, "BLOCK_F": 32}),
                   target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
