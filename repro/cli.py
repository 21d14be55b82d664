"""The ``repro`` command: run notebooks with a profile through papermill, list what exists.

    repro list                                   notebooks, their profiles, and results present
    repro claims --profile cpu                   claims + computed verdicts of every result, as markdown
    repro run quickstart --profile cpu           one notebook
    repro run all --profile cpu                  every notebook (what `make reproduce` does)
    repro run quickstart --profile cpu --set vgg_epochs=8 --set seed=1
    repro run quickstart --params-file sweep.yaml   (a YAML mapping of overrides)

The executed copy is written to ``results/<notebook>/<profile>/<notebook>.ipynb``; the source
notebook is never overwritten. While running, the copy is ``<notebook>.partial.ipynb``; a failed run
leaves ``<notebook>.failed.ipynb`` (with the traceback) and exits non-zero.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from repro.errors import ReproError, UnknownNameError
from repro.results import repo_root, results_root


def notebooks_dir() -> Path:
    root = repo_root()
    if root is None or not (root / "notebooks").is_dir():
        raise ReproError("cannot find the notebooks/ folder; run repro from inside the repro checkout")
    return root / "notebooks"


def list_notebooks() -> list[str]:
    """Notebook names (without .ipynb), in the order `run all` executes them."""
    order = ["quickstart", "tracin_proponents", "turnover_cleansing", "first_vs_last_deletion", "fastif_hans"]
    found = sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))
    return [n for n in order if n in found] + [n for n in found if n not in order]


def parse_value(text: str):
    """``--set key=value`` values are read as YAML scalars (numbers, true/false, null, lists)."""
    return yaml.safe_load(text)


def run_notebook(name: str, profile: str, overrides: dict | None = None, results: Path | None = None,
                 kernel: str | None = None, log_output: bool = False) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill; returns the executed copy's path."""
    import papermill as pm

    from repro import profiles

    src = notebooks_dir() / f"{name}.ipynb"
    if not src.exists():
        raise UnknownNameError(f"no notebook {name!r}; known: {list_notebooks()}")
    profiles.resolve(name, profile, overrides)  # fail fast on unknown profile/parameters
    results = Path(results or results_root())
    out_dir = results / name / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}.ipynb"
    partial = out_dir / f"{name}.partial.ipynb"
    failed = out_dir / f"{name}.failed.ipynb"
    env_before = os.environ.get("REPRO_RESULTS")
    os.environ["REPRO_RESULTS"] = str(results.resolve())
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(src), str(partial), parameters={"profile": profile, "overrides": overrides or {}},
                            cwd=str(src.parent), kernel_name=kernel, log_output=log_output, progress_bar=False)
    except BaseException:
        if partial.exists():
            os.replace(partial, failed)
        raise
    finally:
        if env_before is None:
            os.environ.pop("REPRO_RESULTS", None)
        else:
            os.environ["REPRO_RESULTS"] = env_before
    os.replace(partial, final)
    if failed.exists():
        failed.unlink()
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
    run.add_argument("--profile", default="cpu", help="smoke | cpu | gpu | paper (default: cpu)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one parameter of the profile (repeatable)")
    run.add_argument("--params-file", type=Path, help="YAML mapping of parameter overrides")
    run.add_argument("--results", type=Path, help="results root (default: results/ of the checkout)")
    run.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's)")
    run.add_argument("--log-output", action="store_true", help="stream cell output to the terminal")
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
        for name in names:
            run_notebook(name, args.profile, overrides,
                         results=args.results, kernel=args.kernel, log_output=args.log_output)
        return 0
    except ReproError as e:
        print(f"repro: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
