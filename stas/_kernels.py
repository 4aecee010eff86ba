"""One fused GPU reduction for `stas.record`: per-channel max |x| and sum |x| in a single read of x.

PyTorch needs two passes over the block output for these (``aminmax`` and an L1 norm along the
token axis; 100 MB each on a full-size Wan2.1 block output, 32 760 x 1536 bf16). This Triton kernel
reads x once, coalesced along channels, accumulating in fp32.
Used on CUDA when Triton is importable and ``STAS_TRITON=1``; otherwise `stas.record` uses torch ops.
"""

from __future__ import annotations

import os

import torch

# Opt-in (STAS_TRITON=1) until timed on a GPU; checked against torch in Triton's CPU interpreter.
ENABLED = os.environ.get("STAS_TRITON", "0") == "1"

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

if triton is not None:
    @triton.jit
    def _absmax_abssum_kernel(x_ptr, pmax_ptr, psum_ptr, N, D, stride_n, ROWS: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        pid_d = tl.program_id(0)
        pid_n = tl.program_id(1)
        cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        cmask = cols < D
        acc_max = tl.zeros([BLOCK_D], dtype=tl.float32)
        acc_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
        row0 = pid_n * ROWS
        row_end = tl.minimum(row0 + ROWS, N)
        for r in range(0, ROWS, BLOCK_N):
            rows = row0 + r + tl.arange(0, BLOCK_N)
            m = (rows[:, None] < row_end) & cmask[None, :]
            v = tl.abs(tl.load(x_ptr + rows[:, None] * stride_n + cols[None, :], mask=m, other=0.0).to(tl.float32))
            acc_max = tl.maximum(acc_max, tl.max(v, axis=0))
            acc_sum += tl.sum(v, axis=0)
        tl.store(pmax_ptr + pid_n * D + cols, acc_max, mask=cmask)
        tl.store(psum_ptr + pid_n * D + cols, acc_sum, mask=cmask)


def fused_available(x: torch.Tensor) -> bool:
    """True when the Triton kernel can run on ``x`` (CUDA tensor, Triton installed)."""
    return triton is not None and (x.is_cuda or x.device.type == "cpu" and _interpreting())


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def absmax_abssum(flat: torch.Tensor, block_n: int = 32, block_d: int = 128, programs_n: int = 256):
    """(max_t |flat[t, c]|, sum_t |flat[t, c]|) as two (D,) float32 tensors, for ``flat`` (N, D)
    with unit stride along D. One read of ``flat``; partials per row chunk are combined by torch."""
    n, d = flat.shape
    if flat.stride(1) != 1:
        flat = flat.contiguous()
    chunks = max(1, min(programs_n, triton.cdiv(n, block_n)))
    rows_per = triton.cdiv(triton.cdiv(n, chunks), block_n) * block_n
    chunks = triton.cdiv(n, rows_per)
    pmax = torch.empty(chunks, d, device=flat.device, dtype=torch.float32)
    psum = torch.empty(chunks, d, device=flat.device, dtype=torch.float32)
    _absmax_abssum_kernel[(triton.cdiv(d, block_d), chunks)](flat, pmax, psum, n, d, flat.stride(0), ROWS=rows_per,
                                                             BLOCK_N=block_n, BLOCK_D=block_d)
    return pmax.amax(0), psum.sum(0)
