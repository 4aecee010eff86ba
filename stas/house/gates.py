"""Issue 8's DiT gates 2-4, measured on a loaded house pipeline (any folder: shipped or staged).

    python -m stas.house.train gates --variant uniform    # writes data/house/uniform/gates.json

* Gate 2, samples (`samples`): one clip per held-out prompt (`heldout_prompts`: captions of world clips
  from seeds no training run draws), the native call, scored by `detect.score_clip` (`report.score_samples`).
  Pass: every named object's colour and shape recognised in >= 80 % of clips, motion direction right
  for >= 70 % of the named objects with a knowable motion.
* Gate 2, conditioning (`conditioning`): with the same noise, the transformer's velocity for a clip's
  caption and for another clip's caption, relative L2 ``||v_a - v_b|| / ||v_a||`` at t = 0.75 on
  held-out clips' latents. Pass: median over pairs >= 0.10.
  Also reported (not a gate): the same ratio along the pipeline's own denoising, at every step's
  timestep, for two captions and for caption vs the empty prompt (`conditioning_trajectory`), and the
  gate's ceiling on these pairs (`conditioning_ceiling`: a model that takes the colours and shapes a
  caption names from the caption; ``python -m stas.house.gates ceiling`` measures it on a VAE alone),
  and which one the model's clean-clip prediction follows, caption or latents, from t = 0.95 to 0.6
  (`conditioning_crossover`, ``python -m stas.house.gates crossover``).
* Gates 3-4, massive activations (`massive`): the pipeline's own denoising runs recorded by
  `stas.study.record_blocks`; MA channels by `stas.find_massive`; per block at the first step both
  ratios (peak/median as Sun et al., peak/mean as the paper; `stas.massive`); the position classes of
  `stas.TokenLayout` (boundary = the trainer's: first and last token row of each latent frame >= 1) on every
  MA channel, early and late steps, every block (`stas.hierarchy.class_table`). Aims (not pass/fail):
  peak/mean >= 59 and peak/median >= 100 at the mid block; the hierarchy is reported as measured.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import DEFAULTS, world
from .report import BOUNDARY, motion_rate, score_samples

HELDOUT_SEED0 = 1_000_000_000 + 500_000  # beyond the trainers' held-out statistics seeds (1e9 + 7, + 99)
PAIR_SEED0 = HELDOUT_SEED0 + 10_000  # the conditioning gate's clips (`conditioning`, `conditioning_ceiling`)


def heldout_prompts(n: int = 64, seed0: int = HELDOUT_SEED0) -> list[str]:
    """Captions of ``n`` world clips from seeds ``seed0 ...`` (no trainer draws them; the grammar is
    small, so a caption's text may still occur in a training pool: see `caption_overlap`)."""
    return list(world.sample_params(range(seed0, seed0 + n)).caption)


def caption_overlap(prompts, pool_seed0: int = 15_000_000, pool: int = 32768) -> float:
    """Fraction of ``prompts`` whose exact text is among the captions of the DiT's training pool
    (``train dit``: seeds ``seed * 10_000_000 + 5_000_000 ...``, default seed 1, 32768 clips)."""
    seen = set(world.sample_params(range(pool_seed0, pool_seed0 + pool)).caption)
    return float(np.mean([p in seen for p in prompts]))


def motion_by_direction(clips) -> dict:
    """``{motion: fraction right}`` over the named objects of scored clips (``score_clip`` results or
    `report.score_samples` rows) whose motion is knowable."""
    acc = {}
    for c in clips:
        for o in c["objects"]:
            if o["motion_ok"] is not None:
                acc.setdefault(o["motion"], []).append(bool(o["motion_ok"]))
    return {m: float(np.mean(v)) for m, v in sorted(acc.items())}


@torch.no_grad()
def samples(pipe, variant: str, n: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """Gate 2 (samples) on ``n`` held-out prompts. ``summary`` gains ``pass``, ``train_caption_overlap``,
    ``motion_by_direction`` and ``real``: the same detector on the real clips the prompts were drawn
    from (the frames the variant's pipeline returns), the score a perfect generator would get."""
    from .detect import score_clip
    from .models import pixel_frames

    prompts = heldout_prompts(n)
    res = score_samples(pipe, prompts, dict(DEFAULTS[variant]), seed=seed, progress=progress)
    s = res["summary"]
    s["train_caption_overlap"] = caption_overlap(prompts)
    s["motion_by_direction"] = motion_by_direction(res["clips"])
    real = []
    for i in range(n):
        video, cap, _ = world.sample_clip(HELDOUT_SEED0 + i)
        real.append(score_clip(video[pixel_frames(variant, video.shape[0])], cap))
    s["real"] = dict(ok=float(np.mean([r["ok"] for r in real])), motion_ok=motion_rate(real),
                     motion_by_direction=motion_by_direction(real))
    s["pass"] = bool(s["ok"] >= 0.8 and s["motion_ok"] >= 0.7)
    return res


def _caption_pairs(pipe, variant: str, pairs: int, seed: int):
    """The conditioning pairs: ``pairs`` held-out clips (seeds ``PAIR_SEED0 ...``) encoded by the
    pipeline's VAE (posterior mode) and normalised as in training -> ``x0`` (CPU, float32); one seeded
    ``eps`` of its shape; caption a = the clip's, b = the next clip's, encoded (``ea``, ``eb``); ``keep``:
    the pairs whose captions differ. Returns a dict of those plus ``caps``, ``other`` and the VAE's
    normalisation ``m``, ``s`` (`train.norm_stats`, on its device)."""
    from .train import norm_stats, vae_encode

    video, caps = world.ClipStream(start_seed=PAIR_SEED0, device="cpu").next(pairs)
    vae, tr = pipe.vae, pipe.transformer
    m, s = norm_stats(vae, vae.device)
    x0 = ((vae_encode(vae, video.to(vae.device, vae.dtype), variant).float() - m) / s).cpu()
    eps = torch.randn(x0.shape, generator=torch.Generator(device="cpu").manual_seed(seed))
    other = caps[1:] + caps[:1]
    kw = dict(do_classifier_free_guidance=False, max_sequence_length=DEFAULTS[variant]["max_sequence_length"],
              device=pipe._execution_device, dtype=tr.dtype)
    return dict(x0=x0, eps=eps, caps=caps, other=other, m=m, s=s, ea=pipe.encode_prompt(caps, **kw)[0],
                eb=pipe.encode_prompt(other, **kw)[0], keep=np.array([a != b for a, b in zip(caps, other)]))


def _velocities(pipe, p: dict, t: float):
    """(x_t, v_a, v_b, rel): ``x_t = (1 - t) x0 + t eps`` of `_caption_pairs` ``p`` (the transformer's
    dtype), the transformer's velocities for captions a and b at timestep ``1000 t`` (float32), all on
    the pipeline's device, (pairs, C, F', H', W'); ``rel``: ``||v_a - v_b|| / ||v_a||`` of the ``keep``
    pairs (numpy)."""
    tr, dev = pipe.transformer, pipe._execution_device
    xt = ((1 - t) * p["x0"] + t * p["eps"]).to(dev, tr.dtype)
    ts = torch.full((len(xt),), 1000.0 * t, device=dev)
    va, vb = (tr(xt, ts, e, return_dict=False)[0].float() for e in (p["ea"], p["eb"]))
    rel = ((va - vb).flatten(1).norm(dim=1) / va.flatten(1).norm(dim=1)).cpu().numpy()[p["keep"]]
    return xt, va, vb, rel


@torch.no_grad()
def conditioning(pipe, variant: str, pairs: int = 16, t: float = 0.75, seed: int = 0) -> dict:
    """Gate 2 (conditioning): relative L2 between velocities for two captions, same noisy latents.

    Latents: ``pairs`` held-out world clips encoded by the pipeline's VAE (posterior mode), normalised
    with its ``latents_mean``/``latents_std`` as in training, noised to ``x_t = (1 - t) x_0 + t eps``
    (one seeded ``eps``), timestep ``1000 t``. Prompt a = the clip's caption, b = the next clip's caption.
    Returns per-pair values, their median and minimum, and ``pass`` (median >= 0.10)."""
    rel = _velocities(pipe, _caption_pairs(pipe, variant, pairs, seed), t)[3]
    return dict(t=t, pairs=len(rel), rel_l2=[round(float(r), 4) for r in rel], median=float(np.median(rel)),
                min=float(rel.min()), **{"pass": bool(np.median(rel) >= 0.10)})


@torch.no_grad()
def conditioning_crossover(pipe, variant: str, ts=(0.95, 0.9, 0.875, 0.8, 0.75, 0.6), pairs: int = 16,
                           seed: int = 0) -> dict:
    """Which one the transformer's clean-clip prediction follows, caption or latents, at each ``t`` of
    ``ts``: on the pairs of `conditioning` (same clips, noise), ``x0_hat = x_t - t v`` for caption a and
    for caption b, decoded by the pipeline's VAE and scored by `detect.score_clip`. Returns per ``t``
    (rounded to 3 digits) ``rel_l2``, the median relative L2 of `conditioning`; ``pairs``, those whose
    captions differ; and four fractions of them (every named object's colour and shape recognised):
    ``a_reads_a`` (the prediction for caption a against caption a: how legible predictions are at all),
    ``b_reads_b`` (the prediction for caption b follows caption b), ``b_reads_a`` (it follows the
    latents, clip a) and ``a_reads_b`` (the prediction for caption a read as caption b: the chance
    level, since two captions can name the same colours and shapes)."""
    from .detect import score_clip

    p = _caption_pairs(pipe, variant, pairs, seed)
    vae = pipe.vae
    idx = np.flatnonzero(p["keep"])

    def decode(z):  # normalised latents -> (B, F, 3, H, W) in [0, 1], as score_clip reads frames
        v = vae.decode((z.to(vae.device).float() * p["s"] + p["m"]).to(vae.dtype)).sample.float().clamp(-1, 1)
        return ((v + 1) / 2).permute(0, 2, 1, 3, 4).cpu().numpy()

    def reads(video, caps):
        return float(np.mean([score_clip(video[i], caps[i])["ok"] for i in idx]))

    out = {}
    for t in ts:
        xt, va, vb, rel = _velocities(pipe, p, t)
        xa, xb = decode(xt.float() - t * va), decode(xt.float() - t * vb)
        out[round(float(t), 3)] = dict(rel_l2=float(np.median(rel)), a_reads_a=reads(xa, p["caps"]),
                                       a_reads_b=reads(xa, p["other"]), b_reads_b=reads(xb, p["other"]),
                                       b_reads_a=reads(xb, p["caps"]), pairs=len(idx))
    return out


def named_swap(pa: world.ClipParams, pb: world.ClipParams) -> world.ClipParams:
    """Clip a's parameters with what clip b's caption names taken from clip b, clip by clip: for the i-th
    object b's caption names (`world.parse_prompt`; the grammar names objects 0 and 1, in that order), the
    colour and shape of b's object i replace those of a's object i where a has one. Positions, radii,
    motions, background and a's unnamed objects stay; the captions become b's. Returns a new ClipParams."""
    out = world.ClipParams(**{k: (v.copy() if isinstance(v, np.ndarray) else list(v)) for k, v in vars(pa).items()})
    for k, cap in enumerate(pb.caption):
        for i in range(len(world.parse_prompt(cap))):
            if pa.active[k, i]:
                out.colour[k, i], out.shape[k, i] = pb.colour[k, i], pb.shape[k, i]
    out.caption = list(pb.caption)
    return out


@torch.no_grad()
def conditioning_ceiling(vae, variant: str, pairs: int = 16, t: float = 0.75, seed: int = 0) -> dict:
    """What `conditioning` would measure for a model that takes the colour and shape of what a caption
    names from the caption and all else from the latents: its clips, pairs, noise and ``t``.

    For pair (a, b), x0_a: clip a's latents as in `conditioning`; x0_b: clip a re-rendered by `named_swap`
    (b's caption's colours and shapes, a's layout and motion). A model exact for caption a predicts
    v_a = eps - x0_a; one that reads x0_b for caption b predicts v_b = (x_t - x0_b) / t (flow matching:
    x_t = (1 - t) x0 + t eps, v = eps - x0), so ``||v_a - v_b|| / ||v_a|| = ||x0_a - x0_b|| / (t ||eps -
    x0_a||)``. Motion words are not swapped, so a model that also followed them would differ more.
    Returns per-pair values (pairs with equal captions dropped, as `conditioning`), median and minimum."""
    from .train import norm_stats, vae_encode

    seeds = list(range(PAIR_SEED0, PAIR_SEED0 + pairs))
    pa = world.sample_params(seeds)
    pb = world.sample_params(seeds[1:] + seeds[:1])  # b = the next clip's caption, as `conditioning`
    m, s = norm_stats(vae, vae.device)

    def latents(p):
        v = world.render_batch(p)[0].permute(0, 2, 1, 3, 4) * 2 - 1  # as world.ClipStream.next
        return ((vae_encode(vae, v.to(vae.device, vae.dtype), variant).float() - m) / s).cpu()

    x0a, x0b = latents(pa), latents(named_swap(pa, pb))
    eps = torch.randn(x0a.shape, generator=torch.Generator(device="cpu").manual_seed(seed))
    rel = ((x0a - x0b).flatten(1).norm(dim=1) / (t * (eps - x0a).flatten(1).norm(dim=1))).numpy()
    rel = rel[~np.array([a == b for a, b in zip(pa.caption, pb.caption)])]
    return dict(t=t, pairs=len(rel), rel_l2=[round(float(r), 4) for r in rel], median=float(np.median(rel)),
                min=float(rel.min()))


@torch.no_grad()
def conditioning_trajectory(pipe, variant: str, pairs: int = 6, seed: int = 0) -> dict:
    """The same comparison along the pipeline's own denoising: for each pair, run the native call for
    caption a (seed ``seed + i``), keep the latents and timestep of every conditional transformer call
    (a forward pre-hook, removed on exit), then predict the velocity there for caption a, caption b and
    the empty prompt. Returns per timestep the median over pairs of ``||v_a - v_b|| / ||v_a||``
    (``prompts``) and ``||v_a - v_uncond|| / ||v_a||`` (``cond_vs_uncond``)."""
    call = dict(DEFAULTS[variant])
    caps = heldout_prompts(2 * pairs, HELDOUT_SEED0 + 30_000)
    tr, dev = pipe.transformer, pipe._execution_device
    kw = dict(do_classifier_free_guidance=False, max_sequence_length=call["max_sequence_length"], device=dev,
              dtype=tr.dtype)
    rows = {}
    for i in range(pairs):
        a, b = caps[2 * i], caps[2 * i + 1]
        seen = []
        h = tr.register_forward_pre_hook(
            lambda m, args, kwargs: seen.append((kwargs["hidden_states"].clone(), kwargs["timestep"].clone())),
            with_kwargs=True)
        try:
            pipe(prompt=a, generator=torch.Generator("cpu").manual_seed(seed + i), output_type="latent", **call)
        finally:
            h.remove()
        cond = seen[::2] if call["guidance_scale"] > 1 else seen  # WanPipeline: cond call, then uncond
        emb = [pipe.encode_prompt(p, **kw)[0] for p in (a, b, "")]
        for x, t in cond:
            va, vb, vu = (tr(x, t, e, return_dict=False)[0].float() for e in emb)
            rows.setdefault(round(float(t[0]) / 1000, 3), []).append(
                ((va - vb).norm() / va.norm(), (va - vu).norm() / va.norm()))
    return {t: dict(prompts=float(np.median([float(r[0]) for r in v])),
                    cond_vs_uncond=float(np.median([float(r[1]) for r in v])), pairs=len(v))
            for t, v in sorted(rows.items(), reverse=True)}


@torch.no_grad()
def massive(pipe, prompts, seeds=(0,), early_frac: float = 0.4) -> dict:
    """Gates 3-4 on the pipeline's native call: MA channels, both ratios per block at the first step,
    and the position hierarchy of every MA channel per block, early (first ``early_frac`` of the steps)
    and late (the last ``early_frac``), from one `stas.study.record_blocks` recording (cond branch)."""
    from ..adapters import get_adapter
    from ..hierarchy import class_table, magnitudes
    from ..load import call_settings
    from ..massive import find_massive
    from ..study import record_blocks

    call = call_settings(pipe)
    probe = record_blocks(pipe, list(prompts)[:1], list(seeds)[:1], call=call)
    chans = find_massive(probe).channels
    st = record_blocks(pipe, list(prompts), list(seeds), channels=chans, call=call)
    ma = find_massive(st)
    first = find_massive(st, steps=[0], branch="cond")
    blocks = list(st.blocks)
    per_block = [dict(block=b, top_channel=int(first.ratio_median[i].argmax()),
                      peak_over_median=float(first.ratio_median[i].max()),
                      peak_over_mean=float(first.ratio_mean[i].max())) for i, b in enumerate(blocks)]
    lay = get_adapter(pipe).layout_for_call(call["num_frames"], call["height"], call["width"])
    S = st.num_steps
    k = max(1, round(early_frac * S))
    windows = {"early": list(range(k)), "late": list(range(S - k, S))}
    hier = []
    for c in chans:
        for name, steps in windows.items():
            for b in blocks:
                tab = class_table(magnitudes(st, c, steps=steps, blocks=[b])[:, :, 0], lay, **BOUNDARY)
                hier.append(dict(channel=c, window=name, block=b, first_over_interior=tab["first/interior"]["mean"],
                                 boundary_over_interior=tab["boundary/interior"]["mean"],
                                 **{f"mean_{k_}": v for k_, v in tab["mean"].items()}))
    mid = blocks[len(blocks) // 2]
    return dict(call=call, prompts=list(prompts), seeds=[int(s) for s in seeds], ma_channels=list(chans),
                steps=S, windows=windows, boundary=BOUNDARY, mid_block=mid, first_step=per_block,
                mid=per_block[blocks.index(mid)], all_steps_ratio_median_mid={
                    int(c): float(ma.ratio_median[blocks.index(mid), c]) for c in chans},
                hierarchy=hier)


def run_gates(pipe, variant: str, n_samples: int = 64, n_ma_prompts: int = 8, pairs: int = 16,
              progress: bool = True, log=print) -> dict:
    """All three, as one dict (``samples``, ``conditioning``, ``massive``) for ``gates.json``; ``log``
    gets a line as each stage starts."""
    log(f"conditioning: {pairs} caption pairs")
    out = dict(variant=variant, conditioning=conditioning(pipe, variant, pairs))
    log(f"conditioning along the pipeline's own denoising: {max(2, pairs // 3)} caption pairs")
    out["conditioning"]["trajectory"] = conditioning_trajectory(pipe, variant, max(2, pairs // 3))
    out["conditioning"]["ceiling"] = conditioning_ceiling(pipe.vae, variant, pairs)
    log(f"massive activations: recording {n_ma_prompts} held-out prompts (native call)")
    out["massive"] = massive(pipe, heldout_prompts(n_ma_prompts, HELDOUT_SEED0 + 20_000))
    log(f"samples: {n_samples} held-out prompts")
    out["samples"] = samples(pipe, variant, n_samples, progress=progress)
    return out


def main(argv=None):
    """``python -m stas.house.gates ceiling --variant causal [--root data/house] [--json F]``: the
    conditioning gate's ceiling (`conditioning_ceiling`) on a shipped VAE alone (CPU, seconds);
    ``python -m stas.house.gates crossover --variant causal``: `conditioning_crossover` on the shipped
    pipeline (2-core CPU, 3-6 min)."""
    import argparse
    import json

    from diffusers import AutoencoderKLWan

    from . import VARIANTS, load_pipeline, variant_dir

    ap = argparse.ArgumentParser(prog="python -m stas.house.gates")
    ap.add_argument("what", choices=["ceiling", "crossover"])
    ap.add_argument("--variant", choices=VARIANTS, default="causal")
    ap.add_argument("--root", default=None, help="folder with <variant>/vae (default data/house)")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--json", default=None, help="write the result here (default: print only)")
    a = ap.parse_args(argv)
    if a.what == "ceiling":
        vae = AutoencoderKLWan.from_pretrained(str(variant_dir(a.variant, a.root) / "vae"), dtype=torch.float32).eval()
        res = dict(variant=a.variant, **conditioning_ceiling(vae, a.variant, a.pairs))
    else:
        pipe = load_pipeline(a.variant, root=a.root)
        res = dict(variant=a.variant, crossover=conditioning_crossover(pipe, a.variant, pairs=a.pairs))
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
