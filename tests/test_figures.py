"""Figure helpers: the intervals they draw are the ones the claims use, on known data."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from repro.claims import bootstrap_ci
from repro.experiments.figures import (band_lines, bars_with_intervals, interval_frame, interval_label,
                                       proportion_frame, wilson_interval)

T975_2 = 4.302653  # Student t, 97.5% quantile, 2 degrees of freedom


def _frame():
    # x = 0: seeds give 1, 2, 3 (mean 2, sd 1); x = 1: 5, 5, 5 (no spread); one group with a single seed
    return pd.DataFrame({"method": ["a"] * 6 + ["b"], "x": [0, 0, 0, 1, 1, 1, 0],
                         "y": [1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.4], "seed": [0, 1, 2, 0, 1, 2, 0]})


def test_t_interval_over_seeds():
    s = interval_frame(_frame(), ["method", "x"], "y")
    r = s[(s.method == "a") & (s.x == 0)].iloc[0]
    half = T975_2 / np.sqrt(3)
    assert r["mean"] == 2.0 and r.n == 3
    assert r.lo == pytest.approx(2 - half, abs=1e-5) and r.hi == pytest.approx(2 + half, abs=1e-5)
    r = s[(s.method == "a") & (s.x == 1)].iloc[0]
    assert (r["mean"], r.lo, r.hi) == (5.0, 5.0, 5.0)
    r = s[s.method == "b"].iloc[0]                    # one repeat: no interval, the mean itself
    assert (r["mean"], r.lo, r.hi, r.n) == (0.4, 0.4, 0.4, 1)
    assert list(s.columns) == ["method", "x", "mean", "lo", "hi", "n"]


def test_clip_and_bootstrap():
    s = interval_frame(_frame(), ["method", "x"], "y", clip=(0.0, 3.0))
    r = s[(s.method == "a") & (s.x == 0)].iloc[0]
    assert r.lo == 0.0 and r.hi == 3.0                 # 2 -/+ 2.48 clipped to [0, 3]
    rng = np.random.default_rng(0)
    f = pd.DataFrame({"g": 0, "v": rng.normal(1.0, 1.0, 200)})
    b = interval_frame(f, ["g"], "v", method="bootstrap", n_resamples=2000, seed=3).iloc[0]
    m, (lo, hi) = bootstrap_ci(f.v.to_numpy(), n_resamples=2000, seed=3)
    assert (b["mean"], b.lo, b.hi) == (m, lo, hi) and lo < 1.0 < hi
    with pytest.raises(ValueError, match="method"):
        interval_frame(f, ["g"], "v", method="sd")


def test_wilson_interval_known_values():
    # 8 of 10 at 95%: Wilson interval (0.4902, 0.9433) (standard textbook value)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(np.array([0, 10]), np.array([10, 10]))
    assert lo[0] == pytest.approx(0.0, abs=1e-12) and hi[1] == pytest.approx(1.0, abs=1e-12)
    assert 0 < hi[0] < 0.35 and 0.65 < lo[1] < 1
    f = proportion_frame(pd.DataFrame({"accuracy": [0.8], "n": [10]}))
    assert f["mean"][0] == 0.8 and f.lo[0] == pytest.approx(0.4902, abs=1e-4)


def test_drawn_band_and_bars_match_the_intervals():
    s = interval_frame(_frame()[lambda d: d.method == "a"], ["method", "x"], "y")
    fig, ax = plt.subplots()
    band_lines(ax, s, x="x", hue="method", palette={"a": "tab:red"})
    (line,) = ax.get_lines()
    assert list(line.get_ydata()) == [2.0, 5.0] and line.get_label() == "a"
    poly = ax.collections[0].get_paths()[0].vertices
    assert poly[:, 1].min() == pytest.approx(2 - T975_2 / np.sqrt(3), abs=1e-5)
    fig2, ax2 = plt.subplots()
    bars_with_intervals(ax2, s.assign(k=["k1", "k2"]), x="x", hue="k")
    heights = [p.get_height() for p in ax2.patches]  # k1 at x=0, k2 at x=1; the other combinations empty
    assert heights[0] == 2.0 and heights[3] == 5.0 and np.isnan(heights[1]) and np.isnan(heights[2])
    caps = [c for c in ax2.get_lines()]  # error-bar caps: at lo and hi of each bar
    assert min(float(np.nanmin(c.get_ydata())) for c in caps) == pytest.approx(2 - T975_2 / np.sqrt(3), abs=1e-5)
    assert interval_label(3, "seeds") == "95% t interval over 3 seeds"
    assert interval_label(30, "test examples", "bootstrap") == "95% bootstrap CI over 30 test examples"
    assert interval_label(1, "replicas") == "no interval: 1 replicas"
    plt.close("all")
