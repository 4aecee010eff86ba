"""Record reductions of block outputs while a pipeline runs, without keeping hidden states.

``with stas.record(pipe) as rec: pipe(...)`` hooks every chosen block; each hook reduces the
block's video tokens h (B, L, D) on the device, as the forward runs, into preallocated buffers:

* ``chan_max``  max_t |h[t, c]| over the branch's batch and all video tokens  -> (D,)
* ``chan_mean`` mean_t |h[t, c]|                                             -> (D,)
* ``median``    median |h| over all tokens and channels (Sun et al.'s reference value), estimated
                from a fixed sample of ``median_elems`` entries (one per stratum of consecutive
                entries, the same positions at every step and block) gathered on the device during
                the forward; the sample's exact median is taken after the run. Exact when
                L*D <= median_elems; otherwise the exact q-quantile of |h| for some q within
                1/2 +- `median_rank_band` (0.0101 at 16 384 entries, 99 %; about +-2.3 % in value
                for a Gaussian bulk)                                          -> ()
* ``tokens``    h[t, c] for the chosen ``channels`` (signed, mean over the batch)   -> (L, C)
* ``full``      opt-in: whole hidden states at chosen (step, block) pairs           -> (L, D)

All statistics are accumulated and stored in float32, whatever the model's dtype (a float16 sum
over tokens overflows). `reduce_block_output` is the reference of the per-call reduction; on CUDA
`stas._kernels` computes the same in one read of the block output and two kernel launches. Steps
are the denoising steps the run executes, with the pipeline's timesteps (`stas.tracking`).
Device memory: `recording_bytes` (all of a run's buffers are allocated when it starts).

Under diffusers' context parallelism every rank's hooks see a slice of the tokens; one all-gather per
recorded (block, branch) makes the row global before it is written (`_sharded_block_stats`).

Buffers are written with ``index_copy_`` at a position held in a device tensor, so the hooks have
no Python state that varies per block or step: a block compiled with ``torch.compile`` (e.g.
diffusers' ``compile_repeated_blocks``) traces the hook once for all blocks, with no graph breaks.
Buffers live on the device the blocks run on, taken from the block output (under offloading the
parameters sit elsewhere). Nothing is copied to the host inside a forward; each run's buffers move
to the CPU when the next run starts or the context exits.

The result, ``rec.stats``, is one `Recording` indexed by (run, step, block, branch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from . import _kernels
from .adapters import BRANCHES
from .tracking import DeviceTensors, HookContext, block_skipped
from .layout import TokenLayout

DIMS = {
    "chan_max": ("run", "step", "block", "branch", "channel"),
    "chan_mean": ("run", "step", "block", "branch", "channel"),
    "median": ("run", "step", "block", "branch"),
    "tokens": ("run", "step", "block", "branch", "token", "channel_sel"),
    "timesteps": ("run", "step"),
    "filled": ("run", "step", "branch"),
}


@dataclass
class Recording:
    """Per (run, step, block, branch) statistics of block outputs. See module docstring.

    ``data[name]`` (also ``rec[name]`` and, read-only, ``rec.name``: the same tensor) is a float32
    CPU tensor with dims ``DIMS[name]``; entries never written (e.g.
    the ``uncond`` branch when guidance is off) are NaN and ``filled`` is False there. A block that
    a diffusers step cache (FirstBlockCache, MagCache, ...) skipped is NaN at that (step, branch),
    ``filled`` staying True. ``timesteps`` are the pipeline's ``t`` of each executed step.
    ``blocks`` are the block ids of the block axis, ``channels`` the channel ids of ``tokens``'
    last axis, ``branches`` the branch axis' names, ``layout`` the token layout of the runs.
    ``full`` maps "run/step/block/branch" to (L, D) hidden states when they were asked for.
    """

    data: dict
    blocks: list
    channels: list
    layout: TokenLayout | None
    branches: tuple = BRANCHES
    meta: dict = field(default_factory=dict)
    full: dict = field(default_factory=dict)

    def __getitem__(self, name) -> torch.Tensor:
        return self.data[name]

    def __getattr__(self, name) -> torch.Tensor:
        """``rec.chan_max`` is ``rec["chan_max"]`` (the same tensor) for every statistic in ``data``."""
        data = self.__dict__.get("data")
        if data is not None and name in data:
            return data[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}"
                             + (f"; statistics: {sorted(data)}" if data is not None else ""))

    def __setattr__(self, name, value):
        if name in self.__dict__.get("data", ()):
            raise AttributeError(f"statistic {name!r} is read-only; edit rec.data[{name!r}] to replace it")
        super().__setattr__(name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.__dict__.get("data", ())))

    def __contains__(self, name):
        return name in self.data

    @property
    def num_runs(self) -> int:
        return self.data["chan_max"].shape[0]

    @property
    def num_steps(self) -> int:
        return self.data["chan_max"].shape[1]

    def block_index(self, block: int) -> int:
        """Position of block id ``block`` on the block axis."""
        try:
            return self.blocks.index(block)
        except ValueError:
            raise KeyError(f"block {block} was not recorded; recorded blocks: {self.blocks}") from None

    def branch_index(self, branch: str) -> int:
        if branch not in self.branches:
            raise KeyError(f"unknown branch {branch!r}; branches: {self.branches}")
        return self.branches.index(branch)

    def get(self, name: str, run=None, step=None, block=None, branch=None, channel=None) -> torch.Tensor:
        """``data[name]`` indexed by ids: ``block`` is a block id, ``branch`` a name, ``channel``
        a channel id of ``channels`` (for ``tokens``) or of the hidden size (for ``chan_*``).
        A ``None`` keeps the whole axis."""
        x = self.data[name]
        dims = DIMS[name]
        sel = {"run": run, "step": step,
               "block": None if block is None else self.block_index(block),
               "branch": None if branch is None else self.branch_index(branch)}
        if channel is not None:
            if name == "tokens":
                sel["channel_sel"] = self.channels.index(channel)
            else:
                sel["channel"] = channel
        idx = tuple(sel.get(d) if sel.get(d) is not None else slice(None) for d in dims)
        return x[idx]

    # -- persistence -------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write all tensors and metadata to one ``.safetensors`` file; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.data.items()}
        tensors["filled"] = tensors["filled"].to(torch.uint8)
        for k, v in self.full.items():
            tensors[f"full/{k}"] = v.contiguous()
        meta = {"blocks": self.blocks, "channels": self.channels, "branches": list(self.branches),
                "layout": None if self.layout is None else _layout_dict(self.layout), "meta": self.meta}
        save_file(tensors, str(path), metadata={"stas": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path) -> "Recording":
        """Inverse of `save`."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["stas"])
        tensors = load_file(str(path))
        full = {k[5:]: tensors.pop(k) for k in list(tensors) if k.startswith("full/")}
        tensors["filled"] = tensors["filled"].bool()
        lay = meta["layout"]
        return cls(tensors, meta["blocks"], meta["channels"],
                   None if lay is None else TokenLayout(**{**lay, "patch_size": tuple(lay["patch_size"])}),
                   tuple(meta["branches"]), meta["meta"], full)

    @classmethod
    def cat(cls, recordings) -> "Recording":
        """Concatenate recordings of the same blocks/channels/layout along the run axis."""
        recordings = list(recordings)
        r0 = recordings[0]
        for r in recordings[1:]:
            if (r.blocks, r.channels, r.layout) != (r0.blocks, r0.channels, r0.layout):
                raise ValueError("recordings differ in blocks, channels or layout")
            if r.num_steps != r0.num_steps:
                raise ValueError(f"recordings differ in steps ({r.num_steps} vs {r0.num_steps})")
        data = {k: torch.cat([r.data[k] for r in recordings]) for k in r0.data}
        runs = [m for r in recordings for m in r.meta.get("runs", [{}] * r.num_runs)]
        return cls(data, r0.blocks, r0.channels, r0.layout, r0.branches, {**r0.meta, "runs": runs})

    def __repr__(self):
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.data.items())
        return f"Recording(blocks={self.blocks}, channels={self.channels}, {shapes})"


def _layout_dict(lay: TokenLayout) -> dict:
    return {"latent_frames": lay.latent_frames, "latent_height": lay.latent_height,
            "latent_width": lay.latent_width, "patch_size": list(lay.patch_size),
            "temporal_factor": lay.temporal_factor, "spatial_factor": lay.spatial_factor}


def reduce_block_output(x: torch.Tensor, chan_idx: Optional[torch.Tensor], key: torch.Tensor, tok_lo: int = 0,
                        num_tokens: int = -1):
    """The per-call statistics of one branch's block output ``x`` (b, L, D), any float dtype.

    Returns ``(row, tokens)`` on x's device: ``row`` float32 (2D + K,) = ``[max_t |x[., t, c]| (D),
    mean_t |x[., t, c]| (D), |x| at the K-entry median sample (`stas._kernels.sample_positions` with
    ``key`` (K,); NaN past x.numel())]``, maxima and means over the b samples and L tokens;
    ``tokens`` float32 (L, C) = batch mean of x's ``chan_idx`` channels (None when ``chan_idx`` is None).
    Sums accumulate in float32: a float16 column sum overflows at 65 504 (on a CogVideoX-2B clip,
    17 550 tokens, any channel with mean |h| > 3.7). Max and sample are elements of |x|, exact.

    Under context parallelism x holds tokens ``[tok_lo, tok_lo + L)`` of ``num_tokens`` (-1: x is the
    whole sequence): the mean is then this slice's part of the global mean (sum over its tokens /
    (b * num_tokens)) and the sample is taken at the global sample positions (those of a
    (b, num_tokens, D) tensor), 0 where another rank holds the entry. Max, sum and per-position sum
    over the ranks give the single-process row (`_sharded_block_stats`).

    This is the torch reference of the reduction (the CPU path); on CUDA `stas._kernels` computes the
    same row in one read of x (``_kernels.CUDA_BACKEND`` chooses).
    """
    b, L, d = x.shape
    lg = L if num_tokens < 0 else num_tokens
    flat = x.reshape(-1, d)                                # (b*L, D)
    lo, hi = torch.aminmax(flat, dim=0)                    # one read of h -> max |h|
    mx = torch.maximum(hi, -lo).float()
    l1 = torch.linalg.vector_norm(flat, ord=1, dim=0, dtype=torch.float32)  # one read -> sum |h|, fp32
    pos = _kernels.sample_positions(b * lg * d, key)       # flat positions in the (b, lg, D) sequence
    row = pos // d
    t = row % lg - tok_lo                                  # token in this slice (all of them when lg == L)
    own = (t >= 0) & (t < L)
    sample = torch.where(own, flat[(row // lg) * L + t.clamp(0, L - 1), pos % d].abs().float(), 0.0)
    pad = sample.new_full((key.numel() - pos.numel(),), float("nan"))
    tokens = None if chan_idx is None else x.index_select(-1, chan_idx).float().mean(0)
    return torch.cat([mx, l1 / (b * lg), sample, pad]), tokens


_compiled_reduce = None


def _reduce_fn(kind: str):
    global _compiled_reduce
    if kind != "torch_compiled":
        return reduce_block_output
    if _compiled_reduce is None:
        _compiled_reduce = torch.compile(reduce_block_output, fullgraph=True, dynamic=False)
    return _compiled_reduce


def median_from_sample(rows: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """The median estimate of each buffer row (..., 2D + K): the lower median of its K-entry sample
    of |h|, NaN entries (padding, rows never written) ignored; NaN for a row never written."""
    return rows[..., 2 * hidden_size:].nanmedian(-1).values


def median_rank_band(k: int, confidence: float = 0.99) -> float:
    """Half-width of the rank band of the sampled median, distribution-free.

    With probability >= ``confidence`` over the sample positions, the median estimate of a
    recording (the lower median of k sampled entries of |h|) is the exact q-quantile of all the
    entries of |h| for some q in [1/2 - delta, 1/2 + delta]; returns delta. For k entries drawn
    independently and uniformly, the estimate X_(m) (m = ceil(k/2)) exceeds the p-quantile iff at
    most m - 1 draws fall at or below it, a Binomial(k, p) event, so the miss probability is
    ``binom.cdf(m - 1, k, 1/2 + delta) + binom.sf(m - 1, k, 1/2 - delta)`` (the order-statistic
    confidence band; e.g. David & Nagaraja, *Order Statistics*, 3rd ed., sec. 7.1). The recorder
    draws one entry per stratum of consecutive entries: the count is then a sum of independent
    Bernoullis with the same mean, whose tails are no wider than the binomial's (Hoeffding 1956,
    Ann. Math. Statist. 27, Thm. 4), so the band holds. delta ~ z / (2 sqrt(k)): 0.0101 for
    k = 16 384 at 99 %. In value, for a Gaussian bulk (|h| half-normal, density at the median
    f(m) = 0.636 / sigma, m = 0.674 sigma) a rank error delta is a relative error delta / (m f(m))
    = 2.33 delta: +-2.3 % at k = 16 384 and 99 %.
    """
    m = (k + 1) // 2
    j = torch.arange(k + 1, dtype=torch.float64)
    tail = lambda p, sel: torch.distributions.Binomial(k, torch.tensor(p, dtype=torch.float64)) \
        .log_prob(j[sel]).logsumexp(0).exp().item()  # noqa: E731
    miss = lambda d: tail(0.5 + d, slice(0, m)) + tail(0.5 - d, slice(m, None))  # cdf(m - 1) + sf(m - 1)
    lo, hi = 0.0, 0.5
    for _ in range(60):  # bisection: miss() falls as delta grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if miss(mid) > 1 - confidence else (lo, mid)
    return hi


def recording_bytes(num_blocks: int, hidden_size: int, num_tokens: int, num_steps: int, channels: int = 0,
                    median_elems: int = 16384) -> int:
    """Bytes of device memory `record` allocates for one run (float32 buffers, all allocated when
    the run's first transformer call starts): per block, 2 rows (CFG branches) per denoising step,
    each of ``2 * hidden_size + median_elems + num_tokens * channels`` floats (max and mean |h| per
    channel, the median sample, the chosen channels' token values). Wan2.1-1.3B at 81 x 480 x 832
    (30 blocks, D = 1536, 32 760 tokens), 50 steps: 233 MB without channels, 1.02 GB with 2."""
    return num_blocks * 2 * num_steps * 4 * (2 * hidden_size + median_elems + num_tokens * channels)


@torch.library.custom_op("stas::block_stats", mutates_args=("stats", "tokens"))
def _block_stats(x: torch.Tensor, at: torch.Tensor, stats: torch.Tensor, tokens: Optional[torch.Tensor],
                 chan_idx: torch.Tensor, key: torch.Tensor, tok_lo: int = 0, num_tokens: int = -1) -> None:
    """Write the statistics of one branch's block output x (b, L, D) into row ``at`` of ``stats``
    (rows, 2D + K) and, if given, x's ``chan_idx`` channels (batch mean, float32) into row ``at`` of
    ``tokens`` (rows, L, C): `reduce_block_output`'s row (``tok_lo``, ``num_tokens``: x's token slice
    under context parallelism), computed by the backend `stas._kernels.backend` picks (one fused read
    of x on CUDA).

    A custom op, so that a compiled block (``torch.compile`` / ``compile_repeated_blocks``) sees one
    opaque node: no graph break, no recompiles, and the same bandwidth-bound kernels as in eager mode.
    """
    kind = _kernels.backend(x)
    if kind == "triton" and _kernels.available(x):
        _kernels.block_stats(x, at, stats, tokens, chan_idx, key, tok_lo=tok_lo, num_tokens=num_tokens)
        return
    row, tok = _reduce_fn(kind)(x, None if tokens is None else chan_idx, key, tok_lo, num_tokens)
    stats.index_copy_(0, at, row[None])
    if tokens is not None:
        tokens.index_copy_(0, at, tok[None])  # (1, L, C)


@_block_stats.register_fake
def _(x, at, stats, tokens, chan_idx, key, tok_lo=0, num_tokens=-1):
    return None


def _sharded_block_stats(x: torch.Tensor, at: torch.Tensor, stats: torch.Tensor, tokens: Optional[torch.Tensor],
                         chan_idx: torch.Tensor, key: torch.Tensor, shard) -> None:
    """`_block_stats` of a block output split over ranks by context parallelism: x (b, L_r, D) holds
    tokens ``[shard.lo, shard.hi)``; rows ``at`` of ``stats`` / ``tokens`` receive the statistics of
    the whole (b, L, D) output, the same row on every rank.

    The custom op reduces the rank's slice into a fresh row (sample at the global positions); one
    all-gather of that row and the slice's chosen-channel values follows, outside the custom op
    (a functional collective: asynchronous, no host sync, traced by ``torch.compile`` without a
    graph break); then max over ranks, sum of the mean parts (in rank order: deterministic), sum of the
    samples (exactly one rank holds each entry, the others give 0) and the token slices in order.
    Equal to the one-process row up to the order of the float32 sum of the mean.
    """
    d = x.shape[-1]
    k = key.numel()
    row = torch.empty(1, 2 * d + k, device=x.device, dtype=torch.float32)
    tok = None if tokens is None else torch.empty(1, x.shape[1], chan_idx.numel(), device=x.device,
                                                  dtype=torch.float32)
    zero = torch.zeros(1, dtype=torch.long, device=x.device)
    _block_stats(x, zero, row, tok, chan_idx, key, shard.lo, shard.num_tokens)
    parts = [row[0]] if tok is None else [row[0], shard.pad(tok[0]).reshape(-1)]
    g = shard.all_gather(torch.cat(parts))                                    # (W, 2D + K [+ max L_r * C])
    full = torch.cat([g[:, :d].amax(0), g[:, d:2 * d].sum(0), g[:, 2 * d:2 * d + k].sum(0)])
    stats.index_copy_(0, at, full[None])
    if tokens is not None:
        tokens.index_copy_(0, at, shard.unpad(g[:, 2 * d + k:].reshape(shard.world, -1, chan_idx.numel()))[None])


class _BlockRecorder:
    """Forward hook of one block; all its per-call state lives in device tensors (see module doc)."""

    def __init__(self, owner, block_id: int):
        self.owner = owner
        self.block_id = block_id
        self.bufs = None  # dict name -> device tensor (steps*branches, ...) of the current run

    def __call__(self, module, args, output):
        bufs = self.bufs
        if bufs is None or block_skipped(module):  # a diffusers step cache replaced this block: not recorded
            return None
        o = self.owner
        h = o.adapter.video_tokens(output)
        if bufs["stats"].device != h.device:  # offloading: the block ran elsewhere than the call's input
            o._to_device(h.device)
            bufs = self.bufs
        for k, sl in enumerate(o.slices):
            if o.shard is None:
                _block_stats(h[sl], o.dev.pos[k:k + 1], bufs["stats"], bufs.get("tokens"), o.dev.chan_idx,
                             o.dev.sample_key)
            else:  # context parallelism: h holds this rank's tokens; one all-gather makes the row global
                _sharded_block_stats(h[sl], o.dev.pos[k:k + 1], bufs["stats"], bufs.get("tokens"), o.dev.chan_idx,
                                     o.dev.sample_key, o.shard)
        return None


class _FullRecorder:
    """Opt-in hook that clones whole hidden states at chosen (step, block) pairs."""

    def __init__(self, owner, block_id):
        self.owner, self.block_id = owner, block_id

    def __call__(self, module, args, output):
        tr = self.owner.tracker
        if (tr.step, self.block_id) in self.owner.full_at and not block_skipped(module):
            h = self.owner.adapter.video_tokens(output)
            for name, sl in tr.branches:
                key = f"{tr.run}/{tr.step}/{self.block_id}/{name}"
                full = h[sl].detach().float().mean(0)
                self.owner._full[key] = full.clone() if tr.shard is None else tr.shard.gather_tokens(full)
        return None


class record(HookContext):
    """Context manager recording block-output statistics of a pipeline; see module docstring.

    Args:
        pipe: a diffusers video pipeline (or a bare supported transformer).
        blocks: block ids to record (default: all).
        channels: channel ids whose per-token values are kept (default: none).
        full: (step, block) pairs at which whole hidden states (L, D) are kept (batch mean).
        median_elems: size K of the median's fixed sample of |h| entries (`median_rank_band`: its error).

    After the context (or at any time) ``rec.stats`` is a `Recording` of all runs so far.
    ``rec.label(**info)`` attaches metadata (e.g. prompt, seed) to the next pipeline call.

    Under diffusers' context parallelism (detected from the transformer; `stas.tracking.TokenShard`)
    each block hook sees its rank's token slice; one all-gather per recorded block and branch makes
    every statistic global (`_sharded_block_stats`), so every rank holds the single-process recording.
    """

    supports_context_parallel = True

    def __init__(self, pipe, blocks=None, channels=None, full=(), median_elems: int = 16384):
        super().__init__(pipe)
        n, d = self.adapter.num_blocks, self.adapter.hidden_size
        self.blocks = list(range(n)) if blocks is None else [int(b) for b in blocks]
        self.channels = [] if channels is None else [int(c) for c in channels]
        self.full_at = {(int(s), int(b)) for s, b in full}
        self.median_elems = int(median_elems)
        if self.median_elems < 1:
            raise ValueError(f"median_elems must be >= 1, got {median_elems}")
        bad_b = [b for b in self.blocks + [b for _, b in self.full_at] if not 0 <= b < n]
        if bad_b:
            raise ValueError(f"block ids {bad_b} out of range: the model has {n} blocks (0..{n - 1})")
        bad_c = [c for c in self.channels if not 0 <= c < d]
        if bad_c:
            raise ValueError(f"channels {bad_c} out of range: hidden size is {d}")
        self._hooks = {b: _BlockRecorder(self, b) for b in self.blocks}
        self._runs = []        # finished runs: dict of CPU tensors
        self._run_meta = []
        self._pending_meta = {}
        self._cur = None       # current run: dict(bufs per block, filled, timesteps, meta)
        self._full = {}
        self.layout = None
        self.dev = None        # DeviceTensors: pos (2,), range (rows + 1,), chan_idx (C,), sample_key (K,)
        self._device = None    # device the hooked blocks last ran on (None until one ran)
        self.slices = [slice(None)]
        self.shard = None      # TokenShard of the current call under context parallelism

    def label(self, **info):
        """Attach ``info`` (JSON-serialisable, e.g. prompt and seed) to the next pipeline call's run."""
        self._pending_meta.update(info)

    def _register(self):
        handles = self._hook_blocks(self.blocks, lambda b: self._hooks[b])
        if self.full_at:
            handles += self._hook_blocks(sorted({b for _, b in self.full_at}), lambda b: _FullRecorder(self, b))
        return handles

    # -- tracker events -----------------------------------------------------------------------
    def on_run_start(self, tracker):
        self._finish_run()
        n = tracker.num_steps
        late = sorted(st for st, _ in self.full_at if st >= n)
        if late and self.adapter.pipe is not None:
            raise ValueError(f"full=... asks for steps {late}, but this run executes {n} denoising steps")
        self._cur = {"alloc": False, "num_steps": n, "filled": torch.zeros(n, 2, dtype=torch.bool),
                     "timesteps": [None] * n, "meta": self._pending_meta}
        self._pending_meta = {}

    def on_call(self, tracker):
        if self._cur is None:  # `stats` was read mid-run: the rest of the run is a new one
            self.on_run_start(tracker)
        cur = self._cur
        self.shard = tracker.shard
        if not cur["alloc"]:
            self._allocate(tracker)
        if tracker.layout != self.layout:
            raise ValueError(f"token layout changed within one record context ({self.layout} -> "
                             f"{tracker.layout}); record different sizes in separate contexts")
        if tracker.step >= cur["num_steps"]:  # a call past the run's last step: record nothing
            self.slices = []
            return
        branches = sorted(tracker.branches, key=lambda b: BRANCHES.index(b[0]))  # cond before uncond
        first = tracker.step * 2 + BRANCHES.index(branches[0][0])
        # positions of this call's branches in the (steps*2,) buffers: a device-to-device copy from a
        # precomputed range (no host sync); a call with both branches writes rows first, first + 1
        self.dev.pos.copy_(self.dev.range[first:first + 2])
        self.slices = [sl for _, sl in branches]
        for name, _ in branches:
            cur["filled"][tracker.step, BRANCHES.index(name)] = True
        cur["timesteps"][tracker.step] = tracker.timestep  # the pipeline's t tensor: read at the run's end

    def _allocate(self, tracker):
        """Per-run float32 buffers, NaN until written, on the device the blocks last ran on (first
        run: the device of the transformer's input; a block hook moves them if its output is elsewhere)."""
        lay = tracker.layout
        if self.layout is None:
            self.layout = lay
        dev = self._device or tracker.input_device
        S, D, L, C = self._cur["num_steps"] * 2, self.adapter.hidden_size, lay.num_tokens, len(self.channels)
        if self.dev is None or len(self.dev.range) < S + 1:
            key = torch.randint(2 ** 31 - 1, (self.median_elems,), generator=torch.Generator().manual_seed(0))
            self.dev = DeviceTensors(pos=torch.zeros(2, dtype=torch.long), range=torch.arange(S + 1),
                                     chan_idx=torch.tensor(self.channels, dtype=torch.long), sample_key=key)
        self.dev.on(dev)
        for b, hook in self._hooks.items():
            bufs = {"stats": torch.full((S, 2 * D + self.median_elems), float("nan"), device=dev)}
            if C:
                bufs["tokens"] = torch.full((S, L, C), float("nan"), device=dev)
            for v in bufs.values():  # the row count (2 x steps) never enters a compiled block's graph:
                torch._dynamo.maybe_mark_dynamic(v, 0)  # a run of another length reuses it
            hook.bufs = bufs
        self._cur["alloc"] = True

    def _to_device(self, device):
        """Move this run's buffers and index tensors to ``device`` (where the blocks really run)."""
        self._device = device
        self.dev.on(device)
        for hook in self._hooks.values():
            if hook.bufs is not None:
                hook.bufs = {k: v.to(device) for k, v in hook.bufs.items()}

    def _finish_run(self):
        cur = self._cur
        if cur is None:
            return
        self._cur = None
        if not cur["alloc"]:
            return
        n = cur["num_steps"]
        out = {}
        d = self.adapter.hidden_size
        bufs = [self._hooks[b].bufs for b in self.blocks]
        for hook in self._hooks.values():
            hook.bufs = None
        # the median of each row's sample on the device, then max, mean and median to the host
        stats = torch.stack([torch.cat([bf["stats"][:, :2 * d], median_from_sample(bf["stats"], d)[:, None]], 1).cpu()
                             for bf in bufs], 1)                                       # (steps*2, blocks, 2D+1)
        stats = stats.reshape(n, 2, len(self.blocks), -1).transpose(1, 2)               # (steps, blocks, 2, 2D+1)
        out["chan_max"], out["chan_mean"], out["median"] = stats[..., :d], stats[..., d:2 * d], stats[..., 2 * d]
        if self.channels:
            tok = torch.stack([bf["tokens"].cpu() for bf in bufs], 1)                   # (steps*2, blocks, L, C)
            out["tokens"] = tok.reshape(n, 2, *tok.shape[1:]).transpose(1, 2)
        out["timesteps"] = torch.tensor([float("nan") if t is None else float(t.reshape(-1)[0])
                                         for t in cur["timesteps"]])
        out["filled"] = cur["filled"]
        self._runs.append(out)
        self._run_meta.append(cur["meta"])

    def _close(self):
        self._finish_run()

    @property
    def stats(self) -> Recording:
        """All runs recorded so far as one `Recording` (finishes the current run)."""
        self._finish_run()
        if not self._runs:
            raise RuntimeError("nothing recorded yet: call the pipeline inside the `record` context")
        steps = {r["chan_max"].shape[0] for r in self._runs}
        if len(steps) > 1:
            raise ValueError(f"runs have different step counts {sorted(steps)}; record them separately")
        data = {k: torch.stack([r[k] for r in self._runs]) for k in self._runs[0]}
        meta = {"family": self.adapter.family, "runs": self._run_meta, "median_elems": self.median_elems}
        return Recording(data, self.blocks, self.channels, self.layout, BRANCHES, meta, dict(self._full))
