"""The house world: deterministic procedural clips of coloured shapes, with captions and ground truth.

A clip is 1-3 flat-coloured shapes (square / circle / triangle) that move (left, right, up, down),
bounce around the frame, or stay still, over a low-saturation background (flat or gradient), drawn
back to front (so they can occlude each other). The first object is always named in the caption;
the second is named in most captions; a third is a silent distractor sometimes.

Everything is plain torch, vectorised over a batch of clips, so the same code renders one clip on
the CPU (``sample_clip``) and a few thousand clips per second on a GPU (``render_batch``) for
training. Parameters are drawn with numpy from a seed, so a seed fully determines a clip.

Numbers that matter: 128x128 pixels, 29 frames (1 + 4*7) by default; object "radius" (half the
bounding-box side) 9-18 px; speeds 1.2-2.4 px/frame, so a mover travels 35-70 px in a clip.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

NUM_FRAMES = 29
SIZE = 128

# The known palette (RGB in [0, 1]). Backgrounds are kept darker and far less saturated than these.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.10, 0.80, 0.18),
    "blue": (0.12, 0.30, 0.98),
    "yellow": (0.98, 0.90, 0.10),
    "magenta": (0.90, 0.12, 0.88),
    "cyan": (0.10, 0.88, 0.92),
    "white": (0.97, 0.97, 0.97),
}
COLOURS = list(PALETTE)
SHAPES = ["square", "circle", "triangle"]
MOTIONS = ["left", "right", "up", "down", "bounce", "still"]

SHAPE_WORDS = {"square": ["square", "square", "box"], "circle": ["circle", "circle", "ball"], "triangle": ["triangle"]}
MOTION_WORDS = {
    "left": ["moves left", "slides to the left", "travels left", "drifts leftward", "goes left"],
    "right": ["moves right", "slides to the right", "travels right", "drifts rightward", "goes right"],
    "up": ["moves up", "rises", "travels upward", "drifts up", "goes up"],
    "down": ["moves down", "falls", "travels downward", "drifts down", "goes down"],
    "bounce": ["bounces around", "bounces", "ricochets around the frame", "bounces off the walls"],
    "still": ["stays still", "rests", "sits still", "does not move"],
}
# ing-forms for the "while a X is moving up" clause
MOTION_ING = {
    "left": ["moving left", "sliding left"],
    "right": ["moving right", "sliding right"],
    "up": ["moving up", "rising"],
    "down": ["moving down", "falling"],
    "bounce": ["bouncing around", "bouncing"],
    "still": ["standing still", "resting"],
}


@dataclass
class ClipParams:
    """Per-clip parameters, batched: arrays with a leading clip dimension B and object dimension O."""

    colour: np.ndarray  # (B, O) int palette index
    shape: np.ndarray  # (B, O) int
    motion: np.ndarray  # (B, O) int
    radius: np.ndarray  # (B, O) float px (at SIZE)
    p0: np.ndarray  # (B, O, 2) float px start centre (x, y)
    vel: np.ndarray  # (B, O, 2) float px/frame
    active: np.ndarray  # (B, O) bool (object exists)
    bg: np.ndarray  # (B, 2, 3) float two background colours (gradient ends)
    bg_dir: np.ndarray  # (B, 2) float unit gradient direction
    caption: list  # B strings


def _sample_one(rng: np.random.Generator, size: int, num_frames: int):
    n_obj = int(rng.choice([1, 2, 3], p=[0.3, 0.55, 0.15]))
    cols = rng.choice(len(COLOURS), size=n_obj, replace=False)
    shapes = rng.integers(0, len(SHAPES), size=n_obj)
    motions = rng.choice(len(MOTIONS), size=n_obj, p=[0.2, 0.2, 0.15, 0.15, 0.18, 0.12])
    if n_obj >= 2 and rng.random() < 0.5:
        motions[1] = MOTIONS.index("still")  # "moves left past a blue circle"
    s = size / 128.0
    radius = rng.uniform(9, 18, size=n_obj) * s
    p0 = np.zeros((n_obj, 2))
    vel = np.zeros((n_obj, 2))
    span = max(num_frames - 1, 1)
    for i in range(n_obj):
        r = radius[i]
        m = MOTIONS[motions[i]]
        speed = rng.uniform(1.2, 2.4) * s
        lo, hi = r + 2 * s, size - r - 2 * s
        p0[i] = rng.uniform(lo, hi, size=2)
        travel = min(speed * span, hi - lo)
        speed = travel / span
        if m in ("left", "right"):
            start = rng.uniform(lo + travel, hi) if m == "left" else rng.uniform(lo, hi - travel)
            p0[i, 0] = start
            vel[i, 0] = -speed if m == "left" else speed
        elif m in ("up", "down"):
            start = rng.uniform(lo + travel, hi) if m == "up" else rng.uniform(lo, hi - travel)
            p0[i, 1] = start
            vel[i, 1] = -speed if m == "up" else speed
        elif m == "bounce":
            ang = rng.uniform(0, 2 * np.pi)
            sp = rng.uniform(2.5, 4.0) * s
            vel[i] = sp * np.array([np.cos(ang), np.sin(ang)])
    # background: dark-to-mid, low saturation, optional gradient
    base = rng.uniform(0.08, 0.45)
    tint = rng.uniform(-0.06, 0.06, size=3)
    c1 = np.clip(base + tint, 0, 1)
    if rng.random() < 0.5:
        c2 = np.clip(c1 + rng.uniform(-0.15, 0.15) + rng.uniform(-0.04, 0.04, size=3), 0.03, 0.55)
    else:
        c2 = c1.copy()
    ang = rng.uniform(0, 2 * np.pi)
    caption = make_caption(rng, cols, shapes, motions)
    return dict(colour=cols, shape=shapes, motion=motions, radius=radius, p0=p0, vel=vel,
                bg=np.stack([c1, c2]), bg_dir=np.array([np.cos(ang), np.sin(ang)]), caption=caption)


def make_caption(rng: np.random.Generator, cols, shapes, motions) -> str:
    """Caption grammar: names the first object (colour, shape, motion) and usually the second."""
    def obj(i):
        return f"{COLOURS[cols[i]]} {rng.choice(SHAPE_WORDS[SHAPES[shapes[i]]])}"

    m0 = MOTIONS[motions[0]]
    art = rng.choice(["a", "the"]) if rng.random() < 0.3 else "a"
    first = f"{art} {obj(0)} {rng.choice(MOTION_WORDS[m0])}"
    if len(cols) == 1 or rng.random() < 0.15:
        return first
    m1 = MOTIONS[motions[1]]
    if m1 == "still" and m0 in ("left", "right", "up", "down", "bounce") and rng.random() < 0.6:
        return f"{first} past a {obj(1)}"
    if m1 == "still" and rng.random() < 0.5:
        return f"{first} next to a {obj(1)}"
    if rng.random() < 0.5:
        return f"{first} while a {obj(1)} is {rng.choice(MOTION_ING[m1])}"
    return f"{first} and a {obj(1)} {rng.choice(MOTION_WORDS[m1])}"


def sample_params(seeds, size: int = SIZE, num_frames: int = NUM_FRAMES, max_objects: int = 3) -> ClipParams:
    """Draw parameters for a list of integer seeds (one numpy Generator per seed: fully deterministic)."""
    seeds = [int(s) for s in seeds]
    B, O = len(seeds), max_objects
    out = dict(colour=np.zeros((B, O), np.int64), shape=np.zeros((B, O), np.int64),
               motion=np.zeros((B, O), np.int64), radius=np.zeros((B, O)), p0=np.zeros((B, O, 2)),
               vel=np.zeros((B, O, 2)), active=np.zeros((B, O), bool), bg=np.zeros((B, 2, 3)),
               bg_dir=np.zeros((B, 2)))
    caps = []
    for b, s in enumerate(seeds):
        d = _sample_one(np.random.default_rng([s, 20260311]), size, num_frames)
        n = len(d["colour"])
        for k in ("colour", "shape", "motion", "radius", "p0", "vel"):
            out[k][b, :n] = d[k]
        out["active"][b, :n] = True
        out["bg"][b] = d["bg"]
        out["bg_dir"][b] = d["bg_dir"]
        caps.append(d["caption"])
    return ClipParams(caption=caps, **out)


def _reflect(p, lo, hi):
    """Triangle-wave reflection of positions p into [lo, hi] (bouncing)."""
    L = (hi - lo).clamp(min=1e-3)
    u = torch.remainder(p - lo, 2 * L)
    return lo + L - (u - L).abs()


def trajectories(params: ClipParams, num_frames: int, size: int, device="cpu"):
    """Centres (B, O, F, 2) in px, with bouncing reflection (only bouncers ever reach a wall)."""
    p0 = torch.as_tensor(params.p0, dtype=torch.float32, device=device)
    v = torch.as_tensor(params.vel, dtype=torch.float32, device=device)
    r = torch.as_tensor(params.radius, dtype=torch.float32, device=device)
    t = torch.arange(num_frames, dtype=torch.float32, device=device)
    p = p0[:, :, None, :] + v[:, :, None, :] * t[None, None, :, None]
    lo = r[:, :, None, None]
    return _reflect(p, lo, size - lo)


def _shape_sdf(shape_id, dx, dy, r):
    """Signed distance (px, negative inside) for square / circle / upward triangle, all broadcast."""
    sq = torch.maximum(dx.abs(), dy.abs()) - r
    ci = torch.sqrt(dx * dx + dy * dy + 1e-6) - r
    # triangle, apex up at -1.2r, base at +0.6r, half-width r at the base: centroid at the centre,
    # area 1.8 r^2 (fill of its bounding box 0.5)
    side = (1.8 * dx.abs() - (dy + 1.2 * r)) / 2.0591260
    tri = torch.maximum(side, dy - 0.6 * r)
    sid = shape_id
    return torch.where(sid == 0, sq, torch.where(sid == 1, ci, tri))


def render_batch(params: ClipParams, num_frames: int = NUM_FRAMES, size: int = SIZE, device="cpu",
                 dtype=torch.float32, frames=None):
    """Render clips: returns video (B, F, 3, H, W) in [0, 1], centres (B, O, F, 2), visibility (B, O, F).

    ``frames``: optional list of frame indices to render (e.g. [0] for images, or every 4th frame).
    Visibility is the fraction of the object's own (unoccluded, in-frame) area that is visible.
    """
    B, O = params.colour.shape
    cen = trajectories(params, num_frames, size, device)  # (B,O,F,2)
    if frames is not None:
        cen = cen[:, :, list(frames)]
    F = cen.shape[2]
    coords = torch.arange(size, dtype=torch.float32, device=device) + 0.5
    X = coords[None, None, None, None, :]
    Y = coords[None, None, None, :, None]
    bgc = torch.as_tensor(params.bg, dtype=torch.float32, device=device)  # (B,2,3)
    bd = torch.as_tensor(params.bg_dir, dtype=torch.float32, device=device)
    g = ((X[0, 0] - size / 2) * bd[:, 0, None, None, None] + (Y[0, 0] - size / 2) * bd[:, 1, None, None, None])
    g = (g / size + 0.5).clamp(0, 1)  # (B,1,H,W)
    video = bgc[:, 0, :, None, None] * (1 - g) + bgc[:, 1, :, None, None] * g  # (B,3,H,W)
    video = video[:, None].expand(B, F, 3, size, size).clone()
    pal = torch.tensor([PALETTE[c] for c in COLOURS], dtype=torch.float32, device=device)
    col = pal[torch.as_tensor(params.colour, device=device)]  # (B,O,3)
    shp = torch.as_tensor(params.shape, device=device)
    rad = torch.as_tensor(params.radius, dtype=torch.float32, device=device)
    act = torch.as_tensor(params.active, device=device)
    masks = []
    for o in range(O):
        dx = X - cen[:, o, :, 0][:, :, None, None, None]
        dy = Y - cen[:, o, :, 1][:, :, None, None, None]
        sdf = _shape_sdf(shp[:, o][:, None, None, None, None], dx, dy, rad[:, o][:, None, None, None, None])
        a = (0.5 - sdf).clamp(0, 1) * act[:, o][:, None, None, None, None]  # (B,F,1,H,W) anti-aliased
        masks.append(a)
        video = video * (1 - a) + col[:, o][:, None, :, None, None] * a
    # visibility: own area not covered by later objects, over own full area (full area computed unclipped)
    vis = torch.zeros(B, O, F, device=device)
    for o in range(O):
        own = masks[o]
        cover = torch.zeros_like(own)
        for o2 in range(o + 1, O):
            cover = torch.maximum(cover, masks[o2])
        visible = (own * (1 - cover)).sum(dim=(2, 3, 4))
        r = rad[:, o]
        full_area = torch.where(shp[:, o] == 0, 4 * r * r, torch.where(shp[:, o] == 1, np.pi * r * r, 1.8 * r * r))
        vis[:, o] = (visible / full_area.clamp(min=1)[:, None]).clamp(0, 1) * act[:, o][:, None]
    return video.to(dtype), cen, vis


def ground_truth(params: ClipParams, b: int, cen, vis):
    """Per-frame, per-object ground truth of clip b as plain python (JSON-able)."""
    objs = []
    for o in range(params.colour.shape[1]):
        if not params.active[b, o]:
            continue
        objs.append(dict(
            colour=COLOURS[params.colour[b, o]], shape=SHAPES[params.shape[b, o]],
            motion=MOTIONS[params.motion[b, o]], size=float(2 * params.radius[b, o]),
            position=[[float(x), float(y)] for x, y in cen[b, o].cpu().tolist()],
            visibility=[float(v) for v in vis[b, o].cpu().tolist()],
            named_in_caption=o < 2 and (o == 0 or _names(params.caption[b], params, b, o)),
        ))
    return dict(caption=params.caption[b], objects=objs)


def _names(caption, params, b, o):
    return COLOURS[params.colour[b, o]] in caption.split()


def sample_clip(seed: int, num_frames: int = NUM_FRAMES, size: int = SIZE):
    """One clip on the CPU: (video (F,3,H,W) float in [0,1], caption, ground truth dict).

    Ground truth: {"caption", "objects": [{colour, shape, motion, size (px, bbox side),
    position: F x [x, y] centre px, visibility: F fractions, named_in_caption}]}.
    """
    p = sample_params([seed], size=size, num_frames=num_frames)
    video, cen, vis = render_batch(p, num_frames, size)
    return video[0], p.caption[0], ground_truth(p, 0, cen, vis)


class ClipStream:
    """Batched on-device generator for training: ``next(batch)`` -> (video (B,3,F,H,W) in [-1,1], captions).

    Seeds run sequentially from ``start_seed`` so a stream position is reproducible (resume-safe).
    """

    def __init__(self, start_seed: int = 0, num_frames: int = NUM_FRAMES, size: int = SIZE, device="cpu"):
        self.seed = start_seed
        self.num_frames, self.size, self.device = num_frames, size, device

    def next(self, batch: int, dtype=torch.float32):
        seeds = range(self.seed, self.seed + batch)
        self.seed += batch
        p = sample_params(seeds, self.size, self.num_frames)
        v, _, _ = render_batch(p, self.num_frames, self.size, device=self.device, dtype=dtype)
        return (v.permute(0, 2, 1, 3, 4) * 2 - 1).contiguous(), p.caption


# ---------------------------------------------------------------- prompt parsing (for evaluation)
_SHAPE_SYN = {w: s for s, ws in SHAPE_WORDS.items() for w in ws}
_SHAPE_SYN.update({"squares": "square", "circles": "circle", "triangles": "triangle", "balls": "circle",
                   "disc": "circle", "disk": "circle", "block": "square", "cube": "square"})
_MOTION_PAT = [
    ("left", r"\bleft|leftward"), ("right", r"\bright|rightward"), ("up", r"\bup\b|upward|rises|rising|climb"),
    ("down", r"\bdown\b|downward|falls|falling|drops|sinks"), ("bounce", r"bounc|ricochet"),
    ("still", r"still|rests|resting|does not move|static|motionless|stationary"),
]


def parse_prompt(prompt: str):
    """Objects a caption names, in order: [{"colour", "shape", "motion" (or None)}].

    Each "<colour> <shape>" pair starts an object; the motion is the first motion word between it and
    the next object (``past a X`` / ``next to a X`` leave X's motion None: it is static in the world).
    """
    text = prompt.lower()
    colour_re = "|".join(COLOURS)
    shape_re = "|".join(sorted(_SHAPE_SYN, key=len, reverse=True))
    matches = list(re.finditer(rf"\b({colour_re})\s+({shape_re})\b", text))
    objs = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        seg = text[m.end():end]
        motion = None
        best = None
        for name, pat in _MOTION_PAT:
            mm = re.search(pat, seg)
            if mm and (best is None or mm.start() < best):
                best, motion = mm.start(), name
        # "X ... past a Y": Y is static
        before = text[max(0, m.start() - 12):m.start()]
        if motion is None and re.search(r"(past|next to)\s+(a|an|the)\s*$", before):
            motion = "still"
        objs.append(dict(colour=m.group(1), shape=_SHAPE_SYN[m.group(2)], motion=motion))
    return objs


EVAL_PROMPTS = [
    "a red square moves left",
    "a blue circle moves right",
    "a green triangle moves up",
    "a yellow square moves down",
    "a magenta circle bounces around",
    "a cyan triangle stays still",
    "a white square moves right past a red circle",
    "a blue square moves left past a yellow triangle",
    "a green circle moves down next to a magenta square",
    "a red triangle bounces while a cyan circle is moving left",
    "a yellow ball drifts leftward",
    "the white triangle rises",
    "a magenta box slides to the right",
    "a cyan square falls and a green triangle moves right",
    "a blue triangle bounces off the walls",
    "a red circle goes up past a white square",
    "a green square travels left",
    "a white circle falls",
    "a cyan box drifts rightward",
    "a yellow triangle ricochets around the frame",
    "a blue ball rests",
    "a magenta triangle travels upward",
    "a red square sits still next to a blue circle",
    "a green triangle drifts down past a white box",
    "a yellow circle goes right and a magenta square moves up",
    "a white triangle slides to the left",
    "a cyan circle rises past a red triangle",
    "a blue square bounces around",
    "a magenta ball goes left next to a green square",
    "a yellow box travels downward",
    "a red triangle drifts up while a cyan square is moving right",
    "a green circle does not move",
]
