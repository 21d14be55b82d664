"""Row-wise correlations and a two-way bootstrap for (targets x shared units) designs.

In a leave-one-out or datamodel evaluation every target is correlated over the *same* removals (or
random subsets). A removal that happens to move many targets' losses makes the per-target
correlations depend on each other, so an interval that resamples targets alone is too narrow. The
two-way bootstrap here resamples targets and units (removals, subsets) independently in every
replicate and recomputes the statistic, which accounts for both sources of variation.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

__all__ = ["rowwise_corr", "two_way_ci"]


def rowwise_corr(X: np.ndarray, Y: np.ndarray, kind: str = "spearman") -> np.ndarray:
    """Correlation of ``X[t]`` with ``Y[t]`` for every row ``t`` (``(n, k)`` -> ``(n,)``);
    ``kind`` is ``"spearman"`` (Pearson of average ranks) or ``"pearson"``. NaN for a row with
    fewer than 3 columns or without variation."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if kind == "spearman":
        X, Y = rankdata(X, axis=1), rankdata(Y, axis=1)
    elif kind != "pearson":
        raise ValueError(f"kind must be 'spearman' or 'pearson', got {kind!r}")
    Xc = X - X.mean(1, keepdims=True)
    Yc = Y - Y.mean(1, keepdims=True)
    den = np.sqrt((Xc ** 2).sum(1) * (Yc ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (Xc * Yc).sum(1) / den
    r[(den <= 1e-300) | (X.shape[1] < 3)] = np.nan
    return np.clip(r, -1.0, 1.0)


def two_way_ci(statistic: Callable[[np.ndarray, list], float], n_rows: int, n_cols: Sequence[int],
               n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile interval of ``statistic(rows, [cols_0, cols_1, ...])`` over replicates that draw
    ``n_rows`` row indices (targets) and, for every block ``b``, ``n_cols[b]`` column indices
    (its units) with replacement. ``[nan, nan]`` when fewer than 10 replicates are defined."""
    rng = np.random.default_rng(seed)
    vals = np.empty(int(n_resamples))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN replicate
        for r in range(int(n_resamples)):
            rows = rng.integers(0, n_rows, n_rows)
            cols = [rng.integers(0, k, k) for k in n_cols]
            vals[r] = statistic(rows, cols)
    vals = vals[~np.isnan(vals)]
    if len(vals) < 10:
        return [float("nan"), float("nan")]
    a = (1.0 - level) / 2
    return [float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))]
