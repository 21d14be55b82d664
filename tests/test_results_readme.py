"""results/README.md: its claims block is generated from the committed metrics.json files and kept
in sync (regenerate with `python scripts/results_summary.py`)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from repro.claims import (END, at_least, ci_above, claim, read_records, replace_block, results_summary)

ROOT = Path(__file__).resolve().parents[1]


def test_results_readme_block_is_current():
    readme = (ROOT / "results" / "README.md").read_text()
    block = results_summary(read_records(ROOT / "results", "cpu"), "cpu")
    if replace_block(readme, block) != readme:
        pytest.fail("results/README.md is stale: its claims block differs from the committed "
                    "results/*/cpu/metrics.json. Run `python scripts/results_summary.py` and commit the README.")


def _record(nb, claims, **extra):
    return {"notebook": nb, "profile": "cpu", "claims": claims, "git_commit": "0123456789abcdef" + "0" * 24,
            "git_changed_during_run": False, "wall_time_s": 90.0, "device": "cpu: test", **extra}


def _claims():
    return [claim("a_beats_b", claim="A beats B", paper="+2 points", ours=0.5, ci95=[0.1, 0.9], unit="points",
                  n="3 seeds", criterion=ci_above(0.0), reason="unused"),
            claim("fast", claim="it is fast", paper="80x", ours=3.0, unit="speed-up", n="4 test points",
                  criterion=at_least(10.0, partly_from=2.0), reason="small N | few points")]


def test_summary_has_sources_rows_and_counts():
    recs = [_record("zzz_other", _claims()), _record("tracin_proponents", _claims(), command="repro run x --set a=1"),
            _record("quickstart", None)]
    block = results_summary(recs)
    assert block.startswith("<!-- claims:begin") and block.endswith(END)
    assert "quickstart" not in block                       # no claims, no section
    # known papers first, in their order, then the rest by name
    assert block.index("### TracIn (Pruthi et al. 2020)") < block.index("### zzz_other")
    assert "`repro run x --set a=1`" in block               # a recorded command is used as is
    assert "`repro run zzz_other --profile cpu` (presumed" in block
    assert "commit `0123456`" in block and "wall time 1.5 min" in block
    row = next(l for l in block.splitlines() if "(`fast`)" in l)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "+3 speed-up" and cells[3] == "4 test points" and cells[4] == "**partly**"
    assert cells[5] == "small N / few points"               # a '|' in a cell cannot break the table
    row = next(l for l in block.splitlines() if "(`a_beats_b`)" in l)
    assert "+0.5 [+0.1, +0.9] points" in row and "**reproduced**" in row and "unused" not in row
    counts = next(l for l in block.splitlines() if l.startswith("| TracIn (Pruthi"))
    assert counts.endswith("| 2 | 1 | 1 | 0 | 0 |")


def test_replace_block_round_trip_keeps_hand_text(tmp_path):
    recs = [_record("fastif_hans", _claims())]
    text = "# Results\n\nhand text above\n\n<!-- claims:begin -->\nold\n<!-- claims:end -->\n\nhand text below\n"
    new = replace_block(text, results_summary(recs))
    assert new.startswith("# Results\n\nhand text above\n\n<!-- claims:begin") and new.endswith("\n\nhand text below\n")
    assert replace_block(new, results_summary(recs)) == new  # idempotent
    with pytest.raises(ValueError, match="markers"):
        replace_block("no markers here", results_summary(recs))

    # the script on a results tree: --check fails while stale, passes after writing
    res = tmp_path / "results"
    (res / "fastif_hans" / "cpu").mkdir(parents=True)
    (res / "fastif_hans" / "cpu" / "metrics.json").write_text(json.dumps(recs[0]))
    readme = res / "README.md"
    readme.write_text(text)
    script = [sys.executable, str(ROOT / "scripts" / "results_summary.py"), "--results", str(res), "--readme", str(readme)]
    stale = subprocess.run(script + ["--check"], capture_output=True, text=True)
    assert stale.returncode == 1 and "scripts/results_summary.py" in stale.stderr
    assert subprocess.run(script, capture_output=True, text=True).returncode == 0
    assert subprocess.run(script + ["--check"], capture_output=True, text=True).returncode == 0
    assert readme.read_text() == new
    # a changed claim makes it stale again
    recs[0]["claims"][0]["ours"] = 0.7
    (res / "fastif_hans" / "cpu" / "metrics.json").write_text(json.dumps(recs[0]))
    assert subprocess.run(script + ["--check"], capture_output=True, text=True).returncode == 1
