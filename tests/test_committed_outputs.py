"""The committed executed notebooks (results/<notebook>/cpu/<notebook>.ipynb) read cleanly: no
warnings, no paths of the machine that ran them, one stream output per stream and cell (progress
bars merged), and every cpu result comes from one clean commit recorded in its metrics.json."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = sorted(ROOT.glob("results/*/cpu/*.ipynb"))
ABSOLUTE = re.compile(r"(?<![\w.~])/(?:home|work|tmp|root|Users|private|var/folders)/")


@pytest.mark.parametrize("path", EXECUTED, ids=lambda p: p.parent.parent.name)
def test_executed_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        outs = cell.get("outputs", [])
        streams = [o["name"] for o in outs if o["output_type"] == "stream"]
        assert len(streams) == len(set(streams)), f"cell {i}: {len(streams)} stream chunks (not merged)"
        for o in outs:
            text = "".join(o.get("text", "")) if o["output_type"] == "stream" else \
                "".join(o.get("data", {}).get("text/plain", "")) + "".join(o.get("traceback", []))
            assert "Warning" not in text, f"cell {i} prints a warning: {text[:300]}"
            assert not ABSOLUTE.search(text), f"cell {i} shows a machine path: {ABSOLUTE.search(text).group(0)}"
            assert "PosixPath(" not in text, f"cell {i} echoes a path object"
    meta = json.dumps(nb["metadata"])
    assert not ABSOLUTE.search(meta), "notebook metadata holds a machine path"


def test_all_cpu_results_come_from_one_clean_commit():
    records = {p.parent.parent.name: json.loads(p.read_text()) for p in ROOT.glob("results/*/cpu/metrics.json")}
    assert records, "no committed cpu results"
    commits = {r["git_commit"] for r in records.values()}
    assert len(commits) == 1, f"cpu results come from several commits: { {k: r['git_commit'] for k, r in records.items()} }"
    (commit,) = commits
    assert commit and "dirty" not in commit, commit
    assert not any(r.get("git_changed_during_run") for r in records.values())
    assert all((r.get("command") or "").startswith("OMP_NUM_THREADS=") for r in records.values())
