"""Video quality metrics that need no downloaded network.

VBench's only pixel-only dimension is temporal flickering; every other VBench dimension downloads
a network. This module reimplements flicker and adds what the STAS paper's claims call for:

* ``frame_differences`` / ``flicker`` / ``flicker_score`` — mean absolute difference (MAD) of
  consecutive frames (VBench temporal flickering).
* ``seam_profile`` / ``seam_jump`` — frame-to-frame change across latent-chunk seams of a causal
  temporal VAE (pixel frames 4k → 4k+1) against the change within chunks. The paper says STAS helps
  most at cross-chunk transitions; this is the measurement for that claim.
* ``optical_flow`` / ``flow_warp_errors`` / ``flow_warp_error`` / ``motion_magnitude`` — classical
  OpenCV Farnebäck flow (no weights): motion-compensated temporal consistency and the
  dynamic-degree analogue (mean flow magnitude, pixels/frame).
* ``frechet_distance`` — Fréchet distance between Gaussians fitted to two feature sets (FID-style).
* ``paired_ci`` / ``summarize`` — paired-by-seed confidence intervals and mean ± sem tables.

Conventions
-----------
A video is a float32 tensor ``(F, 3, H, W)`` in ``[0, 1]``; :func:`as_video` converts numpy arrays,
channel-last layouts and ``uint8`` frames to that. All differences are on the ``[0, 1]`` scale
(multiply by 255 for 8-bit units). Per-transition arrays have length ``F - 1``; entry ``i`` is the
transition from pixel frame ``i`` to ``i + 1``. Metric outputs are numpy ``float64`` arrays or
Python floats.

Pixel ↔ latent frames for a causal VAE with temporal factor ``T`` (4 for Wan / CogVideoX): pixel
frame 0 is latent frame 0 alone; pixel frames ``T(k-1)+1 .. Tk`` are latent frame ``k`` (k ≥ 1).
A *chunk seam* is the transition ``Tk → Tk+1`` (k ≥ 0), i.e. transition index ``i`` with
``i % T == 0``; ``0 → 1`` is the seam between the first-frame latent and chunk 1.

This module is a leaf: it imports torch / numpy / cv2 / scipy only.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import cv2
import numpy as np
import scipy.linalg
import scipy.stats
import torch

__all__ = [
    "as_video",
    "pixel_to_latent_frame",
    "num_latent_frames",
    "seam_mask",
    "frame_differences",
    "flicker",
    "flicker_score",
    "seam_profile",
    "seam_jump",
    "optical_flow",
    "flow_warp_errors",
    "flow_warp_error",
    "motion_magnitudes",
    "motion_magnitude",
    "frechet_distance",
    "frechet_distance_from_stats",
    "paired_ci",
    "summarize",
]

#: Values this far outside [0, 1] are treated as rounding noise and clamped; beyond it, an error.
RANGE_TOLERANCE = 1e-3

#: Default OpenCV Farnebäck parameters (OpenCV's documented example values).
FARNEBACK_DEFAULTS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5,
                          poly_sigma=1.2, flags=0)


# --------------------------------------------------------------------------------------------
# Input conversion and frame bookkeeping
# --------------------------------------------------------------------------------------------

def as_video(x) -> torch.Tensor:
    """Convert a video to the canonical layout and check it.

    Accepts a torch tensor or numpy array with 4 dimensions, frames first:

    * ``uint8``: values 0..255, divided by 255. Layout ``(F, H, W, 3)`` (as read by OpenCV /
      imageio) is preferred; ``(F, 3, H, W)`` is accepted when the last dimension is not 3.
    * floating point: values in ``[0, 1]``. Layout ``(F, 3, H, W)`` is preferred;
      ``(F, H, W, 3)`` is accepted when dimension 1 is not 3. Values up to
      ``RANGE_TOLERANCE`` outside ``[0, 1]`` are clamped; anything further raises (a VAE decode
      in ``[-1, 1]`` must be mapped with ``(x + 1) / 2`` first).

    Returns:
        ``torch.Tensor`` of shape ``(F, 3, H, W)``, dtype float32, values in ``[0, 1]``, on CPU,
        contiguous (a new tensor; the input is not modified).

    Raises:
        TypeError: not a tensor / array, or an unsupported dtype (bool, complex, other ints).
        ValueError: wrong number of dimensions, no RGB axis of size 3, empty, non-finite values,
            or values outside ``[0, 1]``.
    """
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8:
            t = torch.from_numpy(np.ascontiguousarray(x))
        elif np.issubdtype(x.dtype, np.floating):
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        else:
            raise TypeError(f"video array must be uint8 or floating point, got dtype {x.dtype}")
    elif isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype != torch.uint8 and not t.is_floating_point():
            raise TypeError(f"video tensor must be uint8 or floating point, got dtype {t.dtype}")
    else:
        raise TypeError(f"video must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")

    if t.ndim != 4:
        raise ValueError(
            f"video must have 4 dimensions (F, 3, H, W) or (F, H, W, 3); got shape {tuple(t.shape)}")
    is_uint8 = t.dtype == torch.uint8
    first, last = t.shape[1] == 3, t.shape[-1] == 3
    if is_uint8:
        channel_last = last or not first
    else:
        channel_last = not first and last
    if channel_last:
        if not last:
            raise ValueError(f"video needs an RGB axis of size 3 at dim 1 or dim 3; "
                             f"got shape {tuple(t.shape)}")
        t = t.permute(0, 3, 1, 2)
    elif not first:
        raise ValueError(f"video needs an RGB axis of size 3 at dim 1 or dim 3; "
                         f"got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"video is empty: shape (F, 3, H, W) = {tuple(t.shape)}")

    if is_uint8:
        return (t.float() / 255.0).contiguous()

    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError("video contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        hint = " (looks like [-1, 1]: pass (x + 1) / 2)" if lo < 0 else (
            " (looks like 0..255: pass x / 255 or a uint8 array)" if hi > 1.5 else "")
        raise ValueError(f"float video values must lie in [0, 1]; got min {lo:.4g}, "
                         f"max {hi:.4g}{hint}")
    return t.clamp(0.0, 1.0).contiguous()


def _need_frames(video: torch.Tensor, n: int = 2) -> None:
    if video.shape[0] < n:
        raise ValueError(f"need at least {n} frames, got F = {video.shape[0]}")


def _check_temporal_factor(temporal_factor: int) -> int:
    if int(temporal_factor) != temporal_factor or temporal_factor < 1:
        raise ValueError(f"temporal_factor must be a positive integer, got {temporal_factor!r}")
    return int(temporal_factor)


def pixel_to_latent_frame(frame_index, temporal_factor: int = 4):
    """Latent frame that a pixel frame belongs to, for a causal VAE.

    Pixel frame 0 → latent 0; pixel frames ``T(k-1)+1 .. Tk`` → latent ``k``.

    Returns:
        An int for an int input, else a numpy int64 array of the input's shape.
    """
    T = _check_temporal_factor(temporal_factor)
    f = np.asarray(frame_index)
    if (f < 0).any():
        raise ValueError("pixel frame indices must be >= 0")
    k = np.where(f == 0, 0, (f - 1) // T + 1).astype(np.int64)
    return int(k) if k.ndim == 0 else k


def num_latent_frames(num_frames: int, temporal_factor: int = 4, strict: bool = True) -> int:
    """Number of latent frames for ``num_frames`` pixel frames: ``1 + (F - 1) / T``.

    Returns:
        int. With ``strict=False`` a partial last chunk counts as one latent frame
        (``1 + ceil((F - 1) / T)``).

    Raises:
        ValueError: ``num_frames < 1``, or (strict) ``num_frames`` is not ``1 + T·k``.
    """
    T = _check_temporal_factor(temporal_factor)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if strict and (num_frames - 1) % T != 0:
        raise ValueError(
            f"F = {num_frames} pixel frames is not 1 + {T}·k, so it does not map to whole latent "
            f"frames of a causal {T}x temporal VAE (valid: {', '.join(str(1 + T * k) for k in range(1, 5))}, …); "
            f"pass strict=False to allow a partial last chunk")
    return 1 + math.ceil((num_frames - 1) / T)


def seam_mask(num_frames: int, temporal_factor: int = 4, strict: bool = True) -> np.ndarray:
    """Which frame transitions cross a latent-chunk seam.

    Returns:
        bool array of shape ``(num_frames - 1,)``; entry ``i`` (transition ``i → i+1``) is True
        iff ``i % T == 0``, i.e. the transition ``Tk → Tk+1`` between latent frames ``k`` and
        ``k+1``.

    Raises:
        ValueError: ``num_frames < 2``, or (strict) ``num_frames`` is not ``1 + T·k``.
    """
    T = _check_temporal_factor(temporal_factor)
    if num_frames < 2:
        raise ValueError(f"need at least 2 frames for transitions, got F = {num_frames}")
    num_latent_frames(num_frames, T, strict=strict)  # validation
    return (np.arange(num_frames - 1) % T) == 0


# --------------------------------------------------------------------------------------------
# Flicker and chunk seams
# --------------------------------------------------------------------------------------------

def frame_differences(video) -> np.ndarray:
    """Mean absolute difference (MAD) of consecutive frames.

    Returns:
        float64 array of shape ``(F - 1,)``; entry ``i`` is ``mean |x[i+1] - x[i]|`` over
        channels and pixels, in ``[0, 1]`` units (× 255 for 8-bit units).
    """
    v = as_video(video)
    _need_frames(v)
    return (v[1:] - v[:-1]).abs().mean(dim=(1, 2, 3)).double().numpy()


def flicker(video) -> float:
    """Raw temporal flicker: mean over transitions of :func:`frame_differences`.

    Lower is steadier; 0 for a static clip. Units: ``[0, 1]`` intensity (× 255 for 8-bit).
    This is the raw MAD; VBench reports :func:`flicker_score` = 1 − MAD instead.

    Returns:
        float in ``[0, 1]``.
    """
    return float(frame_differences(video).mean())


def flicker_score(video) -> float:
    """VBench-normalised temporal-flickering score: ``(255 − 255·MAD) / 255 = 1 − MAD``.

    Higher is better; 1.0 for a static clip. (VBench computes MAD on uint8 frames and also filters
    out static videos before scoring; no filtering here.)

    Returns:
        float in ``[0, 1]``.
    """
    return 1.0 - flicker(video)


def _ratio(num: float, den: float) -> float:
    """num / den with 0/0 → nan and x/0 → inf (x > 0)."""
    if den > 0:
        return num / den
    return float("nan") if num == 0 else float("inf")


def seam_profile(video, temporal_factor: int = 4, strict: bool = True,
                 metric: str = "mad", **flow_kwargs) -> dict:
    """Per-transition frame change, split into chunk seams and within-chunk transitions.

    Args:
        video: see :func:`as_video`.
        temporal_factor: the VAE's temporal compression ``T`` (default 4).
        strict: require ``F = 1 + T·k`` (raise ValueError otherwise). With ``strict=False`` a
            partial last chunk is allowed; its transitions are classified the same way.
        metric: ``"mad"`` — :func:`frame_differences`; ``"warp"`` — :func:`flow_warp_errors`
            (motion-compensated; ``flow_kwargs`` go to it).

    Returns:
        dict with
          * ``"diffs"``: float64 ``(F-1,)``, the per-transition change (``[0, 1]`` units);
          * ``"is_seam"``: bool ``(F-1,)``, True at transitions ``Tk → Tk+1``;
          * ``"phase"``: int ``(F-1,)``, ``i % T`` (0 = seam) — position in the chunk;
          * ``"phase_mean"``: float64 ``(T,)``, mean change per phase (nan for an absent phase),
            handy for averaging profiles across clips of different length;
          * ``"seam_mean"``, ``"within_mean"``: floats, mean change at seams / within chunks
            (nan when there is no transition of that kind);
          * ``"seam_jump"``: ``seam_mean / within_mean`` (see :func:`seam_jump` for 0 cases).
    """
    T = _check_temporal_factor(temporal_factor)
    v = as_video(video)
    _need_frames(v)
    is_seam = seam_mask(v.shape[0], T, strict=strict)
    if metric == "mad":
        diffs = frame_differences(v)
    elif metric == "warp":
        diffs = flow_warp_errors(v, **flow_kwargs)
    else:
        raise ValueError(f"metric must be 'mad' or 'warp', got {metric!r}")
    phase = np.arange(len(diffs)) % T
    phase_mean = np.array([diffs[phase == p].mean() if (phase == p).any() else np.nan
                           for p in range(T)], dtype=np.float64)
    seam_mean = float(np.nanmean(diffs[is_seam])) if is_seam.any() else float("nan")
    within_mean = float(np.nanmean(diffs[~is_seam])) if (~is_seam).any() else float("nan")
    if math.isnan(seam_mean) or math.isnan(within_mean):
        jump = float("nan")
    else:
        jump = _ratio(seam_mean, within_mean)
    return dict(diffs=diffs, is_seam=is_seam, phase=phase, phase_mean=phase_mean,
                seam_mean=seam_mean, within_mean=within_mean, seam_jump=jump)


def seam_jump(video, temporal_factor: int = 4, strict: bool = True, metric: str = "mad",
              **flow_kwargs) -> float:
    """Chunk-seam jump: mean change across chunk seams / mean change within chunks.

    1.0: seams are no different from the rest; > 1: changes concentrate at seams (the artefact
    STAS is said to reduce); < 1: changes concentrate inside chunks.

    Edge cases (chosen, and tested): a clip with no change at all (0/0) returns **nan** — it has
    no seam structure to measure; use ``np.nanmean`` when averaging. Change only at seams (x/0)
    returns **inf**. Also nan when there are no within-chunk transitions (``T = 1`` or ``F = 2``).

    Returns:
        float (dimensionless ratio). See :func:`seam_profile` for arguments.
    """
    return seam_profile(video, temporal_factor, strict, metric, **flow_kwargs)["seam_jump"]


# --------------------------------------------------------------------------------------------
# Optical flow
# --------------------------------------------------------------------------------------------

def _gray255(v: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) [0,1] → (F, H, W) float32 luma on a 0..255 scale (ITU-R BT.601 weights)."""
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return ((v * w).sum(dim=1) * 255.0).numpy().astype(np.float32)


def optical_flow(video, **farneback) -> np.ndarray:
    """Forward optical flow between consecutive frames (OpenCV Farnebäck, no learned weights).

    Flow ``i`` maps frame ``i`` to frame ``i+1``: ``x[i](p) ≈ x[i+1](p + flow[i](p))``.
    Computed on BT.601 luma. Identical consecutive luma frames get exactly zero flow (Farnebäck
    itself returns up to ~0.04 px of spurious flow there). Keyword arguments override :data:`FARNEBACK_DEFAULTS`
    (``pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags``).

    Returns:
        float32 array of shape ``(F - 1, H, W, 2)``; last axis is ``(dx, dy)`` in pixels/frame
        (dx along width, dy along height).
    """
    v = as_video(video)
    _need_frames(v)
    unknown = set(farneback) - set(FARNEBACK_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown Farnebäck parameters: {sorted(unknown)}")
    p = {**FARNEBACK_DEFAULTS, **farneback}
    g = _gray255(v)
    flows = np.empty((len(g) - 1, g.shape[1], g.shape[2], 2), dtype=np.float32)
    for i in range(len(g) - 1):
        if np.array_equal(g[i], g[i + 1]):
            # Farnebäck is not exactly 0 on identical frames (~0.04 px of bias); the answer is.
            flows[i] = 0.0
            continue
        flows[i] = cv2.calcOpticalFlowFarneback(
            g[i], g[i + 1], None, p["pyr_scale"], p["levels"], p["winsize"], p["iterations"],
            p["poly_n"], p["poly_sigma"], p["flags"])
    return flows


def _check_flows(flows, v: torch.Tensor) -> np.ndarray:
    flows = np.asarray(flows, dtype=np.float32)
    F, _, H, W = v.shape
    if flows.shape != (F - 1, H, W, 2):
        raise ValueError(f"flows must have shape (F-1, H, W, 2) = {(F - 1, H, W, 2)}, "
                         f"got {flows.shape}")
    return flows


def flow_warp_errors(video, flows: np.ndarray | None = None, mask_out_of_bounds: bool = True,
                     **farneback) -> np.ndarray:
    """Per-transition flow-warping error (motion-compensated temporal consistency).

    Frame ``i+1`` is warped back onto frame ``i`` with the forward flow (bilinear,
    ``warped(p) = x[i+1](p + flow[i](p))``) and compared with frame ``i``.

    Args:
        video: see :func:`as_video`.
        flows: precomputed ``(F-1, H, W, 2)`` flow from :func:`optical_flow`; computed if None
            (``farneback`` kwargs go to it).
        mask_out_of_bounds: ignore pixels whose source ``p + flow`` falls outside the frame
            (otherwise those sample the replicated border).

    Returns:
        float64 array ``(F - 1,)``: mean ``|x[i] - warped|`` over channels and (valid) pixels,
        in ``[0, 1]`` units; nan for a transition with no valid pixel.
    """
    v = as_video(video)
    _need_frames(v)
    flows = optical_flow(v, **farneback) if flows is None else _check_flows(flows, v)
    F, _, H, W = v.shape
    frames = v.permute(0, 2, 3, 1).numpy()  # (F, H, W, 3) float32
    gx, gy = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    out = np.empty(F - 1, dtype=np.float64)
    for i in range(F - 1):
        mx = gx + flows[i, ..., 0]
        my = gy + flows[i, ..., 1]
        warped = cv2.remap(frames[i + 1], mx, my, interpolation=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        err = np.abs(frames[i] - warped).mean(axis=-1)  # (H, W)
        if mask_out_of_bounds:
            valid = (mx >= 0) & (mx <= W - 1) & (my >= 0) & (my <= H - 1)
            out[i] = float(err[valid].mean()) if valid.any() else float("nan")
        else:
            out[i] = float(err.mean())
    return out


def flow_warp_error(video, flows: np.ndarray | None = None, mask_out_of_bounds: bool = True,
                    **farneback) -> float:
    """Mean over transitions of :func:`flow_warp_errors` (nan-transitions ignored).

    Returns:
        float, ``[0, 1]`` intensity units; 0 for a static clip or a perfectly tracked motion.
    """
    e = flow_warp_errors(video, flows, mask_out_of_bounds, **farneback)
    return float(np.nanmean(e)) if np.isfinite(e).any() else float("nan")


def motion_magnitudes(video, flows: np.ndarray | None = None, **farneback) -> np.ndarray:
    """Per-transition mean optical-flow magnitude ``mean_p ||flow[i](p)||``.

    Returns:
        float64 array ``(F - 1,)`` in pixels/frame (at the video's resolution).
    """
    v = as_video(video)
    _need_frames(v)
    flows = optical_flow(v, **farneback) if flows is None else _check_flows(flows, v)
    return np.linalg.norm(flows.astype(np.float64), axis=-1).mean(axis=(1, 2))


def motion_magnitude(video, flows: np.ndarray | None = None, **farneback) -> float:
    """Mean optical-flow magnitude over all transitions and pixels — the dynamic-degree analogue.

    (VBench's dynamic degree thresholds RAFT flow; here the raw Farnebäck magnitude is reported.)
    The paper reports dynamic degree drops slightly under STAS.

    Returns:
        float in pixels/frame; 0 for a static clip.
    """
    return float(motion_magnitudes(video, flows, **farneback).mean())


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------

def _as_2d_float64(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples to fit a covariance, got N = {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``d² = ||mu1 − mu2||² + tr(sigma1 + sigma2 − 2 (sigma1 sigma2)^{1/2})`` (as in FID; this is
    the *squared* Fréchet / 2-Wasserstein distance, the convention FID reports).

    If the matrix square root is not finite (singular covariances) ``eps·I`` is added to both
    covariances; a small imaginary part from numerical error is dropped (a warning if it is large).

    Returns:
        float ≥ 0 (clipped at 0 against round-off), in squared feature units.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    D = mu1.shape[0]
    if mu2.shape != (D,) or s1.shape != (D, D) or s2.shape != (D, D):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, "
                         f"sigma1 {s1.shape}, sigma2 {s2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        off = np.eye(D) * eps
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        scale = max(1.0, np.abs(covmean.real).max())
        if imag > 1e-3 * scale:
            warnings.warn(f"frechet_distance: sqrtm has imaginary part {imag:.3g}; keeping the real part")
        covmean = covmean.real
    d = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(d, 0.0)


def frechet_distance(feats_a, feats_b, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID-style).

    Args:
        feats_a: ``(N, D)`` features (numpy or torch); a 1-D array is treated as ``(N, 1)``.
        feats_b: ``(M, D)`` features, same ``D``.
        eps: diagonal offset used only when the covariance square root is not finite.

    Means and unbiased covariances (``N − 1``) are fitted to each set, then
    :func:`frechet_distance_from_stats` is applied.

    Returns:
        float ≥ 0 in squared feature units (≈ 0 for a set against itself).
    """
    a, b = _as_2d_float64(feats_a, "feats_a"), _as_2d_float64(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return frechet_distance_from_stats(a.mean(0), np.atleast_2d(np.cov(a, rowvar=False)),
                                       b.mean(0), np.atleast_2d(np.cov(b, rowvar=False)), eps)


# --------------------------------------------------------------------------------------------
# Statistics for tables
# --------------------------------------------------------------------------------------------

def paired_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Paired difference ``a − b`` with a Student-t confidence interval and a paired t-test.

    Use for baseline-vs-method tables where clip ``j`` of ``a`` and of ``b`` share prompt and
    seed. Pairs where either value is nan are dropped (``n`` counts the pairs used).

    Returns:
        dict with ``mean_diff`` (mean of ``a − b``), ``lo``, ``hi`` (CI bounds), ``sem``
        (standard error of the mean difference, ``sd(ddof=1)/√n``), ``n`` (pairs used),
        ``p`` (two-sided paired t-test p-value), ``confidence``. With ``n < 2`` the interval,
        sem and p are nan. With zero spread the interval is ``[mean, mean]`` and p is 0
        (1 if the mean is 0 too). Units are those of the metric.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired arrays must have the same length, got {a.size} and {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return dict(mean_diff=nan, lo=nan, hi=nan, sem=nan, n=0, p=nan, confidence=confidence)
    mean = float(d.mean())
    if n < 2:
        return dict(mean_diff=mean, lo=nan, hi=nan, sem=nan, n=n, p=nan, confidence=confidence)
    sem = float(d.std(ddof=1) / math.sqrt(n))
    tcrit = float(scipy.stats.t.ppf(0.5 + confidence / 2, df=n - 1))
    if sem == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * scipy.stats.t.sf(abs(mean / sem), df=n - 1))
    return dict(mean_diff=mean, lo=mean - tcrit * sem, hi=mean + tcrit * sem, sem=sem, n=n, p=p,
                confidence=confidence)


def summarize(table: Mapping[str, Sequence[float]]) -> dict:
    """Mean ± standard error per column of a metric table; nan entries are ignored.

    Returns:
        ``{name: {"mean": float, "sem": float, "n": int, "text": "mean ± sem"}}``; ``sem`` is
        ``sd(ddof=1)/√n`` (nan for n < 2); mean is nan for n = 0.
    """
    out = {}
    for name, values in table.items():
        x = np.asarray(values, dtype=np.float64).ravel()
        x = x[~np.isnan(x)]
        n = int(x.size)
        mean = float(x.mean()) if n else float("nan")
        sem = float(x.std(ddof=1) / math.sqrt(n)) if n >= 2 else float("nan")
        out[name] = dict(mean=mean, sem=sem, n=n, text=f"{mean:.4g} ± {sem:.2g}")
    return out
