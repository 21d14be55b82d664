"""The ``repro`` command: run notebooks with a profile through papermill, list what exists.

    repro list                                   notebooks, their profiles, and results present
    repro claims --profile cpu                   claims + computed verdicts of every result, as markdown
    repro run quickstart --profile cpu           one notebook
    repro run all --profile cpu                  every notebook (what `make reproduce` does)
    repro run quickstart --profile cpu --set vgg_epochs=8 --set seed=1
    repro run quickstart --params-file sweep.yaml   (a YAML mapping of overrides)
    repro params quickstart --profile cpu        every parameter, its value and where it comes from
    repro sweep quickstart --profile cpu --set seed=0,1,2 [--jobs 2]   one run per combination
    repro collect results/sweeps/quickstart-cpu [--by KEY] [--out t.md]   runs table + mean/CI (repro.sweep)

The executed copy is written to ``results/<notebook>/<profile>/<notebook>.ipynb``; the source
notebook is never overwritten.

Every run is isolated and all-or-nothing:

* a lock (``results/<notebook>/.<profile>.lock`` and ``runs/<notebook>/.<profile>.lock``) refuses a
  second run of the same notebook and profile while one is going (RunLockedError);
* the notebook writes into a private staging folder ``results/<notebook>/.<profile>.run-<id>/``; only
  when it finished without error is that folder swapped into place (two renames), so a finished
  run's files are never mixed with, or partly replaced by, those of another run;
* a failed or stopped run's folder is moved to ``results/<notebook>/<profile>.failed/`` (executed
  notebook ``<notebook>.failed.ipynb`` with the traceback, without ``metrics.json``) and the
  command exits non-zero;
* SIGINT (Ctrl-C) and SIGTERM stop the run: the kernel is shut down, nothing is moved into place,
  ``repro run all`` does not go on with the next notebook, and the exit status is 128 + signal.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import yaml

from repro.errors import ReproError, RunInterruptedError, RunLockedError, UnknownNameError
from repro.results import git_commit, repo_root, results_root, runs_root


def notebooks_dir() -> Path:
    """``notebooks/`` of the repro checkout when run inside one (or from an editable install), else
    the copies packaged with an installed wheel (``repro/_notebooks/``)."""
    root = repo_root()
    if root is not None and (root / "notebooks").is_dir():
        return root / "notebooks"
    packaged = Path(__file__).resolve().parent / "_notebooks"
    if any(packaged.glob("*.ipynb")):
        return packaged
    raise ReproError("cannot find the notebooks: neither a repro checkout (run inside one) nor the copies "
                     f"an installed wheel ships ({packaged})")


def list_notebooks() -> list[str]:
    """Notebook names (without .ipynb), in the order `run all` executes them."""
    order = ["quickstart", "tracin_proponents", "turnover_cleansing", "first_vs_last_deletion", "fastif_hans"]
    found = sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))
    return [n for n in order if n in found] + [n for n in found if n not in order]


def parse_value(text: str):
    """``--set key=value`` values are read as YAML scalars (numbers, true/false, null, lists);
    ``1e-4`` is a number too (YAML 1.1 would read it as a string)."""
    import re

    value = yaml.safe_load(text)
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


class RunLock:
    """Exclusive, non-blocking ``flock`` on one or more lock files, released when the process ends
    (even when killed). Taking a held lock raises :class:`RunLockedError` naming the holder."""

    def __init__(self, paths: list[Path], what: str):
        self.paths, self.what, self.files = [Path(p) for p in paths], what, []

    def __enter__(self) -> "RunLock":
        import fcntl

        try:
            for path in self.paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                f = open(path, "a+")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    f.seek(0)
                    holder = f.read().strip() or "unknown"
                    f.close()
                    raise RunLockedError(
                        f"{self.what} is already running (lock {path} held by {holder}); wait for it to "
                        "finish, or run into another folder with --results (and REPRO_RUNS)") from None
                f.seek(0)
                f.truncate()
                f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
                f.flush()
                self.files.append(f)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        for f in self.files:
            f.close()  # closing releases the flock
        self.files = []
        return False


class _SignalGuard:
    """While active, SIGINT and SIGTERM raise :class:`RunInterruptedError` in the main thread (a
    KeyboardInterrupt, which no ``except Exception`` swallows), so papermill shuts the kernel down
    and the run is discarded; a second signal during that clean-up is ignored. Inside
    :meth:`deferred` (moving a finished run into place) a signal is only recorded and raised
    afterwards, so the two renames are never separated. Previous handlers are restored on exit."""

    def __init__(self):
        self.fired: list[int] = []
        self.defer = False
        self.old = {}

    def _handler(self, signum, frame):
        if self.fired:
            return
        self.fired.append(signum)
        if not self.defer:
            raise RunInterruptedError(signum, f"stopped by {signal.Signals(signum).name}; the run's "
                                              "results were discarded")

    @contextlib.contextmanager
    def deferred(self, done_message: str):
        self.defer = True
        try:
            yield
        finally:
            self.defer = False
        if self.fired:
            signum = self.fired[0]
            raise RunInterruptedError(signum, f"stopped by {signal.Signals(signum).name} {done_message}")

    def __enter__(self) -> "_SignalGuard":
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> bool:
        for s, h in self.old.items():
            signal.signal(s, h)
        return False


@contextlib.contextmanager
def _environ(values: dict):
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tidy(parent: Path, profile: str) -> None:
    """Under the lock: finish a swap that a kill interrupted (the finished run's folder was moved
    aside but the new one not yet into place: put the old one back) and remove staging folders of
    runs that were killed."""
    final = parent / profile
    old = sorted(parent.glob(f".{profile}.old-*"))
    if not final.exists() and old:
        os.rename(old[-1], final)
        old = old[:-1]
    for p in old + sorted(parent.glob(f".{profile}.run-*")):
        shutil.rmtree(p, ignore_errors=True)


def _discard(stage: Path, parent: Path, profile: str, name: str) -> Path:
    """Move a failed or stopped run's staging folder to ``<profile>.failed/`` without metrics.json."""
    failed = parent / f"{profile}.failed"
    (stage / "metrics.json").unlink(missing_ok=True)
    executed = stage / f"{name}.ipynb"
    if executed.exists():
        os.replace(executed, stage / f"{name}.failed.ipynb")
    if failed.exists():
        shutil.rmtree(failed)
    os.rename(stage, failed)
    return failed


def _tidy_output(executed: Path, stage: Path, final_dir: Path) -> None:
    """Merge the executed notebook's streams and replace this machine's paths (staging folder,
    checkout, home) by the ones a reader sees (see repro.notebook_output)."""
    from repro.notebook_output import tidy_executed

    root = repo_root()
    shown = final_dir.resolve()
    if root is not None and shown.is_relative_to(root):
        shown = shown.relative_to(root)
    subs = {str(stage.resolve()): str(shown)}
    if root is not None:
        subs[f"{root}/"] = ""
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        subs[f"{home}/"] = "~/"
    tidy_executed(executed, subs)


def _command_line(name: str, profile: str, overrides: dict | None) -> str:
    """The ``repro run`` command that reproduces this run (recorded in metrics.json), with the
    thread count when ``OMP_NUM_THREADS`` is set."""
    import shlex

    import json

    def text(v):
        if isinstance(v, str):
            return v
        return "null" if v is None else json.dumps(v)  # true/false, numbers, [lists], {maps}: YAML reads them back

    sets = " ".join(f"--set {shlex.quote(f'{k}={text(v)}')}" for k, v in (overrides or {}).items())
    threads = os.environ.get("OMP_NUM_THREADS")
    launcher = ""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun (see repro.distributed)
        nodes = os.environ.get("GROUP_WORLD_SIZE", "1")
        launcher = (f"torchrun{f' --nnodes {nodes}' if nodes != '1' else ''} --nproc-per-node "
                    f"{os.environ.get('LOCAL_WORLD_SIZE', os.environ['WORLD_SIZE'])} --no-python")
    return " ".join(x for x in (f"OMP_NUM_THREADS={threads}" if threads else "", launcher,
                                f"repro run {name} --profile {profile}", sets) if x)


def run_notebook(name: str, profile: str, overrides: dict | None = None, results: Path | None = None,
                 kernel: str | None = None, log_output: bool = False) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill into a private staging folder and move it
    into ``results/<name>/<profile>/`` when it succeeded (see the module doc: lock, staging, failed
    runs, signals); returns the executed copy's path."""
    import papermill as pm

    from repro import profiles

    src = notebooks_dir() / f"{name}.ipynb"
    if not src.exists():
        raise UnknownNameError(f"no notebook {name!r}; known: {list_notebooks()}")
    profiles.resolve(name, profile, overrides)  # fail fast on unknown profile/parameters/types
    results = Path(results or results_root())
    parent = results / name
    final_dir = parent / profile
    locks = [parent / f".{profile}.lock", runs_root() / name / f".{profiles.run_key(name, profile, overrides)}.lock"]
    with RunLock(locks, f"{name} [{profile}]"), _SignalGuard() as guard:
        _tidy(parent, profile)
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        stage = parent / f".{profile}.run-{run_id}"
        stage.mkdir(parents=True)
        executed = stage / f"{name}.ipynb"
        env = {"REPRO_RESULTS": str(results.resolve()), "REPRO_STAGE_DIR": str(stage.resolve()),
               "REPRO_STAGE_TARGET": str(final_dir.resolve()),
               # the kernel runs in the notebooks' folder (site-packages for an installed wheel):
               # give it this process's runs root (./runs outside a checkout)
               "REPRO_RUNS": str(runs_root().resolve()),
               "REPRO_GIT_COMMIT_START": git_commit() or "",
               "REPRO_COMMAND": _command_line(name, profile, overrides)}
        from repro import distributed
        if distributed.launch_role() == "driver":  # the kernel joins torchrun's group as rank 0
            env[distributed.DRIVER_ENV] = "driver"
        t0 = time.perf_counter()
        try:
            with _environ(env):
                pm.execute_notebook(str(src), str(executed),
                                    parameters={"profile": profile, **(overrides or {})},
                                    cwd=str(src.parent), kernel_name=kernel, log_output=log_output,
                                    progress_bar=False)
            _tidy_output(executed, stage, final_dir)
            if not (stage / "metrics.json").exists():
                raise ReproError(f"{name} [{profile}] finished without writing metrics.json (did it call "
                                 "ResultWriter.finish?); its output was not moved into place")
        except BaseException as e:
            failed = _discard(stage, parent, profile, name)
            print(f"repro: {name} [{profile}] {'stopped' if isinstance(e, KeyboardInterrupt) else 'failed'}; "
                  f"its output (no metrics.json) is in {failed}; {final_dir} was left as it was",
                  file=sys.stderr, flush=True)
            raise
        with guard.deferred(f"just after {name} [{profile}] finished; its results are in {final_dir}"):
            old = parent / f".{profile}.old-{run_id}"
            if final_dir.exists():
                os.rename(final_dir, old)
            os.rename(stage, final_dir)  # from here on the new run is the result
            shutil.rmtree(old, ignore_errors=True)
            stale_failed = parent / f"{profile}.failed"
            if stale_failed.exists():
                shutil.rmtree(stale_failed, ignore_errors=True)
    final = final_dir / f"{name}.ipynb"
    print(f"{name} [{profile}] done in {time.perf_counter() - t0:.0f} s -> {final}", flush=True)
    return final


def print_claims(notebook: str, profile: str, results: Path | None = None) -> int:
    """Print each result's claims as markdown rows (what results/README.md is made from)."""
    import json

    from repro.claims import claims_markdown

    root = Path(results or results_root())
    names = list_notebooks() if notebook == "all" else [notebook]
    found = 0
    for nb in names:
        path = root / nb / profile / "metrics.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        if not record.get("claims"):
            continue
        found += 1
        print(f"### {nb} (`{profile}` profile, commit {str(record.get('git_commit'))[:12]})\n")
        print(claims_markdown(record["claims"]))
        print()
    if not found:
        raise ReproError(f"no metrics.json with claims under {root}/<notebook>/{profile}/ for {names}")
    return 0


def parse_sets(items: list[str]) -> dict:
    """``["seed=1", "lr=1e-3"]`` -> ``{"seed": 1, "lr": 0.001}`` (each value read by :func:`parse_value`)."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ReproError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = parse_value(value)
    return overrides


def print_params(notebook: str, profile: str, overrides: dict | None = None, as_json: bool = False) -> int:
    """Print every parameter of ``notebook`` resolved under ``profile`` (and ``overrides``) with its
    source: ``default`` (the defaults block), ``profile`` (the profile's block) or ``override``."""
    import json

    from repro import profiles

    overrides = dict(overrides or {})
    params = profiles.resolve(notebook, profile, overrides)  # unknown notebook/profile/name, types
    spec = profiles._read(notebook)
    block = spec.get(profile) or {}
    source = {k: "override" if k in overrides else "profile" if k in block else "default"
              for k in params if k != "profile"}
    values = {k: params[k] for k in source}
    if as_json:
        print(json.dumps({"notebook": notebook, "profile": profile, "params": values, "source": source},
                         indent=2, default=repr))
        return 0
    width = max([len(k) for k in values] + [4])
    shown = {k: yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("\n...")
             for k, v in values.items()}
    vwidth = min(40, max([len(s) for s in shown.values()] + [5]))
    print(f"{notebook} [{profile}]: {len(values)} parameters "
          f"(profiles: {profiles.PROFILE_DIR / (notebook + '.yaml')})")
    print(f"{'name':{width}s}  {'value':{vwidth}s}  source")
    for k in values:
        where = f"profile {profile}" if source[k] == "profile" else source[k]
        print(f"{k:{width}s}  {shown[k]:{vwidth}s}  {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="repro", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="notebooks, profiles and results present")
    cl = sub.add_parser("claims", help="print the claims (with computed verdicts) of results as markdown")
    cl.add_argument("notebook", nargs="?", default="all", help="notebook name or 'all' (default)")
    cl.add_argument("--profile", default="cpu", help="which profile's results (default: cpu)")
    cl.add_argument("--results", type=Path, help="results root (default: results/ of the checkout)")
    run = sub.add_parser("run", help="run one notebook (or 'all') with a profile")
    run.add_argument("notebook", help="notebook name (e.g. quickstart) or 'all'")
    run.add_argument("--profile", default="smoke", help="smoke | cpu | gpu | paper (default: smoke, as in the notebooks; make reproduce passes cpu)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one parameter of the profile (repeatable)")
    run.add_argument("--params-file", type=Path, help="YAML mapping of parameter overrides")
    run.add_argument("--results", type=Path, help="results root (default: results/ of the checkout)")
    run.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's)")
    run.add_argument("--log-output", action="store_true", help="stream cell output to the terminal")
    pa = sub.add_parser("params", help="every parameter of a notebook with its value under a profile and its source")
    pa.add_argument("notebook", help="notebook name (e.g. quickstart)")
    pa.add_argument("--profile", default="smoke", help="profile (default: smoke)")
    pa.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override (repeatable)")
    pa.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sw = sub.add_parser("sweep", help="run a notebook once per combination of comma-separated --set values")
    sw.add_argument("notebook", help="notebook name (e.g. quickstart)")
    sw.add_argument("--profile", default="smoke", help="profile (default: smoke)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="values of one parameter (repeatable; the runs are the cartesian product; commas "
                         "inside [...] do not split: --set sizes=[1,2],[3] is two values)")
    sw.add_argument("--jobs", type=int, default=1,
                    help="combinations run at once, as `repro run` subprocesses with OMP_NUM_THREADS=1 unless set (default 1: one after another, in this process)")
    sw.add_argument("--results", type=Path,
                    help="results root (default: results/ of the checkout, else ./results); runs go to <results>/sweeps/<notebook>-<profile>/<k=v,...>/")
    sw.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's)")
    sw.add_argument("--log-output", action="store_true", help="stream cell output (to each combination's log with --jobs > 1)")
    co = sub.add_parser("collect", help="one table (and mean / 95%% CI summary) of every metrics.json under some folders")
    co.add_argument("results", nargs="+", type=Path, help="folders (searched recursively) or metrics.json files")
    co.add_argument("--by", action="append", default=[], metavar="KEY",
                    help="group the summary by this parameter (repeatable, or comma-separated)")
    co.add_argument("--out", type=Path, help="write FILE.csv (+ FILE.summary.csv) or FILE.md as well")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "list":
            from repro import profiles
            root = results_root()
            for nb in list_notebooks():
                have = sorted(p.parent.name for p in (root / nb).glob("*/metrics.json"))
                print(f"{nb:26s} profiles: {', '.join(profiles.profiles(nb)):28s} results: {', '.join(have) or '-'}")
            return 0
        if args.cmd == "claims":
            return print_claims(args.notebook, args.profile, args.results)
        if args.cmd == "params":
            return print_params(args.notebook, args.profile, parse_sets(args.set), as_json=args.json)
        if args.cmd == "sweep":
            from repro import sweep
            plan = sweep.plan(args.notebook, args.profile, sweep.parse_grid(args.set), results=args.results)
            print(f"sweep {plan.notebook} [{plan.profile}]: {len(plan.combinations)} combination(s) -> {plan.root}/",
                  flush=True)
            done = sweep.run_sweep(plan, jobs=args.jobs, kernel=args.kernel, log_output=args.log_output)
            print(sweep.report(done), flush=True)
            return 0 if done.ok else 1
        if args.cmd == "collect":
            from repro import sweep
            runs, summary = sweep.collect(args.results, by=args.by)
            print(sweep.collect_markdown(runs, summary))
            if args.out:
                for path in sweep.write_collected(runs, summary, args.out):
                    print(f"wrote {path}")
            return 0
        overrides: dict = {}
        if args.params_file:
            loaded = yaml.safe_load(args.params_file.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ReproError(f"{args.params_file} must hold a YAML mapping of parameter: value")
            overrides.update(loaded)
        for item in args.set:
            if "=" not in item:
                raise ReproError(f"--set expects KEY=VALUE, got {item!r}")
            key, value = item.split("=", 1)
            overrides[key.strip()] = parse_value(value)
        names = list_notebooks() if args.notebook == "all" else [args.notebook]
        from repro import distributed, profiles
        role = distributed.launch_role()
        if role != "single" and len(names) != 1:
            raise ReproError("under torchrun, `repro run` takes one notebook per launch (its kernel is "
                             "rank 0 of the process group), not 'all'")
        if role == "worker":  # ranks 1..G-1 follow the notebook's influence calls
            return distributed.serve()
        for name in names:  # every name and parameter checked (names, types) before any kernel starts
            if not (notebooks_dir() / f"{name}.ipynb").exists():
                raise UnknownNameError(f"no notebook {name!r}; known: {list_notebooks()}")
            profiles.resolve(name, args.profile, overrides)
        for name in names:
            run_notebook(name, args.profile, overrides,
                         results=args.results, kernel=args.kernel, log_output=args.log_output)
        return 0
    except ReproError as e:
        print(f"repro: error: {e}", file=sys.stderr)
        return 2
    except RunInterruptedError as e:
        print(f"repro: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("repro: interrupted; the stopped run's results were discarded", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
