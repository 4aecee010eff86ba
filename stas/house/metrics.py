"""House-world metrics: ground truth from the prompt, matched real clips, the VAE round trip.

The world knows every object's colour, shape and motion from the caption (`world.parse_prompt`), so
prompt adherence, persistence, motion direction and trajectory smoothness are exact on house-world
prompts; on any other prompt they are "not applicable" (NaN). Registered with `stas.registry` as the
house model's metrics (``METRICS``), reference clips (``real_clips``) and VAE round trip
(``vae_round_trip``), so `stas.evaluate` uses them for the house model only. (The house feature net
was removed: at 29-33 % held-out accuracy on its main attribute its features measured nothing, so the
house model registers no feature extractor and gets no KID until one reaches >= 80 %.)
"""
from __future__ import annotations

import numpy as np

from . import world
from .detect import detect, score_clip

HOUSE_METRICS = ("adherence", "colour_ok", "persist_ok", "shape_acc", "motion_acc", "traj_jerk", "size_cv")


def applies(prompt) -> bool:
    """Whether ``prompt`` names at least one house-world object (a palette colour and a shape)."""
    return bool(prompt) and bool(world.parse_prompt(prompt))


def house_metrics(video, prompt: str) -> dict:
    """Ground-truth metrics of one clip (F, 3, H, W) in [0, 1] against its prompt: ``adherence`` (every
    named object's colour present with the right shape), ``colour_ok``, ``persist_ok``, ``shape_acc``,
    ``motion_acc`` (`stas.house.detect.score_clip`), and for the first named object ``traj_jerk``
    (mean |second difference| of the detected centroid, px/frame²) and ``size_cv`` (std / mean of its
    detected area). NaN where nothing is detectable, and every value NaN ("not applicable", never 0)
    for a prompt that names no house-world object (`applies`)."""
    nan = float("nan")
    if not applies(prompt):
        return dict.fromkeys(HOUSE_METRICS, nan)
    sc = score_clip(video, prompt)
    objs = sc["objects"]
    out = dict(adherence=float(sc["ok"]), colour_ok=float(sc["colour_ok"]), persist_ok=float(sc["persist_ok"]),
               shape_acc=float(np.mean([o["shape_ok"] for o in objs])) if objs else nan,
               traj_jerk=nan, size_cv=nan)
    mo = [o["motion_ok"] for o in objs if o["motion_ok"] is not None]
    out["motion_acc"] = float(np.mean(mo)) if mo else nan
    if not objs:
        return out
    det = [d for d in detect(video, objs[0]["colour"]) if d["present"]]
    if len(det) >= 3:
        c = np.array([d["centroid"] for d in det])
        out["traj_jerk"] = float(np.linalg.norm(np.diff(c, 2, axis=0), axis=1).mean())
        a = np.array([d["area"] for d in det], dtype=float)
        out["size_cv"] = float(a.std() / a.mean())
    return out


def matched_world_seeds(prompts, per_prompt: int = 4, start: int = 4_000_000_000, max_scan: int = 200_000) -> list:
    """World seeds whose first object matches each prompt's first named object (colour, shape and,
    when named, motion): ``per_prompt`` per prompt (fewer if not found within ``max_scan`` seeds)."""
    want = []
    for p in prompts:
        objs = world.parse_prompt(p)
        want.append(objs[0] if objs else None)
    found = [[] for _ in prompts]
    s = start
    while s < start + max_scan and any(w is not None and len(f) < per_prompt for w, f in zip(want, found)):
        par = world.sample_params(range(s, s + 2000))
        for j in range(2000):
            key = (world.COLOURS[par.colour[j, 0]], world.SHAPES[par.shape[j, 0]], world.MOTIONS[par.motion[j, 0]])
            for w, f in zip(want, found):
                if w is not None and len(f) < per_prompt and key[:2] == (w["colour"], w["shape"]) \
                        and (w["motion"] is None or w["motion"] == key[2]):
                    f.append(s + j)
                    break
        s += 2000
    return [x for f in found for x in f]


def real_clips(prompts, per_prompt: int = 4, num_frames: int | None = None, variant: str = "causal"):
    """Real world clips matched to ``prompts`` (`matched_world_seeds`), rendered at the world's
    128 x 128 (``num_frames`` default 29): a list of ``(prompt, seed, clip)``, each clip the frames
    ``variant``'s pipeline returns (causal: all; uniform: 0, 4, ..., the frames its VAE models), so
    that its rows sit on the generated clips' time axis."""
    from .models import pixel_frames

    nf = num_frames or world.NUM_FRAMES
    fr = pixel_frames(variant, nf)
    out = []
    for p in prompts:
        seeds = matched_world_seeds([p], per_prompt)
        if seeds:
            v, _, _ = world.render_batch(world.sample_params(seeds, num_frames=nf), nf)
            out += [(p, s, clip[fr]) for s, clip in zip(seeds, v)]
    return out


def vae_round_trip(pipe, clips, variant: str = "causal") -> list:
    """``clips`` (each (F, 3, H, W) in [0, 1], world size: the frames ``variant``'s pipeline returns, as
    `real_clips` gives them) after ``pipe.vae``'s encode (posterior mean, as the VAE was trained) and
    decode, no transformer involved: a list of (F, 3, H, W) float32 CPU clips in [0, 1]. Causal: the
    clip encoded as a video (`stas.house.train.vae_encode`); uniform: every frame encoded alone. What
    the VAE alone does to the temporal metrics (the ``vae_floor`` reference rows of `stas.evaluate`)."""
    import torch

    from .train import encode_frames_alone, vae_encode

    vae, out = pipe.vae, []
    with torch.no_grad():
        for c in clips:
            x = torch.as_tensor(c, dtype=torch.float32).permute(1, 0, 2, 3)[None] * 2 - 1   # (1, 3, F, H, W)
            x = x.to(vae.device, vae.dtype)
            z = vae_encode(vae, x, variant) if variant == "causal" else encode_frames_alone(vae, x)
            rec = vae.decode(z).sample[0].float().clamp(-1, 1)
            out.append(((rec + 1) / 2).permute(1, 0, 2, 3).cpu())
    return out


def known_speed_clips(n: int, max_seed: int = 400) -> list:
    """World clips with one moving object (the others still, never occluded below 90 %) and that
    object's true mean speed from the world's own trajectory: ``[(video (29, 3, 128, 128), px/frame)]``,
    the inputs with a known answer of `stas.metrics.validation_table`. Raises ``ValueError`` when
    seeds 0..max_seed-1 hold fewer than ``n``."""
    out = []
    for seed in range(max_seed):
        v, _, gt = world.sample_clip(seed)
        movers = [o for o in gt["objects"] if o["motion"] != "still"]
        if len(movers) == 1 and min(min(o["visibility"]) for o in gt["objects"]) > 0.9:
            p = np.array(movers[0]["position"])
            out.append((v, float(np.linalg.norm(np.diff(p, axis=0), axis=1).mean())))
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} single-mover clips in seeds 0..{max_seed - 1}, asked for {n}")


METRICS = {"house": house_metrics}
