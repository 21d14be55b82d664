"""Linear datamodeling score: exact on an additive ground truth (LDS 1; random scores about 0;
reversed scores -1), scores are aligned to the runs by id, and on real masked retrainings a datamodel
fitted on independent subsets scores far above random. Tiny 2-d model: each retraining ~10 ms."""
import numpy as np
import pytest

from repro.errors import InvalidParameterError
from repro.experiments import lds as D
from tests.test_loo import CFG, blobs, make

pytestmark = pytest.mark.usefixtures("one_thread")


def additive_runs(n_train=60, n_targets=12, M=50, noise=0.0, seed=0):
    """Subset 'runs' whose loss is exactly additive: loss[m, t] = c_t - sum_{i in S_m} tau[t, i]."""
    rng = np.random.default_rng(seed)
    tau = rng.normal(size=(n_targets, n_train))
    kept = D.random_subsets(n_train, M, 0.5, seed)
    loss = 5.0 - kept @ tau.T + noise * rng.normal(size=(M, n_targets))
    runs = D.SubsetRuns(np.arange(n_train) + 10, np.arange(n_targets), kept, loss, "loss", 0.5, 0)
    return runs, tau


def test_additive_ground_truth_gives_one_random_zero_reversed_minus_one():
    runs, tau = additive_runs()
    assert D.lds(tau, runs).mean == pytest.approx(1.0)
    assert D.lds(-tau, runs).mean == pytest.approx(-1.0)
    rnd = D.lds(D.random_scores(*tau.shape, seed=1), runs)
    assert abs(rnd.mean) < 0.15 and rnd.ci95[0] < 0 < rnd.ci95[1]
    noisy, tau2 = additive_runs(noise=2.0)  # sd of the sum over 30 examples ~ 5.5: still high
    assert 0.7 < D.lds(tau2, noisy).mean < 1.0
    m, ci = D.lds_difference(D.lds(tau, runs), rnd)
    assert ci[0] > 0.8


def test_margin_benefit_sign():
    runs, tau = additive_runs()
    margin = D.SubsetRuns(runs.train_ids, runs.target_ids, runs.kept, -runs.outputs, "margin", 0.5, 0)
    assert D.lds(tau, margin).mean == pytest.approx(1.0)


def test_scores_are_aligned_by_id():
    runs, tau = additive_runs()
    perm = np.random.default_rng(3).permutation(tau.shape[1])
    tperm = np.random.default_rng(4).permutation(tau.shape[0])
    shuffled = tau[tperm][:, perm]
    r = D.lds(shuffled, runs, train_ids=runs.train_ids[perm], target_ids=runs.target_ids[tperm])
    assert r.mean == pytest.approx(1.0)
    assert D.lds(shuffled, runs).mean < 0.5  # without ids the columns are taken as they come
    with pytest.raises(KeyError, match="no score column"):
        D.lds(tau[:, :-1], runs, train_ids=runs.train_ids[:-1])
    with pytest.raises(KeyError, match="no score row"):
        D.lds(tau[:-1], runs, target_ids=runs.target_ids[:-1])
    with pytest.raises(InvalidParameterError, match="columns"):
        D.lds(tau[:, :-1], runs)
    with pytest.raises(InvalidParameterError, match="rows"):
        D.lds(tau[:-1], runs)
    with pytest.raises(InvalidParameterError, match="NaN"):
        D.lds(np.full_like(tau, np.nan), runs)


def test_same_label_baseline():
    s = D.same_label_scores([0, 1, 1, 2], [1, 2])
    np.testing.assert_array_equal(s, [[0, 1, 1, 0], [0, 0, 0, 1]])


def test_bad_subset_parameters():
    with pytest.raises(InvalidParameterError, match="alpha"):
        D.random_subsets(10, 5, 1.0)
    with pytest.raises(InvalidParameterError, match="n_subsets"):
        D.random_subsets(10, 2, 0.5)
    train, targets = blobs()
    with pytest.raises(InvalidParameterError, match="measure"):
        D.subset_runs(make, train, targets, CFG, measure="accuracy", progress=False)


def test_real_retrainings_datamodel_beats_random():
    """Ridge 'datamodel' fitted on 160 masked subset retrainings predicts 40 independent ones."""
    train, targets = blobs()
    fit = D.subset_runs(make, train, targets, CFG, n_subsets=160, subset_seed=1, chunk=40, progress=False)
    ev = D.subset_runs(make, train, targets, CFG, n_subsets=40, subset_seed=2, chunk=40, progress=False)
    assert not (fit.kept == fit.kept[0]).all(1).all() and fit.kept.sum(1).tolist() == [40] * 160
    X = fit.kept.astype(float) - fit.kept.mean(0)
    Y = fit.benefit - fit.benefit.mean(0)
    tau = np.linalg.solve(X.T @ X + 1.0 * np.eye(X.shape[1]), X.T @ Y).T  # (n_targets, n_train)
    good = D.lds(tau, ev)
    assert good.mean > 0.5, good.per_target
    table = D.lds_table({"datamodel": tau, "random": D.random_scores(*tau.shape)}, ev)
    assert table.set_index("method").lds["datamodel"] > table.set_index("method").lds["random"] + 0.3
    # the one-by-one fallback measures the same runs
    slow = D.subset_runs(make, train, targets, CFG, n_subsets=3, subset_seed=2, batched=False, progress=False)
    np.testing.assert_allclose(slow.outputs, ev.outputs[:3], atol=2e-5)


def test_combine_over_seeds_averages_per_target():
    runs, tau = additive_runs()
    a = D.lds(tau, runs)
    b = D.lds(D.random_scores(*tau.shape, seed=2), runs)
    both = D.combine_lds([a, b])
    np.testing.assert_allclose(both.per_target.spearman, (a.per_target.spearman + b.per_target.spearman) / 2)
    assert both.mean == pytest.approx((a.mean + b.mean) / 2)
    assert both.n_targets == len(runs.target_ids)
    other, _ = additive_runs(n_targets=5)
    with pytest.raises(InvalidParameterError, match="different targets"):
        D.combine_lds([a, D.lds(D.random_scores(5, 60), other)])
