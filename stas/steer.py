"""STAS: structured activation steering of massive-activation channels.

For the first K of N denoising steps, at the chosen blocks, for each chosen channel c with values
D = h[:, c] over the video tokens of one sample and branch,

    h[t, c] <- alpha * max_t' |D[t']| * sign(D[t])      for t in the chosen position classes,

other tokens and channels untouched (Cheng et al. 2026). ``mode="zero"`` instead sets
h[t, c] <- 0 there (the paper's "zeroing MAs" ablation).

The hook edits the block output in place, before any other hook on that block (so a `record`
context sees the steered values). ``with stas.steer(pipe, cfg): pipe(...)`` removes it on exit,
also when the pipeline raises; with K = 0 the output is bit-identical to the stock pipeline.

Under diffusers' context parallelism (detected from the transformer) each rank's hook sees a
contiguous slice of the tokens (`stas.tracking.TokenShard`): the position mask is cut to that slice
and the max over tokens is the max of the ranks' maxima (one all-reduce per steered block and branch,
on the device), so every token gets the value of a single-process run.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass, field

import torch
import torch.distributed

from .adapters import BRANCHES
from .tracking import ContextParallelError, DeviceTensors, HookContext, block_skipped
from .layout import POSITION_CLASSES

MODES = ("stas", "zero")
CONTROLS = ("random_positions", "random_channel")


def draw_control(control: str, num_tokens: int, num_positions: int, hidden_size: int, channels, seed: int):
    """The entries of a matched-size null control (`stas.controls`), drawn on the CPU from ``seed``:
    ``"random_positions"``: ``num_positions`` distinct token indices of 0..num_tokens-1;
    ``"random_channel"``: ``len(channels)`` distinct channels of 0..hidden_size-1 outside ``channels``.
    Returns a sorted-as-drawn (n,) int64 CPU tensor. Raises ``ValueError`` when there are too few to draw."""
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
    g = torch.Generator().manual_seed(int(seed))
    if control == "random_positions":
        if num_positions > num_tokens:
            raise ValueError(f"cannot draw {num_positions} of {num_tokens} tokens")
        return torch.randperm(num_tokens, generator=g)[:num_positions]
    chan = torch.as_tensor(channels).long().flatten().cpu()
    keep = torch.ones(hidden_size, dtype=torch.bool)
    keep[chan] = False
    others = keep.nonzero().flatten()
    if others.numel() < chan.numel():
        raise ValueError(f"only {others.numel()} non-MA channels to draw {chan.numel()} from")
    return others[torch.randperm(others.numel(), generator=g)[:chan.numel()]]


def _tuple_of_ints(x, name):
    x = (x,) if isinstance(x, int) else tuple(x)
    if not x:
        raise ValueError(f"{name} must not be empty")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in x):
        raise ValueError(f"{name} must be ints, got {x!r}")
    if len(set(x)) != len(x):
        raise ValueError(f"{name} has duplicates: {x!r}")
    if min(x) < 0:
        raise ValueError(f"{name} must be >= 0, got {x!r}")
    return x


@dataclass(frozen=True, kw_only=True)
class STASConfig:
    """What to steer, validated on construction (model-dependent ranges are checked by `steer`).
    Keyword arguments only; ``steps``, ``blocks`` and ``channels`` have no default (they depend on the
    model: `STASConfig.paper` gives the paper's setting for a pipeline).

    Args:
        alpha: scale of the global-max reference, > 0 (1.0 = set to the channel's max magnitude).
        steps: K, steer on denoising steps 0..K-1 (0 = never). Must be <= the run's step count.
        blocks: block ids whose outputs are steered.
        channels: channel ids (of the hidden size) to steer: the MA channels.
        positions: position classes to overwrite, from ``first_frame``, ``boundary``, ``interior``,
            or ``"all"`` (every video token).
        boundary_width: head/tail tokens (or rows, see ``boundary_unit``) of each latent frame
            that count as boundary.
        branches: CFG branches to steer, from ``cond``, ``uncond``.
        boundary_unit: ``"tokens"`` or ``"rows"``.
        mode: ``"stas"`` (the paper's rule) or ``"zero"`` (ablation: set the entries to 0).
        control: None (STAS), or a matched-size null control (`stas.controls`, ``mode="stas"`` only):
            ``"random_positions"`` edits the MA channels at as many random tokens as STAS's
            positions select, ``"random_channel"`` edits STAS's positions in as many random non-MA
            channels; per sample and branch, the change is rescaled on the device to the L2 norm of
            the change STAS would make to that block output (same entry count, same size).
        control_seed: seeds the control's draw (once per token layout, on the CPU).
    """

    steps: int
    blocks: tuple
    channels: tuple
    alpha: float = 1.0
    positions: tuple = ("first_frame", "boundary")
    boundary_width: int = 1
    branches: tuple = BRANCHES
    boundary_unit: str = "tokens"
    mode: str = "stas"
    control: str | None = None
    control_seed: int = 0
    _pos: tuple = field(init=False, repr=False, compare=False, default=())

    @classmethod
    def paper(cls, pipe, channels, num_inference_steps: int, **override) -> "STASConfig":
        """The paper's setting (Wan2.1-1.3B: block 15 of 30, K = 20 of 50 steps, α = 1, first frame +
        boundary, both branches) scaled to ``pipe``: the mid block and K = round(0.4 N) >= 1 of the
        run's ``num_inference_steps``. ``override`` replaces any field."""
        from .defaults import paper_config

        return paper_config(pipe, channels, num_inference_steps, **override)

    def __post_init__(self):
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not math.isfinite(self.alpha) \
                or self.alpha <= 0:
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"steps (K) must be an int >= 0, got {self.steps!r}")
        object.__setattr__(self, "blocks", _tuple_of_ints(self.blocks, "blocks"))
        object.__setattr__(self, "channels", _tuple_of_ints(self.channels, "channels"))
        pos = (self.positions,) if isinstance(self.positions, str) else tuple(self.positions)
        if not pos:
            raise ValueError("positions must not be empty: choose from first_frame, boundary, interior, all")
        bad = [p for p in pos if p not in POSITION_CLASSES + ("all",)]
        if bad:
            raise ValueError(f"unknown positions {bad}; choose from {POSITION_CLASSES + ('all',)}")
        object.__setattr__(self, "positions", pos)
        if not isinstance(self.boundary_width, int) or self.boundary_width < 0:
            raise ValueError(f"boundary_width must be an int >= 0, got {self.boundary_width!r}")
        if "boundary" in pos and self.boundary_width == 0:
            raise ValueError("positions include 'boundary' but boundary_width is 0: the boundary set is empty")
        br = (self.branches,) if isinstance(self.branches, str) else tuple(self.branches)
        if not br or any(b not in BRANCHES for b in br):
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, got {self.branches!r}")
        object.__setattr__(self, "branches", br)
        if self.boundary_unit not in ("tokens", "rows"):
            raise ValueError(f"boundary_unit must be 'tokens' or 'rows', got {self.boundary_unit!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.control is not None and self.control not in CONTROLS:
            raise ValueError(f"control must be None or one of {CONTROLS}, got {self.control!r}")
        if self.control is not None and self.mode != "stas":
            raise ValueError("a control matches the size of STAS's edit: it needs mode='stas'")
        if not isinstance(self.control_seed, int) or isinstance(self.control_seed, bool):
            raise ValueError(f"control_seed must be an int, got {self.control_seed!r}")


def steer_values(v: torch.Tensor, alpha: float, zero: bool, shard=None):
    """The new values of the steered entries: ``v`` (b, L, C) are the chosen channels of one branch.

    STAS: ``alpha * max_t |v[:, t, c]| * sign(v)`` computed in float32, then clamped to the finite
    range of v's dtype (float16: 65 504) so that nothing is written as inf. Returns (new values in
    v's dtype, number of clamped entries as a 0-dim int64 tensor on v's device; no host sync).
    ``zero``: all zeros (the ablation), nothing clamped. ``shard`` (`stas.tracking.TokenShard`): v is
    one rank's token slice under context parallelism; the max is then taken over all ranks' tokens.
    """
    if zero:
        return torch.zeros_like(v), torch.zeros((), dtype=torch.long, device=v.device)
    ref = v.abs().amax(dim=1, keepdim=True).float()            # (b, 1, C): global max over tokens
    if shard is not None:
        ref = shard.all_max(ref)                               # ... over every rank's tokens
    new = alpha * ref * torch.sign(v).float()
    fmax = torch.finfo(v.dtype).max
    over = (new.abs() > fmax).sum()
    return new.clamp(-fmax, fmax).to(v.dtype), over


class _SteerHook:
    """Forward hook of one steered block. Gating state is set by `steer.on_call` between calls."""

    def __init__(self, owner, block_id: int):
        self.owner = owner
        self.block_id = block_id

    def __call__(self, module, args, output):
        o = self.owner
        if not o.active:
            return None
        if block_skipped(module):  # a diffusers step cache replaced this block: nothing was computed to steer
            o._calls[-1][3].append(self.block_id)
            return None
        h = o.adapter.video_tokens(output)          # (B, L, D), edited in place
        dev = o.dev
        if dev.mask.device != h.device:             # offloading: the block ran elsewhere than the call's input
            o._device = h.device
            dev.on(h.device)
        for sl in o.slices:
            x = h[sl]
            v = x.index_select(-1, dev.chan_idx)    # (b, L, C)
            if o.control is not None:
                _matched_control(x, v, dev, o.alpha, o.control)
                continue
            new, over = steer_values(v, o.alpha, o.zero, o.shard)
            dev.clamped.add_(over)
            x.index_copy_(-1, dev.chan_idx, torch.where(dev.mask[None, :, None], new, v))
        return None


def _matched_control(x: torch.Tensor, v: torch.Tensor, dev, alpha: float, control: str) -> None:
    """Apply the matched-size control to ``x`` (b, L, D) in place (see `STASConfig.control`), all on
    the device: per sample, STAS's change ``Δ`` of ``v = x[..., channels]`` at the STAS mask; the
    control's change ``δ`` (the rule's direction at its own entries) rescaled to ``‖Δ‖ / ‖δ‖``
    (float32). Samples where ``δ = 0`` are left unchanged and counted in ``dev.unmatched``."""
    v32 = v.float()
    new, _ = steer_values(v32, alpha, False)
    size = torch.where(dev.mask[None, :, None], new - v32, 0.0).flatten(1).norm(dim=1)      # (b,)
    if control == "random_positions":
        idx, w, mask = dev.chan_idx, v32, dev.ctrl_mask
        new_w = new
    else:
        idx, mask = dev.ctrl_idx, dev.mask
        w = x.index_select(-1, idx).float()
        new_w, _ = steer_values(w, alpha, False)
    delta = torch.where(mask[None, :, None], new_w - w, 0.0)
    norm = delta.flatten(1).norm(dim=1)
    dev.unmatched.add_(((norm == 0) & (size > 0)).sum())
    scale = torch.where(norm > 0, size / norm.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    out = w + delta * scale[:, None, None]
    fmax = torch.finfo(x.dtype).max
    dev.clamped.add_((out.abs() > fmax).sum())
    x.index_copy_(-1, idx, out.clamp(-fmax, fmax).to(x.dtype))


# transformer -> {block id: the active `steer` context steering it}; see `steer._register`
_STEERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class steer(HookContext):
    """Context manager applying `STASConfig` ``config`` to ``pipe`` for every call inside it.

    Raises ``ValueError`` before anything is hooked when blocks or channels are out of the model's
    range or a block is already steered by another active `steer` context on the same transformer
    (nested contexts on different blocks are fine), and at a run's first transformer call (before
    any block runs) when the config can never fire in that run: K exceeds the run's executed step
    count (video-to-video with strength < 1 executes fewer steps than ``num_inference_steps``), the
    chosen branches do not run (``uncond`` without guidance), or the chosen positions select no token.
    ``.calls`` lists (run, step, steered branches) for every transformer call that was steered (each
    call steers all ``config.blocks`` except those listed in ``.skipped`` as (run, step, block):
    blocks whose computation a diffusers step cache skipped are not steered).

    Values beyond the block output's dtype (e.g. alpha * max > 65 504 in float16) are clamped to
    its finite range, never written as inf; the count is counted on the device and, when > 0,
    reported by a ``RuntimeWarning`` on exit and in ``.clamped`` (under context parallelism: summed
    over the ranks on exit, the same count on every rank).
    """

    prepend = True
    supports_context_parallel = True

    def __init__(self, pipe, config: STASConfig):
        if not isinstance(config, STASConfig):
            raise TypeError(f"config must be a stas.STASConfig, got {type(config).__name__}")
        super().__init__(pipe)
        self.config = config
        self.alpha = float(config.alpha)
        self.zero = config.mode == "zero"
        self.control = config.control
        self.active = False
        self.slices = []
        self.shard = None         # TokenShard of the current call under context parallelism
        self.dev = None           # DeviceTensors: mask (L,), chan_idx (C,), clamped () on the blocks' device
        self._device = None
        self._mask_layout = None  # (layout, token slice) the mask was made for
        self._calls = []          # [run, step, steered branches, blocks skipped by a diffusers cache]
        self.clamped = 0
        self.unmatched = 0        # control calls (samples) where the drawn entries could not be moved

    def _validate(self):
        n, d = self.adapter.num_blocks, self.adapter.hidden_size
        bad = [b for b in self.config.blocks if b >= n]
        if bad:
            raise ValueError(f"blocks {bad} out of range: the model has {n} blocks (0..{n - 1})")
        bad = [c for c in self.config.channels if c >= d]
        if bad:
            raise ValueError(f"channels {bad} out of range: hidden size is {d} (0..{d - 1})")

    def _register(self):
        """Hook the config's blocks, after claiming them in `_STEERED`: a block of a transformer that
        another active `steer` context steers raises ``ValueError`` (the later-entered hook runs first
        and the earlier one would steer its already steered output again)."""
        for t in self.adapter.transformers:
            taken = sorted(set(self.config.blocks) & set(_STEERED.get(t, {})))
            if taken:
                raise ValueError(f"block(s) {taken} of {type(t).__name__} are already steered by another active "
                                 f"stas.steer context: steer each block from one context (put several channels "
                                 f"or blocks into one STASConfig)")
        handles = self._hook_blocks(self.config.blocks, lambda b: _SteerHook(self, b))
        for t in self.adapter.transformers:
            _STEERED.setdefault(t, {}).update(dict.fromkeys(self.config.blocks, self))
        return handles

    def _remove_hooks(self):
        try:
            super()._remove_hooks()
        finally:
            for t in self._hooked:
                claims = _STEERED.get(t, {})
                for b in [b for b, ctx in claims.items() if ctx is self]:
                    del claims[b]

    def on_run_start(self, tracker):
        k = self.config.steps
        if k == 0 or self.adapter.pipe is None:  # K = 0 is off by design; a bare transformer has one step
            return
        if k > tracker.num_steps:
            raise ValueError(f"STASConfig.steps={k} exceeds the {tracker.num_steps} denoising steps this run "
                             f"executes (video-to-video runs only strength x num_inference_steps of them)")
        names = {n for n, _ in tracker.branches} | ({"uncond"} if tracker.cfg else set())
        if not names & set(self.config.branches):
            raise ValueError(f"STASConfig.branches={self.config.branches} never run in this call "
                             f"(branches: {sorted(names)}; 'uncond' needs guidance_scale > 1)")

    def on_call(self, tracker):
        lay, sh = tracker.layout, tracker.shard
        tokens = slice(None) if sh is None else slice(sh.lo, sh.hi)  # this rank's tokens (all without CP)
        if (lay, tokens) != self._mask_layout:
            mask = lay.position_mask(self.config.positions, self.config.boundary_width, self.config.boundary_unit)
            if not mask.any():
                raise ValueError(f"positions {self.config.positions} select no token of layout {lay.describe()}")
            self._collect_clamped()
            if self.control is not None and sh is not None:
                raise ContextParallelError("STASConfig.control (a matched-size random edit) is not supported under "
                                           "context parallelism: its L2 match would need the other ranks' tokens")
            chan = torch.tensor(self.config.channels, dtype=torch.long)
            extra = {}
            if self.control is not None:   # drawn once per layout on the CPU, from the seed
                drawn = draw_control(self.control, mask.numel(), int(mask.sum()), self.adapter.hidden_size, chan,
                                     self.config.control_seed)
                if self.control == "random_positions":
                    cm = torch.zeros_like(mask)
                    cm[drawn] = True
                    extra = dict(ctrl_mask=cm)
                else:
                    extra = dict(ctrl_idx=drawn)
            self.dev = DeviceTensors(mask=mask[tokens], chan_idx=chan, clamped=torch.zeros((), dtype=torch.long),
                                     unmatched=torch.zeros((), dtype=torch.long), **extra)
            self._mask_layout = (lay, tokens)
        self.shard = sh
        self.dev.on(self._device or tracker.input_device)
        self.slices = [sl for name, sl in tracker.branches if name in self.config.branches]
        self.active = tracker.step < self.config.steps and bool(self.slices)
        if self.active:  # bookkeeping here, outside the (possibly compiled) block hook
            self._calls.append((tracker.run, tracker.step,
                                tuple(n for n, _ in tracker.branches if n in self.config.branches), []))

    @property
    def calls(self) -> list:
        """(run, step, steered branches) of every transformer call in which a block was steered."""
        return [(r, s, b) for r, s, b, skipped in self._calls if len(skipped) < len(self.config.blocks)]

    @property
    def skipped(self) -> list:
        """(run, step, block) of steered blocks whose computation a diffusers step cache skipped."""
        return [(r, s, blk) for r, s, _, skipped in self._calls for blk in skipped]

    def _collect_clamped(self):
        if self.dev is not None:
            if self.shard is not None:  # every rank counted its own tokens (all ranks get here together)
                torch.distributed.all_reduce(self.dev.clamped, group=self.shard.group)
            self.clamped += int(self.dev.clamped)
            self.unmatched += int(self.dev.unmatched)
            self.dev.clamped.zero_()
            self.dev.unmatched.zero_()

    def _close(self):
        self._collect_clamped()
        if self.clamped:
            warnings.warn(f"steer: {self.clamped} steered values exceeded the range of the block output's dtype "
                          f"(alpha={self.alpha} x channel max) and were clamped to its largest finite value",
                          RuntimeWarning, stacklevel=3)
        if self.unmatched:
            warnings.warn(f"steer: control {self.control!r} could not move its drawn entries in {self.unmatched} "
                          f"sample(s) (the rule leaves them where they are): those were left unchanged, not matched",
                          RuntimeWarning, stacklevel=3)
