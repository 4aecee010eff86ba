"""Figures of the notebooks, one function per figure type; each returns the matplotlib `Figure`.

A leaf module: numpy / torch / matplotlib / seaborn, and `stas.layout` types. Inputs are plain arrays
(computed by `stas.hierarchy` or read from a `Recording`), so every figure can be redrawn from saved
statistics. `save_figure(fig, name, out_dir)` writes ``<out_dir>/<name>.png`` and ``.pdf`` (300 dpi,
tight); ``out_dir`` defaults to the repo's ``figures/``.

Colours: position classes use one fixed palette everywhere (first frame / boundary / interior),
latent frames a sequential one.
"""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch, Rectangle

from .layout import POSITION_CLASSES, TokenLayout, crosses_latent_frames, latent_frame_of, pixel_frames_of

CLASS_COLORS = {"first_frame": "#d95f02", "boundary": "#7570b3", "interior": "#1b9e77"}
CLASS_LABELS = {"first_frame": "first latent frame", "boundary": "boundary", "interior": "interior"}
RC = {
    "figure.dpi": 110, "savefig.dpi": 300, "savefig.bbox": "tight", "font.family": "sans-serif",
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": False,
    "legend.frameon": False, "image.cmap": "viridis", "pdf.fonttype": 42,
}


@contextlib.contextmanager
def style():
    """Context with the paper-like rcParams (clean sans-serif, 300 dpi saves, tight boxes)."""
    with plt.rc_context(RC):
        yield


def use_style():
    """Apply the rcParams globally (notebooks call it once)."""
    plt.rcParams.update(RC)


def figures_dir(out_dir=None) -> Path:
    """``out_dir`` (created), default the repo's ``figures/``."""
    d = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parents[1] / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig, name: str, out_dir=None, dpi: int = 300) -> list[Path]:
    """Write ``<out_dir>/<name>.png`` and ``.pdf`` (``out_dir`` default the repo's ``figures/``);
    returns both paths. No creation date in the PDF: the same figure gives the same bytes (lean git)."""
    out = []
    for ext in ("png", "pdf"):
        p = figures_dir(out_dir) / f"{name}.{ext}"
        fig.savefig(p, dpi=dpi, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
        out.append(p)
    return out


def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


# --------------------------------------------------------------------------------------------------
def token_layout(layout: TokenLayout, boundary_width: int = 1, unit: str = "tokens", max_frames: int = 8):
    """Diagram: pixel frames grouped into latent frames (top), and each latent frame's token grid in
    sequence order coloured by position class (bottom), with the sequence index range of each frame."""
    with style():
        F = min(layout.frames, max_frames)
        masks = {k: v.numpy() for k, v in layout.position_masks(boundary_width, unit).items()}
        cls = np.zeros(layout.num_tokens, int)
        for i, k in enumerate(POSITION_CLASSES):
            cls[masks[k]] = i
        grid = cls.reshape(layout.frames, layout.height, layout.width)
        fig = plt.figure(figsize=(1.3 * F + 0.6, 3.1))
        gs = fig.add_gridspec(2, F, height_ratios=[0.45, 2.0], hspace=0.15, wspace=0.12)
        lat_cmap = plt.get_cmap("Blues")
        r = layout.temporal_factor
        for f in range(F):
            ax = fig.add_subplot(gs[0, f])
            px = list(pixel_frames_of(f, r))
            slots = r if f else 1
            for j, p in enumerate(px):
                ax.add_patch(Rectangle((j + (r - slots) / 2, 0), 0.85, 0.85,
                                       color=lat_cmap(0.35 + 0.6 * f / max(F - 1, 1))))
                ax.text(j + (r - slots) / 2 + 0.42, 0.42, str(p), ha="center", va="center", fontsize=6,
                        color="white")
            ax.set_xlim(0, r)
            ax.set_ylim(0, 1)
            ax.axis("off")
            ax.set_title(f"latent {f}\npx {px[0]}" + (f"-{px[-1]}" if len(px) > 1 else ""), fontsize=7)
            ax2 = fig.add_subplot(gs[1, f])
            colors = [CLASS_COLORS[k] for k in POSITION_CLASSES]
            ax2.imshow(grid[f], cmap=matplotlib.colors.ListedColormap(colors), vmin=0, vmax=2)
            span = layout.frame_span(f)
            ax2.set_xticks([])
            ax2.set_yticks([])
            ax2.set_xlabel(f"tokens {span.start}-{span.stop - 1}", fontsize=6)
            for sp in ax2.spines.values():
                sp.set_visible(False)
            if layout.height * layout.width <= 256:
                ax2.set_xticks(np.arange(-0.5, layout.width), minor=True)
                ax2.set_yticks(np.arange(-0.5, layout.height), minor=True)
                ax2.grid(which="minor", color="white", lw=0.4)
                ax2.tick_params(which="minor", length=0)
        fig.legend(handles=[Patch(color=CLASS_COLORS[k], label=CLASS_LABELS[k]) for k in POSITION_CLASSES],
                   loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.08))
        fig.suptitle(f"{layout.num_pixel_frames} pixel frames -> {layout.latent_frames} latent frames -> "
                     f"{layout.num_tokens} tokens ({layout.height}x{layout.width} per frame, row-major; "
                     f"boundary = {boundary_width} {unit})", fontsize=8, y=1.04)
    return fig


def video_strip(video, frames=None, temporal_factor: int = 4, title: str | None = None, ncols: int | None = None):
    """Frames of a clip (F, 3, H, W) in [0, 1], labelled with pixel and latent frame."""
    v = _np(video)
    frames = list(range(0, v.shape[0], max(1, v.shape[0] // 8))) if frames is None else list(frames)
    n = len(frames)
    ncols = ncols or n
    nrows = -(-n // ncols)
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(1.25 * ncols, 1.4 * nrows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, f in zip(axes.flat, frames):
            ax.imshow(np.clip(v[f].transpose(1, 2, 0), 0, 1))
            ax.set_title(f"px {f} | lat {latent_frame_of(f, temporal_factor)}", fontsize=7)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig


def layerwise_topk(top, median, blocks=None, title: str | None = None, channels=None):
    """Sun et al.'s layerwise plot: top-1/2/3 |h| and the median per block (log scale)."""
    top, median = _np(top), _np(median)
    blocks = list(range(len(median))) if blocks is None else list(blocks)
    with style():
        fig, ax = plt.subplots(figsize=(4.2, 2.8))
        for i, c in zip(range(top.shape[1]), ["#d62728", "#ff7f0e", "#2ca02c"]):
            ax.plot(blocks, top[:, i], "o-", color=c, ms=3.5, label=f"top {i + 1}")
        ax.plot(blocks, median, "s--", color="#555555", ms=3, label="median")
        ax.set_yscale("log")
        ax.set_xlabel("block")
        ax.set_ylabel("|h| (block output)")
        ax.set_xticks(blocks)
        if channels is not None:
            ch = _np(channels).astype(int)
            for b, y, c in zip(blocks, top[:, 0], ch[:, 0]):
                ax.annotate(f"c{c}", (b, y), textcoords="offset points", xytext=(0, 4), fontsize=6,
                            ha="center", color="#d62728")
        ax.legend(loc="center right")
        ax.set_title(title or "largest activations vs median, per block")
    return fig


def activation_3d(h, channels=(), token_stride: int = 4, title: str | None = None, zmax=None):
    """3D wireframe of |h| over tokens x channels of one block output h (L, D), MA channels labelled."""
    a = np.abs(_np(h))
    L, D = a.shape
    a = a[::token_stride]
    T, C = np.meshgrid(np.arange(0, L, token_stride), np.arange(D), indexing="ij")
    with style():
        fig = plt.figure(figsize=(5.0, 3.8))
        ax = fig.add_subplot(projection="3d")
        ax.plot_wireframe(C, T, a, rstride=1, cstride=1, linewidth=0.12, color="#1f4e79", alpha=0.8)
        top = a.max()
        for i, c in enumerate(channels):   # labels staggered so neighbouring channels stay readable
            ax.plot([c, c], [L * (0.2 + 0.25 * i)] * 2, [a[:, c].max(), top * (1.12 + 0.12 * i)], color="#d62728", lw=0.6)
            ax.text(c, L * (0.2 + 0.25 * i), top * (1.14 + 0.12 * i), f"ch {c}", color="#d62728", fontsize=7)
        ax.set_xlabel("channel")
        ax.set_ylabel("token")
        ax.set_zlabel("|h|")
        if zmax is not None:
            ax.set_zlim(0, zmax)
        ax.view_init(elev=22, azim=-60)
        ax.set_title(title or "|h| over tokens x channels")
    return fig


def position_class_bars(table: dict, title: str | None = None, ylabel: str = "mean |h|"):
    """Bars of the class means with every run as a dot (spread across prompts and seeds).

    ``table``: ``{label: class_table_result}`` (from `stas.hierarchy.class_table`), one group per label
    (e.g. per channel)."""
    labels = list(table)
    with style():
        fig, axes = plt.subplots(1, len(labels), figsize=(2.3 * len(labels) + 0.4, 2.8), squeeze=False)
        rng = np.random.default_rng(0)
        for ax, lab in zip(axes[0], labels):
            t = table[lab]
            for i, k in enumerate(POSITION_CLASSES):
                pr = np.asarray(t["per_run"][k], float)
                ax.bar(i, np.nanmean(pr), color=CLASS_COLORS[k], alpha=0.8, width=0.7)
                ax.errorbar(i, np.nanmean(pr), yerr=np.nanstd(pr, ddof=1) if len(pr) > 1 else 0, color="k",
                            capsize=3, lw=0.8)
                ax.scatter(i + rng.uniform(-0.18, 0.18, len(pr)), pr, s=6, color="k", alpha=0.5, zorder=3)
            ax.set_xticks(range(3))
            ax.set_xticklabels(["first", "boundary", "interior"])
            ax.set_title(f"{lab}\nfirst/int {t['first/interior']['mean']:.2f}, bnd/int "
                         f"{t['boundary/interior']['mean']:.2f}", fontsize=8)
        axes[0, 0].set_ylabel(ylabel)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig


def frame_row_heatmap(values, title: str | None = None, cbar: str = "mean |h|", xlabel: str = "token row",
                      annotate: bool = True):
    """Heatmap over (latent frame x token row) (or any 2D array with frames on the rows)."""
    v = _np(values)
    with style():
        fig, ax = plt.subplots(figsize=(0.45 * v.shape[1] + 1.8, 0.35 * v.shape[0] + 1.0))
        import seaborn as sns

        sns.heatmap(v, ax=ax, cmap="magma", annot=annotate and v.size <= 160, fmt=".2g",
                    annot_kws={"fontsize": 6}, cbar_kws={"label": cbar})
        ax.set_xlabel(xlabel)
        ax.set_ylabel("latent frame")
        ax.set_title(title or "MA magnitude by latent frame and token row")
    return fig


def token_curve(values, layout: TokenLayout, title: str | None = None, ylabel: str = "|h| on MA channel",
                boundary_width: int = 0, unit: str = "tokens"):
    """Per-token magnitude along the sequence; ``values`` (L,) or (R, L) (mean line, min-max band).
    Latent-frame boundaries are dashed lines, frame 0 shaded; with ``boundary_width`` the boundary
    class is marked."""
    v = _np(values)
    v = v[None] if v.ndim == 1 else v.reshape(-1, v.shape[-1])
    x = np.arange(v.shape[1])
    with style():
        fig, ax = plt.subplots(figsize=(7.0, 2.4))
        ax.axvspan(-0.5, layout.tokens_per_frame - 0.5, color=CLASS_COLORS["first_frame"], alpha=0.08)
        if boundary_width:
            m = layout.position_masks(boundary_width, unit)["boundary"].numpy()
            ax.scatter(x[m], v.mean(0)[m], s=6, color=CLASS_COLORS["boundary"], zorder=3, label="boundary tokens")
        if v.shape[0] > 1:
            ax.fill_between(x, v.min(0), v.max(0), color="#1f77b4", alpha=0.2, lw=0, label="min-max over runs")
        ax.plot(x, v.mean(0), lw=0.7, color="#1f77b4", label="mean" if v.shape[0] > 1 else None)
        for f in range(1, layout.frames):
            ax.axvline(f * layout.tokens_per_frame - 0.5, color="k", ls="--", lw=0.5, alpha=0.6)
        ax.set_xlim(-0.5, v.shape[1] - 0.5)
        ax.set_xlabel("token index (latent frames separated by dashed lines)")
        ax.set_ylabel(ylabel)
        ax.set_title(title or "per-token magnitude along the sequence")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", ncol=3)
    return fig


def _panel_grid(n: int, ncols: int, w: float, h: float):
    """(fig, axes (rows, cols)) for ``n`` panels, ``ncols`` per row, each ``w`` x ``h`` inches; spare axes off."""
    nc = min(ncols, n)
    nr = -(-n // nc)
    fig, axes = plt.subplots(nr, nc, figsize=(w * nc, h * nr), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes


def block_step_heatmaps(panels: dict, blocks=None, steps=None, title: str | None = None, center=None,
                        ncols: int = 2):
    """One heatmap per entry of ``panels`` ({name: (NB, S) array}), blocks on rows, steps on columns."""
    import seaborn as sns

    names = list(panels)
    with style():
        fig, axes = _panel_grid(len(names), ncols, 3.6, 2.9)
        for ax, n in zip(axes.flat, names):
            a = _np(panels[n])
            sns.heatmap(a, ax=ax, cmap="rocket" if center is None else "vlag", center=center,
                        annot=a.size <= 100, fmt=".2f", annot_kws={"fontsize": 5.5},
                        xticklabels=list(steps) if steps is not None else "auto",
                        yticklabels=list(blocks) if blocks is not None else "auto")
            ax.set_xlabel("denoising step")
            ax.set_ylabel("block")
            ax.set_title(n)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig


def cfg_branches(series: dict, x=None, xlabel: str = "block", title: str | None = None, logy: bool = False,
                 ncols: int = 3):
    """CFG branches compared: one panel per entry of ``series`` ({panel: {branch: (n,) array}})."""
    names = list(series)
    with style():
        fig, axes = _panel_grid(len(names), ncols, 3.0, 2.5)
        for ax, n in zip(axes.flat, names):
            for (br, y), c, mk in zip(series[n].items(), ["#1f77b4", "#ff7f0e", "#2ca02c"], ["o-", "s--", "^:"]):
                y = _np(y)
                ax.plot(np.arange(len(y)) if x is None else x, y, mk, color=c, ms=3, label=br)
            ax.set_xlabel(xlabel)
            ax.set_title(n, fontsize=8)
            if logy:
                ax.set_yscale("log")
        axes[0, 0].legend()
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig


def boundary_width(estimates: dict, title: str | None = None):
    """Boundary-width estimate: mean relative elevation over the frame interior by in-frame position,
    the threshold, and the detected head/tail. ``estimates``: {label: estimate_boundary_width result}
    (e.g. tokens and rows)."""
    names = list(estimates)
    nc = min(2, len(names))
    nr = -(-len(names) // nc)
    with style():
        fig, axes = plt.subplots(nr, nc, figsize=(3.8 * nc, 2.7 * nr), squeeze=False)
        for ax in axes.flat[len(names):]:
            ax.axis("off")
        for ax, n in zip(axes.flat, names):
            e = estimates[n]
            el = np.asarray(e["elevation"])
            P = len(el)
            cols = [CLASS_COLORS["boundary"] if (j < e["head"] or j >= P - e["tail"]) else "#999999" for j in range(P)]
            ax.bar(np.arange(P), el, color=cols, width=0.85)
            se = np.asarray(e.get("se", np.full(P, np.nan)))
            if np.isfinite(se).any():
                ax.errorbar(np.arange(P), el, yerr=se, fmt="none", color="k", lw=0.5)
            thr = e["threshold"] + float(np.median(el[P // 4: P - P // 4] if P >= 4 else el))
            ax.axhline(thr, color="#d62728", ls="--", lw=0.8, label=f"threshold ({thr:+.2f})")
            ax.axhline(0, color="k", lw=0.5)
            ax.axvspan(P // 4 - 0.5, P - P // 4 - 0.5, color="#1b9e77", alpha=0.07, label="interior reference")
            ax.set_xlabel(f"position inside latent frame ({e['unit']})")
            ax.set_title(f"{n}: head {e['head']}, tail {e['tail']} -> width {e['width']} {e['unit']}", fontsize=8)
            ax.legend(loc="upper center")
        axes[0, 0].set_ylabel("relative elevation over interior")
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig


def token_map(grid, title: str | None = None, cbar: str = "|h|", vmax=None):
    """Per-token magnitudes of one latent frame (H, W) as an image, values annotated when small."""
    import seaborn as sns

    g = _np(grid)
    with style():
        fig, ax = plt.subplots(figsize=(0.4 * g.shape[1] + 1.6, 0.4 * g.shape[0] + 0.8))
        sns.heatmap(g, ax=ax, cmap="magma", vmin=0, vmax=vmax, annot=g.size <= 100, fmt=".2g",
                    annot_kws={"fontsize": 6}, cbar_kws={"label": cbar}, square=True)
        ax.set_xlabel("token column")
        ax.set_ylabel("token row")
        ax.set_title(title or "per-token magnitude")
    return fig


__all__ = ["style", "use_style", "save_figure", "figures_dir", "token_layout", "video_strip", "layerwise_topk",
           "activation_3d", "position_class_bars", "frame_row_heatmap", "token_curve", "block_step_heatmaps",
           "cfg_branches", "boundary_width", "token_map", "CLASS_COLORS"]


# --- evaluation figures (notebooks 05-07) ---------------------------------------------------------
# Added by the evaluation work (stas/evaluate.py, stas/enhance_a_video.py, stas/ablations.py). Inputs are plain
# dicts / arrays from those modules; each function returns the Figure.

METHOD_COLORS = {"baseline": "#444444", "stas": "#d95f02", "enhance": "#1f78b4", "zero": "#7570b3"}


def _method_color(m, i=0):
    return METHOD_COLORS.get(m, plt.get_cmap("tab10")(i % 10))


def ma_across_blocks(series: dict, blocks=None, steered=(), ylabel: str = "peak |h| on MA channel",
                     title: str | None = None, logy: bool = False):
    """One line per entry of ``series`` ({label: (NB,) values}) over blocks; steered blocks shaded."""
    with style():
        fig, ax = plt.subplots(figsize=(4.2, 2.7))
        for i, (k, v) in enumerate(series.items()):
            v = _np(v)
            x = list(range(len(v))) if blocks is None else list(blocks)
            ax.plot(x, v, "o-", ms=3, color=_method_color(k, i), label=k)
        for b in steered:
            ax.axvspan(b - 0.4, b + 0.4, color="#d95f02", alpha=0.12, lw=0)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("block")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.set_title(title or "MA channel across blocks (shaded: steered)")
    return fig


def method_forest(summary, metrics, baseline: str = "baseline", title: str | None = None):
    """Paired differences to ``baseline`` with confidence intervals, one panel per metric.

    ``summary``: rows of `stas.evaluate.summarize_rows` (method, metric, diff, lo, hi, better)."""
    methods = [m for m in dict.fromkeys(d["method"] for d in summary) if m != baseline]
    with style():
        fig, axes = plt.subplots(1, len(metrics), figsize=(1.9 * len(metrics) + 0.6, 0.35 * len(methods) + 1.3),
                                 squeeze=False, sharey=True)
        for ax, k in zip(axes[0], metrics):
            for i, m in enumerate(methods):
                d = next((x for x in summary if x["method"] == m and x["metric"] == k), None)
                if d is None:
                    continue
                lo, hi = d["lo"], d["hi"]
                if lo is not None and np.isfinite(lo):
                    ax.plot([lo, hi], [i, i], color=_method_color(m, i), lw=1.6)
                ax.plot([d["diff"]], [i], "o", color=_method_color(m, i), ms=4)
            ax.axvline(0, color="k", lw=0.6)
            better = next((x.get("better") for x in summary if x["metric"] == k), None)
            ax.set_title(f"{k}" + (f"\n({better} is better)" if better else ""), fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
        axes[0, 0].set_yticks(range(len(methods)))
        axes[0, 0].set_yticklabels(methods)
        axes[0, 0].set_ylim(-0.6, len(methods) - 0.4)
        fig.suptitle(title or f"paired difference to {baseline} (mean, 95% CI)", fontsize=9)
        fig.tight_layout()
    return fig


def ablation_grid(table: dict, metrics, title: str | None = None, better: dict | None = None):
    """Ablations as panels: rows = metrics, columns = ablation groups.

    ``table``: ``{group: {setting label: {metric: (diff, lo, hi)}}}`` (paired difference to the
    unsteered baseline, e.g. from `stas.ablations.ablation_table`); settings are drawn in order."""
    groups = list(table)
    with style():
        fig, axes = plt.subplots(len(metrics), len(groups), figsize=(2.1 * len(groups) + 0.5, 1.8 * len(metrics) + 0.4),
                                 squeeze=False, sharey="row")  # one y scale per metric: groups compare at a glance
        for c, g in enumerate(groups):
            labels = list(table[g])
            for r, k in enumerate(metrics):
                ax = axes[r, c]
                for i, lab in enumerate(labels):
                    d, lo, hi = table[g][lab].get(k, (np.nan, np.nan, np.nan))
                    if np.isfinite(lo):
                        ax.plot([i, i], [lo, hi], color="#d95f02", lw=1.4)
                    ax.plot([i], [d], "o", color="#d95f02", ms=3.5)
                ax.axhline(0, color="k", lw=0.6)
                ax.set_xticks(range(len(labels)))
                ax.set_xticklabels(labels if r == len(metrics) - 1 else [], rotation=40, ha="right", fontsize=7)
                ax.tick_params(axis="y", labelsize=7)
                if r == 0:
                    ax.set_title(g, fontsize=8)
                if c == 0:
                    b = (better or {}).get(k)
                    ax.set_ylabel(f"Δ {k}" + (f"\n({b} better)" if b else ""), fontsize=7)
        fig.suptitle(title or "ablations: paired difference to the unsteered baseline (mean, 95% CI)", fontsize=9)
        fig.tight_layout()
    return fig


__all__ += ["ma_across_blocks", "method_forest", "ablation_grid",
            "METHOD_COLORS"]


def token_panels(panels: dict, layout: TokenLayout, ylabel: str = "h on MA channel (signed)", title: str | None = None,
                 mark=None):
    """Per-token values along the sequence, one panel per entry of ``panels`` ({panel title:
    {label: (L,) values}}), latent-frame boundaries dashed, frame 0 shaded (e.g. baseline vs steered
    at the steered block and downstream). ``mark``: optional (L,) bool mask of tokens drawn as dots
    on every line (e.g. the positions STAS writes)."""
    mark = None if mark is None else _np(mark).astype(bool)
    with style():
        fig, axes = plt.subplots(len(panels), 1, figsize=(7.0, 1.9 * len(panels) + 0.3), squeeze=False, sharex=True)
        for ax, (name, series) in zip(axes[:, 0], panels.items()):
            ax.axvspan(-0.5, layout.tokens_per_frame - 0.5, color=CLASS_COLORS["first_frame"], alpha=0.08)
            for i, (lab, v) in enumerate(series.items()):   # the first series on top: later ones show where they differ
                v = _np(v)
                ax.plot(np.arange(len(v)), v, lw=0.8, color=_method_color(lab, i), label=lab, alpha=0.9,
                        zorder=2 + len(series) - i)
                if mark is not None:
                    ax.scatter(np.flatnonzero(mark), v[mark], s=5, color=_method_color(lab, i), zorder=3 + len(series))
            for f in range(1, layout.frames):
                ax.axvline(f * layout.tokens_per_frame - 0.5, color="k", ls="--", lw=0.5, alpha=0.5)
            ax.set_title(name, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=7)
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        axes[-1, 0].set_xlabel("token index (latent frames separated by dashed lines; frame 0 shaded)")
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig


__all__ += ["token_panels"]


def difference_map(videos: dict, method: str, reference: str = "baseline", frames=None, temporal_factor: int = 4,
                   title: str | None = None, vmax: float | None = None):
    """``|method − reference|`` (mean over RGB, [0, 1] intensity units) per frame on one colour map
    with a colour bar, under both clips' frames: the change a method makes, at its true scale
    (``vmax`` default: the 99.5th percentile of the differences shown, never 0)."""
    a, b = _np(videos[method]), _np(videos[reference])
    F = a.shape[0]
    frames = list(range(0, F, max(1, F // 8))) if frames is None else list(frames)
    d = np.abs(a[frames] - b[frames]).mean(1)                     # (n, H, W)
    vmax = float(vmax or max(np.percentile(d, 99.5), 1e-6))
    with style():
        fig, axes = plt.subplots(3, len(frames), figsize=(1.15 * len(frames) + 0.7, 3.7), squeeze=False)
        for c, f in enumerate(frames):
            for r, img in enumerate((b[f], a[f])):
                axes[r, c].imshow(np.clip(img.transpose(1, 2, 0), 0, 1))
            im = axes[2, c].imshow(d[c], cmap="magma", vmin=0, vmax=vmax)
            axes[0, c].set_title(f"px {f} | lat {latent_frame_of(f, temporal_factor)}", fontsize=7)
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
        for r, lab in enumerate((reference, method, f"|{method} − {reference}|")):
            axes[r, 0].set_ylabel(lab, fontsize=7)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.95 if title else 1))   # the title above the frames' labels
        cb = fig.colorbar(im, ax=axes[2, :].tolist(), fraction=0.025, pad=0.01)
        cb.set_label("|Δ| (0–1 intensity)", fontsize=7)
        cb.ax.tick_params(labelsize=6)
    return fig


def sweep_lines(table, family: str, metrics, x=None, xlabel: str | None = None, better: dict | None = None,
                title: str | None = None):
    """A sweep family of an ablation table (`stas.ablations.ablation_table`: columns family, setting,
    metric, diff, lo, hi) as line plots, one panel per metric: the paired difference to the
    baseline against the swept value (``x``: ``{setting: value}``, default the settings' order), with
    its 95 % prompt-bootstrap CI as a band."""
    t = table[table["family"] == family]
    settings = list(dict.fromkeys(t["setting"]))
    xs = np.array([x[s] for s in settings] if x else range(len(settings)), float)
    with style():
        fig, axes = plt.subplots(1, len(metrics), figsize=(2.3 * len(metrics) + 0.3, 2.3), squeeze=False)
        for ax, k in zip(axes[0], metrics):
            r = t[t["metric"] == k].set_index("setting").reindex(settings)
            ax.fill_between(xs, r["lo"].to_numpy(float), r["hi"].to_numpy(float), color="#d95f02", alpha=0.25, lw=0)
            ax.plot(xs, r["diff"].to_numpy(float), "o-", color="#d95f02", ms=3, lw=1.2)
            ax.axhline(0, color="k", lw=0.6)
            b = (better or {}).get(k)
            ax.set_title(f"Δ {k}" + (f" ({b} better)" if b else ""), fontsize=8)
            ax.set_xticks(xs)
            ax.set_xticklabels(settings if not x else [f"{v:g}" for v in xs], fontsize=7,
                               rotation=0 if x else 30)
            ax.set_xlabel(xlabel or family, fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
        fig.suptitle(title or f"{family} sweep: paired difference to the baseline (mean, 95% CI over prompts)",
                     fontsize=9)
        fig.tight_layout()
    return fig


__all__ += ["difference_map", "sweep_lines"]


def seam_profile_floor(profiles: dict, temporal_factor: int = 4, references=("real", "vae_floor"),
                       reference: str = "baseline", title: str | None = None, ylabel: str = "mean |frame change|"):
    """Per-transition frame change of each method (``{name: (F-1,) mean over clips}``, e.g.
    `stas.evaluate.seam_table`) with the reference rows drawn dashed in grey — ``vae_floor`` (real
    clips after the VAE round trip, no transformer involved) and ``real`` —
    transitions that cross latent frames shaded; lower panel: each method minus ``reference``."""
    refs = {k: v for k, v in profiles.items() if k in references}
    meths = {k: v for k, v in profiles.items() if k not in references}
    with style():
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5.6, 4.4), sharex=True, gridspec_kw={"height_ratios": [2, 1.2]})
        n = len(next(iter(profiles.values())))
        x = np.arange(n)
        for a in (ax, ax2):
            for i in x[crosses_latent_frames(n + 1, temporal_factor).numpy()]:
                a.axvspan(i - 0.45, i + 0.45, color="#7570b3", alpha=0.12, lw=0)
        for j, (m, v) in enumerate(meths.items()):
            ax.plot(x, _np(v), "o-", ms=2.5, lw=1, color=_method_color(m, j), label=m)
            if reference in meths and m != reference:
                ax2.plot(x, _np(v) - _np(meths[reference]), "o-", ms=2.5, lw=1, color=_method_color(m, j))
        for (m, v), ls in zip(refs.items(), ("--", ":")):
            ax.plot(x, _np(v), ls, color="0.35" if m == "vae_floor" else "0.6", lw=1.4,
                    label="VAE round trip of real clips (floor)" if m == "vae_floor" else "real clips")
        ax2.axhline(0, color="k", lw=0.6)
        ax.set_ylabel(ylabel)
        ax2.set_ylabel(f"minus {reference}")
        ax2.set_xlabel("transition i -> i+1 (shaded: crosses latent frames)")
        ax.set_title(title or "where frame changes happen")
        fig.tight_layout()
        fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, -0.01))
        fig.subplots_adjust(bottom=0.24)
    return fig


__all__ += ["seam_profile_floor"]


# --- figures a reader of the paper expects (issue 11) ---------------------------------------------
def steered_channels(values: dict, layout: TokenLayout, positions=("first_frame", "boundary"), boundary_width: int = 1,
                     unit: str = "tokens", title: str | None = None):
    """Before/after at the steered block, one panel per channel: the signed block-output value of
    each token (``values``: ``{channel: {label: (L,) values}}``, e.g. ``{"baseline", "stas"}``), the
    tokens STAS writes (``positions`` with ``boundary_width`` ``unit``, `TokenLayout.position_mask`)
    dotted; each panel's title gives the mean |h| per position class for every label, in order."""
    mark = layout.position_mask(positions, boundary_width, unit)
    panels = {}
    for c, series in values.items():
        cm = {lab: layout.class_means(torch.as_tensor(_np(v)).abs(), boundary_width, unit) for lab, v in series.items()}
        txt = "; ".join(f"{CLASS_LABELS[k]} " + " → ".join(f"{float(m[k]):.3g}" for m in cm.values())
                        for k in POSITION_CLASSES)
        panels[f"channel {c} — mean |h| ({' → '.join(series)}): {txt}"] = series
    return token_panels(panels, layout, ylabel="h (signed)", mark=mark,
                        title=title or f"every steered channel before/after (dots: the tokens written, {'+'.join(positions)})")


def latent_frame_bars(values: dict, layout: TokenLayout, boundary_width: int = 1, unit: str = "tokens",
                      ylabel: str = "mean |h|", title: str | None = None, ncols: int = 2):
    """MA magnitude per latent frame as bars, one panel per entry of ``values`` (``{label: (L,) or
    (R, L) per-token values}``, R runs; |.| taken): frame 0 one bar (its tokens are the first-frame
    class), every later frame a boundary-token and an interior-token bar; a black dash marks the
    whole frame's mean; error bars are the SD over runs (R > 1). Heights: the mean over runs of
    `stas.hierarchy.frame_class_means`."""
    from .hierarchy import frame_class_means

    F, x = layout.frames, np.arange(layout.frames)
    bars = (("first_frame", x[:1], 0.0, 0.7), ("boundary", x[1:], -0.2, 0.38), ("interior", x[1:], 0.2, 0.38))
    with style():
        fig, axes = _panel_grid(len(values), ncols, 0.45 * F + 1.6, 2.6)
        for ax, (name, v) in zip(axes.flat, values.items()):
            fm = frame_class_means(_np(v), layout, boundary_width, unit)
            R = fm["frame"].shape[0]
            for k, xs, dx, wd in bars:
                sd = fm[k].std(0, ddof=1)[xs] if R > 1 else None
                ax.bar(xs + dx, fm[k].mean(0)[xs], wd, yerr=sd, color=CLASS_COLORS[k], label=f"{CLASS_LABELS[k]} tokens",
                       error_kw=dict(lw=0.7, capsize=2))
            fmean = fm["frame"].mean(0)
            ax.plot(x, fmean, "_", color="k", ms=16, mew=1.4, label="whole frame")
            ratio = fmean[0] / fmean[1:].mean() if F > 1 else float("nan")
            b_i = np.mean(fm["boundary"][:, 1:]) / np.mean(fm["interior"][:, 1:]) if F > 1 else float("nan")
            ax.set_title(f"{name}: frame 0 / later {ratio:.3f}, boundary / interior {b_i:.3f}", fontsize=8)
            ax.set_xticks(x)
            ax.set_xlabel("latent frame")
            ax.set_ylabel(ylabel)
        axes.flat[0].legend(loc="lower right", fontsize=7)
        fig.suptitle(title or f"MA magnitude per latent frame (boundary = {boundary_width} {unit})"
                     + (f"; bars: mean over {R} runs, ±SD" if R > 1 else ""), fontsize=9)
        fig.tight_layout()
    return fig


def _busiest_window(d, h: int, w: int) -> tuple[int, int]:
    """(row, col) of the top-left corner of the ``h`` x ``w`` window of ``d`` (H, W) with the largest sum."""
    ii = np.pad(d.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    win = ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]
    return tuple(int(i) for i in np.unravel_index(win.argmax(), win.shape))


def seam_frames(videos: dict, temporal_factor: int, seams=None, max_seams: int = 2, crop: float = 0.3,
                stretch: bool = True, title: str | None = None):
    """Frames grid at the chunk seams: one row per entry of ``videos`` (``{method: (F, 3, H, W)}`` in
    [0, 1], same prompt and seed), and for each seam transition ``i -> i+1`` (pixel frames ``T·k``
    and ``T·k + 1``, ``k >= 1``, T = ``temporal_factor``: `stas.metrics.seam_mask`; the first-frame
    transition 0 -> 1 is not a seam) two columns, each frame with a zoomed inset (label ``zoom px
    <frame>``) of the ``crop``-sized window where the change across that seam, summed over the
    methods, is largest — the same window in every row. ``seams``: transition indices (default:
    up to ``max_seams``, spread over the clip). ``stretch``: the zooms of one seam share one contrast
    stretch (their 1st-99th percentile to [0, 1]), so faint seams in low-contrast clips show and
    rows stay comparable. Raises ``ValueError`` when the clip has no seam."""
    from .metrics import seam_mask

    clips = {k: _np(v) for k, v in videos.items()}
    F, _, H, W = next(iter(clips.values())).shape
    if seams is None:
        every = np.flatnonzero(seam_mask(F, temporal_factor, strict=False))
        if not len(every):
            raise ValueError(f"a {F}-frame clip has no chunk seam at temporal factor {temporal_factor}")
        seams = every[np.unique(np.linspace(0, len(every) - 1, min(max_seams, len(every))).round().astype(int))]
    seams = [int(i) for i in seams]
    ch, cw = max(2, round(crop * H)), max(2, round(crop * W))
    with style():
        fig, axes = plt.subplots(len(clips), 2 * len(seams), figsize=(1.5 * 2 * len(seams) + 0.4, 1.55 * len(clips)),
                                 squeeze=False)
        for j, i in enumerate(seams):
            y, x = _busiest_window(sum(np.abs(c[i + 1] - c[i]).mean(0) for c in clips.values()), ch, cw)
            inset = [0.0 if x + cw / 2 > W / 2 else 0.56, 0.56 if y + ch / 2 > H / 2 else 0.0, 0.44, 0.44]  # opposite corner
            crops = np.stack([c[f, :, y:y + ch, x:x + cw] for c in clips.values() for f in (i, i + 1)])
            lo, hi = np.percentile(crops, [1, 99]) if stretch else (0.0, 1.0)
            for r, (m, c) in enumerate(clips.items()):
                for f, ax in ((i, axes[r, 2 * j]), (i + 1, axes[r, 2 * j + 1])):
                    img = np.clip(c[f].transpose(1, 2, 0), 0, 1)
                    ax.imshow(img)
                    ax.add_patch(Rectangle((x - 0.5, y - 0.5), cw, ch, fill=False, ec="#e7298a", lw=0.9))
                    ins = ax.inset_axes(inset, label=f"zoom px {f}")
                    ins.imshow(np.clip((img[y:y + ch, x:x + cw] - lo) / max(hi - lo, 1e-6), 0, 1), interpolation="nearest")
                    for a in (ax, ins):
                        a.set_xticks([])
                        a.set_yticks([])
                        for sp in a.spines.values():
                            sp.set(visible=a is ins, color="#e7298a", lw=0.9)
                    if r == 0:
                        ax.set_title(f"px {f} | lat {latent_frame_of(f, temporal_factor)}", fontsize=7)
            for r, m in enumerate(clips):
                axes[r, 0].set_ylabel(m, fontsize=7)
        fig.suptitle((title or f"chunk seams (pixel frames {temporal_factor}k -> {temporal_factor}k+1), zoom: the window "
                      "that changes most across the seam") + ("\n(zooms contrast-stretched, one stretch per seam)"
                                                              if stretch else ""), fontsize=8)
        fig.tight_layout()
    return fig


def sample_grid(clips: dict, frames=None, temporal_factor: int = 4, ncols: int = 2, title: str | None = None):
    """Generated clips, each labelled with its prompt and seed: ``clips`` ``{(prompt, seed): (F, 3,
    H, W)}`` in [0, 1]; each clip is a strip of ``frames`` (default 4, evenly spaced, first and last
    included) whose first axes carries the label ``"<prompt>" · seed <seed>`` as its left title;
    ``ncols`` clips per row."""
    keys = list(clips)
    F = _np(clips[keys[0]]).shape[0]
    frames = sorted({int(round(f)) for f in np.linspace(0, F - 1, min(4, F))}) if frames is None else list(frames)
    n, nc = len(frames), min(ncols, len(keys))
    nr = -(-len(keys) // nc)
    with style():
        fig = plt.figure(figsize=(1.05 * n * nc + 0.25 * (nc - 1), 1.45 * nr))
        gs = fig.add_gridspec(nr, nc * (n + 1) - 1, width_ratios=([1] * n + [0.25]) * (nc - 1) + [1] * n,
                              wspace=0.05, hspace=0.55)
        for k, (prompt, seed) in enumerate(keys):
            r, c0 = divmod(k, nc)
            v = _np(clips[(prompt, seed)])
            for j, f in enumerate(frames):
                ax = fig.add_subplot(gs[r, c0 * (n + 1) + j])
                ax.imshow(np.clip(v[f].transpose(1, 2, 0), 0, 1))
                ax.set_xticks([])
                ax.set_yticks([])
                for sp in ax.spines.values():
                    sp.set_visible(False)
                ax.set_xlabel(f"px {f} | lat {latent_frame_of(f, temporal_factor)}", fontsize=6)
                if j == 0:
                    ax.set_title(textwrap.fill(f'"{prompt}" · seed {seed}', width=18 * n), fontsize=7, loc="left")
        if title:
            fig.suptitle(title, fontsize=9)
    return fig


__all__ += ["steered_channels", "latent_frame_bars", "seam_frames", "sample_grid"]
