"""The position hierarchy of massive activations, measured (notebooks 03 and 04).

A leaf module: torch / numpy and `stas.layout` only. Inputs are per-token values of MA channels as
`stas.record` keeps them (``Recording["tokens"]``, dims (run, step, block, branch, token, channel))
or any (..., num_tokens) tensor with a `TokenLayout`.

What it computes:

* `class_table`: per position class (first latent frame / boundary / interior), the mean |value|
  of each run, the mean and standard deviation across runs, and the ratios first/interior and
  boundary/interior (each computed per run, then summarised across runs).
* `frame_profiles` and `estimate_boundary_width`: the boundary width measured from data instead of
  assumed. For every latent frame after the first, the |value| profile by position inside the
  frame's span (in tokens, or in token rows), expressed as the relative elevation over that
  frame's interior; then the number of head and tail positions that stand out (rule below).
* `hierarchy_grid`: the two ratios per (block, step), for the block x step heatmaps.

The boundary-width rule (documented in `estimate_boundary_width`): a position counts as elevated
when its mean relative elevation over the frame's interior exceeds
``max(margin, k * robust_sd)``, where ``robust_sd`` = 1.4826 * MAD of the same quantity over the
interior reference positions (the middle half of the frame). The head width is the number of
consecutive elevated positions starting at position 0, the tail width the number ending at the last
position; both are capped at a quarter of the frame (the reference must stay clean). With nothing
planted it returns 0; it never assumes a width.
"""

from __future__ import annotations

import numpy as np
import torch

from .layout import POSITION_CLASSES, TokenLayout

__all__ = ["magnitudes", "class_table", "frame_class_means", "frame_profiles", "estimate_boundary_width",
           "hierarchy_grid"]


# positions per latent frame the boundary-width rule needs: a middle-half reference of >= 4 and a cap of >= 2
MIN_POSITIONS = 8


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


# --------------------------------------------------------------------------------------------------
def magnitudes(stats, channel=None, steps=None, blocks=None, branch="cond") -> torch.Tensor:
    """|tokens| of a `Recording` (duck-typed): (R, S', NB', L) for one ``channel`` id, or
    (R, S', NB', L, C) for all recorded channels when ``channel`` is None.

    ``steps``: step indices (None = all); ``blocks``: block ids (None = all); ``branch``: name.
    """
    x = stats["tokens"]                                   # (R, S, NB, Br, L, C)
    b = list(stats.branches).index(branch)
    x = x[:, :, :, b]
    if steps is not None:
        x = x[:, torch.as_tensor(list(steps), dtype=torch.long)]
    if blocks is not None:
        x = x[:, :, torch.as_tensor([list(stats.blocks).index(k) for k in blocks], dtype=torch.long)]
    if channel is not None:
        x = x[..., list(stats.channels).index(channel)]
    return x.abs().float()


def class_table(values, layout: TokenLayout, boundary_width: int = 1, unit: str = "tokens") -> dict:
    """Position-class statistics of per-token magnitudes ``values`` (R, L) (one row per run; extra
    leading dims are averaged first, e.g. (R, S, L) -> mean over steps).

    Returns ``{"per_run": {class: (R,)}, "mean": {class: float}, "std": {class: float},
    "first/interior": {"per_run", "mean", "std"}, "boundary/interior": {...}, "n_tokens": {class: int}}``.
    Standard deviations are across runs (ddof 1; 0 for a single run). An empty boundary class
    (width 0) gives NaN.
    """
    v = _t(values).float().abs()
    if v.dim() == 1:
        v = v[None]
    while v.dim() > 2:
        v = v.mean(1)
    cm = layout.class_means(v, boundary_width, unit)
    masks = layout.position_masks(boundary_width, unit)
    out = {"per_run": {k: cm[k].numpy() for k in POSITION_CLASSES},
           "n_tokens": {k: int(masks[k].sum()) for k in POSITION_CLASSES},
           "boundary_width": boundary_width, "unit": unit}
    sd = (lambda a: float(np.std(a, ddof=1)) if len(a) > 1 else 0.0)
    out["mean"] = {k: float(np.mean(a)) for k, a in out["per_run"].items()}
    out["std"] = {k: sd(a) for k, a in out["per_run"].items()}
    for num in ("first_frame", "boundary"):
        r = out["per_run"][num] / out["per_run"]["interior"]
        key = ("first" if num == "first_frame" else "boundary") + "/interior"
        out[key] = {"per_run": r, "mean": float(np.mean(r)), "std": sd(r)}
    return out


def frame_class_means(values, layout: TokenLayout, boundary_width: int = 1, unit: str = "tokens") -> dict:
    """Mean |value| per latent (token-)frame, over the whole frame and over each position class.

    ``values``: (L,) or (R, L) per-token values (R runs; |.| is taken), L = ``layout.num_tokens``.
    Returns ``{"frame": (R, F), "first_frame": (R, F), "boundary": (R, F), "interior": (R, F)}``
    float numpy arrays, F = ``layout.frames``: the mean over the frame's tokens, and over those of
    its tokens in each class (`TokenLayout.position_masks`); NaN where a frame holds none of a class
    (``first_frame`` lives only in frame 0, ``boundary``/``interior`` only in frames 1..).
    """
    v = _t(values).float().abs()
    g = layout.to_grid(v.reshape(-1, v.shape[-1])).flatten(-2)                      # (R, F, P)
    out = {"frame": g.mean(-1).numpy()}
    for k, m in layout.position_masks(boundary_width, unit).items():
        w = layout.to_grid(m.float()).flatten(-2)                                     # (F, P)
        n = w.sum(-1)
        out[k] = torch.where(n > 0, (g * w).sum(-1) / n.clamp(min=1), torch.tensor(float("nan"))).numpy()
    return out


# --------------------------------------------------------------------------------------------------
def frame_profiles(values, layout: TokenLayout, unit: str = "tokens") -> dict:
    """Mean |value| by position inside each latent frame's span.

    ``values``: (N, L) or (L,) per-token magnitudes (N samples: runs, steps, ... flattened).
    Returns ``{"profile": (F, P) mean over samples, "samples": (N, F, P), "unit": unit}`` with
    P = tokens per frame (``unit="tokens"``) or token rows per frame (``unit="rows"``, mean over
    the row's columns). Frame 0 is included (index 0) for comparison; the boundary estimate uses
    frames 1.. only.
    """
    if unit not in ("tokens", "rows"):
        raise ValueError(f"unit must be 'tokens' or 'rows', got {unit!r}")
    v = _t(values).float().abs()
    v = v.reshape(-1, v.shape[-1])
    g = layout.to_grid(v)                                  # (N, F, H, W)
    s = g.mean(-1) if unit == "rows" else g.reshape(*g.shape[:2], -1)
    return {"profile": s.mean(0).numpy(), "samples": s.numpy(), "unit": unit}


def estimate_boundary_width(values, layout: TokenLayout, unit: str = "tokens", k: float = 3.0,
                            margin: float = 0.10, frames=None) -> dict:
    """Estimate how many head / tail positions of each latent frame (after the first) are elevated.

    ``values``: per-token magnitudes (N, L) or (L,), N samples (runs x steps x ...).

    Rule. For each sample s and frame f >= 1, the relative elevation of in-frame position j is
    ``e[s,f,j] = x[s,f,j] / median_{j' in ref} x[s,f,j'] - 1`` where ``ref`` is the middle half of
    the frame's positions (tokens or rows). ``e`` is averaged over samples (and, for the pooled
    estimate, over frames). The null spread is ``sd = 1.4826 * MAD`` of the averaged elevation over
    the reference positions: how much positions that are interior by construction differ among
    themselves, which includes both noise and systematic spatial variation. A position is elevated
    when ``e[j] - median_ref(e) > max(margin, k * sd)``. The head width is the run of consecutive
    elevated positions from j = 0, the tail width the run ending at j = P - 1, each capped at P // 4.
    ``width`` is max(head, tail): the symmetric width `TokenLayout.position_masks` takes.

    Returns ``{"head", "tail", "width", "threshold", "elevation" (P,), "elevated" (P,) bool,
    "per_frame": [(head, tail) for frames 1..], "unit", "se" (P,) standard error of e across
    samples}``, and ``"ok"``: False (with ``"reason"``) when a frame has fewer than `MIN_POSITIONS`
    positions in ``unit``, where the rule cannot separate a boundary from the interior.
    """
    prof = frame_profiles(values, layout, unit)["samples"]  # (N, F, P)
    fr = list(range(1, layout.frames)) if frames is None else list(frames)
    if not fr:
        raise ValueError("need at least two latent frames to estimate a boundary width")
    x = prof[:, fr]                                          # (N, F', P)
    P = x.shape[-1]
    ok = P >= MIN_POSITIONS
    lo, hi = P // 4, P - P // 4
    ref = np.arange(lo, hi) if hi > lo else np.arange(P)
    base = np.median(x[..., ref], axis=-1, keepdims=True)
    e = x / np.where(base == 0, np.nan, base) - 1.0          # (N, F', P)

    def one(el):                                            # el (P,) -> head, tail, thr, mask
        c = np.median(el[ref])
        sd = 1.4826 * np.median(np.abs(el[ref] - c))
        thr = max(margin, k * sd)
        up = (el - c) > thr
        cap = max(P // 4, 1)
        head = 0
        while head < cap and up[head]:
            head += 1
        tail = 0
        while tail < cap and up[P - 1 - tail]:
            tail += 1
        return head, tail, thr, up

    pooled = np.nanmean(e, axis=(0, 1))
    n = e.shape[0] * e.shape[1]
    se = np.nanstd(e.reshape(n, P), axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(P, np.nan)
    head, tail, thr, up = one(pooled)
    per_frame = [one(np.nanmean(e[:, i], axis=0))[:2] for i in range(e.shape[1])]
    reason = None if ok else (f"{P} {unit} per latent frame: the rule needs >= {MIN_POSITIONS} (a middle-half "
                              f"reference of >= 4 positions and a head/tail cap of >= 2); this width is not a measurement")
    return {"head": head, "tail": tail, "width": max(head, tail), "threshold": thr, "elevation": pooled,
            "elevated": up, "se": se, "per_frame": per_frame, "frames": fr, "unit": unit, "k": k,
            "margin": margin, "ok": ok, "reason": reason}


# --------------------------------------------------------------------------------------------------
def hierarchy_grid(stats, channel, layout: TokenLayout | None = None, boundary_width: int = 1,
                   unit: str = "tokens", branch: str = "cond") -> dict:
    """Hierarchy ratios per (block, step) for one MA channel: ``{"first/interior": (NB, S),
    "boundary/interior": (NB, S), "first": (NB, S), "boundary": ..., "interior": ...}``; each
    ratio is computed per run and averaged over runs."""
    lay = layout or stats.layout
    v = magnitudes(stats, channel, branch=branch)           # (R, S, NB, L)
    cm = lay.class_means(v, boundary_width, unit)            # class -> (R, S, NB)
    out = {k: cm[k].mean(0).T.numpy() for k in POSITION_CLASSES}
    out["first/interior"] = (cm["first_frame"] / cm["interior"]).mean(0).T.numpy()
    out["boundary/interior"] = (cm["boundary"] / cm["interior"]).mean(0).T.numpy()
    return out
