"""The fused GPU reduction behind `stas.record`: one read of a block output per (step, block, branch).

For a block output viewed as ``flat`` (N, D) (N = batch x tokens; 32 760 x 1536 bf16 = 100.6 MB
for a full-size Wan2.1-1.3B block) `block_stats` writes, into row ``at`` of the recorder's buffers,

* ``out[at, :D]``        max_t |flat[t, c]|                                   (float32)
* ``out[at, D:2D]``      mean_t |flat[t, c]|, summed in float32
* ``out[at, 2D:2D+K]``   |flat| at K fixed positions (`sample_positions`; NaN past N*D)
* ``tokens[at, l, j]``   mean over the batch of x[., l, chan[j]]              (float32)

with two launches: (1) a 1-D grid whose first few programs gather the sample and the chosen
channels' token values (they start first and overlap the rest) and whose other programs each reduce
a tile of ``rows_per_program`` rows x ``block_d`` channels (loads coalesced along channels, fp32
partial max and sum per tile); (2) a tiny pass that combines the partials per channel and writes the
row. No host sync, no atomics (the sums are bit-reproducible). Combining the partials inside (1)
instead (the last tile of each column block, an acquire-release counter) was measured on an H200 and
saved nothing (36.1 vs 36.0 µs per block, benchmarks/results/overhead.json), so there is no such
option. Without Triton the torch path runs.

`stas.record` uses it on CUDA when ``CUDA_BACKEND == "triton"`` and Triton is importable; the
torch implementation (`stas.record.reduce_block_output`) is the reference and the CPU path.
Tests check this kernel against a float64 brute force in Triton's CPU interpreter
(``TRITON_INTERPRET=1``); ``benchmarks/overhead.py`` times it against torch at the real shape.
"""

from __future__ import annotations

import os
from contextlib import nullcontext as _nullcontext

import torch

# The reduction `stas.record` runs on CUDA: "triton" (this module), "torch" or "torch_compiled"
# (`stas.record.reduce_block_output`, eager or through torch.compile). Chosen from the GPU numbers in
# benchmarks/results/overhead.json; changing it is this one line.
CUDA_BACKEND = "triton"
# Tile of the main pass (see module docstring): block_n rows x block_d channels per load, rows per
# program, warps, elementwise accumulators (acc2d) and software-pipelined loads (stages > 1: cp.async).
# benchmarks/overhead.py sweeps alternatives at the real shape and prints the fastest as this line.
CONFIG = dict(block_n=32, block_d=128, rows_per_program=1024, num_warps=4, acc2d=True, stages=3)
BACKEND = None  # set by benchmarks and tests to force one backend everywhere ("torch", "triton", ...)

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None


def backend(x: torch.Tensor) -> str:
    """The reduction used for a block output ``x``: ``BACKEND`` if set, else ``CUDA_BACKEND`` on CUDA
    when Triton can run there, else "torch"."""
    if BACKEND is not None:
        return BACKEND
    if x.is_cuda and (triton is not None or CUDA_BACKEND != "triton"):
        return CUDA_BACKEND
    return "torch"


def sample_positions(numel: int, key: torch.Tensor) -> torch.Tensor:
    """Flat positions of the median sample in a tensor of ``numel`` entries: one per stratum.

    The ``numel`` entries are cut into S = min(K, numel) strata of consecutive flat positions
    (``[i*numel//S, (i+1)*numel//S)``) and stratum i contributes the entry at offset
    ``key[i] % size_i``; ``key`` (K,) int64 holds fixed random integers. With numel <= K every entry
    is taken once (the median is then exact). Returns (S,) int64 on key's device. The Triton kernel
    computes the same positions."""
    s = min(key.numel(), numel)
    i = torch.arange(s, device=key.device)
    lo = i * numel // s
    return lo + key[:s] % ((i + 1) * numel // s - lo)


if triton is not None:
    @triton.jit
    def _main_pass(x_ptr, pmax_ptr, psum_ptr, out_ptr, tok_ptr, at_ptr, key_ptr, chan_ptr,
                   N, D, rs, n_col, n_samp, n_gather, M, S, K, OUT_W, L, LG, T0,
                   NB: tl.constexpr, C: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_S: tl.constexpr, BLOCK_T: tl.constexpr, ACC2D: tl.constexpr,
                   STAGES: tl.constexpr):
        # programs [0, n_samp): median sample; [n_samp, n_gather): chosen channels; then column tiles.
        # The few gathers come first so that they overlap the bandwidth-bound tiles.
        pid = tl.program_id(0)
        if pid < n_samp:  # median sample: |x| at one position per stratum (sample_positions)
            at = tl.load(at_ptr)
            i = pid * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
            ins = i < S
            lo = i * M // S
            o = lo + tl.load(key_ptr + i, mask=ins, other=0) % tl.maximum((i + 1) * M // S - lo, 1)
            row = o // D  # row of the (NB * LG, D) sequence; x holds its tokens [T0, T0 + L) (all when LG == L)
            t = row % LG - T0
            own = ins & (t >= 0) & (t < L)
            v = tl.load(x_ptr + ((row // LG) * L + t) * rs + o % D, mask=own, other=0.0)  # 0: another rank's
            v = tl.where(ins, tl.abs(v.to(tl.float32)), float("nan"))
            tl.store(out_ptr + at * OUT_W + 2 * D + i, v, mask=i < K)
        elif pid < n_gather:  # chosen channels: batch mean of x[., l, chan[j]] for BLOCK_T tokens l
            at = tl.load(at_ptr)
            t = (pid - n_samp) * BLOCK_T + tl.arange(0, BLOCK_T)
            tm = t < L
            for j in tl.static_range(C):
                c = tl.load(chan_ptr + j)
                acc = tl.zeros([BLOCK_T], dtype=tl.float32)
                for bi in tl.static_range(NB):
                    acc += tl.load(x_ptr + (bi * L + t).to(tl.int64) * rs + c, mask=tm, other=0.0).to(tl.float32)
                tl.store(tok_ptr + (at * L + t) * C + j, acc / NB, mask=tm)
        else:  # column tile: ROWS rows x BLOCK_D channels -> partial max and sum (fp32)
            q = pid - n_gather
            pid_d = q % n_col  # neighbouring programs read neighbouring channels of the same rows
            pid_n = q // n_col
            cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
            cmask = cols < D
            row0 = pid_n * ROWS
            if ACC2D:  # elementwise (BLOCK_N, BLOCK_D) accumulators, one cross-thread reduction at the end
                acc2_max = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
                acc2_sum = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
                for r in tl.range(0, ROWS, BLOCK_N, num_stages=STAGES):
                    rows = row0 + r + tl.arange(0, BLOCK_N)
                    m = (rows[:, None] < N) & cmask[None, :]
                    v = tl.load(x_ptr + rows.to(tl.int64)[:, None] * rs + cols[None, :], mask=m, other=0.0)
                    v = tl.abs(v.to(tl.float32))
                    acc2_max = tl.maximum(acc2_max, v)
                    acc2_sum += v
                acc_max = tl.max(acc2_max, axis=0)
                acc_sum = tl.sum(acc2_sum, axis=0)
            else:  # (BLOCK_D,) accumulators, a reduction over the tile's rows per iteration
                acc_max = tl.zeros([BLOCK_D], dtype=tl.float32)
                acc_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
                for r in tl.range(0, ROWS, BLOCK_N, num_stages=STAGES):
                    rows = row0 + r + tl.arange(0, BLOCK_N)
                    m = (rows[:, None] < N) & cmask[None, :]
                    v = tl.load(x_ptr + rows.to(tl.int64)[:, None] * rs + cols[None, :], mask=m, other=0.0)
                    v = tl.abs(v.to(tl.float32))
                    acc_max = tl.maximum(acc_max, tl.max(v, axis=0))
                    acc_sum += tl.sum(v, axis=0)
            tl.store(pmax_ptr + pid_n * D + cols, acc_max, mask=cmask)
            tl.store(psum_ptr + pid_n * D + cols, acc_sum, mask=cmask)

    @triton.jit
    def _final_pass(pmax_ptr, psum_ptr, out_ptr, at_ptr, P, D, OUT_W, inv_n,
                    BLOCK_P: tl.constexpr, BLOCK_F: tl.constexpr):
        cols = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
        cmask = cols < D
        p = tl.arange(0, BLOCK_P)
        m = (p[:, None] < P) & cmask[None, :]
        off = p[:, None] * D + cols[None, :]
        mx = tl.max(tl.load(pmax_ptr + off, mask=m, other=0.0), axis=0)
        sm = tl.sum(tl.load(psum_ptr + off, mask=m, other=0.0), axis=0)
        mx = tl.where(sm != sm, sm, mx)  # a NaN in the column: max NaN too, as torch.amax gives
        base = out_ptr + tl.load(at_ptr) * OUT_W
        tl.store(base + cols, mx, mask=cmask)
        tl.store(base + D + cols, sm * inv_n, mask=cmask)


def available(x: torch.Tensor) -> bool:
    """True when the Triton kernel can run on ``x`` (CUDA tensor and Triton installed; a CPU tensor
    under Triton's interpreter, ``TRITON_INTERPRET=1``, for tests)."""
    return triton is not None and (x.is_cuda or x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def block_stats(x: torch.Tensor, at: torch.Tensor, out: torch.Tensor, tokens, chan_idx: torch.Tensor,
                key: torch.Tensor, config: dict | None = None, tok_lo: int = 0, num_tokens: int = -1) -> None:
    """Write the statistics of ``x`` (b, L, D), any float dtype, into row ``at`` ((1,) int64 device
    tensor) of ``out`` (rows, 2D + K) float32 and, when ``tokens`` (rows, L, C) float32 is given,
    the batch mean of x's ``chan_idx`` (C,) channels into its row ``at``. ``key`` (K,) int64 fixes the
    median sample (`sample_positions`). Layout of the row: module docstring. ``config``: tile
    (default ``CONFIG``). ``tok_lo``, ``num_tokens``: x is tokens ``[tok_lo, tok_lo + L)`` of a
    ``num_tokens``-token sequence (context parallelism; -1: the whole sequence), as in
    `stas.record.reduce_block_output`. Two kernel launches, no host sync."""
    cfg = CONFIG if config is None else config
    b, L, D = x.shape
    lg = L if num_tokens < 0 else num_tokens
    flat = x.reshape(b * L, D)
    if flat.stride(1) != 1:
        flat = flat.contiguous()
    n = flat.shape[0]
    rows = max(cfg["rows_per_program"], triton.cdiv(n, 4096 * cfg["block_n"]) * cfg["block_n"])  # <= 4096 partials
    n_col, p = triton.cdiv(D, cfg["block_d"]), triton.cdiv(n, rows)
    K, S = key.numel(), min(key.numel(), b * lg * D)
    C = 0 if tokens is None else chan_idx.numel()
    block_s, block_t = 1024, 1024
    n_samp, n_tok = triton.cdiv(K, block_s), (triton.cdiv(L, block_t) if C else 0)
    pmax = torch.empty(p, D, device=x.device, dtype=torch.float32)
    psum = torch.empty(p, D, device=x.device, dtype=torch.float32)
    tok = out if tokens is None else tokens
    assert out.stride(1) == 1 and tok.is_contiguous(), "record buffers are contiguous"
    block_p = triton.next_power_of_2(p)
    block_f = max(1, min(64, 4096 // block_p))
    with torch.cuda.device(x.device) if x.is_cuda else _nullcontext():  # launch on x's GPU
        _main_pass[(n_samp + n_tok + n_col * p,)](
            flat, pmax, psum, out, tok, at, key, chan_idx,
            n, D, flat.stride(0), n_col, n_samp, n_samp + n_tok, b * lg * D, S, K, out.stride(0), L, lg, tok_lo,
            NB=b, C=C, ROWS=rows, BLOCK_N=cfg["block_n"], BLOCK_D=cfg["block_d"], BLOCK_S=block_s, BLOCK_T=block_t,
            ACC2D=cfg.get("acc2d", False), STAGES=cfg.get("stages", 1), num_warps=cfg["num_warps"])
        _final_pass[(triton.cdiv(D, block_f),)](pmax, psum, out, at, p, D, out.stride(0), 1.0 / (b * lg),
                                                 BLOCK_P=block_p, BLOCK_F=block_f, num_warps=4)
