"""Results plumbing: atomic writes with provenance, profiles, the command line."""
import json
from pathlib import Path

import pandas as pd
import pytest

from repro import profiles
from repro.cli import main as cli_main
from repro.errors import UnknownNameError
from repro.results import ResultWriter, read_metrics
from repro.utils import atomic_write_with


def test_result_writer_records_provenance(tmp_path):
    w = ResultWriter("demo", "cpu", params={"seed": 1}, root=tmp_path)
    w.table("t", pd.DataFrame({"a": [1, 2]}))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    saved = w.figure("f", fig)
    # an ordinary path, but a notebook cell ending in it shows nothing (no machine path echoed)
    assert saved == tmp_path / "demo" / "cpu" / "f.png" and saved.is_file()
    from IPython.core.interactiveshell import InteractiveShell
    data, _ = InteractiveShell.instance().display_formatter.format(saved)
    assert data == {}  # the kernel sends no execute_result for an empty format dict
    w.finish({"acc": 0.5})
    m = read_metrics("demo", "cpu", root=tmp_path)
    assert m["metrics"] == {"acc": 0.5} and m["params"] == {"seed": 1}
    assert m["versions"]["torch"] and m["device"].startswith(("cpu", "cuda")) and m["wall_time_s"] >= 0
    assert m["files"] == ["f.png", "t.csv"]
    assert (tmp_path / "demo/cpu/f.png").read_bytes()[:4] == b"\x89PNG"
    assert pd.read_csv(tmp_path / "demo/cpu/t.csv")["a"].tolist() == [1, 2]


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text('{"old": true}')

    def broken(tmp):
        Path(tmp).write_text('{"half":')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, broken)
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_profiles_resolve_and_reject_unknown_parameters():
    smoke = profiles.resolve("quickstart", "smoke")
    cpu = profiles.resolve("quickstart", "cpu", {"seed": 3})
    assert smoke["profile"] == "smoke" and cpu["seed"] == 3 and cpu["text_n_train"] > smoke["text_n_train"] and cpu["vgg_n_train"] is None
    assert set(profiles.profiles("quickstart")) == {"smoke", "cpu", "gpu", "paper"}
    with pytest.raises(UnknownNameError, match="vgg_epochz"):
        profiles.resolve("quickstart", "cpu", {"vgg_epochz": 3})
    with pytest.raises(UnknownNameError, match="profile"):
        profiles.resolve("quickstart", "huge")
    with pytest.raises(UnknownNameError, match="notebook"):
        profiles.resolve("nonexistent", "cpu")


def test_cli_reports_bad_input_without_traceback(capsys):
    assert cli_main(["run", "nonexistent", "--profile", "smoke"]) == 2
    assert "no notebook 'nonexistent'" in capsys.readouterr().err
    assert cli_main(["run", "quickstart", "--profile", "smoke", "--set", "nope=1"]) == 2
    assert "unknown parameter" in capsys.readouterr().err
    assert cli_main(["run", "quickstart", "--set", "novalue"]) == 2
    assert cli_main(["list"]) == 0
    assert "quickstart" in capsys.readouterr().out


def test_git_commit_ignores_results_but_not_code(tmp_path):
    """A notebook's committed results changing (the previous notebook of `repro run all`) does not
    make the next run 'dirty'; a changed source file does."""
    import subprocess

    from repro.results import git_commit

    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results" / "nb" / "cpu").mkdir(parents=True)
    (tmp_path / "results" / "nb" / "cpu" / "metrics.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.email=a@b", "-c", "user.name=t", "commit", "-q", "-m", "init")
    clean = git_commit(tmp_path)
    assert clean and "dirty" not in clean
    (tmp_path / "results" / "nb" / "cpu" / "metrics.json").write_text('{"new": 1}')
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "+dirty"
