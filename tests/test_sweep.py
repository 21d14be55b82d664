"""`repro params`, `repro sweep` and `repro collect` (repro.sweep): value lists split on commas outside
brackets, the cartesian product, every combination checked before anything runs, failures recorded
without stopping the others, --jobs subprocesses (OMP_NUM_THREADS, parallelism, Ctrl-C stops them
all), and collect's table and t intervals against a hand computation."""
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from repro import cli, profiles, sweep
from repro.errors import InvalidParameterError, ReproError, RunInterruptedError, UnknownNameError

# --------------------------------------------------------------------------------------------- params


def test_params_json_marks_default_profile_and_override(capsys):
    assert cli.main(["params", "quickstart", "--profile", "cpu", "--set", "seed=3", "--set", "vgg_lr=1e-3",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = profiles.resolve("quickstart", "cpu", {"seed": 3, "vgg_lr": 0.001})
    want.pop("profile")
    assert out["params"] == want and out["profile"] == "cpu"
    assert out["source"]["seed"] == "override" and out["params"]["seed"] == 3
    assert out["source"]["vgg_lr"] == "override" and out["params"]["vgg_lr"] == 0.001
    assert out["source"]["vgg_epochs"] == "profile" and out["params"]["vgg_epochs"] == 5  # cpu block
    assert out["source"]["vgg_depth"] == "default" and out["params"]["vgg_depth"] == 11
    assert out["source"]["vgg_n_train"] == "profile" and out["params"]["vgg_n_train"] is None


def test_params_table_and_named_errors(capsys):
    assert cli.main(["params", "quickstart", "--profile", "cpu"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["vgg_epochs"] == ["5", "profile", "cpu"]
    assert rows["vgg_lr"] == ["0.05", "default"]
    assert rows["vgg_n_train"] == ["null", "profile", "cpu"]
    assert cli.main(["params", "quickstart", "--set", "sed=1"]) == 2
    assert "unknown parameter(s) ['sed']" in capsys.readouterr().err
    assert cli.main(["params", "quickstart", "--profile", "laptop"]) == 2
    assert "unknown profile 'laptop'" in capsys.readouterr().err
    assert cli.main(["params", "quickstart", "--set", "vgg_epochs=abc"]) == 2
    assert "vgg_epochs" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- parsing


def values(grid, key):
    return [v for _, v in grid[key]]


def test_split_on_commas_outside_brackets_and_quotes():
    assert sweep.split_values("0,1,2") == ["0", "1", "2"]
    assert sweep.split_values("[1,2]") == ["[1,2]"]
    assert sweep.split_values("[1,2],[3]") == ["[1,2]", "[3]"]
    assert sweep.split_values("{a: [1, 2]},{a: 3}") == ["{a: [1, 2]}", "{a: 3}"]
    assert sweep.split_values("'a,b',c") == ["'a,b'", "c"]
    assert sweep.split_values("it's,ok") == ["it's", "ok"]  # a quote inside a value is a character


def test_parse_grid_values_are_yaml_like_repro_run():
    g = sweep.parse_grid(["seed=0,1,2", "lr=0.1,1e-3", "sizes=[1,2]", "pairs=[1,2],[3]", "name='a,b',c",
                          "flag=true,false", "n=null"])
    assert values(g, "seed") == [0, 1, 2]
    assert values(g, "lr") == [0.1, 0.001] and isinstance(values(g, "lr")[1], float)
    assert values(g, "sizes") == [[1, 2]]
    assert values(g, "pairs") == [[1, 2], [3]]
    assert values(g, "name") == ["a,b", "c"]
    assert values(g, "flag") == [True, False]
    assert values(g, "n") == [None]
    assert [t for t, _ in g["lr"]] == ["0.1", "1e-3"]  # the texts the --jobs subprocesses get


@pytest.mark.parametrize("items, error, match", [
    (["seed"], ReproError, "KEY=V1"),
    (["seed=0", "seed=1"], ReproError, "given twice"),
    (["seed=0,,1"], InvalidParameterError, "empty value"),
    (["sizes=[1,2"], InvalidParameterError, "cannot read"),
])
def test_parse_grid_errors(items, error, match):
    with pytest.raises(error, match=match):
        sweep.parse_grid(items)


def test_plan_is_the_cartesian_product_with_one_results_root_each(tmp_path):
    p = sweep.plan("quickstart", "smoke", sweep.parse_grid(["seed=0,1,2", "vgg_lr=0.1,0.01"]), results=tmp_path)
    assert p.root == tmp_path / "sweeps" / "quickstart-smoke"
    assert [c.overrides for c in p.combinations] == [
        {"seed": s, "vgg_lr": lr} for s in (0, 1, 2) for lr in (0.1, 0.01)]
    assert [c.label for c in p.combinations][:2] == ["seed=0,vgg_lr=0.1", "seed=0,vgg_lr=0.01"]
    assert len({c.root for c in p.combinations}) == 6
    assert all(c.root == p.root / c.label for c in p.combinations)
    lists = sweep.plan("fastif_hans", "smoke", sweep.parse_grid(["knn_ks=[5,20],[5]", "grid_depths=[5, 10]"]),
                       results=tmp_path)
    assert [c.overrides for c in lists.combinations] == [{"knn_ks": [5, 20], "grid_depths": [5, 10]},
                                                         {"knn_ks": [5], "grid_depths": [5, 10]}]
    assert [c.label for c in lists.combinations] == ["knn_ks=[5,20],grid_depths=[5,10]", "knn_ks=[5],grid_depths=[5,10]"]


def test_plan_refuses_clashing_folders_and_lists_for_integers(tmp_path):
    with pytest.raises(InvalidParameterError, match="share the folder"):
        sweep.plan("quickstart", "smoke", sweep.parse_grid(["seed=1,1"]), results=tmp_path)
    with pytest.raises(InvalidParameterError, match="seed"):  # a list where an integer is wanted
        sweep.plan("quickstart", "smoke", sweep.parse_grid(["seed=[1,2],[3]"]), results=tmp_path)


# --------------------------------------------------------------------------------------------- sequential


@pytest.fixture
def recorded(monkeypatch):
    """cli.run_notebook replaced by a recorder; ``fail`` holds overrides that raise."""
    calls, fail = [], []

    def fake(name, profile, overrides=None, results=None, kernel=None, log_output=False):
        calls.append((name, profile, dict(overrides), Path(results)))
        if overrides in fail:
            raise RuntimeError("notebook cell failed")
        return Path(results) / name / profile / f"{name}.ipynb"

    monkeypatch.setattr(cli, "run_notebook", fake)
    return calls, fail


@pytest.mark.parametrize("bad, match", [
    (["--set", "seed=0,1", "--set", "vgg_epochs=1,abc"], "vgg_epochs"),  # the 4th combination's type
    (["--set", "seed=0,1", "--set", "sed=1"], "unknown parameter"),
    (["--profile", "laptop", "--set", "seed=0,1"], "unknown profile"),
])
def test_every_combination_is_checked_before_any_run(recorded, tmp_path, capsys, bad, match):
    calls, _ = recorded
    assert cli.main(["sweep", "quickstart", *bad, "--results", str(tmp_path)]) == 2
    assert calls == []
    assert match in capsys.readouterr().err
    assert cli.main(["sweep", "nosuch", "--set", "seed=0", "--results", str(tmp_path)]) == 2
    assert calls == [] and "no notebook 'nosuch'" in capsys.readouterr().err


def test_sequential_sweep_runs_each_combination_and_goes_on_after_a_failure(recorded, tmp_path, capsys):
    calls, fail = recorded
    fail.append({"seed": 1, "vgg_lr": 0.1})
    rc = cli.main(["sweep", "quickstart", "--set", "seed=0,1", "--set", "vgg_lr=0.1,0.01", "--results", str(tmp_path)])
    assert rc == 1
    root = tmp_path / "sweeps" / "quickstart-smoke"
    assert calls == [("quickstart", "smoke", {"seed": s, "vgg_lr": lr}, root / f"seed={s},vgg_lr={lr}")
                     for s in (0, 1) for lr in (0.1, 0.01)]
    out = capsys.readouterr()
    assert "3 of 4 combination(s) finished" in out.out
    assert "FAILED seed=1,vgg_lr=0.1: RuntimeError: notebook cell failed" in out.out
    assert f"repro collect {root}" in out.out


def test_sequential_sweep_names_the_failing_cells_exception(monkeypatch, tmp_path, capsys):
    from papermill.exceptions import PapermillExecutionError

    def fake(name, profile, overrides=None, results=None, **k):
        if overrides["seed"] == 0:
            raise PapermillExecutionError(3, 3, "train()", "ValueError", "lr must be positive", [])

    monkeypatch.setattr(cli, "run_notebook", fake)
    assert cli.main(["sweep", "quickstart", "--set", "seed=0,1", "--results", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 combination(s) finished" in out
    assert "FAILED seed=0: ValueError: lr must be positive (cell output in " in out


def test_sequential_sweep_stops_at_ctrl_c(monkeypatch, tmp_path, capsys):
    calls = []

    def stopped(*a, **k):
        calls.append(a)
        raise RunInterruptedError(signal.SIGINT, "stopped by SIGINT; the run's results were discarded")

    monkeypatch.setattr(cli, "run_notebook", stopped)
    assert cli.main(["sweep", "quickstart", "--set", "seed=0,1,2", "--results", str(tmp_path)]) == 128 + signal.SIGINT
    assert len(calls) == 1


# --------------------------------------------------------------------------------------------- --jobs

CHILD = r"""
import json, os, sys, time
label, folder, mode = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(folder, exist_ok=True)
t0 = time.time()
open(os.path.join(folder, f"started-{label}"), "w").write(str(os.getpid()))
if mode == "barrier":   # wait until 2 children have started: proves they run at the same time
    while len([f for f in os.listdir(folder) if f.startswith("started-")]) < 2:
        if time.time() - t0 > 60:
            sys.exit(3)
        time.sleep(0.05)
if mode == "ignore":
    import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)
if mode in ("sleep", "ignore"):
    time.sleep(120)
print("child says: failing on purpose" if mode == "fail" else "ok", file=sys.stderr)
json.dump({"omp": os.environ.get("OMP_NUM_THREADS"), "start": t0, "end": time.time()},
          open(os.path.join(folder, f"ran-{label}.json"), "w"))
sys.exit(1 if mode == "fail" else 0)
"""


def fake_children(monkeypatch, folder, modes):
    monkeypatch.setattr(sweep, "_command", lambda s, c, kernel, log_output: [
        sys.executable, "-c", CHILD, c.label, str(folder), modes.get(c.label, "barrier")])


def test_jobs_run_in_parallel_at_most_n_at_a_time(monkeypatch, tmp_path):
    folder = tmp_path / "marks"
    fake_children(monkeypatch, folder, {"seed=3": "fail"})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    p = sweep.plan("quickstart", "smoke", sweep.parse_grid(["seed=0,1,2,3"]), results=tmp_path)
    res = sweep.run_sweep(p, jobs=2)
    assert [c.label for c in res.finished] and {c.label for c in res.finished} == {"seed=0", "seed=1", "seed=2"}
    assert [c.label for c, _ in res.failed] == ["seed=3"] and "exit status 1" in res.failed[0][1]
    log = p.root / "seed=3" / "repro-run.log"
    assert "failing on purpose" in log.read_text() and str(log) in res.failed[0][1]
    ran = [json.loads((folder / f"ran-seed={s}.json").read_text()) for s in range(4)]
    assert {r["omp"] for r in ran} == {"1"}  # OMP_NUM_THREADS=1 unless set
    events = sorted([(r["start"], 1) for r in ran] + [(r["end"], -1) for r in ran])
    assert max(np.cumsum([e for _, e in events])) <= 2


def test_jobs_keep_a_set_omp_num_threads(monkeypatch, tmp_path):
    folder = tmp_path / "marks"
    fake_children(monkeypatch, folder, {"seed=0": "quick", "seed=1": "quick"})
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    res = sweep.run_sweep(sweep.plan("quickstart", "smoke", sweep.parse_grid(["seed=0,1"]), results=tmp_path), jobs=2)
    assert res.ok
    assert json.loads((folder / "ran-seed=0.json").read_text())["omp"] == "3"


def test_jobs_command_is_a_repro_run_with_the_combinations_texts(tmp_path):
    p = sweep.plan("quickstart", "cpu", sweep.parse_grid(["seed=0", "vgg_lr=1e-3", "vgg_n_train=null"]),
                   results=tmp_path)
    c = p.combinations[0]
    cmd = sweep._command(p, c, kernel=None, log_output=False)
    assert cmd[:7] == [sys.executable, "-m", "repro.cli", "run", "quickstart", "--profile", "cpu"]
    assert cmd[cmd.index("--results") + 1] == str(c.root.resolve())
    sets = [a.split("=", 1)[1] for a in cmd if a.startswith("--set=")]
    assert cli.parse_sets(sets) == c.overrides == {"seed": 0, "vgg_lr": 0.001, "vgg_n_train": None}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def test_ctrl_c_stops_every_child(monkeypatch, tmp_path):
    folder = tmp_path / "marks"
    fake_children(monkeypatch, folder, {"seed=0": "sleep", "seed=1": "ignore", "seed=2": "sleep"})
    p = sweep.plan("quickstart", "smoke", sweep.parse_grid(["seed=0,1,2"]), results=tmp_path)

    def interrupt():
        deadline = time.time() + 60
        while len(list(folder.glob("started-*"))) < 2 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the "ignore" child has installed SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.time()
    with pytest.raises(RunInterruptedError):
        sweep.run_sweep(p, jobs=2, stop_grace_s=2)
    assert time.time() - t0 < 40
    pids = [int(f.read_text()) for f in folder.glob("started-*")]
    assert len(pids) == 2  # the third combination never started
    assert not any(_alive(pid) for pid in pids)  # SIGINT stopped one, SIGKILL after the grace the other
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --------------------------------------------------------------------------------------------- collect

ACC = {(0, 0.1): 0.80, (1, 0.1): 0.84, (2, 0.1): 0.86, (0, 0.01): 0.70, (1, 0.01): 0.75}
GAIN = {(0, 0.1): 0.02, (1, 0.1): -0.01, (2, 0.1): 0.05, (0, 0.01): 0.00, (1, 0.01): 0.03}


def write_run(folder: Path, seed, lr, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    rec = {"notebook": "nb", "profile": "cpu",
           "params": {"seed": seed, "lr": lr, "width": 0.5, "sizes": [1, 2], "profile": "cpu"},
           "metrics": {"acc": ACC[(seed, lr)], "nested": {"loss": 1 - ACC[(seed, lr)], "name": "vgg"},
                       "converged": seed != 2, "curve": [0.1, 0.2], "note": "text", "missing": None},
           "claims": [{"id": "gain", "ours": GAIN[(seed, lr)], "ci95": [0, 1]}],
           **extra}
    (folder / "metrics.json").write_text(json.dumps(rec))


@pytest.fixture
def synthetic(tmp_path):
    root = tmp_path / "sweep"
    for seed, lr in ACC:
        write_run(root / f"seed={seed},lr={lr}" / "nb" / "cpu", seed, lr)
    # a staging folder of a running `repro run` and a failed run are not results
    write_run(root / "seed=0,lr=0.1" / "nb" / ".cpu.run-20260101T000000-1", 2, 0.1)
    (root / "seed=0,lr=0.01" / "nb" / "cpu.failed").mkdir(parents=True)
    return root


def t_interval(x):
    x = np.asarray(x, float)
    m, se = x.mean(), x.std(ddof=1) / math.sqrt(len(x))
    h = stats.t.ppf(0.975, len(x) - 1) * se
    return m, x.std(ddof=1), m - h, m + h


def test_collect_runs_table(synthetic):
    runs, summary = sweep.collect([synthetic])
    assert len(runs) == 5
    assert not runs["run"].str.contains(r"\.cpu\.run-").any()
    cols = list(runs.columns)
    assert cols[:5] == ["run", "notebook", "profile", "seed", "lr"]  # width and sizes do not differ
    assert {"acc", "nested.loss", "converged", "claim:gain"} <= set(cols)
    assert "nested.name" not in cols and "curve" not in cols and "note" not in cols and "width" not in cols
    assert "missing" not in cols  # None in every run: no number anywhere
    row = runs.set_index(["seed", "lr"]).loc[(2, 0.1)]
    assert row["acc"] == 0.86 and row["nested.loss"] == pytest.approx(0.14)
    assert row["converged"] == 0.0 and row["claim:gain"] == 0.05


def test_collect_summary_matches_a_hand_computed_t_interval(synthetic):
    _, summary = sweep.collect([synthetic])
    s = summary.set_index("quantity")
    for q, table in (("acc", ACC), ("claim:gain", GAIN)):
        m, sd, lo, hi = t_interval(list(table.values()))
        assert s.loc[q, "n"] == 5
        assert s.loc[q, ["mean", "sd", "ci95_lo", "ci95_hi"]].tolist() == pytest.approx([m, sd, lo, hi], rel=1e-12)
    assert s.loc["converged", "mean"] == pytest.approx(4 / 5)


def test_collect_by_groups_and_a_single_run_has_no_interval(synthetic, tmp_path):
    _, summary = sweep.collect(synthetic, by="lr")
    acc = summary[summary["quantity"] == "acc"].set_index("lr")
    for lr in (0.1, 0.01):
        m, sd, lo, hi = t_interval([v for (s, l), v in ACC.items() if l == lr])
        assert acc.loc[lr, ["n", "mean", "sd", "ci95_lo", "ci95_hi"]].tolist() == pytest.approx(
            [3 if lr == 0.1 else 2, m, sd, lo, hi], rel=1e-12)
    _, by_both = sweep.collect(synthetic, by=["seed", "lr"])
    one = by_both[(by_both.quantity == "acc") & (by_both.seed == 2)].iloc[0]
    assert one["n"] == 1 and one["mean"] == 0.86 and math.isnan(one["ci95_lo"]) and math.isnan(one["sd"])
    _, by_const = sweep.collect(synthetic, by="width")  # a parameter that does not differ is a key too
    assert set(by_const["width"]) == {0.5}
    with pytest.raises(UnknownNameError, match="depth"):
        sweep.collect(synthetic, by="depth")
    with pytest.raises(ReproError, match="no metrics.json"):
        sweep.collect(tmp_path / "sweep" / "seed=0,lr=0.01" / "nb" / "cpu.failed")


def test_collect_keeps_notebooks_apart(synthetic, tmp_path):
    other = tmp_path / "other" / "nb2" / "cpu"
    other.mkdir(parents=True)
    (other / "metrics.json").write_text(json.dumps({"notebook": "nb2", "profile": "cpu", "params": {"k": 1},
                                                    "metrics": {"acc": 0.5}}))
    runs, summary = sweep.collect([synthetic, tmp_path / "other", synthetic])  # repeated folder: once
    assert len(runs) == 6
    acc = summary[summary.quantity == "acc"].set_index("notebook")
    assert acc.loc["nb2", "n"] == 1 and acc.loc["nb", "n"] == 5


def test_collect_cli_prints_markdown_and_writes_csv_and_md(synthetic, tmp_path, capsys):
    out = tmp_path / "table.csv"
    assert cli.main(["collect", str(synthetic), "--by", "lr", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    m = np.mean([v for (s, l), v in ACC.items() if l == 0.01])
    assert f"| 0.01 | acc | 2 | {m:.4g} |" in text
    runs = pd.read_csv(out)
    summary = pd.read_csv(tmp_path / "table.summary.csv")
    assert len(runs) == 5 and sorted(runs["acc"]) == sorted(ACC.values())
    assert summary[(summary.quantity == "acc") & (summary.lr == 0.01)]["mean"].item() == pytest.approx(m)
    md = tmp_path / "t.md"
    assert cli.main(["collect", str(synthetic), "--out", str(md)]) == 0
    assert "## Runs (5)" in md.read_text() and "| claim:gain |" in md.read_text()
    assert f"| acc | 5 | {np.mean(list(ACC.values())):.4g} |" in md.read_text()
    assert cli.main(["collect", str(synthetic), "--out", str(tmp_path / "t.xlsx")]) == 2


def test_markdown_table_escapes_pipes_and_blanks_nan():
    t = sweep.markdown_table(pd.DataFrame({"a|b": ["x|y", None], "v": [1.23456789, float("nan")]}))
    assert t.splitlines() == ["| a\\|b | v |", "|---|---|", "| x\\|y | 1.235 |", "|  |  |"]


# --------------------------------------------------------------------------------------------- real


@pytest.mark.slow
@pytest.mark.notebook
def test_real_sweep_of_quickstart_smoke_two_seeds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REPRO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli.main(["sweep", "quickstart", "--set", "seed=0,1", "--results", str(tmp_path)]) == 0
    root = tmp_path / "sweeps" / "quickstart-smoke"
    found = sorted(root.glob("*/quickstart/smoke/metrics.json"))
    assert [f.parts[-4] for f in found] == ["seed=0", "seed=1"]
    assert [json.loads(f.read_text())["params"]["seed"] for f in found] == [0, 1]
    assert f"repro collect {root}" in capsys.readouterr().out
    runs, summary = sweep.collect([root])
    assert runs["seed"].tolist() == [0, 1]
    acc = summary.set_index("quantity").loc["vgg_test_accuracy"]
    assert acc["n"] == 2
    assert acc["mean"] == pytest.approx(np.mean([json.loads(f.read_text())["metrics"]["vgg_test_accuracy"]
                                                 for f in found]))
