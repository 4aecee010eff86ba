"""Statistics and the report of a house-model training run: MA snapshots during training, sample
scores, the curves figure (``python -m stas.house.train report``).

The MA criteria are `stas.massive`'s (peak/median as Sun et al., peak/mean as the paper; one
implementation) and the position classes are `stas.TokenLayout`'s (one definition), so the numbers
in ``train_report.json`` mean what the notebooks' numbers mean.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import torch

from ..layout import POSITION_CLASSES, TokenLayout
from ..massive import hidden_ratios
from . import world
from .models import VARIANTS

NOISE_LEVELS = (0.9, 0.5, 0.1)
BOUNDARY = dict(boundary_width=1, unit="rows")  # the trainer's boundary: first and last token row of a frame
POSITION_CLASSES_NOTE = ("stas.TokenLayout.position_masks(boundary_width=1, unit='rows'): first = latent frame 0 "
                         "(all tokens); boundary = first and last token rows of each latent frame >= 1; interior = "
                         "the other tokens of frames >= 1")


@torch.no_grad()
def ma_stats(model, lat, emb, levels=NOISE_LEVELS, seed=0):
    """Per noise level and block, on a bare ``WanTransformer3DModel`` called with clean latents
    ``lat`` (B, C, T, H, W) noised to t and text ``emb``: the top channel by peak |h|, its peak,
    the median |h|, peak/median and peak/mean (`stas.massive.hidden_ratios`), Sun et al.'s test, and
    on that channel the mean |h| of each position class (`TokenLayout`, boundary = 1 token row),
    per latent frame and per token row."""
    dev = lat.device
    B, C, T, H, W = lat.shape
    lay = TokenLayout(T, H, W, tuple(model.config.patch_size))
    masks = {k: m.to(dev) for k, m in lay.position_masks(**BOUNDARY).items()}
    frame_of = lay.coords()[:, 0].to(dev)
    row_of = lay.coords()[:, 1].to(dev)
    outs = {}
    hooks = [blk.register_forward_hook(lambda mod, i, o, k=k: outs.__setitem__(k, o.detach()))
             for k, blk in enumerate(model.blocks)]
    g = torch.Generator(device=dev).manual_seed(seed)
    res = {}
    try:
        for t in levels:
            noise = torch.randn(lat.shape, generator=g, device=dev, dtype=torch.float32)
            xt = (1 - t) * lat.float() + t * noise
            amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
            with torch.autocast(**amp):
                model(xt, torch.full((B,), t * 1000.0, device=dev), emb.float(), return_dict=False)
            per_block = []
            for k in range(len(model.blocks)):
                r = hidden_ratios(outs[k])
                c = r["top"]
                ch = outs[k].float().abs()[:, :, c]  # B, L
                cm = {name: float(ch[:, masks[name]].mean()) for name in POSITION_CLASSES}
                per_block.append(dict(
                    block=k, top_channel=c, peak=float(r["chan_max"][c]), median=float(r["median"]),
                    peak_over_median=float(r["peak/median"][c]), peak_over_mean=float(r["peak/mean"][c]),
                    top_channel_by_mean=int(r["chan_mean"].argmax()), sun_criterion=r["sun"],
                    first=cm["first_frame"], boundary=cm["boundary"], interior=cm["interior"],
                    first_over_interior=cm["first_frame"] / max(cm["interior"], 1e-12),
                    boundary_over_interior=cm["boundary"] / max(cm["interior"], 1e-12),
                    per_frame=[float(ch[:, frame_of == f].mean()) for f in range(lay.frames)],
                    per_row=[float(ch[:, (row_of == r_) & (frame_of > 0)].mean()) for r_ in range(lay.height)],
                ))
            res[str(t)] = per_block
    finally:
        for hk in hooks:
            hk.remove()
    return res


def summarize_ma(stats):
    """One line per noise level: max ratio over blocks, mid-block ratio, hierarchy at the mid block."""
    parts = []
    for t, blocks in stats.items():
        mid = blocks[len(blocks) // 2]
        best = max(b["peak_over_median"] for b in blocks)
        parts.append(f"t={t}: max {best:.0f}x mid(b{mid['block']},c{mid['top_channel']}) {mid['peak_over_median']:.0f}x "
                     f"f/i {mid['first_over_interior']:.2f} b/i {mid['boundary_over_interior']:.2f}")
    return " | ".join(parts)


def compact_ma(rec):
    """Small per-snapshot summary for the curves."""
    c = dict(step=rec["step"], minutes=rec["minutes"], tag=rec["tag"])
    for t, blocks in rec["stats"].items():
        c[t] = [dict(block=b["block"], ch=b["top_channel"], ratio=round(b["peak_over_median"], 2),
                     peak_over_mean=round(b["peak_over_mean"], 2),
                     peak=round(b["peak"], 3), f_i=round(b["first_over_interior"], 4),
                     b_i=round(b["boundary_over_interior"], 4)) for b in blocks]
    return c


def sample_eval(out, variant, dev, text_dir=None, prompts=None, seed=0, **kw):
    """Generate one clip per evaluation prompt with the stock pipeline; score with the detector."""
    from . import DEFAULTS, load_pipeline

    pipe = load_pipeline(variant, device=dev, dtype=torch.float32, root=out, text_dir=text_dir)
    return score_samples(pipe, prompts or world.EVAL_PROMPTS, dict(DEFAULTS[variant], **kw), seed)


def motion_rate(clips) -> float:
    """Fraction of the named objects with a knowable motion (``motion_ok`` not None) whose motion is right,
    over scored clips (`detect.score_clip` results or `score_samples` rows); 0 when there is none."""
    return float(np.mean([o["motion_ok"] for c in clips for o in c["objects"] if o["motion_ok"] is not None] or [0]))


@torch.no_grad()
def score_samples(pipe, prompts, call: dict, seed=0, progress=False):
    """One clip per prompt (seed ``seed + i``, CPU generator) scored by `detect.score_clip`.

    Returns ``{"summary": {n, ok, colour_ok, persist_ok, motion_ok, call}, "clips": [...]}``: ``ok`` is
    the fraction of clips whose every named object is recognised (colour and shape), ``motion_ok`` the
    fraction of named objects with a knowable motion whose direction is right."""
    from tqdm.auto import tqdm

    from .detect import score_clip

    res = []
    for i, p in enumerate(tqdm(prompts, desc="samples", disable=not progress, leave=False)):
        g = torch.Generator(device="cpu").manual_seed(seed + i)
        v = pipe(prompt=p, generator=g, output_type="pt", **call).frames[0]  # F,3,H,W in [0,1]
        sc = score_clip(v.float().cpu(), p)
        res.append(dict(prompt=p, ok=sc["ok"], colour_ok=sc["colour_ok"], persist_ok=sc["persist_ok"],
                        objects=sc["objects"]))
    summ = dict(n=len(res), ok=float(np.mean([r["ok"] for r in res])),
                colour_ok=float(np.mean([r["colour_ok"] for r in res])),
                persist_ok=float(np.mean([r["persist_ok"] for r in res])),
                motion_ok=motion_rate(res),
                call=call)
    return dict(summary=summ, clips=res)


# ---------------------------------------------------------------------------------------- report
SAMPLE_PROMPTS = ("a red square moves left", "a blue circle moves right past a yellow triangle")
SAMPLE_TIMES = (0, 4, 8, 12, 16, 20, 24, 28)  # pixel frames: the uniform variant returns 0, 4, ..., 28


@torch.no_grad()
def samples_figure(out, prompts=SAMPLE_PROMPTS, seed: int = 0, text_dir=None, device="cpu"):
    """``<out>/samples.png``: per prompt, one clip of each variant under ``out`` (seed ``seed + i``,
    CPU generator, `DEFAULTS` call, float32) and a real world clip with the same caption
    (`metrics.real_clips`; left out when no world clip has the caption), at pixel frames
    `SAMPLE_TIMES` (the uniform variant returns every 4th pixel frame, so all rows share one time
    axis). Returns the path; ``FileNotFoundError`` when no variant has weights under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import DEFAULTS, load_pipeline
    from .metrics import real_clips
    from .models import pixel_frames

    out = Path(out)
    variants = [v for v in VARIANTS if (out / v / "transformer").is_dir()]
    if not variants:
        raise FileNotFoundError(f"no <variant>/transformer under {out} (variants: {', '.join(VARIANTS)})")
    rows = []  # (label, clip with frames indexed by pixel time)
    pipes = {v: load_pipeline(v, device=device, dtype=torch.float32, root=out, text_dir=text_dir) for v in variants}
    for i, p in enumerate(prompts):
        for v, pipe in pipes.items():
            g = torch.Generator(device="cpu").manual_seed(seed + i)
            clip = pipe(prompt=p, generator=g, output_type="pt", **DEFAULTS[v]).frames[0].float().cpu()
            at = {f: k for k, f in enumerate(pixel_frames(v, DEFAULTS[v]["num_frames"]))}
            rows.append((f"{v}, seed {seed + i}\n" + textwrap.fill(f'"{p}"', 26), clip, at))
        for _, s, clip in real_clips([p], per_prompt=1):  # none when no world clip has this caption
            rows.append((f"real world clip {s}", clip, {f: f for f in range(clip.shape[0])}))
    fig, axes = plt.subplots(len(rows), len(SAMPLE_TIMES), figsize=(1.3 * len(SAMPLE_TIMES), 1.45 * len(rows)),
                             squeeze=False)
    for r, (label, clip, at) in enumerate(rows):
        for c, f in enumerate(SAMPLE_TIMES):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            ax.imshow(clip[at[f]].permute(1, 2, 0).clamp(0, 1).numpy())
            if r == 0:
                ax.set_title(f"frame {f}", fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=110)
    plt.close(fig)
    return out / "samples.png"


def make_figure(out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out = Path(out)
    reps = {v: json.loads((out / v / "train_report.json").read_text()) for v in VARIANTS
            if (out / v / "train_report.json").exists()}
    if not reps:
        raise FileNotFoundError(f"no <variant>/train_report.json under {out} (variants: {', '.join(VARIANTS)})")
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.8))
    for i, (v, r) in enumerate(reps.items()):
        c = f"C{i}"  # one colour per variant in every panel
        h = r["loss_history"]
        s = np.array([x["step"] for x in h])
        l = np.array([x["loss"] for x in h])
        k = max(1, len(l) // 50)
        ls = np.convolve(l, np.ones(k) / k, mode="valid")
        ax[0].plot(s[k - 1:], ls, color=c, label=v)
        mh = r["ma_history"]
        for t, style in (("0.9", "-"), ("0.1", ":")):
            steps = [m["step"] for m in mh if t in m]
            mid = [m[t][len(m[t]) // 2] for m in mh if t in m]
            ax[1].plot(steps, [b["ratio"] for b in mid], style, color=c, label=f"{v} peak/median, t={t}")
            ax[1].plot(steps, [b.get("peak_over_mean", np.nan) for b in mid], style, color=c, alpha=0.4,
                       label=f"{v} peak/mean, t={t}")
            if t == "0.9":
                ax[2].plot(steps, [b["f_i"] for b in mid], "-", color=c, label=f"{v} first/interior")
                ax[2].plot(steps, [b["b_i"] for b in mid], "--", color=c, label=f"{v} boundary/interior")
    for y, name, ls in ((100, "aim: peak/median >= 100", "--"), (59, "aim: peak/mean >= 59 (the paper's channel)", "-.")):
        ax[1].axhline(y, color="grey", lw=0.8, ls=ls, label=name)  # named in the legend, not over the curves
    ax[0].set(title="flow-matching loss (smoothed)", xlabel="step", yscale="log")
    ax[1].set(title="top MA channel at the mid block (stas.massive ratios)", xlabel="step", ylabel="ratio")
    ax[2].set(title="position hierarchy, that channel (mid block, t = 0.9)", xlabel="step")
    for a in ax:  # legends below the panels, never over a curve
        a.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))  # 150k: full step counts overlapped
        a.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "train_curves.png", dpi=110)
    return out / "train_curves.png"


