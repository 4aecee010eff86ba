"""Null controls for STAS: random edits of the same size as STAS's edit of a block output.

STAS edits ``N = |positions| × |channels|`` entries of a block output ``h`` (tokens × channels)
by some L2 amount ``‖Δ_STAS‖``. A metric moved by STAS only means something if an edit of the same
size elsewhere does not move it as much. :func:`matched_random_edit` returns ``h`` edited at

* ``"random_positions"``: the MA channels, at ``|positions|`` token positions drawn uniformly
  (without replacement) from all tokens — *where* is random;
* ``"random_channel"``: the STAS positions, in ``|channels|`` channels drawn uniformly from the
  non-MA channels — *which channel* is random;

each entry pushed the way the STAS rule pushes it (towards ``alpha · max_t |h[t, c]| · sign``)
and the whole change rescaled so that its L2 norm equals ``‖Δ_STAS‖`` exactly: the same number of
entries, the same size, so size no longer confounds the comparison (the rule alone moves each
channel in proportion to its own max, tiny for a plain channel).

Pure functions on one sample's ``(L, D)`` block output; all arithmetic in float32, the result in
``h``'s dtype and device. The steering hook applies the same rule on the device, per sample and CFG
branch, with ``STASConfig(control=..., control_seed=...)`` (same draw for the same seed).
"""

from __future__ import annotations

import torch

from .steer import CONTROLS, draw_control, steer_values

__all__ = ["CONTROLS", "stas_edit", "matched_random_edit"]


def _check(h: torch.Tensor, positions, channels) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(h, torch.Tensor) or h.ndim != 2:
        raise ValueError(f"h must be a (tokens, channels) tensor, got "
                         f"{tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}")
    L, D = h.shape
    pos = torch.as_tensor(positions, device=h.device)
    if pos.dtype == torch.bool:
        if pos.shape != (L,):
            raise ValueError(f"a boolean positions mask must have shape ({L},), got {tuple(pos.shape)}")
        pos = pos.nonzero().flatten()
    pos = pos.long().flatten()
    chan = torch.as_tensor(channels, device=h.device).long().flatten()
    for name, idx, n in (("positions", pos, L), ("channels", chan, D)):
        if idx.numel() == 0:
            raise ValueError(f"{name} must not be empty")
        if idx.min() < 0 or idx.max() >= n or idx.unique().numel() != idx.numel():
            raise ValueError(f"{name} must be distinct indices in 0..{n - 1}")
    return pos, chan


def _rule(h32: torch.Tensor, pos: torch.Tensor, chan: torch.Tensor, alpha: float) -> torch.Tensor:
    """The STAS values at (pos × chan): ``alpha · max_t |h[t, c]| · sign(h[pos, c])``, (P, C) float32
    (`stas.steer.steer_values`, the rule the steering hook applies)."""
    new, _ = steer_values(h32[None][:, :, chan], alpha, zero=False)       # (1, L, C)
    return new[0, pos]


def stas_edit(h: torch.Tensor, positions, channels, alpha: float = 1.0) -> torch.Tensor:
    """STAS's edit of one block output (Cheng et al. 2026), as a pure function.

    ``h'[t, c] = alpha · max_t' |h[t', c]| · sign(h[t, c])`` for ``t`` in ``positions`` and ``c``
    in ``channels``; every other entry unchanged. (The same rule as :mod:`stas.steer`'s hook, which
    applies it in place per sample and CFG branch.)

    Args:
        h: ``(L, D)`` block output of one sample (tokens × channels), any float dtype.
        positions: token indices, or a ``(L,)`` bool mask (e.g. ``TokenLayout.position_mask``).
        channels: channel indices (the MA channels).
        alpha: scale of the global-max reference, > 0.

    Returns:
        a new ``(L, D)`` tensor, ``h``'s dtype and device.

    Raises:
        ValueError: wrong shapes, empty / duplicate / out-of-range indices, alpha ≤ 0.
    """
    pos, chan = _check(h, positions, channels)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    out = h.detach().float().clone()
    out[pos[:, None], chan[None, :]] = _rule(out, pos, chan, float(alpha))
    return out.to(h.dtype)


def matched_random_edit(h: torch.Tensor, positions, channels, alpha: float = 1.0,
                        control: str = "random_positions", seed: int = 0) -> torch.Tensor:
    """``h`` edited at random entries by exactly the L2 amount STAS changes it (see module doc).

    The control's entries ``E`` (``|E|`` = STAS's entry count) are moved along the STAS rule's
    direction there, ``δ = rule(E) − h[E]``, rescaled to ``δ · ‖Δ_STAS‖ / ‖δ‖`` (float32).

    Args:
        h, positions, channels, alpha: as :func:`stas_edit`.
        control: ``"random_positions"`` (MA channels at random tokens) or ``"random_channel"``
            (STAS positions of ``len(channels)`` random non-MA channels).
        seed: seeds the draw (``torch.Generator``); the same seed gives the same entries.

    Returns:
        a new ``(L, D)`` tensor in ``h``'s dtype and device, equal to ``h`` outside ``E``.

    Raises:
        ValueError: unknown control; too few tokens / non-MA channels to draw from; STAS's edit is
            zero (nothing to match) or the rule does not move the drawn entries (no direction).
    """
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
    pos, chan = _check(h, positions, channels)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    L, D = h.shape
    h32 = h.detach().float()
    size = (_rule(h32, pos, chan, float(alpha)) - h32[pos][:, chan]).norm()
    if size == 0:
        raise ValueError("STAS does not change this h (its entries already sit at the rule's values)")
    drawn = draw_control(control, L, pos.numel(), D, chan, seed).to(h.device)
    if control == "random_positions":
        pos = drawn
    else:
        chan = drawn
    delta = _rule(h32, pos, chan, float(alpha)) - h32[pos][:, chan]
    norm = delta.norm()
    if norm == 0:
        raise ValueError("the STAS rule does not move the drawn entries; use another seed")
    out = h32.clone()
    out[pos[:, None], chan[None, :]] += delta * (size / norm)
    return out.to(h.dtype)
