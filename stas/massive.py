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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def channel_ratios(stats, steps=None, branch=None):
    """Per-entry ratios from a `Recording`.

    Returns ``(peak_over_median, peak_over_mean, peak)``, each (R, S', NB, Br', D) float tensors
    (NaN where a branch was not run), restricted to ``steps`` (list of step indices) and ``branch``
    (name) when given.
    """
    peak = stats["chan_max"]
    med = stats["median"][..., None]
    mean_all = stats["chan_mean"].mean(-1, keepdim=True)
    if steps is not None:
        idx = torch.as_tensor(list(steps), dtype=torch.long)
        peak, med, mean_all = peak[:, idx], med[:, idx], mean_all[:, idx]
    if branch is not None:
        b = stats.branch_index(branch)
        peak, med, mean_all = peak[:, :, :, b:b + 1], med[:, :, :, b:b + 1], mean_all[:, :, :, b:b + 1]
    return peak / med, peak / mean_all, peak


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
    sun = [(peak_b[i, top[i, 0]] > 100 and ratio_median[i, top[i, 0]] >= 1000).item() for i in range(nb)]
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
