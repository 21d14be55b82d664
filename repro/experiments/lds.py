"""Linear datamodeling score (LDS): does an estimator predict what training on a subset does?

An attribution ``tau[t, i]`` (positive = training example ``i`` helps target ``t``) read as an
additive model says: training on a subset ``S`` helps target ``t`` by about
``g_t(S) = sum_{i in S} tau[t, i]``. The LDS checks this against retraining:

1. draw ``M`` random subsets ``S_1..S_M``, each keeping a fraction ``alpha`` of the training set;
2. train one model per subset (masked: same initialisation and mini-batch order as the full run,
   the left-out examples weighted 0, see :mod:`repro.experiments.masked`) and measure every target
   (``loss``, or ``margin``);
3. for each target, Spearman correlation over the ``M`` subsets between the predicted ``g_t(S_m)``
   and the measured benefit (``-loss``, or ``margin``);
4. report the mean over targets with a 95% CI from a two-way bootstrap over targets and subsets
   (all targets share the subsets, so resampling targets alone would be too optimistic).

The subset runs (:func:`subset_runs`) are made once and serve every estimator (:func:`lds` takes any
``(n_targets, n_train)`` score matrix): turn-over influence, TracInCP, influence functions, and the
baselines :func:`same_label_scores` and :func:`random_scores`. Several random subsets each change
half of the data, so the measured effects are far larger than a single removal's and the score is
far less at the mercy of trajectory noise than leave-one-out.

Cost (``benchmarks/bench_lds.py``): 50 subsets of the MLP 784-256-256-10 on 1,000 Fashion-MNIST
images, 10 epochs of SGD, batch 32, trained 25 at a time on one CPU thread: about 1-1.5 minutes;
scoring any number of methods on the runs afterwards takes well under a second each.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from repro.errors import InvalidParameterError
from repro.experiments.corr import rowwise_corr, two_way_ci
from repro.experiments.masked import MEASURES, ModelFactory, encode, masked_outputs
from repro.train import TrainConfig

__all__ = ["SubsetRuns", "LDSResult", "random_subsets", "subset_runs", "lds", "lds_table", "lds_difference", "combine_lds",
           "same_label_scores", "random_scores"]


@dataclass
class SubsetRuns:
    """Models retrained on random subsets, measured on targets.

    ``kept[m, i]``: whether training example ``train_ids[i]`` was in subset ``m``; ``outputs[m, t]``:
    subset ``m``'s model on target ``target_ids[t]`` (``measure``: loss or margin)."""

    train_ids: np.ndarray
    target_ids: np.ndarray
    kept: np.ndarray
    outputs: np.ndarray
    measure: str
    alpha: float
    seed: int

    @property
    def benefit(self) -> np.ndarray:
        """``(M, n_targets)``: what a helpful subset raises (``-loss`` or ``margin``)."""
        return -self.outputs if self.measure == "loss" else self.outputs


@dataclass
class LDSResult:
    """Per-target Spearman correlations (``per_target``) and their mean with a 95% CI (``mean``,
    ``ci95``) from a two-way bootstrap over targets and subsets (every target is measured on the
    same subsets, see :mod:`repro.experiments.corr`); ``n_targets`` counts targets with a defined
    correlation. ``predicted`` and ``measured`` are the ``(n_targets, n_subsets)`` matrices the
    correlations come from (kept for paired comparisons)."""

    per_target: pd.DataFrame
    mean: float
    ci95: list
    n_targets: int
    predicted: np.ndarray | None = None
    measured: np.ndarray | None = None


def random_subsets(n_train: int, n_subsets: int = 50, alpha: float = 0.5, seed: int = 0) -> np.ndarray:
    """``(n_subsets, n_train)`` bool: each row keeps exactly ``round(alpha * n_train)`` examples,
    drawn uniformly (generator ``seed``)."""
    if not 0.0 < float(alpha) < 1.0:
        raise InvalidParameterError(f"alpha (fraction of the training set kept) must be in (0, 1), got {alpha}")
    if int(n_subsets) < 3:
        raise InvalidParameterError(f"n_subsets must be at least 3 (a correlation over subsets), got {n_subsets}")
    keep = int(round(alpha * n_train))
    if not 1 <= keep < n_train:
        raise InvalidParameterError(f"alpha={alpha} keeps {keep} of {n_train} examples; pick alpha so that "
                                    "some but not all examples are kept")
    rng = np.random.default_rng(seed)
    kept = np.zeros((int(n_subsets), n_train), dtype=bool)
    for m in range(int(n_subsets)):
        kept[m, rng.choice(n_train, size=keep, replace=False)] = True
    return kept


def subset_runs(make_model: ModelFactory, train, targets, config: TrainConfig, n_subsets: int = 50,
                alpha: float = 0.5, seed: int = 0, subset_seed: int = 0, measure: str = "loss",
                chunk: int = 16, batched: bool | None = None, progress: bool = True) -> SubsetRuns:
    """Train ``n_subsets`` masked copies of the reference run (``make_model(seed)``, mini-batch
    order of ``seed``), each on a random ``alpha``-subset (generator ``subset_seed``), and measure
    them on the targets. Many copies train at once when :mod:`repro.multitrain` supports the model
    and ``config`` (SGD or AdamW, no clipping, no random dropout); otherwise one by one with the Trainer."""
    if measure not in MEASURES:
        raise InvalidParameterError(f"measure must be one of {MEASURES}, got {measure!r}")
    probe = make_model(seed)
    train_b, target_b = encode(probe, train), encode(probe, targets)
    kept = random_subsets(len(train_b), n_subsets, alpha, subset_seed)
    out = masked_outputs(make_model, train_b, target_b, config, kept.astype(np.float32), seed=seed,
                         measure=measure, chunk=chunk, batched=batched, progress=progress)
    return SubsetRuns(train_b.ids.numpy().astype(np.int64), target_b.ids.numpy().astype(np.int64), kept, out,
                      measure, float(alpha), int(seed))


def _score_matrix(scores, runs: SubsetRuns, train_ids, target_ids) -> np.ndarray:
    s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    s = s.astype(np.float64)
    n_t, n = len(runs.target_ids), len(runs.train_ids)
    if s.ndim != 2:
        raise InvalidParameterError(f"scores must be a (n_targets, n_train) matrix, got shape {s.shape}")
    if target_ids is not None:
        tid = np.asarray(target_ids, dtype=np.int64)
        if len(tid) != s.shape[0]:
            raise InvalidParameterError(f"target_ids has {len(tid)} ids but scores have {s.shape[0]} rows")
        row = {int(i): r for r, i in enumerate(tid.tolist())}
        missing = [int(i) for i in runs.target_ids if int(i) not in row]
        if missing:
            raise KeyError(f"{len(missing)} target id(s) of the subset runs have no score row: {missing[:10]}")
        s = s[[row[int(i)] for i in runs.target_ids]]
    elif s.shape[0] != n_t:
        raise InvalidParameterError(f"scores have {s.shape[0]} rows but the subset runs measured {n_t} targets; "
                                    "give one row per target (in runs.target_ids order) or pass target_ids=")
    if train_ids is not None:
        ids = train_ids.numpy() if isinstance(train_ids, torch.Tensor) else np.asarray(train_ids)
        if len(ids) != s.shape[1]:
            raise InvalidParameterError(f"train_ids has {len(ids)} ids but scores have {s.shape[1]} columns")
        col = {int(i): c for c, i in enumerate(ids.tolist())}
        missing = [int(i) for i in runs.train_ids if int(i) not in col]
        if missing:
            raise KeyError(f"{len(missing)} training id(s) of the subset runs have no score column: {missing[:10]}")
        s = s[:, [col[int(i)] for i in runs.train_ids]]
    elif s.shape[1] != n:
        raise InvalidParameterError(f"scores have {s.shape[1]} columns but the subset runs have {n} training "
                                    "examples; give one column per example (in runs.train_ids order) or pass "
                                    "train_ids=")
    if not np.isfinite(s).all():
        raise InvalidParameterError("scores hold NaN or infinite values")
    return s


def lds(scores, runs: SubsetRuns, train_ids=None, target_ids=None, n_resamples: int = 2000,
        seed: int = 0) -> LDSResult:
    """Linear datamodeling score of ``scores`` (``(n_targets, n_train)``, positive = helpful).

    Columns follow ``train_ids`` (default: ``runs.train_ids``), rows ``target_ids`` (default:
    ``runs.target_ids``); they are aligned to the runs by id, so any order works when the ids are
    given. A target whose predicted or measured values do not vary over subsets gets NaN and is
    left out of the mean (``n_targets`` says how many count)."""
    s = _score_matrix(scores, runs, train_ids, target_ids)
    pred = s @ runs.kept.astype(np.float64).T  # (n_targets, M): predicted benefit of each subset
    ben = runs.benefit.T
    rho = rowwise_corr(pred, ben, "spearman")
    per = pd.DataFrame({"target_id": runs.target_ids, "spearman": rho, "n_subsets": len(runs.kept)})
    ci = two_way_ci(lambda r, c: np.nanmean(rowwise_corr(pred[r][:, c[0]], ben[r][:, c[0]])),
                    len(rho), [pred.shape[1]], n_resamples, seed)
    return LDSResult(per, _nanmean(rho), ci, int((~np.isnan(rho)).sum()), pred, ben)


def _nanmean(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def lds_table(methods: dict, runs: SubsetRuns, train_ids=None, target_ids=None,
              n_resamples: int = 2000) -> pd.DataFrame:
    """LDS of several score matrices (``{name: scores}``) on the same subset runs: one row per
    method with the mean over targets, its 95% CI and the number of targets counted."""
    rows = []
    for name, sc in methods.items():
        r = lds(sc, runs, train_ids, target_ids, n_resamples)
        rows.append({"method": name, "lds": r.mean, "ci_lo": r.ci95[0], "ci_hi": r.ci95[1],
                     "n_targets": r.n_targets, "n_subsets": len(runs.kept), "alpha": runs.alpha})
    return pd.DataFrame(rows)


def lds_difference(a: LDSResult, b: LDSResult, n_resamples: int = 2000, seed: int = 0) -> tuple[float, list]:
    """Paired difference ``LDS(a) - LDS(b)`` of two methods on the same subset runs: the mean over
    targets of the per-target difference, with a two-way bootstrap CI (targets and subsets drawn
    once per replicate for both methods)."""
    if a.predicted is None or b.predicted is None:
        raise InvalidParameterError("lds_difference needs results of lds() (they keep the predicted values)")
    if not np.array_equal(a.per_target.target_id.to_numpy(), b.per_target.target_id.to_numpy()) or \
            a.measured.shape != b.measured.shape or not np.array_equal(a.measured, b.measured):
        raise InvalidParameterError("the two LDS results come from different subset runs or targets; compute "
                                    "both with lds() on the same runs")
    pa, pb, y = a.predicted, b.predicted, a.measured
    diff = a.per_target.spearman.to_numpy() - b.per_target.spearman.to_numpy()

    def stat(r, c):
        return np.nanmean(rowwise_corr(pa[r][:, c[0]], y[r][:, c[0]]) - rowwise_corr(pb[r][:, c[0]], y[r][:, c[0]]))

    return _nanmean(diff), two_way_ci(stat, len(diff), [y.shape[1]], n_resamples, seed)


def combine_lds(results, n_resamples: int = 2000, seed: int = 0) -> LDSResult:
    """One LDS from several results on the same targets (e.g. one per training seed, each with its
    own subset runs): each target's correlations are averaged over the results, then over targets;
    the CI redraws targets (shared) and every result's subsets (its own) in each replicate."""
    results = list(results)
    if not results:
        raise InvalidParameterError("combine_lds needs at least one LDSResult")
    ids = results[0].per_target.target_id.to_numpy()
    if any(not np.array_equal(r.per_target.target_id.to_numpy(), ids) for r in results):
        raise InvalidParameterError("the LDS results cover different targets; measure every seed on the same targets")
    if any(r.predicted is None for r in results):
        raise InvalidParameterError("combine_lds needs results of lds() (they keep the predicted values)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_target = np.nanmean(np.stack([r.per_target.spearman.to_numpy() for r in results]), axis=0)

    def stat(rows, cols):
        vals = [rowwise_corr(r.predicted[rows][:, c], r.measured[rows][:, c]) for r, c in zip(results, cols)]
        return np.nanmean(np.nanmean(np.stack(vals), axis=0))

    ci = two_way_ci(stat, len(ids), [r.predicted.shape[1] for r in results], n_resamples, seed)
    per = pd.DataFrame({"target_id": ids, "spearman": per_target,
                        "n_subsets": sum(int(r.per_target.n_subsets.iloc[0]) for r in results)})
    return LDSResult(per, _nanmean(per_target), ci, int(np.isfinite(per_target).sum()))


def same_label_scores(train_labels, target_labels) -> np.ndarray:
    """Baseline: ``1`` where the training example has the target's label, else ``0``."""
    tr = np.asarray(train_labels).reshape(-1)
    tg = np.asarray(target_labels).reshape(-1)
    return (tg[:, None] == tr[None, :]).astype(np.float64)


def random_scores(n_targets: int, n_train: int, seed: int = 0) -> np.ndarray:
    """Baseline: independent standard normal scores (LDS about 0)."""
    return np.random.default_rng(seed).normal(size=(int(n_targets), int(n_train)))
