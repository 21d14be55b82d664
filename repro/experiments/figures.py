"""Figure helpers shared by the notebooks: intervals over repeats, drawn as bands or error bars.

Every replication notebook repeats something (seeds, replicas, test examples); its figures show the
spread with the same statistics its claims use (:mod:`repro.claims`): a Student-t interval over
independent repeats (seeds, replicas) or a percentile bootstrap over test examples, and a Wilson
interval for an accuracy measured on ``n`` test examples. :func:`interval_label` says in words what
a band is, for legends and titles ("95% t interval over 3 seeds")::

    s = interval_frame(curves, by=["method", "inspected"], value="found", clip=(0, 1))
    band_lines(ax, s, x="inspected", hue="method")
    ax.set_title(f"mean and {interval_label(3, 'seeds')}")
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

METHODS = ("t", "bootstrap")


def interval_label(n: int, unit: str, method: str = "t", level: float = 0.95) -> str:
    """What a band or error bar is, in words: ``"95% t interval over 3 seeds"`` (with fewer than 2
    repeats there is no interval: ``"no interval: 1 seeds"``)."""
    if n < 2 and method != "wilson":
        return f"no interval: {n} {unit}"
    kind = {"t": "t interval", "bootstrap": "bootstrap CI", "wilson": "Wilson interval"}[method]
    return f"{level:.0%} {kind} over {n} {unit}"


def interval_frame(frame: pd.DataFrame, by: Sequence[str], value: str, method: str = "t", level: float = 0.95,
                   clip: tuple[float, float] | None = None, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean and interval of ``value`` over the rows of each group of ``by`` (the repeats).

    ``method="t"``: Student-t interval (:func:`repro.claims.mean_ci`), for independent repeats such as
    seeds or replicas; ``"bootstrap"``: percentile bootstrap (:func:`repro.claims.bootstrap_ci`), for
    test examples. A group with one repeat gets ``lo = hi = mean`` (no interval to show); ``clip``
    bounds the interval (e.g. ``(0, 1)`` for shares). Returns the ``by`` columns and ``mean``, ``lo``,
    ``hi``, ``n``, in the groups' order of appearance."""
    from repro.claims import bootstrap_ci, mean_ci

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    by = list(by)
    rows = []
    for key, g in frame.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        x = g[value].to_numpy(dtype=float)
        x = x[~np.isnan(x)]
        if method == "t":
            m, (lo, hi) = mean_ci(x, level=level)
        else:
            m, (lo, hi) = bootstrap_ci(x, level=level, n_resamples=n_resamples, seed=seed)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            lo = hi = m
        if clip is not None:
            lo, hi = max(lo, clip[0]), min(hi, clip[1])
        rows.append({**dict(zip(by, key)), "mean": m, "lo": lo, "hi": hi, "n": int(len(x))})
    return pd.DataFrame(rows, columns=[*by, "mean", "lo", "hi", "n"])


def wilson_interval(successes, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion ``successes / n`` (arrays or scalars), e.g. the accuracy
    on ``n`` test examples; ``n = 0`` gives ``(nan, nan)``."""
    from scipy import stats

    k, n = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    z = stats.norm.ppf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        ph = k / n
        den = 1 + z ** 2 / n
        centre = (ph + z ** 2 / (2 * n)) / den
        half = z * np.sqrt(ph * (1 - ph) / n + z ** 2 / (4 * n ** 2)) / den
    return centre - half, centre + half


def band_lines(ax, summary: pd.DataFrame, x: str, hue: str | None = None, palette: dict | None = None,
               order: Sequence | None = None, alpha: float = 0.15, styles: dict | None = None, **line_kw):
    """Draw ``summary`` (from :func:`interval_frame`): one line of means per ``hue`` value and a band
    from ``lo`` to ``hi``. ``styles`` maps a hue value to extra line keywords (e.g. ``{"random":
    {"ls": ":"}}``). Returns ``ax``."""
    groups = [(None, summary)] if hue is None else [(h, summary[summary[hue] == h])
                                                    for h in (order or list(dict.fromkeys(summary[hue])))]
    for h, g in groups:
        if g.empty:
            continue
        g = g.sort_values(x)
        kw = {"lw": 1.4, **line_kw, **((styles or {}).get(h, {}))}
        if palette is not None and h in palette:
            kw["color"] = palette[h]
        (line,) = ax.plot(g[x], g["mean"], label=None if h is None else str(h), **kw)
        ax.fill_between(g[x], g["lo"], g["hi"], color=line.get_color(), alpha=alpha, lw=0)
    return ax


def bars_with_intervals(ax, summary: pd.DataFrame, x: str, hue: str | None = None, x_order: Sequence | None = None,
                        hue_order: Sequence | None = None, palette: dict | None = None, width: float = 0.8,
                        capsize: float = 2.0):
    """Grouped bars of ``summary["mean"]`` with error bars from ``lo`` to ``hi`` (one group per ``x``
    value, one bar per ``hue`` value). Returns ``ax``."""
    x_order = list(x_order or dict.fromkeys(summary[x]))
    hues = [None] if hue is None else list(hue_order or dict.fromkeys(summary[hue]))
    w = width / len(hues)
    for q, h in enumerate(hues):
        g = summary if h is None else summary[summary[hue] == h]
        g = g.set_index(x).reindex(x_order)
        pos = np.arange(len(x_order)) + (q - (len(hues) - 1) / 2) * w
        color = None if palette is None or h not in palette else palette[h]
        ax.bar(pos, g["mean"], w, label=None if h is None else str(h), color=color, alpha=0.85)
        err = np.clip(np.vstack([g["mean"] - g["lo"], g["hi"] - g["mean"]]), 0, None)
        ax.errorbar(pos, g["mean"], yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=capsize, lw=0.8)
    ax.set_xticks(np.arange(len(x_order)), [str(v) for v in x_order])
    return ax


def proportion_frame(frame: pd.DataFrame, rate: str = "accuracy", n: str = "n", level: float = 0.95) -> pd.DataFrame:
    """``frame`` with ``mean`` (= ``rate``), ``lo``, ``hi`` (Wilson interval of ``rate`` measured on
    ``n`` examples) added, ready for :func:`bars_with_intervals`."""
    k = np.round(frame[rate].to_numpy(float) * frame[n].to_numpy(float))
    lo, hi = wilson_interval(k, frame[n].to_numpy(float), level)
    return frame.assign(mean=frame[rate].to_numpy(float), lo=lo, hi=hi)
