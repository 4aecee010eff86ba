"""stas.statistics against hand-worked answers, brute-force references and known-mean samples."""

import math

import numpy as np
import pytest

from stas import statistics as S


# ------------------------------------------------------------------------------- Holm

def test_holm_hand_worked():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    adj = S.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])
    assert (adj < 0.05).tolist() == [True, False, False, True]
    # capped at 1; nan stays nan and is not counted in m
    np.testing.assert_allclose(S.holm([0.6, np.nan, 0.3]), [0.6, np.nan, 0.6])
    assert S.holm([0.2, 0.9]).tolist() == [0.4, 0.9]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        S.holm([1.2])


# ------------------------------------------------------------------------------- bootstrap

def test_paired_bootstrap_known_values():
    # every prompt has difference 0.5 -> degenerate interval
    r = S.paired_bootstrap_ci([1.5, 2.5, 3.5, 4.5], [1, 2, 3, 4], ["p", "p", "q", "r"])
    assert (r["mean_diff"], r["lo"], r["hi"], r["p"], r["n"], r["n_groups"]) == (0.5, 0.5, 0.5, 0.0, 4, 3)
    # nan pairs dropped; a single prompt gives no interval
    r = S.paired_bootstrap_ci([1.0, np.nan, 2.0], [0.0, 0.0, 0.0], ["p", "p", "p"])
    assert r["n"] == 2 and r["mean_diff"] == 1.5 and math.isnan(r["lo"]) and math.isnan(r["p"])
    with pytest.raises(ValueError, match="same length"):
        S.paired_bootstrap_ci([1, 2], [1, 2], ["p"])


def test_paired_bootstrap_coverage_on_known_mean():
    """95 % intervals cover the true mean difference in about 95 % of repeated experiments."""
    rng = np.random.default_rng(0)
    true, hits, n_exp = 0.3, 0, 200
    for k in range(n_exp):
        prompt_effect = rng.normal(0, 1.0, size=24)           # clips of a prompt share it
        d = true + np.repeat(prompt_effect, 2) + rng.normal(0, 0.3, size=48)
        r = S.paired_bootstrap_ci(d, np.zeros(48), np.repeat(np.arange(24), 2), n_resamples=999, seed=k)
        hits += r["lo"] <= true <= r["hi"]
    assert 0.88 <= hits / n_exp <= 0.99


def test_paired_bootstrap_resamples_prompts_not_clips():
    rng = np.random.default_rng(1)
    d = np.repeat(rng.normal(0, 1, size=8), 4) + rng.normal(0, 0.05, size=32)   # 8 prompts x 4 clips
    by_prompt = S.paired_bootstrap_ci(d, np.zeros(32), np.repeat(np.arange(8), 4))
    as_if_iid = S.paired_bootstrap_ci(d, np.zeros(32), np.arange(32))
    # clustered clips carry ~8 samples of information, not 32: the honest interval is ~2x wider
    ratio = (by_prompt["hi"] - by_prompt["lo"]) / (as_if_iid["hi"] - as_if_iid["lo"])
    assert 1.6 < ratio < 2.4
    assert by_prompt["mean_diff"] == pytest.approx(d.mean())
    # p agrees with the interval: it excludes 0 iff p < 0.05
    for r in (by_prompt, as_if_iid):
        assert (r["lo"] > 0 or r["hi"] < 0) == (r["p"] < 0.05)


# ------------------------------------------------------------------------------- KID

def brute_force_kid(x, y):
    d = x.shape[1]
    k = lambda u, v: (u @ v / d + 1.0) ** 3                   # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def brute_force_jackknife_se(x, y):
    m, n = len(x), len(y)
    lx = np.array([brute_force_kid(np.delete(x, i, 0), y) for i in range(m)])
    ly = np.array([brute_force_kid(x, np.delete(y, j, 0)) for j in range(n)])
    return math.sqrt((m - 1) / m * ((lx - lx.mean()) ** 2).sum() + (n - 1) / n * ((ly - ly.mean()) ** 2).sum())


def test_kid_matches_brute_force():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 4)), rng.normal(0.5, 1.0, size=(9, 4))
    r = S.kid(x, y)
    assert r["kid"] == pytest.approx(brute_force_kid(x, y), rel=1e-10)
    assert r["se"] == pytest.approx(brute_force_jackknife_se(x, y), rel=1e-8)
    assert (r["m"], r["n"]) == (7, 9) and r["lo"] < r["kid"] < r["hi"]


def test_kid_identical_distributions_near_zero_and_shift_detected():
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(40):
        r = S.kid(rng.normal(size=(16, 8)), rng.normal(size=(16, 8)))
        covered += r["lo"] <= 0 <= r["hi"]
        assert abs(r["kid"]) < 6 * r["se"] + 1e-12
    assert covered >= 34                                     # ~95 % nominal, small-n jackknife
    far = S.kid(rng.normal(size=(16, 8)), rng.normal(1.0, 1.0, size=(16, 8)))
    assert far["lo"] > 0
    with pytest.raises(ValueError, match="at least 3"):
        S.kid(np.zeros((2, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="dimensions differ"):
        S.kid(np.zeros((4, 3)), np.zeros((5, 2)))


def test_bootstrap_min_groups_withholds_ci_for_few_prompts():
    """Two prompts of the same sign would give p = 0 (every replicate has that sign): below
    ``min_groups`` there is no interval and no p, only the mean difference."""
    from stas.statistics import paired_bootstrap_ci

    a, b, g = [1.0, 1.2, 2.0, 2.1], [0.0, 0.1, 0.5, 0.4], ["p", "p", "q", "q"]
    assert paired_bootstrap_ci(a, b, g)["p"] == 0.0
    r = paired_bootstrap_ci(a, b, g, min_groups=6)
    assert r["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b))) and np.isnan(r["p"]) and np.isnan(r["lo"])
