"""A simple detector for the house world's known palette, and a clip-vs-prompt score.

Per pixel: the nearest palette colour (RGB distance), accepted when it is closer than ``max_dist``
and the pixel is saturated/bright enough not to be background (backgrounds are low-saturation and
darker than 0.6). Per frame, the largest connected component of the colour's mask gives presence,
centroid, area and a shape guess from its fill of its bounding box (square ~1.0, circle ~0.79,
triangle ~0.5).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from .world import COLOURS, PALETTE, parse_prompt

try:  # connected components; fall back to the whole mask without OpenCV
    import cv2
except Exception:  # pragma: no cover
    cv2 = None

_PAL = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)


def _as_numpy(video) -> np.ndarray:
    if isinstance(video, torch.Tensor):
        video = video.detach().float().cpu().numpy()
    v = np.asarray(video, dtype=np.float32)
    if v.ndim != 4 or v.shape[1] != 3:
        raise ValueError(f"expected video (F, 3, H, W), got {v.shape}")
    return v


def colour_masks(video, max_dist: float = 0.38) -> np.ndarray:
    """(F, H, W) int map: palette index per pixel, -1 for background/unknown."""
    v = _as_numpy(video).transpose(0, 2, 3, 1)  # F,H,W,3
    d = np.linalg.norm(v[..., None, :] - _PAL[None, None, None], axis=-1)  # F,H,W,K
    idx = d.argmin(-1)
    dmin = d.min(-1)
    sat = v.max(-1) - v.min(-1)
    bright = v.max(-1)
    is_white = idx == COLOURS.index("white")
    ok = (dmin < max_dist) & np.where(is_white, v.min(-1) > 0.72, (sat > 0.35) & (bright > 0.5))
    return np.where(ok, idx, -1)


def _shape_from_fill(fill: float, aspect: float) -> str:
    if fill > 0.88:
        return "square"
    if fill > 0.64:
        return "circle"
    return "triangle"


def detect(video, colour: str, min_area: int = 12, masks=None):
    """Per frame: dict(present, centroid (x, y) px, area px, shape guess, fill) for ``colour``."""
    if colour not in PALETTE:
        raise ValueError(f"unknown colour {colour!r}; palette: {COLOURS}")
    m_all = colour_masks(video) if masks is None else masks
    k = COLOURS.index(colour)
    out = []
    for f in range(m_all.shape[0]):
        m = (m_all[f] == k).astype(np.uint8)
        if cv2 is not None and m.any():
            n, lab, stats, cents = cv2.connectedComponentsWithStats(m, connectivity=8)
            j = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            area = int(stats[j, cv2.CC_STAT_AREA])
            w, h = int(stats[j, cv2.CC_STAT_WIDTH]), int(stats[j, cv2.CC_STAT_HEIGHT])
            cx, cy = float(cents[j, 0]) + 0.5, float(cents[j, 1]) + 0.5
        else:
            ys, xs = np.nonzero(m)
            area = int(len(xs))
            if area:
                w, h = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
                cx, cy = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
            else:
                w = h = 0
                cx = cy = float("nan")
        present = area >= min_area
        fill = area / max(w * h, 1)
        out.append(dict(present=bool(present), centroid=(cx, cy) if present else (float("nan"),) * 2,
                        area=area, shape=_shape_from_fill(fill, w / max(h, 1)) if present else None,
                        fill=float(fill)))
    return out


def score_clip(video, prompt: str, persist_frac: float = 0.8):
    """Score a clip against its prompt, per named object and overall.

    Per object: ``colour_frac`` (frames where the colour is present), ``shape`` (majority guess over
    present frames; a tie goes to the shape seen first), ``shape_ok``, ``persists`` (present in >= persist_frac of frames, and no gap
    longer than 3 frames), ``motion_ok`` (net centroid motion agrees with the named motion, >= 8 px
    for left/right/up/down, < 8 px for still; None when unknowable). Overall ``ok``: every named
    object's colour is present (in >= half the frames) with the right shape; ``persist_ok``: all persist.
    """
    masks = colour_masks(video)
    objs = parse_prompt(prompt)
    res = []
    for ob in objs:
        det = detect(video, ob["colour"], masks=masks)
        pres = np.array([d["present"] for d in det])
        frac = float(pres.mean()) if len(pres) else 0.0
        shapes = [d["shape"] for d in det if d["present"]]
        # majority over present frames, a tie going to the shape seen first (max over a set broke ties
        # by string hash order, which Python randomises per process: scores differed run to run)
        shape = Counter(shapes).most_common(1)[0][0] if shapes else None
        gaps = 0
        run = 0
        for p in pres:
            run = 0 if p else run + 1
            gaps = max(gaps, run)
        motion_ok = None
        if pres.sum() >= 2 and ob["motion"] in ("left", "right", "up", "down", "still"):
            cs = np.array([d["centroid"] for d in det if d["present"]])
            dx, dy = cs[-1] - cs[0]
            motion_ok = {"left": dx < -8, "right": dx > 8, "up": dy < -8, "down": dy > 8,
                         "still": abs(dx) < 8 and abs(dy) < 8}[ob["motion"]]
            motion_ok = bool(motion_ok)
        res.append(dict(colour=ob["colour"], shape_expected=ob["shape"], motion=ob["motion"],
                        colour_frac=frac, shape=shape, shape_ok=shape == ob["shape"],
                        persists=bool(frac >= persist_frac and gaps <= 3), motion_ok=motion_ok))
    ok = bool(res) and all(r["colour_frac"] >= 0.5 and r["shape_ok"] for r in res)
    colour_ok = bool(res) and all(r["colour_frac"] >= 0.5 for r in res)
    return dict(objects=res, ok=ok, colour_ok=colour_ok, persist_ok=bool(res) and all(r["persists"] for r in res))
