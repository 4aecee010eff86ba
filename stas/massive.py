"""Massive-activation (MA) detection from recorded statistics.

Two criteria, both computed per (run, step, block, branch) from a `stas.record` `Recording` and
then summarised over runs, steps and branches by their median:

* **peak / median** (Sun et al. 2024): ``max_t |h[t, c]|`` over the median of |h| over all tokens
  and channels (``Recording["median"]``). Sun et al. call an activation massive when it is
  > 100 in magnitude and about 1000x the median; we report that test per block as ``sun``.
* **peak / mean** (our reading of the STAS paper's ratio, which gives ~59x for the steered MA
  channel, ~6x for a "weak MA" channel, ~1x for a non-MA channel): ``max_t |h[t, c]|`` over the
  mean |h| of the whole hidden state (all tokens and channels).

Only numbers from the recording enter; nothing is assumed about which channels are massive.
This module is the one implementation of both criteria: `find_massive` on a `Recording`,
`hidden_ratios` on a hidden state in hand (the house trainer), and the per-block views of notebooks
02/04 (`layerwise_topk`, `peak_over_mean`, `channel_overlap`, `choose_channels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


# Sun et al. (2024), "Massive activations in large language models": an activation is massive when its
# magnitude is > 100 and about 1000x the median magnitude of the hidden state.
SUN_MIN_PEAK, SUN_MIN_RATIO = 100.0, 1000.0


def sun_test(peak, peak_over_median):
    """Sun et al.'s criterion: ``peak > 100`` and ``peak / median >= 1000`` (elementwise for tensors)."""
    return (peak > SUN_MIN_PEAK) & (peak_over_median >= SUN_MIN_RATIO)


def ratios(chan_max, chan_mean, median):
    """Both criteria from the three reductions `stas.record` keeps: ``chan_max`` (..., D) =
    max_t |h[t, c]|, ``chan_mean`` (..., D) = mean_t |h[t, c]|, ``median`` (...) = median |h|.
    Returns ``(peak/median, peak/mean)``, each (..., D); the mean is over all tokens and channels."""
    return chan_max / median[..., None], chan_max / chan_mean.mean(-1, keepdim=True)


def hidden_reductions(h: torch.Tensor) -> dict:
    """The reductions of one hidden state ``h`` (..., L, D) over its tokens and leading dims, in
    float32: ``chan_max`` (D,), ``chan_mean`` (D,), ``median`` () (exact, over every entry)."""
    a = h.detach().float().abs().reshape(-1, h.shape[-1])
    return {"chan_max": a.amax(0), "chan_mean": a.mean(0), "median": a.median()}


def hidden_ratios(h: torch.Tensor) -> dict:
    """Both criteria on one hidden state ``h`` (..., L, D): ``{"peak/median": (D,), "peak/mean": (D,),
    "chan_max", "chan_mean", "median", "top": channel with the largest peak, "sun": bool for it}``."""
    r = hidden_reductions(h)
    pmed, pmean = ratios(r["chan_max"], r["chan_mean"], r["median"])
    top = int(r["chan_max"].argmax())
    return {**r, "peak/median": pmed, "peak/mean": pmean, "top": top,
            "sun": bool(sun_test(r["chan_max"][top], pmed[top]))}


def channel_ratios(stats, steps=None, branch=None):
    """Per-entry ratios from a `Recording`.

    Returns ``(peak_over_median, peak_over_mean, peak)``, each (R, S', NB, Br', D) float tensors
    (NaN where a branch was not run), restricted to ``steps`` (list of step indices) and ``branch``
    (name) when given.
    """
    peak, mean, med = stats["chan_max"], stats["chan_mean"], stats["median"]
    if steps is not None:
        idx = torch.as_tensor(list(steps), dtype=torch.long)
        peak, mean, med = peak[:, idx], mean[:, idx], med[:, idx]
    if branch is not None:
        b = stats.branch_index(branch)
        peak, mean, med = peak[:, :, :, b:b + 1], mean[:, :, :, b:b + 1], med[:, :, :, b:b + 1]
    return (*ratios(peak, mean, med), peak)


def _nanmedian_over(x: torch.Tensor, dims) -> torch.Tensor:
    """Median over ``dims`` ignoring NaN; remaining dims keep their order."""
    keep = [d for d in range(x.dim()) if d not in dims]
    x = x.permute(*keep, *dims).reshape(*[x.shape[d] for d in keep], -1)
    return x.nanmedian(-1).values


@dataclass
class MassiveReport:
    """Result of `find_massive`.

    Attributes:
        channels: MA channel ids, strongest first (peak/median, median over blocks).
        blocks: block ids of the per-block axes below.
        ratio_median, ratio_mean, peak: (NB, D) medians over runs, steps, branches.
        top: per block, the ``top_k`` channel ids ranked by peak/median (list of lists).
        sun: per block, whether the top channel meets Sun et al.'s test (peak > 100 and >= 1000x median).
        stability: per MA channel, fraction of (run, step, block) entries in which it is among the
            top_k by peak/median: ``overall``, ``by_step`` (S,), ``by_block`` (NB,), ``by_run`` (R,).
    """

    channels: list
    blocks: list
    ratio_median: torch.Tensor
    ratio_mean: torch.Tensor
    peak: torch.Tensor
    top: list
    sun: list
    stability: dict = field(default_factory=dict)
    top_k: int = 3

    def rows(self) -> list[dict]:
        """One dict per (block, rank) for the top_k channels: block, rank, channel and both ratios."""
        out = []
        for i, b in enumerate(self.blocks):
            for r, c in enumerate(self.top[i]):
                out.append({"block": b, "rank": r + 1, "channel": c, "peak": float(self.peak[i, c]),
                            "peak/median": float(self.ratio_median[i, c]), "peak/mean": float(self.ratio_mean[i, c]),
                            "sun": bool(self.sun[i]) if r == 0 else None})
        return out

    def channel_summary(self, channel: int) -> dict:
        """Median over blocks of both ratios for one channel, and its stability if it is an MA."""
        return {"channel": channel,
                "peak/median": float(self.ratio_median[:, channel].nanmedian()),
                "peak/mean": float(self.ratio_mean[:, channel].nanmedian()),
                "stability": self.stability.get(channel, {}).get("overall")}

    def pick_channel(self, target_peak_over_mean: float, exclude=()) -> int:
        """The non-MA channel whose median peak/mean over blocks is closest to the target (e.g. 6 for
        a "weak MA", 1 for a plain channel) — for the paper's channel ablation."""
        score = self.ratio_mean.nanmedian(0).values
        bad = set(self.channels) | set(exclude)
        order = torch.argsort((score - target_peak_over_mean).abs())
        return next(int(c) for c in order if int(c) not in bad)

    def __repr__(self):
        lines = [f"MassiveReport: MA channels {self.channels} (top_k={self.top_k})",
                 f"{'block':>5} {'top channels (peak/median | peak/mean)':<60} sun"]
        for i, b in enumerate(self.blocks):
            cells = ", ".join(f"{c} ({float(self.ratio_median[i, c]):.0f}x|{float(self.ratio_mean[i, c]):.0f}x)"
                              for c in self.top[i])
            lines.append(f"{b:>5} {cells:<60} {'yes' if self.sun[i] else 'no'}")
        for c in self.channels:
            s = self.stability.get(c, {})
            lines.append(f"channel {c}: in top-{self.top_k} of {100 * s.get('overall', float('nan')):.0f}% of "
                         f"(run, step, block) entries")
        return "\n".join(lines)


def find_massive(stats, top_k: int = 3, min_ratio: float = 10.0, steps=None, branch=None,
                 max_channels: int | None = None) -> MassiveReport:
    """Find MA channels in a `Recording`.

    A channel is an MA channel when its peak/mean ratio, median over runs, steps, branches and then
    over blocks, is at least ``min_ratio`` and it is among the ``top_k`` channels by peak/median in at
    least one block. Channels are ranked by their median peak/median over blocks.

    Args:
        stats: a `stas.record` `Recording` (``rec.stats``).
        top_k: channels kept per block in the tables and in the stability count.
        min_ratio: peak/mean threshold for an MA channel.
        steps, branch: restrict to these step indices / one CFG branch.
        max_channels: keep at most this many MA channels.
    """
    r_med, r_mean, peak = channel_ratios(stats, steps, branch)        # (R, S, NB, Br, D)
    agg = lambda x: _nanmedian_over(x, (0, 1, 3))                     # noqa: E731 -> (NB, D)
    ratio_median, ratio_mean, peak_b = agg(r_med), agg(r_mean), agg(peak)
    nb, d = ratio_median.shape
    k = min(top_k, d)
    top = torch.topk(torch.nan_to_num(ratio_median, nan=-1.0), k, dim=1).indices    # (NB, k)
    sun = [bool(sun_test(peak_b[i, top[i, 0]], ratio_median[i, top[i, 0]])) for i in range(nb)]
    in_top = set(top.flatten().tolist())
    score_med = ratio_median.nanmedian(0).values
    score_mean = ratio_mean.nanmedian(0).values
    cands = [c for c in torch.argsort(torch.nan_to_num(score_med, nan=-1.0), descending=True).tolist()
             if c in in_top and score_mean[c] >= min_ratio]
    if max_channels is not None:
        cands = cands[:max_channels]
    # stability: top-k membership per (run, step, block), pooled over branches that ran
    entry = torch.nan_to_num(r_med, nan=-1.0).amax(3)                 # (R, S, NB, D)
    member = torch.zeros_like(entry, dtype=torch.bool).scatter_(-1, torch.topk(entry, k, -1).indices, True)
    valid = (entry.amax(-1) > 0)                                      # entries that ran
    stability = {}
    for c in cands:
        m = member[..., c].float().masked_fill(~valid, float("nan"))
        stability[c] = {"overall": float(m.nanmean()), "by_step": _nanmean_keep(m, 1),
                        "by_block": _nanmean_keep(m, 2), "by_run": _nanmean_keep(m, 0)}
    return MassiveReport(cands, list(stats.blocks), ratio_median, ratio_mean, peak_b,
                         top.tolist(), sun, stability, k)


def _nanmean_keep(x: torch.Tensor, dim: int) -> list:
    dims = [d for d in range(x.dim()) if d != dim]
    return x.permute(dim, *dims).reshape(x.shape[dim], -1).nanmean(-1).tolist()


# ------------------------------------------------------------------- per-block views (notebooks 02, 04)
def peak_over_mean(stats, channel: int, branch: str = "cond") -> torch.Tensor:
    """The paper's ratio for one channel: max_t |h[t, c]| over the mean |h| of the whole hidden
    state, per (run, step, block) -> (R, S, NB)."""
    b = stats.branch_index(branch)
    return ratios(stats["chan_max"][:, :, :, b], stats["chan_mean"][:, :, :, b], stats["median"][:, :, :, b])[1][..., channel]


def layerwise_topk(stats, k: int = 3, steps=None, branch: str = "cond") -> dict:
    """Sun et al.'s layerwise view: per block, the k largest channel peaks max_t |h[t, c]| and the
    median |h|, each a median over runs and the chosen steps. Returns {"top": (NB, k), "median": (NB,),
    "channels": (NB, k) channel ids of the top peaks, "blocks": list}."""
    b = list(stats.branches).index(branch)
    peak = stats["chan_max"][:, :, :, b]                     # (R, S, NB, D)
    med = stats["median"][:, :, :, b]                        # (R, S, NB)
    if steps is not None:
        idx = torch.as_tensor(list(steps), dtype=torch.long)
        peak, med = peak[:, idx], med[:, idx]
    top = peak.topk(k, dim=-1)                               # per entry, then median over runs/steps
    vals = top.values.flatten(0, 1).nanmedian(0).values      # (NB, k)
    chans = peak.flatten(0, 1).nanmedian(0).values.topk(k, -1).indices
    return {"top": vals.numpy(), "median": med.flatten(0, 1).nanmedian(0).values.numpy(),
            "channels": chans.numpy(), "blocks": list(stats.blocks)}


def channel_overlap(stats, k: int = 3, branch: str = "cond", block=None) -> dict:
    """Prompt invariance of the top channels: for each run, the top-k channels by peak/median
    (median over steps and blocks, or one ``block``); returns {"per_run": [[ids]...], "jaccard": mean
    pairwise Jaccard index, "common": ids in every run's top-k}."""
    b = list(stats.branches).index(branch)
    r = ratios(stats["chan_max"][:, :, :, b], stats["chan_mean"][:, :, :, b], stats["median"][:, :, :, b])[0]  # (R, S, NB, D)
    if block is not None:
        r = r[:, :, [list(stats.blocks).index(block)]]
    score = r.flatten(1, 2).nanmedian(1).values                               # (R, D)
    sets = [set(score[i].topk(k).indices.tolist()) for i in range(score.shape[0])]
    pairs = [len(a & c) / len(a | c) for i, a in enumerate(sets) for c in sets[i + 1:]]
    return {"per_run": [sorted(s) for s in sets], "jaccard": float(np.mean(pairs)) if pairs else 1.0,
            "common": sorted(set.intersection(*sets)) if sets else []}


def choose_channels(ma: "MassiveReport", n: int = 3) -> dict:
    """Channels to follow per token: ``{"ma": MA channels (at most n; [] when none passes the
    criteria), "top": the channels followed (the MA channels, or — when there is none, e.g. a random
    model — the n channels with the largest peak/median, which are then *not* MAs), "fallback":
    whether ``top`` is that stand-in, "weak": the non-MA channel closest to 6x peak/mean, "plain":
    the one closest to 1x}`` (the paper's channel ablation)."""
    chans = [int(c) for c in ma.channels[:n]]
    fallback = not chans
    top = chans or [int(c) for c in ma.ratio_median.nanmedian(0).values.argsort(descending=True)[:n]]
    weak = ma.pick_channel(6.0, exclude=top)
    plain = ma.pick_channel(1.0, exclude=top + [weak])
    return {"ma": chans, "top": top, "fallback": fallback, "weak": weak, "plain": plain}
