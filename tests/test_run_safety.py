"""`repro run` keeps runs apart and all-or-nothing: a lock refuses a concurrent run, a failed or
stopped rerun never touches the finished run's files, SIGINT/SIGTERM stop the kernel and exit
non-zero without leaving a metrics.json; the git commit is read at the start of a run. These tests
run small throw-away notebooks in a real kernel (a few seconds each)."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import nbformat
import pytest

from repro import cli, profiles
from repro.errors import RunInterruptedError, RunLockedError
from repro.results import ResultWriter

BODY = {
    "ok": "from repro.results import ResultWriter\nw = ResultWriter('{name}', profile)\n"
          "v = 1 if value is ... else value\nw.json('extra', {{'value': v}})\nw.finish({{'value': v}})",
    "fail": "from repro.results import ResultWriter\nw = ResultWriter('{name}', profile)\n"
            "w.json('extra', {{'value': -1}})\nw.finish({{'value': -1}})\nraise RuntimeError('boom')",
    "slow": "import os, time\nfrom repro.results import ResultWriter\nw = ResultWriter('{name}', profile)\n"
            "w.finish({{'value': 2}})\nopen(os.environ['MARKER'], 'w').write(str(os.getpid()))\n"
            "time.sleep(60)",
}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    nbs, profs = tmp_path / "notebooks", tmp_path / "profiles"
    nbs.mkdir()
    profs.mkdir()
    for kind, body in BODY.items():
        name = f"nb_{kind}"
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("profile = 'smoke'\nresults_dir = None\nvalue = ...", metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell(body.format(name=name))]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, nbs / f"{name}.ipynb")
        (profs / f"{name}.yaml").write_text("defaults:\n  value: 1\nsmoke: {}\n")
    monkeypatch.setattr(cli, "notebooks_dir", lambda: nbs)
    monkeypatch.setattr(profiles, "PROFILE_DIR", profs)
    monkeypatch.setenv("REPRO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MARKER", str(tmp_path / "kernel.pid"))
    monkeypatch.setenv("PYTHONPATH", str(Path(cli.__file__).resolve().parents[1]))
    return tmp_path


def test_failed_rerun_leaves_the_finished_run_untouched(sandbox):
    res = sandbox / "results"
    cli.run_notebook("nb_ok", "smoke", {"value": 7}, results=res)
    done = res / "nb_ok" / "smoke"
    before = {p.name: p.read_bytes() for p in done.iterdir()}
    assert json.loads((done / "metrics.json").read_text())["metrics"] == {"value": 7}
    # the command that reproduces it is recorded
    assert json.loads((done / "metrics.json").read_text())["command"].endswith(
        "repro run nb_ok --profile smoke --set value=7")
    assert oct((done / "metrics.json").stat().st_mode & 0o777) != oct(0o600)  # umask modes, not mkstemp's
    # a failing notebook of the same name/profile: results stay those of the finished run
    (sandbox / "notebooks" / "nb_ok.ipynb").write_bytes((sandbox / "notebooks" / "nb_fail.ipynb").read_bytes())
    with pytest.raises(Exception, match="boom"):
        cli.run_notebook("nb_ok", "smoke", results=res)
    assert {p.name: p.read_bytes() for p in done.iterdir()} == before
    failed = res / "nb_ok" / "smoke.failed"
    assert (failed / "nb_ok.failed.ipynb").exists() and not (failed / "metrics.json").exists()
    assert not list((res / "nb_ok").glob(".smoke.run-*"))  # no staging folder left behind


def test_concurrent_run_is_refused(sandbox):
    res = sandbox / "results"
    with cli.RunLock([res / "nb_ok" / ".smoke.lock"], "someone else"):
        with pytest.raises(RunLockedError, match="already running"):
            cli.run_notebook("nb_ok", "smoke", results=res)
    assert not (res / "nb_ok" / "smoke").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_run_and_kernel_without_metrics(sandbox, signum):
    res = sandbox / "results"
    marker = sandbox / "kernel.pid"

    def interrupt():
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.3)
        os.kill(os.getpid(), signum)

    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.time()
    with pytest.raises(RunInterruptedError) as info:
        cli.run_notebook("nb_slow", "smoke", results=res)
    assert info.value.signum == signum and time.time() - t0 < 50  # did not wait for the 60 s cell
    kernel = int(marker.read_text())
    for _ in range(50):  # the kernel is shut down
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"kernel {kernel} still alive after the run was stopped")
    assert not (res / "nb_slow" / "smoke" / "metrics.json").exists()  # the notebook had written one
    assert not (res / "nb_slow" / "smoke.failed" / "metrics.json").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_cli_exit_status_after_signal(monkeypatch, capsys):
    def stopped(*a, **k):
        raise RunInterruptedError(signal.SIGTERM, "stopped by SIGTERM; the run's results were discarded")
    calls = []
    monkeypatch.setattr(cli, "run_notebook", lambda *a, **k: calls.append(a) or stopped())
    assert cli.main(["run", "all", "--profile", "smoke"]) == 128 + signal.SIGTERM
    assert len(calls) == 1  # `run all` does not go on with the next notebook
    assert "discarded" in capsys.readouterr().err


def test_git_commit_is_read_at_the_start(tmp_path, monkeypatch):
    import repro.results as results
    commits = iter(["aaa", "bbb+dirty"])
    monkeypatch.delenv("REPRO_GIT_COMMIT_START", raising=False)
    monkeypatch.setattr(results, "git_commit", lambda root=None: next(commits))
    w = ResultWriter("demo", "cpu", root=tmp_path)
    m = json.loads(w.finish({"a": 1}).read_text())
    assert m["git_commit"] == "aaa" and m["git_commit_end"] == "bbb+dirty" and m["git_changed_during_run"]
    assert any("changed during the run" in n for n in m["notes"])
    same = iter(["ccc", "ccc"])
    monkeypatch.setattr(results, "git_commit", lambda root=None: next(same))
    m = json.loads(ResultWriter("demo", "cpu", root=tmp_path).finish({"a": 1}).read_text())
    assert m["git_commit"] == "ccc" and m["git_changed_during_run"] is False and "git_commit_end" not in m


def test_signal_while_moving_a_finished_run_into_place_is_deferred(tmp_path):
    """The two renames that put a finished run into place are never separated by a signal."""
    moved = []
    with cli._SignalGuard() as guard:
        with pytest.raises(RunInterruptedError, match="its results are in"):
            with guard.deferred("just after nb finished; its results are in X"):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
                moved.append("both renames done")
    assert moved == ["both renames done"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_swap_interrupted_between_renames_is_repaired(tmp_path):
    """A kill after the finished run was moved aside but before the new one was moved in: the next
    run (under the lock) puts the finished run back and removes dead staging folders."""
    parent = tmp_path / "nb"
    (parent / ".smoke.old-20260101T000000-1").mkdir(parents=True)
    (parent / ".smoke.old-20260101T000000-1" / "metrics.json").write_text("{}")
    (parent / ".smoke.run-20260101T000001-2").mkdir()
    cli._tidy(parent, "smoke")
    assert (parent / "smoke" / "metrics.json").exists()
    assert sorted(p.name for p in parent.iterdir()) == ["smoke"]
