"""STAS: structured activation steering of massive-activation channels.

For the first K of N denoising steps, at the chosen blocks, for each chosen channel c with values
D = h[:, c] over the video tokens of one sample and branch,

    h[t, c] <- alpha * max_t' |D[t']| * sign(D[t])      for t in the chosen position classes,

other tokens and channels untouched (Cheng et al. 2026). ``mode="zero"`` instead sets
h[t, c] <- 0 there (the paper's "zeroing MAs" ablation).

The hook edits the block output in place, before any other hook on that block (so a `record`
context sees the steered values). ``with stas.steer(pipe, cfg): pipe(...)`` removes it on exit,
also when the pipeline raises; with K = 0 the output is bit-identical to the stock pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .adapters import BRANCHES
from .hooks import HookContext
from .layout import POSITION_CLASSES

MODES = ("stas", "zero")


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


class _SteerHook:
    """Forward hook of one steered block. Gating state is set by `steer.on_call` between calls."""

    def __init__(self, owner):
        self.owner = owner

    def __call__(self, module, args, output):
        o = self.owner
        if not o.active:
            return None
        h = o.adapter.video_tokens(output)          # (B, L, D), edited in place
        chan, mask = o.chan_idx, o.mask             # (C,), (L,) bool
        for sl in o.slices:
            x = h[sl]
            v = x.index_select(-1, chan)            # (b, L, C)
            if o.zero:
                new = torch.zeros_like(v)
            else:
                ref = v.abs().amax(dim=1, keepdim=True).float()        # (b, 1, C): global max over tokens
                new = (o.alpha * ref * torch.sign(v).float()).to(v.dtype)
            x.index_copy_(-1, chan, torch.where(mask[None, :, None], new, v))
        return None


class steer(HookContext):
    """Context manager applying `STASConfig` ``config`` to ``pipe`` for every call inside it.

    Raises ``ValueError`` before anything is hooked when blocks or channels are out of the model's
    range, and before the first denoising step when K exceeds the run's step count or the chosen
    positions select no token. ``.calls`` lists (run, step, steered branches) for every transformer
    call that was steered (each call steers all ``config.blocks``).
    """

    prepend = True

    def __init__(self, pipe, config: STASConfig):
        if not isinstance(config, STASConfig):
            raise TypeError(f"config must be a stas.STASConfig, got {type(config).__name__}")
        super().__init__(pipe)
        self.config = config
        self.alpha = float(config.alpha)
        self.zero = config.mode == "zero"
        self.active = False
        self.slices = []
        self.mask = None
        self.chan_idx = None
        self._mask_layout = None
        self.calls = []

    def _validate(self):
        n, d = self.adapter.num_blocks, self.adapter.hidden_size
        bad = [b for b in self.config.blocks if b >= n]
        if bad:
            raise ValueError(f"blocks {bad} out of range: the model has {n} blocks (0..{n - 1})")
        bad = [c for c in self.config.channels if c >= d]
        if bad:
            raise ValueError(f"channels {bad} out of range: hidden size is {d} (0..{d - 1})")

    def _register(self):
        hook = _SteerHook(self)
        return self._hook_blocks(self.config.blocks, lambda b: hook)

    def on_run_start(self, tracker):
        if tracker._sched is not None and self.config.steps > tracker.num_steps:
            raise ValueError(f"STASConfig.steps={self.config.steps} exceeds the run's "
                             f"{tracker.num_steps} denoising steps")

    def on_call(self, tracker):
        lay = tracker.layout
        if lay != self._mask_layout:
            mask = lay.position_mask(self.config.positions, self.config.boundary_width, self.config.boundary_unit)
            if not mask.any():
                raise ValueError(f"positions {self.config.positions} select no token of layout {lay.describe()}")
            dev = next(self.adapter.transformers[0].parameters()).device
            self.mask, self._mask_layout = mask.to(dev), lay
            self.chan_idx = torch.tensor(self.config.channels, dtype=torch.long, device=dev)
        self.slices = [sl for name, sl in tracker.branches if name in self.config.branches]
        self.active = tracker.step < self.config.steps and bool(self.slices)
        if self.active:  # bookkeeping here, outside the (possibly compiled) block hook
            self.calls.append((tracker.run, tracker.step, tuple(n for n, _ in tracker.branches if n in self.config.branches)))
