import numpy as np
import pytest

from repro.experiments.mislabel import curve_summary, detection_curve, detection_table


def test_perfect_random_and_worst_rankings():
    is_flip = np.zeros(100, dtype=bool)
    is_flip[:20] = True
    perfect = curve_summary(is_flip.astype(float), is_flip)
    assert perfect["found@10%"] == pytest.approx(0.5) and perfect["found@20%"] == 1.0
    assert perfect["auc"] == pytest.approx(1 - 0.2 / 2, abs=0.01)
    worst = curve_summary(-is_flip.astype(float), is_flip)
    assert worst["found@30%"] == 0.0
    rng = np.random.default_rng(0)
    aucs = [curve_summary(rng.random(100), is_flip)["auc"] for _ in range(200)]
    assert abs(np.mean(aucs) - 0.5) < 0.02
    x, y = detection_curve(is_flip.astype(float), is_flip)
    assert x[0] == y[0] == 0 and x[-1] == y[-1] == 1 and np.all(np.diff(y) >= 0)
    table = detection_table({"perfect": is_flip.astype(float), "worst": -is_flip.astype(float)}, is_flip)
    assert table.method.tolist() == ["perfect", "worst"]
    with pytest.raises(ValueError):
        detection_curve(np.zeros(5), np.zeros(5, dtype=bool))
