"""The optional fused Triton reduction equals torch, checked in Triton's CPU interpreter."""

import importlib.util
import subprocess
import sys

import pytest

CHECK = """
import torch
from stas._kernels import absmax_abssum
torch.manual_seed(0)
for shape in [(1000, 384), (77, 200), (513, 1536)]:
    x = torch.randn(*shape) * 3
    x[5, 7] = -50.0
    m, s = absmax_abssum(x)
    assert torch.equal(m, x.abs().amax(0)), shape
    torch.testing.assert_close(s, x.abs().sum(0), rtol=1e-5, atol=1e-3)
xb = (torch.randn(999, 256) * 5).bfloat16()
m, s = absmax_abssum(xb)
assert torch.equal(m, xb.float().abs().amax(0))
torch.testing.assert_close(s, xb.float().abs().sum(0), rtol=1e-5, atol=1e-3)
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (optional, GPU only)")
def test_fused_reduction_matches_torch_in_interpreter():
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "TRITON_INTERPRET": "1"})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
