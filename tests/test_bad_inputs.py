"""A catalogue of bad inputs and faults, tried as a careless or unlucky user would: each gives a
named error from repro.errors whose message says what to fix (or the correct behaviour). Cheap
cases only (tiny models, a few dozen examples); the whole file runs in well under a minute.
`repro run` (signals, locks, staging) is covered by tests/test_run_safety.py."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from repro import profiles
from repro.cli import main as cli_main
from repro.data import flip_labels, load
from repro.data.core import Batch
from repro.errors import (CheckpointError, ConfigMismatchError, ConvergenceError, DuplicateIdError,
                          InvalidParameterError, LabelRangeError, NonFiniteInputError, UnsafePathError)
from repro.influence import InfluenceFunction, LastLayerInfluence, TracInCP
from repro.influence import tracin as tracin_mod
from repro.influence.hessian import CGConfig, TrainingObjective, conjugate_gradient, exact_ihvp, lissa
from repro.models import vgg
from repro.train import Checkpoint, TrainConfig, Trainer, list_checkpoints, load_run
from repro.utils import atomic_write_json

pytestmark = pytest.mark.usefixtures("one_thread")
VGG = dict(num_classes=10, width=0.125, hidden=16)


def cfg(**kw):
    base = dict(epochs=2, lr=0.05, batch_size=16, progress=False, seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data():
    return load("fashion_mnist", n=48, seed=0), load("fashion_mnist", "test", n=6, seed=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    train, _ = data
    run_dir = tmp_path_factory.mktemp("run")
    Trainer(vgg(**VGG, seed=0), cfg(), run_dir).fit(train)
    return run_dir


def copy_run(run, tmp_path, name="r"):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------------------- data
def test_n_larger_than_the_dataset_or_not_an_integer():
    with pytest.raises(InvalidParameterError, match="has only 8000"):
        load("mnist", n=9000)
    with pytest.raises(InvalidParameterError, match="n must be an integer"):
        load("mnist", n=2.5)
    with pytest.raises(InvalidParameterError, match="n must be an integer"):
        load("mnist", n="100")
    assert len(load("mnist", n=10.0)) == 10  # an integral float is fine


def test_duplicate_ids_are_refused(data):
    train, _ = data
    with pytest.raises(DuplicateIdError, match=str(int(train.ids[0]))):
        dataclasses.replace(train, ids=np.r_[train.ids[:1], train.ids[:-1]])
    with pytest.raises(DuplicateIdError, match="repeated"):
        train.subset([0, 0, 1])
    model = vgg(**VGG)
    b = model.encode(train)
    dup = Batch(b.inputs, b.labels, torch.zeros_like(b.ids))
    with pytest.raises(DuplicateIdError):
        Trainer(model, cfg(epochs=1)).fit(dup)


def test_train_config_values():
    with pytest.raises(InvalidParameterError, match="epochs must be an integer"):
        TrainConfig(epochs=2.5)
    with pytest.raises(InvalidParameterError, match="batch_size"):
        TrainConfig(batch_size="32")
    with pytest.raises(NonFiniteInputError, match="lr"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(InvalidParameterError, match="lr must be positive"):
        TrainConfig(lr=0)
    assert TrainConfig(epochs=3.0).epochs == 3


def test_nonfinite_training_inputs_name_the_example(data):
    train, _ = data
    model = vgg(**VGG)
    b = model.encode(train)
    pix = b.inputs["pixel_values"].clone()
    pix[3, 0, 0, 0] = float("nan")
    bad = Batch({"pixel_values": pix}, b.labels, b.ids)
    with pytest.raises(NonFiniteInputError, match=str(int(b.ids[3]))):
        Trainer(model, cfg(epochs=1)).fit(bad)


# ---------------------------------------------------------------------------- checkpoints and runs
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.05", None, -1.0])
def test_bad_learning_rate_in_sidecar(run, tmp_path, value):
    r = copy_run(run, tmp_path)
    side = sorted((r / "checkpoints").glob("*.json"))[0]
    meta = json.loads(side.read_text())
    meta["lr"] = value
    side.write_text(json.dumps(meta))  # json writes NaN / Infinity literals
    with pytest.raises(CheckpointError, match=f"{side.name}.*lr must be a finite number"):
        list_checkpoints(r)


def test_garbage_sidecar_and_weights_name_the_file(run, tmp_path):
    r = copy_run(run, tmp_path)
    cks = list_checkpoints(r)
    data = cks[0].path.read_bytes()
    cks[0].path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match=cks[0].path.name):
        cks[0].load_into(vgg(**VGG))
    cks[0].path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        cks[0].load_into(vgg(**VGG))
    cks[1].path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match=cks[1].path.with_suffix(".json").name):
        list_checkpoints(r)


def test_garbage_optimizer_state_names_the_file(data, tmp_path):
    train, _ = data
    Trainer(vgg(**VGG, seed=0), cfg(), tmp_path / "r").fit(train, until_epoch=1)
    optim = next((tmp_path / "r" / "state").glob("step-*/optim.pt"))
    optim.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="optim.pt"):  # the manifest no longer matches
        Trainer(vgg(**VGG, seed=0), cfg(), tmp_path / "r").fit(train)
    # resume=False starts over whatever the folder held
    res = Trainer(vgg(**VGG, seed=0), cfg(), tmp_path / "r").fit(train, resume=False)
    assert res.resumed_from_epoch == 0 and len(res.history) == 2


@pytest.mark.parametrize("where", ["between_state_files", "before_latest"])
def test_kill_while_saving_the_resume_point_then_rerun_equals_uninterrupted(data, tmp_path, monkeypatch, where):
    """A kill between the writes of the resume point (the old layout wrote optimizer state, weights
    and JSON one after another) must not resume from mixed state: the rerun ends bitwise equal to an
    uninterrupted run."""
    import repro.train as train_mod

    train, _ = data
    c = cfg(epochs=3, schedule="cosine")
    full = vgg(**VGG, seed=0)
    Trainer(full, c, tmp_path / "full").fit(train)

    calls = []
    if where == "between_state_files":
        real = train_mod._write_state_files

        def killed(folder, weights, optim_state):
            calls.append(1)
            if len(calls) == 2:  # epoch 2: optimizer file written, then the process dies
                torch.save(optim_state, folder / "optim.pt")
                raise KeyboardInterrupt("killed between the state files")
            real(folder, weights, optim_state)
        monkeypatch.setattr(train_mod, "_write_state_files", killed)
    else:
        real = train_mod.atomic_write_json

        def killed(path, obj):
            if path.name == "LATEST.json":
                calls.append(1)
                if len(calls) == 2:  # epoch 2's folder is in place, the pointer not yet switched
                    raise KeyboardInterrupt("killed before the commit")
            return real(path, obj)
        monkeypatch.setattr(train_mod, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        Trainer(vgg(**VGG, seed=0), c, tmp_path / "part").fit(train)
    monkeypatch.undo()
    fresh = vgg(**VGG, seed=0)
    res = Trainer(fresh, c, tmp_path / "part").fit(train)
    assert res.resumed_from_epoch == 1 and [h["epoch"] for h in res.history] == [1, 2, 3]
    assert state_equal(full, fresh)
    a, b = list_checkpoints(tmp_path / "full"), list_checkpoints(tmp_path / "part")
    assert [(x.step, x.lr) for x in a] == [(x.step, x.lr) for x in b]
    assert all(x.path.read_bytes() == y.path.read_bytes() for x, y in zip(a, b))
    assert sorted(p.name for p in (tmp_path / "part" / "state").iterdir()) == ["LATEST.json", "step-000000009"]


def test_symlinks_and_model_paths_outside_the_run(run, tmp_path):
    r = copy_run(run, tmp_path)
    ck = sorted((r / "checkpoints").glob("*.safetensors"))[0]
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(ck, outside)
    ck.symlink_to(outside)
    with pytest.raises(UnsafePathError, match="symlink"):
        list_checkpoints(r)
    r2 = copy_run(run, tmp_path, "r2")
    record = json.loads((r2 / "run.json").read_text())
    record["model_spec"]["model_name"] = str(tmp_path / "some_model")
    (r2 / "run.json").write_text(json.dumps(record))
    with pytest.raises(UnsafePathError, match="allow_external_model"):
        load_run(r2)


def test_files_get_umask_permissions(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    p = atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask


# ---------------------------------------------------------------------------- TracInCP
def test_checkpoint_lists_must_be_one_run_in_order(run, data, tmp_path):
    train, _ = data
    other = tmp_path / "other"
    Trainer(vgg(**VGG, seed=1), cfg(), other).fit(train)
    a, b = list_checkpoints(run), list_checkpoints(other)
    model = vgg(**VGG)
    with pytest.raises(CheckpointError, match="listed twice"):
        TracInCP(model, [a[0], a[0]])
    with pytest.raises(CheckpointError, match="out of training order"):
        TracInCP(model, [a[1], a[0]])
    with pytest.raises(CheckpointError, match="different run folders"):
        TracInCP(model, [a[0], b[1]])
    nan_lr = dataclasses.replace(a[0], lr=float("nan"))
    with pytest.raises(NonFiniteInputError, match="lr of checkpoint"):
        TracInCP(model, [nan_lr])


def test_tracin_refuses_nonfinite_inputs_and_bad_labels(run, data):
    train, test = data
    model = vgg(**VGG)
    t = TracInCP(model, run, progress=False)
    b = model.encode(train)
    pix = b.inputs["pixel_values"].clone()
    pix[5] = float("inf")
    with pytest.raises(NonFiniteInputError, match=str(int(b.ids[5]))):
        t.fit(Batch({"pixel_values": pix}, b.labels, b.ids))
    t.fit(train)
    tb = model.encode(test)
    with pytest.raises(LabelRangeError, match="outside the model's classes"):
        t.scores(Batch(tb.inputs, torch.full_like(tb.labels, 12), tb.ids))
    for k in (-3, 0, 1.5):
        with pytest.raises(InvalidParameterError, match="k must be"):
            t.top_k(test, k=k)


def test_cache_refuses_changed_labels_or_inputs(run, data, tmp_path):
    """The mislabel workflow: flip labels, reuse the cache folder -> never the old data's scores."""
    train, test = data
    model = vgg(**VGG)
    kw = dict(params="last", progress=False, cache_dir=tmp_path / "cache")
    first = TracInCP(model, run, **kw).fit(train).scores(test)
    again = TracInCP(model, run, **kw).fit(train).scores(test)
    assert torch.equal(first, again)  # same data: reused
    noisy, flipped = flip_labels(train, 0.25, seed=0)
    assert len(flipped) > 0
    with pytest.raises(ConfigMismatchError, match="labels.*flip_labels"):
        TracInCP(model, run, **kw).fit(noisy)
    changed = dataclasses.replace(train, images=255 - train.images)
    with pytest.raises(ConfigMismatchError, match="inputs"):
        TracInCP(model, run, **kw).fit(changed)
    # a fresh cache folder for the noisy data gives its own (different) scores
    noisy_scores = TracInCP(model, run, params="last", progress=False, cache_dir=tmp_path / "c2").fit(noisy).scores(test)
    plain = TracInCP(model, run, params="last", progress=False).fit(noisy).scores(test)
    assert torch.equal(noisy_scores, plain) and not torch.equal(noisy_scores, first)


# ---------------------------------------------------------------------------- influence functions
class Softmax3(nn.Module):
    """A 3-class linear softmax model: its Hessian is singular (logits shifted together)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(2, 3).double()

    def forward(self, x):
        return self.lin(x)


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    return Softmax3(), Batch({"x": x}, y, torch.arange(20))


def test_exact_solver_on_a_singular_hessian(tiny):
    model, batch = tiny
    inf = InfluenceFunction(model, batch, params="all", solver="exact", damping=0.0, progress=False)
    with pytest.raises(ConvergenceError, match="singular.*damping > 0"):
        inf.scores(batch[torch.arange(2)])
    ok = InfluenceFunction(model, batch, params="all", solver="exact", damping=1e-3, progress=False)
    assert torch.isfinite(ok.scores(batch[torch.arange(2)])).all()


def test_cg_damping_and_convergence(tiny):
    model, batch = tiny
    with pytest.raises(InvalidParameterError, match="damping"):
        InfluenceFunction(model, batch, params="all", solver="cg", damping=-1.0)
    with pytest.raises(NonFiniteInputError, match="damping"):
        InfluenceFunction(model, batch, params="all", solver="cg", damping=float("nan"))
    obj = TrainingObjective(model, batch, "all")
    v = torch.randn(1, obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ConvergenceError, match="CG"):
        conjugate_gradient(obj, v, damping=0.0, tol=1e-12, maxiter=3)
    with pytest.raises(InvalidParameterError, match="damping"):
        exact_ihvp(obj, v, damping=-0.1)
    s = conjugate_gradient(obj, v, damping=0.1, tol=1e-10, maxiter=500)
    assert torch.isfinite(s).all()
    # the estimator takes CG's stopping rule as one CGConfig, and only with solver="cg"
    test = batch[torch.arange(2)]
    with pytest.raises(ConvergenceError, match="CGConfig.maxiter"):
        InfluenceFunction(model, batch, params="all", solver="cg", damping=0.0,
                          cg=CGConfig(tol=1e-12, maxiter=3), progress=False).scores(test)
    exact = InfluenceFunction(model, batch, params="all", solver="exact", damping=0.1, progress=False)
    cg = InfluenceFunction(model, batch, params="all", solver="cg", damping=0.1,
                           cg=CGConfig(tol=1e-10, maxiter=500), progress=False)
    torch.testing.assert_close(cg.scores(test), exact.scores(test), rtol=1e-6, atol=1e-9)
    with pytest.raises(TypeError, match="solver='cg' only"):
        InfluenceFunction(model, batch, params="all", solver="lissa", cg=CGConfig())
    with pytest.raises(InvalidParameterError):
        CGConfig(tol=0.0)


def test_lissa_reports_convergence(tiny):
    model, batch = tiny
    obj = TrainingObjective(model, batch, "all", 0.01)
    v = torch.randn(1, obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        _, info = lissa(obj, v, scale=10.0, damp=0.01, depth=3, batch_size=20, tol=1e-12, return_info=True)
    assert info.converged is False
    _, info = lissa(obj, v, scale=10.0, damp=0.05, depth=2000, batch_size=20, tol=1e-8, return_info=True)
    assert info.converged is True
    _, info = lissa(obj, v, scale=10.0, damp=0.05, depth=5, batch_size=20, return_info=True)
    assert info.converged is None  # no tol: a fixed number of steps, not checked


def test_influence_refuses_nonfinite_inputs(tiny):
    model, batch = tiny
    x = batch.inputs["x"].clone()
    x[4, 1] = float("nan")
    with pytest.raises(NonFiniteInputError, match=r"ids \[4\]"):
        InfluenceFunction(model, Batch({"x": x}, batch.labels, batch.ids), params="all", solver="exact")
    inf = InfluenceFunction(model, batch, params="all", solver="exact", damping=0.1, progress=False)
    with pytest.raises(NonFiniteInputError):
        inf.scores(Batch({"x": x}, batch.labels, batch.ids))
    with pytest.raises(InvalidParameterError, match="k must be"):
        inf.top_k(batch, k=0)


def test_last_layer_influence_without_damping(run, data):
    train, _ = data
    model, _ = load_run(run)
    with pytest.raises(ConvergenceError, match="damping > 0"):
        LastLayerInfluence(model, train, damping=0.0, device="cpu")
    assert torch.isfinite(LastLayerInfluence(model, train, damping=1e-3, device="cpu").self_influence()).all()


# ---------------------------------------------------------------------------- text model, command line
def test_text_max_length_beyond_positions():
    from repro.models import text_classifier
    with pytest.raises(InvalidParameterError, match="max_length=100000 exceeds the 512 positions"):
        text_classifier(num_classes=2, max_length=100000)


def test_unknown_hub_model_offline_fails_fast():
    import time

    from repro.data.registry import _online
    from repro.errors import DataUnavailableError
    from repro.models import text_classifier
    if _online():
        pytest.skip("the hub is reachable here")
    t0 = time.perf_counter()
    with pytest.raises(DataUnavailableError, match="could not load text model.*not in the local Hugging Face cache"):
        text_classifier(num_classes=2, model_name="bert-base-uncased")
    assert time.perf_counter() - t0 < 15


def test_set_with_the_wrong_type_is_caught_before_papermill(capsys, monkeypatch):
    import repro.cli as cli
    monkeypatch.setattr(cli, "run_notebook", lambda *a, **k: pytest.fail("papermill must not start"))
    assert cli_main(["run", "quickstart", "--profile", "smoke", "--set", "seed=abc"]) == 2
    assert "takes an integer" in capsys.readouterr().err
    with pytest.raises(InvalidParameterError, match="'seed' of quickstart takes an integer"):
        profiles.resolve("quickstart", "smoke", {"seed": "abc"})
    with pytest.raises(InvalidParameterError, match="takes an integer"):
        profiles.resolve("quickstart", "smoke", {"seed": 1.5})
    assert profiles.resolve("quickstart", "smoke", {"seed": 2.0})["seed"] == 2.0


def test_checkpoint_with_nonfinite_weights(run, tmp_path):
    from safetensors.torch import load_file, save_file
    r = copy_run(run, tmp_path)
    ck = list_checkpoints(r)[0]
    state = load_file(str(ck.path))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(ck.path))
    with pytest.raises(CheckpointError, match=f"{ck.path.name}.*NaN"):
        ck.load_into(vgg(**VGG))


def test_flip_fraction_and_training_labels(data):
    train, _ = data
    for bad in (float("nan"), 1.0, "0.1"):
        with pytest.raises(InvalidParameterError, match="fraction"):
            flip_labels(train, bad)
    model = vgg(**VGG)
    b = model.encode(train)
    labels = b.labels.clone()
    labels[2] = 10
    with pytest.raises(LabelRangeError, match=str(int(b.ids[2]))):
        Trainer(model, cfg(epochs=1)).fit(Batch(b.inputs, labels, b.ids))


def test_representer_refit_reports_convergence(run, data):
    from repro.influence import RepresenterPoints
    train, _ = data
    model, _ = load_run(run)
    with pytest.raises(InvalidParameterError, match="lam > 0"):
        RepresenterPoints(model, train, lam=0.0, device="cpu")
    with pytest.warns(RuntimeWarning, match="did not reach a stationary point"):
        rp = RepresenterPoints(model, train, lam=1e-3, max_iter=1, device="cpu")
    assert rp.converged is False
    assert RepresenterPoints(model, train, lam=1e-2, device="cpu").converged is True


def test_set_values_in_scientific_notation_are_numbers():
    from repro.cli import parse_value
    assert parse_value("1e-4") == 1e-4 and parse_value("abc") == "abc" and parse_value("[1, 2]") == [1, 2]
    profiles.resolve("fastif_hans", "smoke", {"lr": parse_value("3e-5")})  # a float parameter


def test_config_checkpoint_epochs_device_and_result_names(tmp_path):
    from repro.errors import UnknownNameError, UnsafePathError
    from repro.results import ResultWriter
    from repro.utils import resolve_device
    with pytest.raises(InvalidParameterError, match=r"checkpoint_epochs \[5\] are not epochs"):
        TrainConfig(epochs=3, checkpoint_epochs=[1, 5])
    with pytest.raises(UnknownNameError, match="checkpoint_epochs"):
        TrainConfig(checkpoint_epochs="sometimes")  # refused at once, not after the first epoch
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameterError, match="CUDA is not available"):
            resolve_device("cuda")
    w = ResultWriter("demo", "cpu", root=tmp_path)
    for bad in ("../escape", "a/b", ".."):
        with pytest.raises(UnsafePathError, match="plain file name"):
            w.json(bad, {"x": 1})
    assert not (tmp_path / "demo" / "escape.json").exists() and not (tmp_path / "escape.json").exists()


def test_old_cache_without_content_fingerprints_is_refused(run, data, tmp_path):
    train, test = data
    kw = dict(params="last", progress=False, cache_dir=tmp_path / "cache")
    TracInCP(vgg(**VGG), run, **kw).fit(train)
    for stamp in (tmp_path / "cache").glob("*/stamp.json"):  # as an older repro wrote it
        old = json.loads(stamp.read_text())
        del old["labels"], old["inputs"]
        stamp.write_text(json.dumps(old))
    with pytest.raises(ConfigMismatchError, match="older repro"):
        TracInCP(vgg(**VGG), run, **kw).fit(train)


def test_garbage_cache_stamp_names_the_file(tmp_path):
    from repro.influence import GradientCache
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "stamp.json").write_text("{half")
    with pytest.raises(ConfigMismatchError, match="stamp.json cannot be read"):
        GradientCache(tmp_path / "c", {"n": 3, "chunk_rows": 2})


def test_fastif_result_carries_lissa_convergence(run, data):
    from repro.influence import FastIF
    train, test = data
    model, _ = load_run(run)
    fif = FastIF(model, train, k=5, params="last", weight_decay=0.01, scale=50.0, damp=0.01, depth=3,
                 batch_size=8, tol=1e-12, progress=False, device="cpu")
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        res = fif.candidates(test.subset([0, 1]))
    assert res.lissa_converged is False
    assert FastIF(model, train, k=5, params="last", weight_decay=0.01, scale=50.0, damp=0.01, depth=3,
                  batch_size=8, progress=False, device="cpu").candidates(test.subset([0])).lissa_converged is None


def test_finite_check_is_remembered_only_for_the_same_unchanged_tensor():
    """A large input found finite is not rescanned, but an in-place change (NaN written into it)
    or a new tensor with the same shape is checked again."""
    from repro.checks import check_finite_inputs

    x = torch.zeros(300, 300)
    ids = torch.arange(300)
    check_finite_inputs({"x": x}, ids)   # scanned, remembered
    check_finite_inputs({"x": x}, ids)   # remembered: no scan needed
    x[7, 3] = float("inf")               # in place: the version counter moves
    with pytest.raises(NonFiniteInputError, match=r"ids \[7\]"):
        check_finite_inputs({"x": x}, ids)
    y = torch.zeros(300, 300)
    y[11, 0] = float("nan")
    with pytest.raises(NonFiniteInputError, match=r"ids \[11\]"):
        check_finite_inputs({"x": y}, ids)
