"""The `repro` command from an installed wheel (not editable), run outside any checkout: the notebooks
ship as package data (repro/_notebooks/, from notebooks/), results go to ./results and runs to ./runs
of the working directory. The wheel is built from a copy of this checkout (so no build/ or egg-info
lands here) without network or build isolation, installed with `pip install --target`, and run with
PYTHONPATH pointing there from an empty folder."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repro import profiles
from repro.results import repo_root

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))


def test_every_package_is_listed_in_pyproject():
    """pyproject.toml lists its packages (so that notebooks/ can ship as repro._notebooks); a new
    subpackage missing there would be missing from the wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "repro").rglob("__init__.py")}
    assert on_disk and on_disk <= set(conf["packages"])
    assert conf["package-dir"]["repro._notebooks"] == "notebooks"


def test_repo_root_is_a_repro_checkout_only(tmp_path):
    other = tmp_path / "project"  # some other project with a notebooks/ folder is not a repro checkout
    (other / "notebooks").mkdir(parents=True)
    (other / "pyproject.toml").write_text("[project]\nname = 'other'\n")
    assert repo_root(other) != other
    assert repo_root(ROOT / "notebooks") == ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "results", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".ipynb_checkpoints", ".cache", ".whl"))  # git-ignored folders: not part of the source
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(wheels), str(src)], check=True, cwd=tmp, timeout=600)
    (wheel,) = wheels.glob("repro-*.whl")
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, cwd=tmp, timeout=600)
    cwd = tmp / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPRO_")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1")

    def run(*args, timeout=120):
        return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    return site, cwd, run


def test_installed_copy_is_the_one_imported_and_ships_the_notebooks(installed):
    site, cwd, run = installed
    r = run(sys.executable, "-c", "import repro, repro.cli, repro.results as rr; "
                                  "print(repro.__file__); print(repro.cli.notebooks_dir()); print(rr.repo_root())")
    assert r.returncode == 0, r.stderr
    module, nbdir, root = r.stdout.split()
    assert Path(module) == site / "repro" / "__init__.py"
    assert Path(nbdir) == site / "repro" / "_notebooks"
    assert root == "None"  # neither the empty folder nor site-packages' parent is a checkout
    assert sorted(p.stem for p in Path(nbdir).glob("*.ipynb")) == NOTEBOOKS
    for name in NOTEBOOKS:
        assert (Path(nbdir) / f"{name}.ipynb").read_bytes() == (ROOT / "notebooks" / f"{name}.ipynb").read_bytes()


def test_installed_list_and_params(installed):
    site, cwd, run = installed
    r = run(sys.executable, "-m", "repro.cli", "list")
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.splitlines()]
    assert sorted(listed) == NOTEBOOKS
    r = run(str(site / "bin" / "repro"), "params", "quickstart", "--profile", "cpu", "--json")  # the script
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    want = profiles.resolve("quickstart", "cpu")
    want.pop("profile")
    assert out["params"] == want and out["params"]["vgg_epochs"] == 5 and out["source"]["vgg_epochs"] == "profile"
    r = run(sys.executable, "-m", "repro.cli", "params", "quickstart", "--profile", "cpu")
    assert r.returncode == 0, r.stderr
    assert str(site / "repro" / "profiles" / "quickstart.yaml") in r.stdout
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()[2:]}
    assert rows["vgg_epochs"] == ["5", "profile", "cpu"] and rows["text_n_train"] == ["2000", "profile", "cpu"]
    assert list(cwd.iterdir()) == []  # nothing written by list / params


@pytest.mark.slow
@pytest.mark.notebook
def test_installed_run_quickstart_smoke_writes_into_the_working_directory(installed):
    site, cwd, run = installed
    r = run(sys.executable, "-m", "repro.cli", "run", "quickstart", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    record = json.loads((cwd / "results" / "quickstart" / "smoke" / "metrics.json").read_text())
    assert record["profile"] == "smoke" and 0.0 <= record["metrics"]["vgg_test_accuracy"] <= 1.0
    assert record["git_commit"] is None  # the kernel did not mistake any folder for the checkout
    assert (cwd / "runs" / "quickstart").is_dir()  # checkpoints in ./runs, not next to the notebooks
    assert not (site / "repro" / "_notebooks" / "runs").exists()
    assert not (site / "repro" / "_notebooks" / "results").exists()
