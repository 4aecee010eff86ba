"""Statistics for comparing methods on generated clips: prompt-level bootstrap, Holm, KID.

* :func:`paired_bootstrap_ci` — mean paired difference ``a − b`` with a percentile bootstrap CI
  that resamples *prompts* (clusters), not clips: clips of one prompt share content and are not
  independent (the cluster bootstrap, Davison & Hinkley 1997, §3.8).
* :func:`holm` — Holm's step-down correction of a family of p-values (Holm 1979).
* :func:`kid` — Kernel Inception Distance: the unbiased MMD² with the cubic polynomial kernel
  ``k(x, y) = (x·y / d + 1)³`` (Bińkowski et al. 2018, "Demystifying MMD GANs"), with a jackknife
  CI that stays honest at small n (unlike a Fréchet distance, no covariance is fitted).

Resampling uses scipy (``scipy.stats.bootstrap``); inputs are numpy / torch arrays or sequences;
outputs are Python floats and dicts, so a list of results makes a pandas DataFrame directly.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import scipy.stats
import torch

__all__ = ["paired_bootstrap_ci", "holm", "kid", "polynomial_kernel"]


def _float_array(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], groups: Sequence, confidence: float = 0.95,
                        n_resamples: int = 9999, seed: int = 0, min_groups: int = 2) -> dict:
    """Mean of the paired differences ``a − b``, with a CI that resamples prompts.

    Clip ``j`` of ``a`` and of ``b`` share prompt ``groups[j]`` and seed. The statistic is the mean
    of ``d = a − b`` over clips; each bootstrap replicate draws prompts with replacement and
    averages ``d`` over all clips of the drawn prompts (the cluster bootstrap). The interval is the
    percentile interval of ``n_resamples`` replicates (``scipy.stats.bootstrap``), and
    ``p = min(1, 2 · min(P*(mean ≤ 0), P*(mean ≥ 0)))`` is read off the same replicates, so the
    interval excludes 0 exactly when ``p < 1 − confidence`` (up to ties at 0).

    Pairs where ``a`` or ``b`` is nan are dropped. ``min_groups``: fewer prompts than this give no
    interval (with G prompts the bootstrap has few distinct replicates: with 2 prompts of the same
    sign every replicate has that sign and p = 0, which is no evidence; `stas.evaluate` asks for
    ``MIN_PROMPTS_FOR_CI``).

    Returns:
        dict with ``mean_diff``, ``lo``, ``hi``, ``p``, ``n`` (pairs used), ``n_groups``,
        ``confidence``. With fewer than 2 prompts, ``lo``, ``hi`` and ``p`` are nan; when every
        prompt has the same mean difference the interval is ``[mean, mean]`` and p is 0 (1 if
        the mean is 0). Units are those of the metric.

    Raises:
        ValueError: lengths differ, or ``confidence`` not in (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a, b = _float_array(a, "a").ravel(), _float_array(b, "b").ravel()
    g = np.asarray(groups, dtype=object).ravel()
    if not a.shape == b.shape == g.shape:
        raise ValueError(f"a, b and groups must have the same length, got {a.size}, {b.size}, {g.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d, g = a[keep] - b[keep], g[keep]
    nan = float("nan")
    out = dict(mean_diff=float(d.mean()) if d.size else nan, lo=nan, hi=nan, p=nan, n=int(d.size),
               n_groups=0, confidence=confidence)
    if d.size == 0:
        return out
    _, inv = np.unique(g.astype(str), return_inverse=True)
    sums, counts = np.bincount(inv, weights=d), np.bincount(inv).astype(np.float64)
    out["n_groups"] = int(len(sums))
    if len(sums) < max(2, min_groups):
        return out
    means = sums / counts
    if np.ptp(means) == 0:
        m = out["mean_diff"]
        return {**out, "lo": m, "hi": m, "p": 1.0 if m == 0 else 0.0}
    res = scipy.stats.bootstrap((sums, counts), lambda s, c, axis=-1: s.sum(axis) / c.sum(axis),
                                paired=True, vectorized=True, n_resamples=n_resamples,
                                confidence_level=confidence, method="percentile",
                                rng=np.random.default_rng(seed))
    boot = res.bootstrap_distribution
    p = min(1.0, 2.0 * min(float(np.mean(boot <= 0)), float(np.mean(boot >= 0))))
    return {**out, "lo": float(res.confidence_interval.low), "hi": float(res.confidence_interval.high),
            "p": p}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values for one family of tests (Holm 1979).

    Sorted ascending, ``p_(1) ≤ … ≤ p_(m)`` become ``max_{j ≤ i} min(1, (m − j + 1) · p_(j))``;
    rejecting where the adjusted value is ``< α`` controls the family-wise error rate at ``α``.
    nan entries (tests not run) stay nan and do not count towards ``m``.

    Returns:
        float64 array of the input's length, in the input's order.

    Raises:
        ValueError: a p-value outside [0, 1].
    """
    p = _float_array(pvalues, "pvalues").ravel()
    ok = ~np.isnan(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p[ok].min()} .. {p[ok].max()}")
    out = np.full(p.shape, np.nan)
    q = p[ok]
    m = q.size
    order = np.argsort(q, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """``k(x, y) = (x·y / d + coef0)^degree`` for rows of ``x (n, d)`` and ``y (m, d)`` → ``(n, m)``."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def _features(x, name: str) -> np.ndarray:
    a = _float_array(x, name)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {a.shape}")
    if a.shape[0] < 3:
        raise ValueError(f"{name} needs at least 3 samples for KID with a CI, got N = {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def kid(feats_a, feats_b, confidence: float = 0.95, degree: int = 3, coef0: float = 1.0) -> dict:
    """Kernel Inception Distance between two feature sets, with a jackknife CI.

    ``KID = MMD²_u`` with the polynomial kernel of :func:`polynomial_kernel` (degree 3,
    ``coef0 = 1``: Bińkowski et al. 2018)::

        1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j) − 2/(mn) Σ_{i,j} k(x_i, y_j)

    This estimator is unbiased at any sample size (it is ≈ 0, and may be negative, for two samples
    of one distribution). Its standard error is the two-sample jackknife (delete one sample of
    either set; Arvesen 1969 for U-statistics); the interval is ``KID ± t · se`` with
    ``min(m, n) − 1`` degrees of freedom.

    Args:
        feats_a: ``(m, d)`` features (numpy or torch), m ≥ 3; a 1-D array is ``(m, 1)``.
        feats_b: ``(n, d)`` features, n ≥ 3, the same d.

    Returns:
        dict with ``kid``, ``se``, ``lo``, ``hi``, ``m``, ``n``, ``confidence`` (squared kernel
        units; multiply by 1000 for the "KID × 10³" that papers print).

    Raises:
        ValueError: shapes, fewer than 3 samples, non-finite values, confidence not in (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x, y = _features(feats_a, "feats_a"), _features(feats_b, "feats_b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    m, n = len(x), len(y)
    kxx, kyy, kxy = (polynomial_kernel(u, v, degree, coef0) for u, v in ((x, x), (y, y), (x, y)))
    rxx = kxx.sum(1) - np.diag(kxx)          # (m,) Σ_{j≠i} k(x_i, x_j)
    ryy = kyy.sum(1) - np.diag(kyy)
    sxx, syy, sxy = rxx.sum(), ryy.sum(), kxy.sum()
    value = sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)
    # leave x_i out / leave y_j out, from row sums (O(m² + n²) after the kernels)
    loo_x = (sxx - 2 * rxx) / ((m - 1) * (m - 2)) + syy / (n * (n - 1)) - 2 * (sxy - kxy.sum(1)) / ((m - 1) * n)
    loo_y = sxx / (m * (m - 1)) + (syy - 2 * ryy) / ((n - 1) * (n - 2)) - 2 * (sxy - kxy.sum(0)) / (m * (n - 1))
    var = (m - 1) / m * ((loo_x - loo_x.mean()) ** 2).sum() + (n - 1) / n * ((loo_y - loo_y.mean()) ** 2).sum()
    se = math.sqrt(var)
    t = float(scipy.stats.t.ppf(0.5 + confidence / 2, df=min(m, n) - 1))
    return dict(kid=float(value), se=se, lo=float(value - t * se), hi=float(value + t * se), m=m, n=n,
                confidence=confidence)
