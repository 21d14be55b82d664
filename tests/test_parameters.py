"""Papermill-native parameters, quiet progress bars and tidy executed notebooks.

* every profile key is a top-level variable of the notebook's parameters cell (generated from the
  profiles, checked current here), ``...`` takes the chosen profile's value, anything else wins;
* a mistyped name is an error (papermill itself only warns), through papermill as through start();
* runs with different parameters get different checkpoint folders (parallel sweeps);
* progress bars: widgets in an interactive front end, quiet text under a headless runner;
* executed notebooks keep no machine paths and one stream output per stream.
"""
import json

import nbformat
import pytest

from repro import profiles
from repro.cli import list_notebooks, notebooks_dir
from repro.errors import InvalidParameterError, UnknownNameError


def _parameters_source(name: str) -> str:
    nb = nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name}: expected exactly one cell tagged 'parameters'"
    return cells[0].source


@pytest.mark.parametrize("name", list_notebooks())
def test_parameters_cell_is_generated_from_the_profiles(name):
    src = _parameters_source(name)
    assert src.strip() == profiles.parameters_cell(name).strip(), (
        f"notebooks/{name}.ipynb's parameters cell is stale: run `python scripts/sync_notebooks.py {name}`")
    ns: dict = {}
    exec(src, ns)
    for key in profiles.keys(name):
        assert ns[key] is ..., key
    assert ns["profile"] == "smoke" and ns["results_dir"] is None


@pytest.mark.parametrize("name", list_notebooks())
def test_papermill_sees_every_parameter(name, caplog):
    import papermill as pm

    with caplog.at_level("WARNING"):
        found = pm.inspect_notebook(str(notebooks_dir() / f"{name}.ipynb"))
    assert set(found) == set(profiles.keys(name)) | {"profile", "results_dir"}
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]


def test_profile_fills_what_is_not_given_and_explicit_values_win():
    name = "quickstart"
    ns = {k: ... for k in profiles.keys(name)}
    ns.update(profile="cpu", results_dir=None, vgg_epochs=1, text_n_train=None)
    profile, overrides, _ = profiles.from_namespace(name, ns)
    params = profiles.resolve(name, profile, overrides)
    cpu = profiles.resolve(name, "cpu")
    smoke = profiles.resolve(name, "smoke")
    assert cpu["vgg_epochs"] != 1 and smoke["vgg_epochs"] == 1  # the value equals smoke's: still explicit
    assert params["vgg_epochs"] == 1
    assert params["text_n_train"] is None and cpu["text_n_train"] is not None  # None is a value, not "unset"
    assert {k: v for k, v in params.items() if k not in ("vgg_epochs", "text_n_train")} == \
        {k: v for k, v in cpu.items() if k not in ("vgg_epochs", "text_n_train")}


def test_mistyped_parameter_is_an_error_with_a_suggestion_and_notebook_variables_are_not():
    """Only what papermill injected (its cell starts with '# Parameters', kept in the kernel's
    input history ``In``) is checked: constants and timers a notebook defines are its own."""
    import math

    ns = {k: ... for k in profiles.keys("quickstart")}
    ns.update(profile="smoke", results_dir=None, math=math, TRACIN_LAST="x", t_start=1.5,
              In=["", "profile = 'smoke'", '# Parameters\nprofile = "cpu"\nsed = 1\n', "t_start = 1.5"])
    with pytest.raises(UnknownNameError, match=r"\['sed'\].*did you mean 'seed'"):
        profiles.from_namespace("quickstart", ns)
    ns["In"][2] = '# Parameters\nprofile = "cpu"\nseed = 1\n'
    ns["seed"] = 1
    assert profiles.from_namespace("quickstart", ns)[1] == {"seed": 1}


def test_a_wrongly_typed_value_is_refused():
    ns = {k: ... for k in profiles.keys("quickstart")}
    ns.update(profile="cpu", vgg_epochs="many")
    profile, overrides, _ = profiles.from_namespace("quickstart", ns)
    with pytest.raises(InvalidParameterError, match="vgg_epochs"):
        profiles.resolve("quickstart", profile, overrides)


def test_runs_with_different_parameters_never_share_a_checkpoint_folder():
    cpu = profiles.resolve("quickstart", "cpu")
    assert profiles.run_key("quickstart", "cpu", {}) == "cpu"
    assert profiles.run_key("quickstart", "cpu", {"seed": cpu["seed"]}) == "cpu"  # the profile's own value
    a = profiles.run_key("quickstart", "cpu", {"seed": 1})
    b = profiles.run_key("quickstart", "cpu", {"seed": 2})
    assert a.startswith("cpu-") and b.startswith("cpu-") and a != b
    assert a == profiles.run_key("quickstart", "cpu", {"seed": 1})  # stable: a rerun resumes


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A two-cell notebook with profiles {defaults a 1, b 2; cpu a 10, b 20} that records its params."""
    profs, nbs = tmp_path / "profiles", tmp_path / "notebooks"
    profs.mkdir()
    nbs.mkdir()
    (profs / "toy.yaml").write_text("defaults:\n  a: 1\n  b: 2   # the b\nsmoke: {}\ncpu:\n  a: 10\n  b: 20\n")
    monkeypatch.setattr(profiles, "PROFILE_DIR", profs)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(profiles.parameters_cell("toy"), metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(
                    "import json, os\nfrom repro import profiles\nprofiles.PROFILE_DIR = __import__('pathlib').Path("
                    f"{str(profs)!r})\nprof, ov, _ = profiles.from_namespace('toy', globals())\n"
                    "json.dump(profiles.resolve('toy', prof, ov), open(os.environ['TOY_OUT'], 'w'))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbs / "toy.ipynb")
    monkeypatch.setenv("TOY_OUT", str(tmp_path / "params.json"))
    return tmp_path


def test_papermill_parameters_do_what_they_say(toy):
    import papermill as pm

    assert "b: int = ...  # integer; smoke 2, cpu 20; the b" in profiles.parameters_cell("toy")
    pm.execute_notebook(str(toy / "notebooks/toy.ipynb"), str(toy / "out.ipynb"),
                        parameters={"profile": "cpu", "b": 5}, progress_bar=False, cwd=str(toy))
    assert json.loads((toy / "params.json").read_text()) == {"a": 10, "b": 5, "profile": "cpu"}
    with pytest.raises(pm.PapermillExecutionError, match="UnknownNameError.*'bb'"):
        pm.execute_notebook(str(toy / "notebooks/toy.ipynb"), str(toy / "out.ipynb"),
                            parameters={"profile": "cpu", "bb": 5}, progress_bar=False, cwd=str(toy))


def test_progress_bars_are_widgets_only_where_someone_watches():
    """Headless runners (papermill, nbmake: nbclient) send execute requests without stdin; JupyterLab
    allows stdin. The bar type follows; a real kernel is asked."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        seen = {}
        for allow in (False, True):
            out = []
            kc.execute_interactive("from repro.utils import progress_mode; print(progress_mode())",
                                   allow_stdin=allow, timeout=60, output_hook=lambda m: out.append(m))
            seen[allow] = "".join(m["content"].get("text", "") for m in out if m["msg_type"] == "stream").strip()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert seen == {False: "log", True: "widget"}


def test_quiet_bar_prints_nothing_for_short_loops_and_clears_itself(monkeypatch):
    import io
    import time

    from repro.utils import progress

    monkeypatch.setenv("REPRO_PROGRESS", "log")
    f = io.StringIO()
    bar = progress(range(5), total=5, desc="short", leave=False, file=f)
    for i in bar:
        bar.set_postfix(loss=i)  # would force a refresh in plain tqdm
    assert f.getvalue() == ""
    f = io.StringIO()
    bar = progress(range(6), total=6, desc="long", leave=False, file=f, delay=0.05, mininterval=0.1)
    for i in bar:
        time.sleep(0.05)
    text = f.getvalue()
    assert "long:" in text and text.rstrip(" ").endswith("\r")  # shown, then erased on close
    monkeypatch.setenv("REPRO_PROGRESS", "off")
    f = io.StringIO()
    for _ in progress(range(3), file=f, delay=0):
        pass
    assert f.getvalue() == ""


def test_tidy_executed_removes_machine_paths_and_merges_streams(tmp_path):
    from repro.notebook_output import tidy_executed

    stage = "/home/u/repo/results/nb/.cpu.run-1"
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="\repoch 1:  10%|#\repoch 1:  90%|#####"),
        nbformat.v4.new_output("stream", name="stdout", text=f"saved {stage}/fig.png\n"),
        nbformat.v4.new_output("stream", name="stderr", text="\r               \r"),
        nbformat.v4.new_output("display_data", data={"text/plain": f"'/home/u/repo/notebooks/nb.ipynb'"}),
        nbformat.v4.new_output("stream", name="stdout", text="done\n"),
    ]
    nb.cells = [cell]
    nb.metadata["papermill"] = {"input_path": "/home/u/repo/notebooks/nb.ipynb", "output_path": f"{stage}/nb.ipynb"}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    tidy_executed(path, {stage: "results/nb/cpu", "/home/u/repo/": "", "/home/u/": "~/"})
    back = nbformat.read(path, as_version=4)
    outs = back.cells[0].outputs
    assert [o.output_type for o in outs] == ["stream", "display_data"]  # erased bar: stderr dropped
    assert outs[0].name == "stdout" and outs[0].text == "saved results/nb/cpu/fig.png\ndone\n"
    assert outs[1].data["text/plain"] == "'notebooks/nb.ipynb'"
    assert back.metadata["papermill"] == {"input_path": "notebooks/nb.ipynb", "output_path": "results/nb/cpu/nb.ipynb"}
    assert "/home/u" not in path.read_text()
