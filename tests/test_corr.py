"""Row-wise correlations equal scipy's; the two-way bootstrap (targets and shared units) does not
declare an effect that only a few shared units create, where resampling targets alone would."""
import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from repro.claims import bootstrap_ci
from repro.experiments.corr import rowwise_corr, two_way_ci


def test_rowwise_corr_equals_scipy_with_ties_and_constant_rows():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 4, (6, 12)).astype(float)  # many ties
    Y = X + rng.normal(size=X.shape)
    X[5] = 1.0  # constant row
    sp, pe = rowwise_corr(X, Y, "spearman"), rowwise_corr(X, Y, "pearson")
    for t in range(5):
        assert sp[t] == pytest.approx(spearmanr(X[t], Y[t])[0])
        assert pe[t] == pytest.approx(pearsonr(X[t], Y[t])[0])
    assert np.isnan(sp[5]) and np.isnan(pe[5])


def test_two_way_bootstrap_does_not_trust_a_shared_chance_correlation():
    """Every target's scores and effects follow the same two unrelated unit profiles a and b: all
    per-target correlations equal corr(a, b), a chance value. Targets-only resampling gives a
    tiny interval that excludes 0; the two-way interval covers 0."""
    rng = np.random.default_rng(0)
    k, n_t = 40, 30
    a, b = rng.normal(size=k), rng.normal(size=k)
    S = a + 0.05 * rng.normal(size=(n_t, k))
    E = b + 0.05 * rng.normal(size=(n_t, k))
    per = rowwise_corr(S, E)
    chance = spearmanr(a, b)[0]
    assert abs(chance) > 0.1 and np.allclose(per, chance, atol=0.05)
    _, ci_targets = bootstrap_ci(per)
    assert ci_targets[0] > 0 or ci_targets[1] < 0
    ci = two_way_ci(lambda r, c: np.nanmean(rowwise_corr(S[r][:, c[0]], E[r][:, c[0]])), n_t, [k], 1000)
    assert ci[0] < 0 < ci[1]
