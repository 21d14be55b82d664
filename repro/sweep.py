"""Parameter sweeps over a notebook, and one table of many runs' ``metrics.json``.

    repro sweep quickstart --profile cpu --set seed=0,1,2 --set vgg_lr=0.1,0.01 --jobs 2
    repro collect results/sweeps/quickstart-cpu --by vgg_lr --out sweep.md

:func:`parse_grid` reads ``--set KEY=V1,V2,...`` (each value a YAML scalar or list, as in ``repro
run``; commas inside brackets or quotes do not split, so ``--set sizes=[1,2]`` is one list value and
``--set sizes=[1,2],[3]`` two); :func:`plan` makes the cartesian product and checks every
combination's names and types before any kernel starts; :func:`run_sweep` runs each combination with
:func:`repro.cli.run_notebook` into its own results root
``<results>/sweeps/<notebook>-<profile>/<k1=v1,k2=v2>/`` (sequentially, or ``jobs`` at a time as
``repro run`` subprocesses with ``OMP_NUM_THREADS=1`` unless set). A failed combination does not stop
the others; Ctrl-C (SIGINT) or SIGTERM stops all of them.

:func:`collect` (also for notebooks) finds every ``metrics.json`` under some folders and returns
``(runs, summary)``: one row per run with the parameters that differ between runs, the numeric scalar
metrics (nested dicts flattened to dotted names, booleans as 0/1, strings and lists skipped) and each
claim's ``ours`` (column ``claim:<id>``); and per metric and claim ``n``, ``mean``, ``sd`` and the 95%
Student-t interval over runs (:func:`repro.claims.mean_ci`), per group of the ``by`` parameters (and
per notebook and profile when the runs span several).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from repro.errors import InvalidParameterError, ReproError, UnknownNameError

# ---------------------------------------------------------------------------------------------
# sweep: parsing and planning


def split_values(text: str) -> list[str]:
    """Split ``V1,V2,...`` on the commas that are outside brackets (``[]``, ``{}``) and quotes."""
    parts, cur, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"" and not "".join(cur).strip():
            quote = ch  # a quote opens a quoted YAML scalar only at the start of a value
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_grid(items: list[str]) -> dict[str, list[tuple[str, object]]]:
    """``["seed=0,1", "lr=0.1"]`` -> ``{"seed": [("0", 0), ("1", 1)], "lr": [("0.1", 0.1)]}``: per key,
    its values as (text, parsed value) pairs, in the order given."""
    import yaml

    from repro.cli import parse_value

    grid: dict[str, list[tuple[str, object]]] = {}
    for item in items:
        if "=" not in item:
            raise ReproError(f"--set expects KEY=V1,V2,..., got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ReproError(f"--set expects KEY=V1,V2,..., got {item!r}")
        if key in grid:
            raise ReproError(f"--set {key} is given twice; list all its values in one --set {key}=V1,V2,...")
        parts = split_values(text)
        values = []
        for part in parts:
            if len(parts) > 1 and not part.strip():
                raise InvalidParameterError(f"--set {item!r}: empty value in the comma-separated list")
            try:
                values.append((part.strip(), parse_value(part)))
            except yaml.YAMLError as e:
                raise InvalidParameterError(f"--set {key}: cannot read {part!r} as a YAML value "
                                            f"({str(e).splitlines()[0]})") from None
        grid[key] = values
    return grid


def _fmt(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"), default=repr)
    return str(value)


def label(combo: dict) -> str:
    """Folder name of one combination: ``k1=v1,k2=v2`` (``defaults`` when nothing is set); path
    separators become ``_``; very long names are cut and end with a hash of the whole."""
    if not combo:
        return "defaults"
    text = ",".join(f"{k}={_fmt(v)}" for k, v in combo.items())
    text = text.replace("/", "_").replace("\\", "_").replace("\0", "_")
    if text.startswith("."):
        text = "_" + text
    if len(text) > 200:
        text = text[:180] + "-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return text


@dataclass
class Combination:
    overrides: dict  # parsed values, as run_notebook gets them
    texts: dict  # the same as given on the command line (for the `repro run` subprocesses)
    label: str
    root: Path  # this combination's results root; its metrics.json is root/<notebook>/<profile>/


@dataclass
class SweepPlan:
    notebook: str
    profile: str
    root: Path  # <results>/sweeps/<notebook>-<profile>
    combinations: list[Combination]


def plan(notebook: str, profile: str, grid: dict[str, list[tuple[str, object]]],
         results: Path | None = None) -> SweepPlan:
    """The cartesian product of ``grid`` (from :func:`parse_grid`), each combination checked against
    the notebook's profile (unknown notebook, profile or parameter: :class:`UnknownNameError`; a
    value of the wrong type: :class:`InvalidParameterError`) before anything runs."""
    from repro import cli, profiles
    from repro.results import results_root

    if notebook == "all":
        raise ReproError("repro sweep runs one notebook; name it (e.g. quickstart)")
    if not (cli.notebooks_dir() / f"{notebook}.ipynb").exists():
        raise UnknownNameError(f"no notebook {notebook!r}; known: {cli.list_notebooks()}")
    root = Path(results or results_root()) / "sweeps" / f"{notebook}-{profile}"
    keys = list(grid)
    combos, seen = [], {}
    for values in itertools.product(*(grid[k] for k in keys)):
        overrides = {k: v for k, (_, v) in zip(keys, values)}
        texts = {k: t for k, (t, _) in zip(keys, values)}
        profiles.resolve(notebook, profile, overrides)  # names and types, before any kernel starts
        name = label(overrides)
        if name in seen:
            raise InvalidParameterError(f"two combinations would share the folder {name!r} ({seen[name]} and "
                                        f"{texts}); list each value once")
        seen[name] = texts
        combos.append(Combination(overrides, texts, name, root / name))
    return SweepPlan(notebook, profile, root, combos)


# ---------------------------------------------------------------------------------------------
# sweep: running


@dataclass
class SweepResult:
    plan: SweepPlan
    finished: list[Combination] = field(default_factory=list)
    failed: list[tuple[Combination, str]] = field(default_factory=list)  # (combination, why)

    @property
    def ok(self) -> bool:
        return not self.failed


def run_sweep(sweep: SweepPlan, jobs: int = 1, kernel: str | None = None, log_output: bool = False,
              stop_grace_s: float = 60.0) -> SweepResult:
    """Run every combination of ``sweep``; ``jobs > 1`` runs that many at a time as ``repro run``
    subprocesses (each with ``OMP_NUM_THREADS=1`` unless the environment sets it, output in
    ``<combination>/repro-run.log``). A failure is recorded and the others go on; SIGINT / SIGTERM
    stops everything (subprocesses get SIGINT, then SIGKILL after ``stop_grace_s``) and raises
    :class:`RunInterruptedError`."""
    if jobs < 1:
        raise InvalidParameterError(f"--jobs must be at least 1, got {jobs}")
    result = SweepResult(sweep)
    if jobs == 1:
        _run_sequential(sweep, result, kernel, log_output)
    else:
        _run_parallel(sweep, result, jobs, kernel, log_output, stop_grace_s)
    return result


def _run_sequential(sweep: SweepPlan, result: SweepResult, kernel, log_output) -> None:
    from repro import cli

    n = len(sweep.combinations)
    for i, c in enumerate(sweep.combinations, 1):
        print(f"[{i}/{n}] {sweep.notebook} [{sweep.profile}] {c.label}", flush=True)
        try:
            cli.run_notebook(sweep.notebook, sweep.profile, dict(c.overrides), results=c.root, kernel=kernel,
                             log_output=log_output)
        except Exception as e:  # KeyboardInterrupt (RunInterruptedError included) stops the sweep
            if hasattr(e, "ename"):  # papermill's PapermillExecutionError: the failing cell's exception
                why = f"{e.ename}: {str(getattr(e, 'evalue', '')).strip()[:300]} (cell output in {c.root})"
            else:
                text = str(e).strip()
                why = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
            print(f"[{i}/{n}] {c.label} failed: {why}", file=sys.stderr, flush=True)
            result.failed.append((c, why))
        else:
            result.finished.append(c)


def _command(sweep: SweepPlan, c: Combination, kernel, log_output) -> list[str]:
    cmd = [sys.executable, "-m", "repro.cli", "run", sweep.notebook, "--profile", sweep.profile,
           "--results", str(c.root.resolve())]
    for k, text in c.texts.items():
        cmd.append(f"--set={k}={text}")
    if kernel:
        cmd += ["--kernel", kernel]
    if log_output:
        cmd.append("--log-output")
    return cmd


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _run_parallel(sweep: SweepPlan, result: SweepResult, jobs, kernel, log_output, stop_grace_s) -> None:
    from repro.cli import _SignalGuard
    from repro.results import runs_root

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["REPRO_RUNS"] = str(runs_root().resolve())  # every child keeps its runs where this process would
    pending = list(sweep.combinations)
    running: dict[subprocess.Popen, tuple[Combination, object, Path]] = {}
    n, started = len(pending), 0
    try:
        with _SignalGuard():
            while pending or running:
                while pending and len(running) < jobs:
                    c = pending.pop(0)
                    started += 1
                    c.root.mkdir(parents=True, exist_ok=True)
                    log_path = c.root / "repro-run.log"
                    log = open(log_path, "w")
                    # own session: a terminal Ctrl-C reaches only this process, which stops the children
                    proc = subprocess.Popen(_command(sweep, c, kernel, log_output), stdout=log,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
                    running[proc] = (c, log, log_path)
                    print(f"[{started}/{n}] {sweep.notebook} [{sweep.profile}] {c.label} started "
                          f"(pid {proc.pid}, log {log_path})", flush=True)
                for proc in [p for p in running if p.poll() is not None]:
                    c, log, log_path = running.pop(proc)
                    log.close()
                    if proc.returncode == 0:
                        result.finished.append(c)
                        print(f"{c.label} done", flush=True)
                    else:
                        why = f"exit status {proc.returncode}; log {log_path}"
                        result.failed.append((c, why))
                        print(f"{c.label} failed ({why}):\n{_tail(log_path)}", file=sys.stderr, flush=True)
                time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(running, stop_grace_s)
        raise


def _stop(running: dict, grace_s: float) -> None:
    """SIGINT to every running child (each discards its run and shuts its kernel down), then
    SIGKILL to the process group of any still alive after ``grace_s``."""
    for proc in running:
        with _ignore_lookup():
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with _ignore_lookup():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for _, log, _ in running.values():
        log.close()
    print(f"repro: sweep stopped; {len(running)} running combination(s) discarded", file=sys.stderr, flush=True)


class _ignore_lookup:
    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        return kind is not None and issubclass(kind, ProcessLookupError)


def report(result: SweepResult) -> str:
    """What ran, where the results are, what failed and the `repro collect` command."""
    p = result.plan
    lines = [f"sweep {p.notebook} [{p.profile}]: {len(result.finished)} of {len(p.combinations)} "
             f"combination(s) finished; results in {p.root}/<combination>/{p.notebook}/{p.profile}/"]
    for c, why in result.failed:
        lines.append(f"  FAILED {c.label}: {why}")
    lines.append(f"gather them: repro collect {p.root}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# collect


def find_metrics(paths) -> list[Path]:
    """Every ``metrics.json`` under ``paths`` (folders searched recursively, files taken as they
    are), skipping hidden folders (a running ``repro run``'s staging folder) and duplicates."""
    found, seen = [], set()
    for root in ([paths] if isinstance(paths, (str, Path)) else paths):
        root = Path(root)
        if root.is_file():
            candidates = [root]
        elif root.is_dir():
            candidates = [p for p in sorted(root.rglob("metrics.json"))
                          if not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])]
        else:
            raise ReproError(f"{root} does not exist")
        for p in candidates:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                found.append(p)
    return found


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Numeric scalars of a (nested) metrics dict with dotted names; booleans as 0/1; ``None`` as NaN;
    strings, lists and other values are skipped."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "."))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            out[name] = float(value)
        elif value is None:
            out[name] = float("nan")
    return out


def _cell(value):
    """A parameter value as a table cell: scalars as they are, lists/dicts as compact JSON."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=repr)
    return value


def _number(value) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return float("nan")


def collect(paths, by: list[str] | str | None = None):
    """``(runs, summary)`` DataFrames of every ``metrics.json`` under ``paths`` (see the module doc).

    ``runs``: columns ``run`` (the folder), ``notebook``, ``profile``, the parameters that differ
    between runs (and the ``by`` keys), metric columns, ``claim:<id>`` columns.
    ``summary``: one row per group and quantity: the group keys, ``quantity``, ``n``, ``mean``,
    ``sd``, ``ci95_lo``, ``ci95_hi`` (t interval; NaN with fewer than 2 runs)."""
    import pandas as pd

    from repro.claims import mean_ci

    by = [b for part in ([by] if isinstance(by, str) else (by or [])) for b in part.split(",") if b]
    files = find_metrics(paths)
    if not files:
        raise ReproError(f"no metrics.json under {', '.join(map(str, [paths] if isinstance(paths, (str, Path)) else paths))}")
    records = []
    for f in files:
        try:
            records.append((f, json.loads(f.read_text())))
        except (OSError, ValueError) as e:
            raise ReproError(f"cannot read {f}: {e}") from None
    params = [{k: v for k, v in (r.get("params") or {}).items() if k != "profile"} for _, r in records]
    names = list(dict.fromkeys(k for p in params for k in p))
    unknown = [b for b in by if b not in names and b not in ("notebook", "profile")]
    if unknown:
        raise UnknownNameError(f"--by {unknown}: not a parameter of these runs; known: {sorted(names)}")
    key = lambda v: json.dumps(v, sort_keys=True, default=repr)
    differ = [k for k in names if len({key(p[k]) if k in p else "<missing>" for p in params}) > 1]
    param_cols = differ + [b for b in by if b not in differ and b not in ("notebook", "profile")]

    metric_rows = [flatten_metrics(r.get("metrics") or {}) for _, r in records]
    metric_names = [m for m in dict.fromkeys(k for row in metric_rows for k in row)
                    if any(not math.isnan(row.get(m, float("nan"))) for row in metric_rows)]
    claim_ids = list(dict.fromkeys(c.get("id") for _, r in records for c in (r.get("claims") or []) if c.get("id")))

    rows = []
    for (f, r), p, m in zip(records, params, metric_rows):
        row = {"run": str(f.parent), "notebook": r.get("notebook"), "profile": r.get("profile")}
        for k in param_cols:
            row[k] = _cell(p[k]) if k in p else None
        for name in metric_names:
            col = name if name not in row else f"metric:{name}"
            row[col] = m.get(name, float("nan"))
        ours = {c.get("id"): c.get("ours") for c in (r.get("claims") or [])}
        for cid in claim_ids:
            row[f"claim:{cid}"] = _number(ours.get(cid))
        rows.append(row)
    runs = pd.DataFrame(rows)
    quantities = [c for c in runs.columns if c not in ("run", "notebook", "profile", *param_cols)]

    groups = [g for g in ("notebook", "profile") if runs[g].nunique(dropna=False) > 1]
    groups += [b for b in by if b not in groups]
    summary_rows = []
    grouped = runs.groupby(groups, dropna=False, sort=True) if groups else [((), runs)]
    for gkey, sub in grouped:
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        for q in quantities:
            x = pd.to_numeric(sub[q], errors="coerce").dropna().to_numpy(dtype=float)
            if len(x) == 0:
                continue
            mean, ci = mean_ci(x)
            summary_rows.append({**dict(zip(groups, gkey)), "quantity": q, "n": len(x), "mean": mean,
                                 "sd": float(x.std(ddof=1)) if len(x) > 1 else float("nan"),
                                 "ci95_lo": ci[0], "ci95_hi": ci[1]})
    summary = pd.DataFrame(summary_rows, columns=[*groups, "quantity", "n", "mean", "sd", "ci95_lo", "ci95_hi"])
    return runs, summary


def markdown_table(frame, floatfmt: str = ".4g") -> str:
    """A DataFrame as a GitHub markdown table (without the optional ``tabulate`` package)."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = [str(c).replace("|", "\\|") for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def collect_markdown(runs, summary) -> str:
    return (f"## Runs ({len(runs)})\n\n{markdown_table(runs)}\n\n"
            f"## Summary (mean, sd and 95% t interval over runs)\n\n{markdown_table(summary)}\n")


def write_collected(runs, summary, out: Path) -> list[Path]:
    """``.csv``: the runs to ``out`` and the summary to ``<out stem>.summary.csv``; ``.md``: both
    tables in one markdown file. Returns the files written."""
    from repro.utils import atomic_write_with

    out = Path(out)
    if out.suffix == ".csv":
        side = out.with_name(f"{out.stem}.summary.csv")
        atomic_write_with(out, lambda tmp: runs.to_csv(tmp, index=False))
        atomic_write_with(side, lambda tmp: summary.to_csv(tmp, index=False))
        return [out, side]
    if out.suffix == ".md":
        text = collect_markdown(runs, summary)
        atomic_write_with(out, lambda tmp: Path(tmp).write_text(text))
        return [out]
    raise InvalidParameterError(f"--out {out}: write a .csv or a .md file")
