"""Video quality metrics that need no downloaded network, each validated on inputs with a known answer.

VBench's only pixel-only dimension is temporal flickering; every other VBench dimension downloads
a network. This module reimplements flicker and adds what the STAS paper's claims call for:

* ``frame_differences`` / ``flicker`` — mean absolute difference (MAD) of consecutive frames;
  ``flicker_score`` — VBench temporal flickering (``1 − MAD``), with VBench's static-clip filter
  (``static_scores`` / ``is_static``): moving clips are not scored.
* ``seam_profile`` / ``seam_excess`` — frame-to-frame change across latent-chunk seams of a
  causal temporal VAE (pixel frames ``Tk → Tk+1``, k ≥ 1) minus the change within chunks; the
  ``0 → 1`` first-frame transition is reported on its own. The paper says STAS helps most at
  cross-chunk transitions; this is the measurement for that claim.
* ``optical_flow`` / ``flow_warp_errors`` / ``flow_warp_error`` / ``motion_magnitude`` — classical
  OpenCV Farnebäck flow (no weights), read on a contrast-normalised colour axis:
  motion-compensated temporal consistency and the whole-frame mean flow.
* ``foreground_masks`` / ``object_speeds`` / ``object_speed`` — the speed of the moving objects
  (flow over the foreground against a temporal-median background), in pixels/frame.
* ``summarize`` — mean ± sem tables (paired prompt-level bootstrap CIs, Holm and KID, the
  distribution distance that replaces a Fréchet distance at small n, are in :mod:`stas.statistics`).
* ``degrade`` / ``validation_table`` — generated-looking versions of a clip (low contrast, blur,
  noise) and the table of every metric against inputs with a known answer.

Conventions
-----------
A video is a float32 tensor ``(F, 3, H, W)`` in ``[0, 1]``; :func:`as_video` converts numpy arrays,
channel-last layouts and ``uint8`` frames to that. All differences are on the ``[0, 1]`` scale
(multiply by 255 for 8-bit units). Per-transition arrays have length ``F - 1``; entry ``i`` is the
transition from pixel frame ``i`` to ``i + 1``. Metric outputs are numpy ``float64`` arrays or
Python floats. Pixel ↔ latent frame arithmetic comes from :mod:`stas.layout` only.

This module is generic: it imports torch / numpy / cv2 / pandas and :mod:`stas.layout`.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import cv2
import numpy as np
import pandas as pd
import torch

from .layout import latent_frame_of, latent_frames_for

__all__ = [
    "as_video",
    "seam_mask",
    "frame_differences",
    "flicker",
    "static_scores",
    "is_static",
    "flicker_score",
    "seam_profile",
    "seam_excess",
    "optical_flow",
    "flow_warp_errors",
    "flow_warp_error",
    "motion_magnitudes",
    "motion_magnitude",
    "foreground_masks",
    "object_speeds",
    "object_speed",
    "summarize",
    "degrade",
    "validation_table",
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
    if isinstance(temporal_factor, bool) or int(temporal_factor) != temporal_factor or temporal_factor < 1:
        raise ValueError(f"temporal_factor must be a positive integer, got {temporal_factor!r}")
    return int(temporal_factor)


def seam_mask(num_frames: int, temporal_factor: int = 4, strict: bool = True) -> np.ndarray:
    """Which frame transitions cross a latent-chunk seam (the first-frame transition excluded).

    A transition ``i → i+1`` is a chunk seam when the two pixel frames belong to different latent
    frames (:func:`stas.layout.latent_frame_of`) and ``i ≥ 1``: the transitions ``Tk → Tk+1`` for
    ``k ≥ 1``. Transition ``0 → 1`` also changes latent frame but joins the independently encoded
    first frame to chunk 1; it is not a seam between chunks and is reported on its own.

    Returns:
        bool array of shape ``(num_frames - 1,)``.

    Raises:
        ValueError: ``num_frames < 2``, or (strict) ``num_frames`` is not ``1 + T·k``
        (:func:`stas.layout.latent_frames_for`).
    """
    T = _check_temporal_factor(temporal_factor)
    if num_frames < 2:
        raise ValueError(f"need at least 2 frames for transitions, got F = {num_frames}")
    if strict:
        try:
            latent_frames_for(int(num_frames), T)
        except ValueError as e:
            raise ValueError(f"{e}; pass strict=False to allow a partial last chunk") from None
    latent = np.array([latent_frame_of(i, T) for i in range(num_frames)])
    mask = latent[1:] != latent[:-1]
    mask[0] = False
    return mask


# --------------------------------------------------------------------------------------------
# Flicker (VBench temporal flickering, with its static-clip filter)
# --------------------------------------------------------------------------------------------

#: VBench's static filter (``vbench2_beta_long/static_filter.py``): a transition's score is the mean
#: of its largest 2 % flow magnitudes; it moves when that exceeds ``3 px · min(H, W) / 256``.
STATIC_TOP_FRACTION = 0.02
STATIC_PX_PER_256 = 3.0


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
    On a clip with motion this counts the motion too; :func:`flicker_score` follows VBench and
    scores static clips only.

    Returns:
        float in ``[0, 1]``.
    """
    return float(frame_differences(video).mean())


def static_scores(video, flows: np.ndarray | None = None, **farneback) -> np.ndarray:
    """VBench's per-transition motion score: mean of the largest 2 % of flow magnitudes.

    Scored transitions, as in VBench's static filter: the ``F - 1`` consecutive ones, then
    first → last and last → first. VBench uses RAFT; here :func:`optical_flow` (Farnebäck).

    Args:
        flows: precomputed :func:`optical_flow` of the clip (the two wrap-around flows are
            computed here).

    Returns:
        float64 array ``(F + 1,)`` in pixels/frame.
    """
    v = as_video(video)
    _need_frames(v)
    flows = optical_flow(v, **farneback) if flows is None else _check_flows(flows, v)
    wrap = optical_flow(torch.stack([v[0], v[-1], v[0]]), **farneback)
    mags = np.linalg.norm(np.concatenate([flows, wrap]).astype(np.float64), axis=-1)
    mags = mags.reshape(len(mags), -1)
    k = max(1, int(mags.shape[1] * STATIC_TOP_FRACTION))
    return -np.sort(-mags, axis=1)[:, :k].mean(axis=1)


def is_static(video, flows: np.ndarray | None = None, **farneback) -> bool:
    """VBench's static-clip test (the filter applied before temporal flickering is scored).

    With ``s`` = :func:`static_scores`, ``thres = 3 · min(H, W) / 256`` px and
    ``count = round(2 F / 16)``: static iff at most ``count`` consecutive transitions have
    ``s > thres`` and neither wrap-around transition has ``s > 2 · count · thres``
    (VBench ``StaticFilter.check_static``; Python's ``round``, as there).

    Returns:
        bool.
    """
    v = as_video(video)
    s = static_scores(v, flows, **farneback)
    thres = STATIC_PX_PER_256 * min(v.shape[-2:]) / 256.0
    count = round(2 * v.shape[0] / 16.0)
    return bool((s[:-2] > thres).sum() <= count and (s[-2:] <= thres * count * 2).all())


def flicker_score(video, static_filter: bool = True, flows: np.ndarray | None = None) -> float:
    """VBench temporal-flickering score ``(255 − 255·MAD) / 255 = 1 − MAD``, for static clips.

    VBench scores this dimension on static clips only: clips its static filter calls moving are
    left out of the average (``vbench/temporal_flickering.py``: "please ensure the video is
    static"; ``static_filter.py``). Here a moving clip (:func:`is_static` False) returns **nan**,
    so ``np.nanmean`` over clips reproduces VBench's average. ``static_filter=False`` scores any
    clip (then motion counts as flicker).

    Returns:
        float in ``[0, 1]`` (higher is steadier; 1.0 for a frozen clip), or nan.
    """
    v = as_video(video)
    if static_filter and not is_static(v, flows):
        return float("nan")
    return 1.0 - flicker(v)


# --------------------------------------------------------------------------------------------
# Chunk seams
# --------------------------------------------------------------------------------------------

def seam_profile(video, temporal_factor: int = 4, strict: bool = True,
                 metric: str = "mad", **flow_kwargs) -> dict:
    """Per-transition frame change, split into the first-frame transition, chunk seams and the rest.

    For a causal VAE with temporal factor ``T`` (:mod:`stas.layout`): transition ``0 → 1`` joins
    the independently encoded first frame to chunk 1 (``"first"``); transitions ``Tk → Tk+1``,
    ``k ≥ 1``, cross between latent chunks (seams); all others lie within a chunk. The seam
    artefact is the *absolute excess* ``seam_mean − within_mean`` (a ratio would divide by the
    within-chunk change, which a method may also move). With ``T = 1`` (a per-frame VAE: the
    uniform control) every transition after the first crosses latent frames and none lies within
    one: ``within_mean`` and ``seam_excess`` are nan and ``per_transition`` is its measure.

    Args:
        video: see :func:`as_video`.
        temporal_factor: the VAE's temporal compression ``T`` (4 for Wan / CogVideoX, 1 for a
            per-frame VAE).
        strict: require ``F = 1 + T·k`` (ValueError otherwise); ``strict=False`` allows a
            partial last chunk, classified the same way.
        metric: ``"mad"`` — :func:`frame_differences`; ``"warp"`` — :func:`flow_warp_errors`
            (motion-compensated; ``flow_kwargs`` go to it).

    Returns:
        dict with
          * ``"diffs"``: float64 ``(F-1,)``, the per-transition change (``[0, 1]`` units);
          * ``"is_seam"``: bool ``(F-1,)`` (:func:`seam_mask`; False at transition 0);
          * ``"phase"``: int ``(F-1,)``, ``i % T`` (0 = seam, and the first transition);
          * ``"phase_mean"``: float64 ``(T,)``, mean change per phase over transitions ``i ≥ 1``
            (nan for an absent phase), for averaging profiles across clips;
          * ``"first"``: the ``0 → 1`` change;
          * ``"seam_mean"``, ``"within_mean"``: mean change at seams / within chunks (nan when
            there is no transition of that kind);
          * ``"seam_excess"``: ``seam_mean − within_mean`` (0: no seam artefact);
          * ``"per_transition"``: mean change over transitions ``i ≥ 1``;
          * ``"seam_jump"``: ``seam_mean / within_mean`` (0/0 → nan, x/0 → inf), the ratio the
            first evaluation reported; it scales with the VAE's artefact level (see DESIGN).
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
    later = np.arange(len(diffs)) >= 1
    within = later & ~is_seam

    def mean(sel):
        return float(np.nanmean(diffs[sel])) if sel.any() and np.isfinite(diffs[sel]).any() else float("nan")

    phase_mean = np.array([mean(later & (phase == p)) for p in range(T)], dtype=np.float64)
    seam_mean, within_mean = mean(is_seam), mean(within)
    if math.isnan(seam_mean) or math.isnan(within_mean):
        jump = float("nan")
    elif within_mean > 0:
        jump = seam_mean / within_mean
    else:
        jump = float("nan") if seam_mean == 0 else float("inf")
    return dict(diffs=diffs, is_seam=is_seam, phase=phase, phase_mean=phase_mean,
                first=float(diffs[0]), seam_mean=seam_mean, within_mean=within_mean,
                seam_excess=seam_mean - within_mean, per_transition=mean(later), seam_jump=jump)


def seam_excess(video, temporal_factor: int = 4, strict: bool = True, metric: str = "mad",
                **flow_kwargs) -> float:
    """Chunk-seam excess: mean change across chunk seams minus mean change within chunks.

    0: seams are no different from the rest; > 0: change concentrates at seams (the artefact STAS
    is said to reduce). Absolute, in ``[0, 1]`` intensity units. Compare it with the same clips
    after a VAE round trip (no transformer involved: what the VAE alone adds). nan for
    ``T = 1`` or clips too short to have both kinds of transition. See :func:`seam_profile`.
    """
    return seam_profile(video, temporal_factor, strict, metric, **flow_kwargs)["seam_excess"]


# --------------------------------------------------------------------------------------------
# Optical flow
# --------------------------------------------------------------------------------------------

def _flow_channel(v: torch.Tensor, prefilter_sigma: float) -> np.ndarray:
    """(F, 3, H, W) → (F, H, W) float32 on 0..255: the clip on its main colour axis of change.

    The colour axis is the first principal direction of the frame-to-frame differences (BT.601
    luma when nothing changes), so an object that differs from its background in hue only is not
    lost to a luma projection. The result is lightly Gaussian-smoothed and stretched so that its
    0.5–99.5 percentiles span 0..255: Farnebäck regularises its solve with a fixed constant, so a
    blurred low-contrast clip read on its raw scale yields near-zero flow (DESIGN: 0.0006 px/frame
    on a blob moving 1.8 px/frame).
    """
    a = v.permute(0, 2, 3, 1).numpy().astype(np.float64)  # (F, H, W, 3)
    d = (a[1:] - a[:-1]).reshape(-1, 3)
    cov = d.T @ d
    axis = np.linalg.eigh(cov)[1][:, -1] if np.trace(cov) > 0 else np.array([0.299, 0.587, 0.114])
    g = (a @ axis).astype(np.float32)
    if prefilter_sigma > 0:
        g = np.stack([cv2.GaussianBlur(f, (0, 0), prefilter_sigma) for f in g])
    lo, hi = np.percentile(g, [0.5, 99.5])
    if hi - lo <= 0:
        lo, hi = float(g.min()), float(g.max())
    return ((g - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(g)).astype(np.float32)


def optical_flow(video, prefilter_sigma: float = 1.0, **farneback) -> np.ndarray:
    """Forward optical flow between consecutive frames (OpenCV Farnebäck, no learned weights).

    Flow ``i`` maps frame ``i`` to frame ``i+1``: ``x[i](p) ≈ x[i+1](p + flow[i](p))``.
    Computed on the clip's main colour axis of change, smoothed with a Gaussian of
    ``prefilter_sigma`` px and contrast-stretched to 0..255 (see :func:`_flow_channel`; this
    makes it read low-contrast and blurred clips, which raw luma does not). Identical
    consecutive frames get exactly zero flow. Keyword arguments override
    :data:`FARNEBACK_DEFAULTS` (``pyr_scale, levels, winsize, iterations, poly_n, poly_sigma,
    flags``).

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
    g = _flow_channel(v, prefilter_sigma)
    flows = np.zeros((len(g) - 1, g.shape[1], g.shape[2], 2), dtype=np.float32)
    for i in range(len(g) - 1):
        if torch.equal(v[i], v[i + 1]):
            continue  # Farnebäck is not exactly 0 on identical frames (~0.04 px of bias); the answer is.
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
    The paper reports dynamic degree drops slightly under STAS. This averages the objects' motion
    with the static background, so it is not a speed: use :func:`object_speed` for that.

    Returns:
        float in pixels/frame; 0 for a static clip.
    """
    return float(motion_magnitudes(video, flows, **farneback).mean())


# --------------------------------------------------------------------------------------------
# Object speed
# --------------------------------------------------------------------------------------------

#: Foreground pixels must differ from the background estimate by this many times the clip's
#: median difference (the noise floor: most pixels are background).
FOREGROUND_NOISE_FACTOR = 4.0


def foreground_masks(video) -> np.ndarray:
    """Pixels that differ from a static-background estimate (the per-pixel temporal median).

    ``d[i](p) = ||r[i](p) − median_p r[i](p)||`` with ``r[i] = x[i] − median_t x[t]`` (RGB L2:
    the difference from the background, less the frame's global colour shift, so that a frame
    that is brighter all over — a generated clip's first frame, say — is no foreground) is thresholded at
    ``max(Otsu(d), 4 · median(d))`` over the whole clip: Otsu's split of the difference
    histogram (Otsu 1979), floored above the noise level. Scale-free, so a low-contrast clip gives
    the same mask as its full-contrast original. A still object becomes part of the background.

    Returns:
        bool array ``(F, H, W)``; all False when no pixel ever differs from the background.

    Raises:
        ValueError: fewer than 3 frames (a median needs them).
    """
    v = as_video(video)
    _need_frames(v, 3)
    r = v - v.median(dim=0).values
    r = r - r.flatten(2).median(dim=2).values[..., None, None]    # a frame's global colour shift
    d = r.pow(2).sum(dim=1).sqrt().numpy()  # (F, H, W)
    top = float(d.max())
    if top <= 0:
        return np.zeros(d.shape, dtype=bool)
    u8 = np.clip(np.rint(d / top * 255), 0, 255).astype(np.uint8).reshape(1, -1)
    otsu = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0] / 255.0 * top
    return d > max(otsu, FOREGROUND_NOISE_FACTOR * float(np.median(d)))


def object_speeds(video, flows: np.ndarray | None = None, min_pixels: int = 9,
                  **farneback) -> np.ndarray:
    """Per-transition speed of the moving objects: the median flow magnitude over the foreground.

    Transition ``i``'s estimate is the median of ``||flow[i](p)||`` over the foreground pixels
    ``p`` of frame ``i`` (:func:`foreground_masks`, :func:`optical_flow`). Unlike the whole-frame
    mean (:func:`motion_magnitude`), it does not average the objects' motion with a static
    background. With several movers of different speeds it reads a pixel-weighted median of them.
    Validated on house-world clips of known velocity, including low-contrast, blurred and noisy
    versions (``tests/test_metrics.py``; notebook 06's validation table).

    Args:
        flows: precomputed :func:`optical_flow`.
        min_pixels: a frame with fewer foreground pixels gets nan.

    Returns:
        float64 array ``(F - 1,)`` in pixels/frame; nan where frame ``i`` has no foreground.
    """
    v = as_video(video)
    fg = foreground_masks(v)
    flows = optical_flow(v, **farneback) if flows is None else _check_flows(flows, v)
    mag = np.linalg.norm(flows.astype(np.float64), axis=-1)
    return np.array([np.median(mag[i][fg[i]]) if fg[i].sum() >= min_pixels else np.nan
                     for i in range(len(mag))])


def object_speed(video, flows: np.ndarray | None = None, min_pixels: int = 9, **farneback) -> float:
    """Speed of the moving objects: mean over transitions of :func:`object_speeds` (nan skipped).

    The mean, not the median: a generated clip from a causal video VAE moves mostly at its chunk
    seams and little within chunks, and its speed is the distance covered over the time taken.

    Returns:
        float in pixels/frame; 0.0 when no frame has a foreground (nothing moves).
    """
    s = object_speeds(video, flows, min_pixels, **farneback)
    return float(np.nanmean(s)) if np.isfinite(s).any() else 0.0


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Validation: every metric against inputs with a known answer
# --------------------------------------------------------------------------------------------

#: Generated-looking versions of a clip used by :func:`validation_table` (kwargs of :func:`degrade`).
DEGRADATIONS = {
    "clean": {},
    "low contrast (x0.2)": dict(contrast=0.2),
    "blurred (sigma 2.5 px)": dict(blur_sigma=2.5),
    "low contrast + blur + noise (0.01)": dict(contrast=0.2, blur_sigma=2.5, noise_std=0.01),
    "moves at chunk seams only (T=4) + low contrast + blur + noise": dict(
        contrast=0.2, blur_sigma=2.5, noise_std=0.01, seams_only=4),
}


def degrade(video, contrast: float = 1.0, blur_sigma: float = 0.0, noise_std: float = 0.0,
            seed: int = 0, seams_only: int = 0) -> torch.Tensor:
    """A clip made to look like a generated one: lower contrast, blur, noise, motion at seams.

    With ``seams_only = T`` every pixel frame shows the last frame of its latent chunk
    (:func:`stas.layout.latent_frame_of`), so all motion happens at the chunk seams, as in the
    decodes of the first house model; the mean speed over the clip is unchanged (for
    ``F = 1 + T·k``). Then each pixel's distance from the clip's mean colour is scaled by ``contrast``; each frame is
    blurred with a Gaussian of ``blur_sigma`` px; Gaussian noise of standard deviation
    ``noise_std`` (``[0, 1]`` units, seeded) is added; the result is clipped to ``[0, 1]``.

    Returns:
        float32 tensor ``(F, 3, H, W)`` in ``[0, 1]``.
    """
    v = as_video(video)
    if not 0 < contrast <= 1 or blur_sigma < 0 or noise_std < 0 or seams_only < 0:
        raise ValueError(f"need 0 < contrast <= 1, blur_sigma >= 0, noise_std >= 0, seams_only >= 0; "
                         f"got {contrast}, {blur_sigma}, {noise_std}, {seams_only}")
    if seams_only:
        v = v[[min(seams_only * latent_frame_of(i, seams_only), len(v) - 1) for i in range(len(v))]]
    mean = v.mean(dim=(0, 2, 3), keepdim=True)
    x = mean + (v - mean) * contrast if contrast != 1 else v
    if blur_sigma > 0:
        a = x.permute(0, 2, 3, 1).numpy()
        x = torch.from_numpy(np.stack([cv2.GaussianBlur(f, (0, 0), blur_sigma) for f in a])).permute(0, 3, 1, 2)
    if noise_std > 0:
        x = x + noise_std * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x.clamp(0.0, 1.0).contiguous()


def _textured_frame(size: int, seed: int) -> torch.Tensor:
    """A smooth random (3, size, size) texture in [0.2, 0.8]."""
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), 2.0)
    t = (t - t.min()) / (t.max() - t.min())
    return torch.from_numpy(0.2 + 0.6 * t).permute(2, 0, 1)


def _offsets_video(frame: torch.Tensor, offsets) -> torch.Tensor:
    """Frame i = ``frame + offsets[i]`` (a uniform brightness change per frame)."""
    return frame[None] + torch.tensor(offsets, dtype=torch.float32).view(-1, 1, 1, 1)


def validation_table(moving_clips, temporal_factor: int = 4, num_frames: int = 29, size: int = 64,
                     speed_tolerance: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Every metric of this module on inputs whose answer is known, as a table.

    Args:
        moving_clips: sequence of ``(video, speed)``: clips of objects moving at a known speed
            (pixels/frame, the mean over the moving objects), e.g. house-world clips with one
            mover. Each is measured clean and in every :data:`DEGRADATIONS` version.
        temporal_factor: ``T`` of the planted seam clips (a ``T = 1`` clip is added as well).
        num_frames, size: frames (``1 + T·k``) and side of the constructed clips.
        speed_tolerance: relative tolerance of the speed rows (the issue's 20 %).
        seed: seeds the constructed textures and the noise.

    Rows (``known answer`` and ``measured`` are floats; nan means "not scored"):

    * ``object_speed`` per degradation: known = mean true speed, measured = mean estimate;
      within tolerance iff *every* clip is within ``speed_tolerance`` (``max rel error``).
    * ``motion_magnitude`` (whole-frame mean flow) on the same clips: shown against the same
      known speed, to show it is not one.
    * ``flicker`` / ``flicker_score`` / ``is_static`` on a static texture whose brightness
      alternates by 0.02, and ``flicker_score`` on the fastest moving clip (VBench: nan, left out).
    * ``seam_excess`` / ``first`` on a static texture with a 0.05 step at every chunk seam and
      0.03 at ``0 → 1``; ``seam_excess`` on a uniform drift (0) and on the moving clips (≈ 0:
      real motion has no seam structure); ``per_transition`` of a ``T = 1`` clip.
    * ``flow_warp_error`` on a texture translating 2 px/frame (≈ 0, against its flicker).

    Returns:
        pandas DataFrame with columns ``metric, input, known answer, measured, tolerance,
        max rel error, within tolerance``.

    Raises:
        ValueError: no moving clip, or a clip's known speed is not > 0.
    """
    clips = [(as_video(v), float(s)) for v, s in moving_clips]
    if not clips:
        raise ValueError("validation_table needs at least one moving clip of known speed")
    if any(not s > 0 for _, s in clips):
        raise ValueError("every moving clip needs a known speed > 0 px/frame")
    rows = []

    def row(metric, inp, known, measured, tol, ok, rel=float("nan")):
        rows.append({"metric": metric, "input": inp, "known answer": float(known),
                     "measured": float(measured), "tolerance": tol, "max rel error": float(rel),
                     "within tolerance": bool(ok)})

    truth = np.array([s for _, s in clips])
    n = len(clips)
    for name, kw in DEGRADATIONS.items():
        est, whole = [], []
        for j, (v, _) in enumerate(clips):
            x = degrade(v, seed=seed + j, **kw)
            flows = optical_flow(x)
            est.append(object_speed(x, flows))
            whole.append(motion_magnitude(x, flows))
        rel = np.abs(np.array(est) / truth - 1)
        relw = np.abs(np.array(whole) / truth - 1)
        row("object_speed", f"{n} clips of known speed, {name}", truth.mean(), np.mean(est),
            f"each clip within {speed_tolerance:.0%}", rel.max() <= speed_tolerance, rel.max())
        row("motion_magnitude", f"{n} clips of known speed, {name}", truth.mean(), np.mean(whole),
            f"each clip within {speed_tolerance:.0%}", relw.max() <= speed_tolerance, relw.max())

    T = _check_temporal_factor(temporal_factor)
    tex = _textured_frame(size, seed)
    amp = 0.02
    flick = _offsets_video(tex, [amp * (i % 2) for i in range(num_frames)])
    row("flicker", "static texture, brightness alternating by 0.02", amp, flicker(flick), "1e-6",
        abs(flicker(flick) - amp) < 1e-6)
    row("is_static", "static texture, brightness alternating by 0.02", 1.0, float(is_static(flick)),
        "exact", is_static(flick))
    row("flicker_score", "static texture, brightness alternating by 0.02", 1 - amp,
        flicker_score(flick), "1e-6", abs(flicker_score(flick) - (1 - amp)) < 1e-6)
    fast, fast_speed = max(clips, key=lambda c: c[1])
    moving_score = flicker_score(fast)
    row("flicker_score", f"fastest moving clip ({fast_speed:.2f} px/frame): VBench leaves it out",
        float("nan"), moving_score, "nan", math.isnan(moving_score))

    step, first_step = 0.05, 0.03
    lat = [latent_frame_of(i, T) for i in range(num_frames)]
    seams = _offsets_video(0.5 * tex, [first_step * (k >= 1) + step * max(k - 1, 0) for k in lat])
    prof = seam_profile(seams, T)
    row("seam_excess", f"static texture, step 0.05 at every chunk seam (T={T})", step,
        prof["seam_excess"], "1e-6", abs(prof["seam_excess"] - step) < 1e-6)
    row("first (0->1 change)", "same clip, step 0.03 at 0->1", first_step, prof["first"], "1e-6",
        abs(prof["first"] - first_step) < 1e-6)
    drift = seam_profile(_offsets_video(0.5 * tex, [0.005 * i for i in range(num_frames)]), T)
    row("seam_excess", "static texture, uniform drift 0.005/frame", 0.0, drift["seam_excess"], "1e-6",
        abs(drift["seam_excess"]) < 1e-6)
    profs = [seam_profile(v, T, strict=False) for v, _ in clips]
    ex = np.array([p["seam_excess"] for p in profs])
    per = np.array([p["per_transition"] for p in profs])
    row("seam_excess", f"{n} moving clips (no seam structure)", 0.0, np.nanmean(ex),
        "|excess| <= 10% of per-transition change", bool((np.abs(ex) <= 0.1 * per).all()),
        np.nanmax(np.abs(ex) / per))
    uni = seam_profile(_offsets_video(0.5 * tex, [amp * i for i in range(9)]), 1)
    row("per_transition", "T=1 (per-frame VAE), change 0.02 per transition", amp,
        uni["per_transition"], "1e-6; seam_excess nan",
        abs(uni["per_transition"] - amp) < 1e-6 and math.isnan(uni["seam_excess"]))

    shift = 2
    big = _textured_frame(size + shift * 8 + 16, seed + 1)
    x0 = 8 + shift * 8
    trans = torch.stack([big[:, 8:8 + size, x0 - shift * t: x0 - shift * t + size] for t in range(9)])
    warp, raw = flow_warp_error(trans), flicker(trans)
    row("flow_warp_error", "texture translating 2 px/frame", 0.0, warp, "< 10% of its flicker",
        warp < 0.1 * raw, warp / raw)
    return pd.DataFrame(rows)
