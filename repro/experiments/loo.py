"""Fixed-order leave-one-out: a ground truth for influence estimates, with its noise ceiling.

**What is measured.** The reference run trains a model from initialisation ``seed`` in the
mini-batch order of ``seed``. The leave-one-out run of training example ``i`` repeats it exactly,
except that ``i`` gets weight 0 in the loss of its mini-batch (it is struck out of that batch; no
other batch changes). The effect of ``i`` on a target ``z`` is

    effect(i -> z) = L(z; trained without i) - L(z; reference)          (measure="loss")
    effect(i -> z) = margin(z; reference) - margin(z; trained without i) (measure="margin")

so, as for every estimator in repro, **positive = i helped z**. Retraining on the dataset minus
``i`` *with a fresh shuffle* would change every mini-batch and measure mostly the reshuffle, not
``i``: that is why the order is kept.

**How well can any estimator agree with it?** Removing one example of hundreds changes a small
network's trajectory a little, and the change depends on the trajectory. The *noise ceiling*
re-measures the same effects from an initialisation perturbed in its last digits
(``perturb=1e-6``) or from another seed, and correlates the two measurements
(:func:`noise_ceiling`): an estimator cannot be expected to agree with the ground truth better than
the ground truth agrees with itself.

Cost: one masked retraining per removal plus one reference per chunk; with the MLP 784-256-256-10
on 1,000 Fashion-MNIST images (10 epochs, one CPU thread, 20-25 copies at a time) about 1.2 s per
removal, so a noise ceiling (a second measurement) doubles it.

Typical use::

    removed = random_removals(train, 150, seed=0)
    truth = fixed_order_loo(make_model, train, targets, cfg, removed, seed=0)
    est = TurnOverInfluence(reference_model).scores(targets, train)     # (n_targets, n_train)
    agreement(est, truth, train_ids=train.ids).summary
    noise_ceiling(truth, fixed_order_loo(..., perturb=1e-6)).summary
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import ConstantInputWarning, pearsonr, spearmanr

from repro.errors import ConfigMismatchError, InvalidParameterError
from repro.experiments.corr import rowwise_corr, two_way_ci
from repro.experiments.masked import ModelFactory, encode, masked_outputs
from repro.train import TrainConfig

__all__ = ["LOOResult", "Agreement", "random_removals", "fixed_order_loo", "score_columns", "agreement",
           "noise_ceiling", "correlation_rows", "combined_agreement"]


@dataclass
class LOOResult:
    """Fixed-order leave-one-out effects.

    ``effects[t, j]``: effect of removing ``removed_ids[j]`` on target ``target_ids[t]`` (positive =
    the example helped the target, see module doc); ``reference[t]``: the reference run's loss (or
    margin) on target ``t``."""

    removed_ids: np.ndarray
    target_ids: np.ndarray
    effects: np.ndarray
    reference: np.ndarray
    seed: int
    perturb: float
    measure: str

    def frame(self) -> pd.DataFrame:
        """Long table: one row per (target, removed example)."""
        t, j = np.meshgrid(np.arange(len(self.target_ids)), np.arange(len(self.removed_ids)), indexing="ij")
        return pd.DataFrame({"target_id": self.target_ids[t.ravel()], "removed_id": self.removed_ids[j.ravel()],
                             "effect": self.effects.ravel(), "seed": self.seed, "perturb": self.perturb})


@dataclass
class Agreement:
    """Correlation of scores with leave-one-out effects.

    ``per_target``: one row per target (``spearman``, ``pearson``, ``n`` removals).
    ``summary``: one row per (statistic, level) with value and 95% CI:
    ``per-target mean`` (mean of the per-target correlations), ``pooled`` (one correlation over all
    (target, removal) pairs) -- both with a two-way bootstrap over targets and removals, since all
    targets share the removals -- and ``summed over targets`` (scores summed over targets vs
    effects on the summed loss, bootstrap over removals)."""

    per_target: pd.DataFrame
    summary: pd.DataFrame

    def value(self, statistic: str = "spearman", level: str = "per-target mean") -> tuple[float, list[float]]:
        """``(value, [lo, hi])`` of one summary row."""
        row = self.summary[(self.summary.statistic == statistic) & (self.summary.level == level)]
        if row.empty:
            raise InvalidParameterError(f"no summary row ({statistic!r}, {level!r}); statistics: spearman, "
                                        "pearson; levels: per-target mean, pooled, summed over targets")
        r = row.iloc[0]
        return float(r.value), [float(r.ci_lo), float(r.ci_hi)]


def random_removals(train, k: int, seed: int = 0) -> np.ndarray:
    """``k`` training ids drawn uniformly without replacement (not chosen by any estimator, so the
    comparison covers the whole range of effects, not only the extremes)."""
    ids = np.asarray(train.ids if hasattr(train, "ids") else train)
    ids = ids.numpy() if isinstance(ids, torch.Tensor) else ids
    if not 1 <= int(k) <= len(ids):
        raise InvalidParameterError(f"k must be in 1..{len(ids)} (the training set size), got {k}")
    return np.sort(np.random.default_rng(seed).choice(ids.astype(np.int64), size=int(k), replace=False))


def fixed_order_loo(make_model: ModelFactory, train, targets, config: TrainConfig, removed_ids,
                    seed: int = 0, perturb: float = 0.0, perturb_seed: int = 0, measure: str = "loss",
                    chunk: int = 16, batched: bool | None = None, progress: bool = True) -> LOOResult:
    """Leave-one-out effects of ``removed_ids`` on every target, with order and initialisation fixed.

    Trains the reference run (``make_model(seed)``, mini-batch order of ``seed``) and one masked run
    per removed id (see module doc), many at once when :mod:`repro.multitrain` supports the model
    and ``config`` (SGD or AdamW, no clipping, no random dropout), else one by one with ``Trainer.fit(masked_ids)``.
    ``perturb > 0`` adds ``perturb * N(0, 1)`` (generator ``perturb_seed``) to the initial weights
    of every run, reference included (for :func:`noise_ceiling`)."""
    removed = np.asarray(removed_ids, dtype=np.int64).reshape(-1)
    if len(removed) == 0:
        raise InvalidParameterError("removed_ids is empty; pick some with random_removals(train, k)")
    if len(np.unique(removed)) != len(removed):
        raise InvalidParameterError("removed_ids has duplicates")
    probe = make_model(seed)
    train_b, target_b = encode(probe, train), encode(probe, targets)
    pos = {int(i): j for j, i in enumerate(train_b.ids.tolist())}
    missing = [int(i) for i in removed if int(i) not in pos]
    if missing:
        raise KeyError(f"{len(missing)} removed id(s) not in the training set: {missing[:10]}")
    W = np.ones((len(removed), len(train_b)), dtype=np.float32)
    W[np.arange(len(removed)), [pos[int(i)] for i in removed]] = 0.0
    out, ref = masked_outputs(make_model, train_b, target_b, config, W, seed=seed, perturb=perturb,
                              perturb_seed=perturb_seed, measure=measure, chunk=chunk, with_reference=True,
                              batched=batched, progress=progress)
    effects = (out - ref) if measure == "loss" else (ref - out)
    return LOOResult(removed, target_b.ids.numpy().astype(np.int64), effects.T.copy(), ref[0].copy(),
                     int(seed), float(perturb), measure)


def score_columns(scores, loo: LOOResult, train_ids=None) -> np.ndarray:
    """The ``(n_targets, n_removed)`` block of a score matrix that matches ``loo``'s removals.

    ``scores``: ``(n_targets, n_train)`` with columns following ``train_ids``, or already
    ``(n_targets, n_removed)`` in ``loo.removed_ids`` order when ``train_ids`` is None."""
    s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    s = s.astype(np.float64)
    n_t, k = len(loo.target_ids), len(loo.removed_ids)
    if s.ndim != 2 or s.shape[0] != n_t:
        raise InvalidParameterError(f"scores must be (n_targets={n_t}, n_train), one row per target of the "
                                    f"leave-one-out run, got shape {s.shape}")
    if train_ids is None:
        if s.shape[1] != k:
            raise InvalidParameterError(f"scores have {s.shape[1]} columns; pass train_ids= (the ids of the "
                                        f"columns) or give the {k} columns of loo.removed_ids in order")
        return s
    ids = train_ids.numpy() if isinstance(train_ids, torch.Tensor) else np.asarray(train_ids)
    if len(ids) != s.shape[1]:
        raise InvalidParameterError(f"train_ids has {len(ids)} ids but scores have {s.shape[1]} columns")
    col = {int(i): j for j, i in enumerate(ids.tolist())}
    missing = [int(i) for i in loo.removed_ids if int(i) not in col]
    if missing:
        raise KeyError(f"{len(missing)} removed id(s) have no score column: {missing[:10]}")
    return s[:, [col[int(i)] for i in loo.removed_ids]]


def _corr(x: np.ndarray, y: np.ndarray, kind: str) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float((spearmanr if kind == "spearman" else pearsonr)(x, y)[0])


def correlation_rows(s: np.ndarray, e: np.ndarray, target_ids, n_resamples: int = 2000,
                     seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-target and summary correlations of aligned ``(n_targets, k)`` matrices ``s`` (scores)
    and ``e`` (effects); see :class:`Agreement`. The CIs of the per-target mean and of the pooled
    correlation come from a two-way bootstrap over targets and removals
    (:func:`repro.experiments.corr.two_way_ci`): all targets share the removals."""
    n_t, k = s.shape
    per = pd.DataFrame({"target_id": np.asarray(target_ids), "spearman": rowwise_corr(s, e, "spearman"),
                        "pearson": rowwise_corr(s, e, "pearson"), "n": k})
    rows = []
    for stat in ("spearman", "pearson"):
        v = per[stat].to_numpy()
        mean = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        ci = two_way_ci(lambda r, c: np.nanmean(rowwise_corr(s[r][:, c[0]], e[r][:, c[0]], stat)),
                        n_t, [k], n_resamples, seed)
        rows.append({"statistic": stat, "level": "per-target mean", "value": mean, "ci_lo": ci[0], "ci_hi": ci[1],
                     "n": int((~np.isnan(v)).sum()), "unit": "targets; CI over targets and removals"})
        pooled = _corr(s.ravel(), e.ravel(), stat)
        ci = two_way_ci(lambda r, c: _corr(s[r][:, c[0]].ravel(), e[r][:, c[0]].ravel(), stat),
                        n_t, [k], min(n_resamples, 1000), seed)
        rows.append({"statistic": stat, "level": "pooled", "value": pooled, "ci_lo": ci[0], "ci_hi": ci[1],
                     "n": int(s.size), "unit": "(target, removal) pairs; CI over targets and removals"})
        ss, es = s.sum(0), e.sum(0)
        ci = two_way_ci(lambda r, c: _corr(ss[c[0]], es[c[0]], stat), 1, [k], min(n_resamples, 1000), seed)
        rows.append({"statistic": stat, "level": "summed over targets", "value": _corr(ss, es, stat),
                     "ci_lo": ci[0], "ci_hi": ci[1], "n": int(k), "unit": "removals"})
    return per, pd.DataFrame(rows)


def agreement(scores, loo: LOOResult, train_ids=None, n_resamples: int = 2000, seed: int = 0) -> Agreement:
    """Spearman and Pearson correlation between an estimator's scores and leave-one-out effects, per
    target (with the mean over targets and its bootstrap CI), pooled, and summed over targets.

    ``scores``: ``(n_targets, n_train)`` with columns ``train_ids`` (e.g. ``est.scores(targets,
    train)`` with ``train_ids=train.ids``), rows in the order of ``loo.target_ids``; positive =
    helpful, like the effects."""
    s = score_columns(scores, loo, train_ids)
    per, summary = correlation_rows(s, loo.effects, loo.target_ids, n_resamples, seed)
    return Agreement(per, summary)


def noise_ceiling(first: LOOResult, second: LOOResult, n_resamples: int = 2000, seed: int = 0) -> Agreement:
    """Agreement of two measurements of the same leave-one-out effects (same removals, same targets):
    e.g. ``second`` from ``perturb=1e-6`` or from another seed. This is the ceiling of any
    estimator's :func:`agreement` with ``first``."""
    if not np.array_equal(first.removed_ids, second.removed_ids):
        raise ConfigMismatchError("the two leave-one-out runs removed different ids; use the same removed_ids")
    if not np.array_equal(first.target_ids, second.target_ids):
        raise ConfigMismatchError("the two leave-one-out runs measured different targets; use the same targets")
    if first.measure != second.measure:
        raise ConfigMismatchError(f"the runs measured {first.measure!r} and {second.measure!r}; use one measure")
    return agreement(second.effects, first, n_resamples=n_resamples, seed=seed)


def combined_agreement(pairs, statistic: str = "spearman", n_resamples: int = 2000,
                       seed: int = 0) -> tuple[float, list[float], np.ndarray]:
    """Agreement over several leave-one-out measurements on the same targets (e.g. one per training
    seed, each with its own reference model and scores): ``pairs`` = ``[(scores, loo), ...]`` or
    ``[(scores, loo, train_ids), ...]``. Each target's correlation is averaged over the
    measurements, then over targets; the 95% CI redraws the targets (shared) and every measurement's
    removals (its own) in each replicate, as :func:`repro.experiments.lds.combine_lds` does.

    Returns ``(mean, [lo, hi], per_target)``."""
    if statistic not in ("spearman", "pearson"):
        raise InvalidParameterError(f"statistic must be 'spearman' or 'pearson', got {statistic!r}")
    mats = []
    for pair in pairs:
        sc, loo = pair[0], pair[1]
        ids = pair[2] if len(pair) > 2 else None
        mats.append((score_columns(sc, loo, ids), loo.effects, loo.target_ids))
    if not mats:
        raise InvalidParameterError("combined_agreement needs at least one (scores, loo) pair")
    if any(not np.array_equal(m[2], mats[0][2]) for m in mats):
        raise ConfigMismatchError("the leave-one-out runs measured different targets; use the same targets")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_target = np.nanmean(np.stack([rowwise_corr(s_, e, statistic) for s_, e, _ in mats]), axis=0)

        def stat(rows, cols):
            vals = [rowwise_corr(s_[rows][:, c], e[rows][:, c], statistic) for (s_, e, _), c in zip(mats, cols)]
            return np.nanmean(np.nanmean(np.stack(vals), axis=0))

    ci = two_way_ci(stat, len(per_target), [m[1].shape[1] for m in mats], n_resamples, seed)
    mean = float(np.nanmean(per_target)) if np.isfinite(per_target).any() else float("nan")
    return mean, ci, per_target
