"""Claims: verdicts follow the stated criterion; intervals cover what they should; records are checked."""
import json

import numpy as np
import pytest

from repro.claims import (at_least, bootstrap_ci, check_claims, ci_above, ci_below, claim, claims_frame,
                          claims_markdown, mean_ci)
from repro.cli import main as cli_main
from repro.results import ResultWriter


def _c(ours, ci, crit):
    return claim("x", claim="c", paper="p", ours=ours, ci95=ci, unit="u", n=3, criterion=crit, reason="why")


def test_ci_above_and_below_verdicts():
    assert _c(0.2, [0.1, 0.3], ci_above(0))["verdict"] == "reproduced"
    assert _c(0.2, [-0.1, 0.5], ci_above(0))["verdict"] == "partly"
    assert _c(-0.2, [-0.5, 0.1], ci_above(0))["verdict"] == "not reproduced"
    assert _c(-0.2, [-0.3, -0.1], ci_below(0))["verdict"] == "reproduced"
    assert _c(-0.2, [-0.3, 0.1], ci_below(0))["verdict"] == "partly"
    assert _c(0.3, [0.1, 0.5], ci_below(0))["verdict"] == "not reproduced"
    assert _c(float("nan"), None, at_least(1))["verdict"] == "not testable here"
    assert _c(5, None, at_least(4, partly_from=2))["verdict"] == "reproduced"
    assert _c(3, None, at_least(4, partly_from=2))["verdict"] == "partly"
    assert _c(1, None, at_least(4, partly_from=2))["verdict"] == "not reproduced"


def test_reason_only_kept_when_not_reproduced():
    assert _c(0.2, [0.1, 0.3], ci_above(0))["reason"] == ""
    assert _c(-0.2, [-0.3, -0.1], ci_above(0))["reason"] == "why"


def test_mean_ci_matches_t_interval_and_covers():
    x = [1.0, 2.0, 3.0]
    m, (lo, hi) = mean_ci(x)
    # mean 2, sd 1, se 1/sqrt(3), t_{0.975, 2} = 4.302653
    assert m == 2.0 and lo == pytest.approx(2 - 4.302653 / np.sqrt(3), abs=1e-5)
    assert hi == pytest.approx(2 + 4.302653 / np.sqrt(3), abs=1e-5)
    # coverage of the t interval on normal data: about 95% over many draws
    rng = np.random.default_rng(0)
    hits = sum(lo <= 0 <= hi for _, (lo, hi) in (mean_ci(rng.normal(size=5)) for _ in range(2000)))
    assert 0.93 < hits / 2000 < 0.97
    assert np.isnan(mean_ci([1.0])[1][0])


def test_bootstrap_ci_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, big = rng.normal(1, 1, 30), rng.normal(1, 1, 3000)
    m, (lo, hi) = bootstrap_ci(small)
    assert lo < m < hi
    _, (lo2, hi2) = bootstrap_ci(big)
    assert (hi2 - lo2) < (hi - lo) / 5 and lo2 < 1 < hi2


def test_check_claims_rejects_malformed_records(tmp_path):
    good = _c(0.2, [0.1, 0.3], ci_above(0))
    check_claims([good])
    with pytest.raises(ValueError, match="twice"):
        check_claims([good, good])
    with pytest.raises(ValueError, match="lacks"):
        check_claims([{"id": "y", "claim": "c"}])
    with pytest.raises(ValueError, match="verdict"):
        check_claims([{**good, "verdict": "looks fine"}])
    w = ResultWriter("demo", "cpu", root=tmp_path)
    with pytest.raises(ValueError):
        w.finish({}, claims=[{"id": "y"}])
    assert not (tmp_path / "demo/cpu/metrics.json").exists()


def test_claims_written_tabulated_and_printed(tmp_path, capsys):
    c = _c(-0.2, [-0.3, -0.1], ci_above(0))
    ResultWriter("tracin_proponents", "cpu", root=tmp_path).finish({"a": 1}, claims=[c])
    rec = json.loads((tmp_path / "tracin_proponents/cpu/metrics.json").read_text())
    assert rec["claims"][0]["verdict"] == "not reproduced"
    assert claims_frame(rec["claims"])["verdict"].tolist() == ["not reproduced"]
    assert "**not reproduced**" in claims_markdown(rec["claims"])
    assert cli_main(["claims", "--profile", "cpu", "--results", str(tmp_path)]) == 0
    assert "`x`" in capsys.readouterr().out
    assert cli_main(["claims", "--profile", "gpu", "--results", str(tmp_path)]) == 2
