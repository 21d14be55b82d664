"""results/benchmarks/summary.json is computed from the committed benchmark tables by
benchmarks/summary.py and kept in sync with them (it measures nothing itself)."""
import csv
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "results" / "benchmarks"


def _summary_module():
    spec = importlib.util.spec_from_file_location("bench_summary", ROOT / "benchmarks" / "summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_summary_is_current(tmp_path):
    committed = BENCH / "summary.json"
    assert committed.exists(), "results/benchmarks/summary.json is missing: run python benchmarks/summary.py"
    fresh = _summary_module().main(["--out", str(tmp_path / "s.json")])
    assert json.loads(committed.read_text()) == json.loads(json.dumps(fresh)), \
        "summary.json is stale: run python benchmarks/summary.py and commit it"


def test_ratios_are_the_tables_own_rows(tmp_path):
    """Each TracIn headline is the fastest peer's seconds over ours at the largest n where both ran,
    recomputed here straight from the CSV."""
    s = _summary_module().main(["--out", str(tmp_path / "s.json")])
    rows = list(csv.DictReader(open(BENCH / "tracin_peers.csv")))
    e = s["tracincp_all_vs_captum_best"]
    if e["value"] is None:
        pytest.skip("no all-parameter rows")
    group = [r for r in rows if r["model"] == "vgg" and r["task"] == "scores" and r["params"] == "all"
             and int(r["n_train"]) == e["n"] and r["seconds"]]
    ours = next(float(r["seconds"]) for r in group if r["impl"] == "ours:auto")
    captum = min(float(r["seconds"]) for r in group if r["impl"].startswith("captum"))
    assert e["value"] == pytest.approx(captum / ours, abs=1e-3)
    assert all(int(r["n_train"]) <= e["n"] for r in rows if r["model"] == "vgg" and r["impl"].startswith("captum")
               and r["seconds"] and r["params"] == "all" and r["task"] == "scores")
    for key in ("tracincp_all_over_floor", "tracincp_all_vs_captum_best", "lissa_vs_dattri",
                "tracin_we_sparse_vs_dense", "fastif_vs_full_N20k", "peak_memory_ours_vs_captum",
                "tracincp_self_vs_captum_best", "tracincp_last_vs_captum_fast"):
        assert set(s[key]) >= {"value", "n", "device", "threads", "commit"}, key
