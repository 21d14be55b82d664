"""Write a notebook's numbers, tables and figures under ``results/<notebook>/<profile>/``.

Every file is written atomically (temp file + rename). ``metrics.json`` carries the headline numbers
together with the parameters, git commit, device, library versions and wall time, and is written
last (``finish``), so a failed run never leaves a half-written or misleading one behind.

The git commit is read when the run *starts* (``repro run`` reads it before the kernel starts and
passes it on in ``$REPRO_GIT_COMMIT_START``); ``finish`` reads it again and, when HEAD moved or the
tree became dirty during the run, records ``git_commit_end``, sets ``git_changed_during_run`` and
adds a note, so a commit made while a run was going never labels that run.

Under ``repro run`` the writer writes into the run's private staging folder
(``$REPRO_STAGE_DIR``, used when the writer's folder is ``$REPRO_STAGE_TARGET``); the command
moves it into place only when the whole notebook succeeded (see :mod:`repro.cli`).

Example (in a notebook)::

    out = ResultWriter("quickstart", profile, params=params)
    out.table("history", df)          # results/quickstart/cpu/history.csv
    out.figure("learning_curve", fig) # results/quickstart/cpu/learning_curve.png
    out.finish({"vgg_test_accuracy": 0.87})
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from repro.utils import atomic_write_json, atomic_write_with


def _is_checkout(p: Path) -> bool:
    """A repro source tree: pyproject.toml, notebooks/ and the package with its profiles (not merely
    some project with a notebooks/ folder, nor the site-packages folder of an installed wheel)."""
    return ((p / "pyproject.toml").is_file() and (p / "notebooks").is_dir()
            and (p / "repro" / "profiles" / "__init__.py").is_file())


def repo_root(start: Path | None = None) -> Path | None:
    """The repro checkout containing ``start`` (default: the working directory), else the checkout
    this package was imported from (an editable install), else None (an installed wheel run outside
    a checkout: results then go to ``./results``, runs to ``./runs``)."""
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if _is_checkout(p):
            return p
    pkg = Path(__file__).resolve().parents[1]
    if _is_checkout(pkg):
        return pkg
    return None


def results_root() -> Path:
    """``$REPRO_RESULTS`` if set, else ``results/`` of the checkout, else ``./results``."""
    env = os.environ.get("REPRO_RESULTS")
    if env:
        return Path(env)
    root = repo_root()
    return (root / "results") if root else Path.cwd() / "results"


def runs_root() -> Path:
    """Where notebooks keep training runs (checkpoints): ``$REPRO_RUNS``, else ``runs/`` of the
    checkout (git-ignored), else ``./runs``."""
    env = os.environ.get("REPRO_RUNS")
    if env:
        return Path(env)
    root = repo_root()
    return (root / "runs") if root else Path.cwd() / "runs"


def git_commit(root: Path | None = None) -> str | None:
    """HEAD of the checkout, with ``+dirty`` when tracked files outside ``results/`` differ from it."""
    root = root or repo_root()
    if root is None:
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or None
        # results/ holds outputs, not code: a finished notebook's committed results changing must
        # not mark the next notebook of `repro run all` as run from a dirty tree
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{commit}{'+dirty' if dirty else ''}" if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Device and library versions, for provenance."""
    import numpy
    import torch

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__}
    for mod in ("transformers", "torchvision", "datasets", "sklearn", "scipy", "pandas"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)}"
    else:
        device = f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    return {"device": device, "platform": platform.platform(), "versions": versions}


def _plain_name(name: str) -> str:
    """A result file name that stays inside the result folder."""
    from repro.errors import UnsafePathError

    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".."):
        raise UnsafePathError(f"result name {name!r} must be a plain file name (no folders, no '..'): "
                              "results are written inside results/<notebook>/<profile>/ only")
    return name


class SavedFile(type(Path())):
    """A result file just written: an ordinary :class:`pathlib.Path` that displays nothing when it
    is the last value of a notebook cell (no machine paths echoed into executed notebooks)."""

    def _ipython_display_(self) -> None:
        pass


class ResultWriter:
    """Collects a run's outputs in ``<root>/<notebook>/<profile>/``."""

    def __init__(self, notebook: str, profile: str, params: dict | None = None, root: str | Path | None = None):
        self.notebook = notebook
        self.profile = profile
        self.params = dict(params or {})
        self.dir = Path(root or results_root()) / notebook / profile
        stage, target = os.environ.get("REPRO_STAGE_DIR"), os.environ.get("REPRO_STAGE_TARGET")
        if stage and target and self.dir.resolve() == Path(target).resolve():
            self.dir = Path(stage)  # under `repro run`: the run's own folder, moved into place at the end
        self.dir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.files: list[str] = []
        self.git_commit_start = os.environ.get("REPRO_GIT_COMMIT_START") or git_commit()

    def path(self, name: str) -> Path:
        """``<result folder>/<name>``; ``name`` must be a plain file name (no folders, no ``..``)."""
        return self.dir / _plain_name(name)

    def table(self, name: str, frame, index: bool = False) -> SavedFile:
        """Write a pandas DataFrame as ``<name>.csv``."""
        p = atomic_write_with(self.path(f"{name}.csv"), lambda tmp: frame.to_csv(tmp, index=index))
        self.files.append(p.name)
        return SavedFile(p)

    def figure(self, name: str, fig, dpi: int = 130) -> SavedFile:
        """Save a matplotlib figure as ``<name>.png``."""
        p = atomic_write_with(self.path(f"{name}.png"),
                              lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
        self.files.append(p.name)
        return SavedFile(p)

    def json(self, name: str, obj) -> SavedFile:
        """Write a JSON-serialisable object as ``<name>.json``."""
        p = atomic_write_json(self.path(f"{name}.json"), obj)
        self.files.append(p.name)
        return SavedFile(p)

    def finish(self, metrics: dict, notes: list[str] | None = None, claims: list[dict] | None = None) -> Path:
        """Write ``metrics.json`` (headline numbers + provenance); call once, at the end.

        ``claims``: records made by :func:`repro.claims.claim` (verdicts computed from stated
        criteria); checked here so that a malformed claim fails the run instead of being written."""
        if claims is not None:
            from repro.claims import check_claims
            check_claims(claims)
        end = git_commit()
        changed = bool(end != self.git_commit_start)
        git_notes = ([f"git HEAD or the working tree changed during the run: started at "
                      f"{self.git_commit_start}, ended at {end}; the code that ran may be either"]
                     if changed else [])
        record = {
            "notebook": self.notebook,
            "profile": self.profile,
            "metrics": metrics,
            **({"claims": claims} if claims is not None else {}),
            "params": self.params,
            "notes": list(notes or []) + git_notes,
            # how it was run: `repro run` records its command line; None for JupyterLab / papermill
            "command": os.environ.get("REPRO_COMMAND") or None,
            "git_commit": self.git_commit_start,
            "git_changed_during_run": changed,
            **({"git_commit_end": end} if changed else {}),
            **environment(),
            "wall_time_s": round(time.perf_counter() - self.t0, 2),
            "files": sorted(set(self.files)),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return atomic_write_json(self.dir / "metrics.json", record)


def read_metrics(notebook: str, profile: str, root: str | Path | None = None) -> dict:
    """Read back a run's ``metrics.json``."""
    return json.loads((Path(root or results_root()) / notebook / profile / "metrics.json").read_text())
