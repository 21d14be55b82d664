"""Trainer: learns above chance, checkpoints with learning rates, resume == uninterrupted,
removal by id, named errors for bad input."""
import json

import numpy as np
import pytest
import torch

from repro.data import load
from repro.errors import (CheckpointError, ConfigMismatchError, EmptyDatasetError, LabelRangeError,
                          NonFiniteLossError, UnknownNameError)
from repro.models import build_model, vgg
from repro.train import TrainConfig, Trainer, evaluate, list_checkpoints, load_run, lr_factor

VGG = dict(num_classes=10, width=0.125)


def small_cfg(**kw):
    base = dict(epochs=3, lr=0.05, batch_size=32, progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def fashion():
    return load("fashion_mnist", n=600, seed=0, stratify=True), load("fashion_mnist", "test", n=300, stratify=True)


def test_vgg_learns_above_chance_and_keeps_checkpoints_with_lrs(tmp_path, fashion):
    train, test = fashion
    cfg = small_cfg(epochs=3, schedule="step", milestones=[2], gamma=0.1)
    res = Trainer(vgg(**VGG, seed=0), cfg, tmp_path / "run").fit(train, eval=test)
    assert res.final["eval_accuracy"] > 0.5  # chance is 0.1
    cks = list_checkpoints(tmp_path / "run")
    assert [c.epoch for c in cks] == [1, 2, 3]
    assert [c.lr for c in cks] == pytest.approx([0.05, 0.05, 0.005])  # lr in effect during each epoch
    assert [c.step for c in cks] == [19, 38, 57]
    model, _ = load_run(tmp_path / "run")
    assert evaluate(model, test)["accuracy"] == pytest.approx(res.final["eval_accuracy"], abs=1e-6)


def test_checkpoint_selection(tmp_path, fashion):
    train, _ = fashion
    Trainer(vgg(**VGG, seed=0), small_cfg(epochs=3, checkpoint_epochs=[1]), tmp_path / "a").fit(train.subset(slice(0, 64)))
    assert [c.epoch for c in list_checkpoints(tmp_path / "a")] == [1, 3]  # the final epoch is always kept
    Trainer(vgg(**VGG, seed=0), small_cfg(epochs=2, checkpoint_epochs="final", checkpoint_every_steps=1),
            tmp_path / "b").fit(train.subset(slice(0, 64)))
    cks = list_checkpoints(tmp_path / "b")
    assert [c.step for c in cks] == [1, 2, 3, 4]  # the final step is saved once, as the epoch checkpoint


def test_lr_schedules():
    cfg = TrainConfig(epochs=2, lr=1.0, schedule="linear", warmup_steps=2)
    f = [lr_factor(cfg, s, 5) for s in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[2] == pytest.approx(1.0) and f[-1] == pytest.approx(1 / 8)
    cos = TrainConfig(epochs=1, lr=1.0, schedule="cosine")
    assert lr_factor(cos, 0, 4) == 1.0 and lr_factor(cos, 2, 4) == pytest.approx(0.5)
    with pytest.raises(UnknownNameError):
        TrainConfig(schedule="exp")
    with pytest.raises(UnknownNameError):
        TrainConfig(optimizer="lbfgs")


def test_resume_equals_uninterrupted(tmp_path, fashion):
    train, test = fashion
    cfg = small_cfg(epochs=3, schedule="cosine")
    full = vgg(**VGG, seed=0)
    Trainer(full, cfg, tmp_path / "full").fit(train, eval=test)
    part = vgg(**VGG, seed=0)
    r1 = Trainer(part, cfg, tmp_path / "part").fit(train, eval=test, until_epoch=1)  # "interrupted"
    assert len(r1.history) == 1
    fresh = vgg(**VGG, seed=0)  # a new process would start from a fresh model object
    r2 = Trainer(fresh, cfg, tmp_path / "part").fit(train, eval=test)
    assert r2.resumed_from_epoch == 1 and [h["epoch"] for h in r2.history] == [1, 2, 3]
    for (k, a), b in zip(full.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(list_checkpoints(tmp_path / "full"), list_checkpoints(tmp_path / "part")):
        assert (a.epoch, a.step, a.lr) == (b.epoch, b.step, b.lr)


def test_train_excluding_ids(tmp_path, fashion):
    train, _ = fashion
    drop = train.ids[:50]
    res = Trainer(vgg(**VGG, seed=0), small_cfg(epochs=1), tmp_path / "r").fit(train, exclude_ids=drop)
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert record["n_train"] == len(train) - 50 and record["excluded_ids"] == sorted(drop.tolist())
    assert res.final["step"] == int(np.ceil((len(train) - 50) / 32))
    with pytest.raises(KeyError, match="not in"):
        Trainer(vgg(**VGG, seed=0), small_cfg(epochs=1)).fit(train, exclude_ids=[99_999_999])


def test_text_classifier_learns_spam_above_majority(minilm_spec):
    train = load("spam", "train", n=160, seed=0, stratify=True)
    test = load("spam", "test", n=200, seed=0, stratify=True)
    model = build_model(minilm_spec, seed=0)
    cfg = TrainConfig(epochs=2, lr=1e-4, batch_size=16, optimizer="adamw", schedule="linear", progress=False)
    res = Trainer(model, cfg).fit(train, eval=test)
    majority = max(test.class_counts().values()) / len(test)
    assert res.final["eval_accuracy"] > majority + 0.1, (res.final, majority)


def test_bad_inputs_raise_named_errors(tmp_path, fashion):
    train, _ = fashion
    small = train.subset(slice(0, 32))
    with pytest.raises(LabelRangeError):
        Trainer(vgg(num_classes=5, width=0.125), small_cfg(epochs=1)).fit(small)
    with pytest.raises(EmptyDatasetError):
        Trainer(vgg(**VGG), small_cfg(epochs=1)).fit(small.subset(np.array([], dtype=int)))
    with pytest.raises(CheckpointError, match="does not exist"):
        list_checkpoints(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints"):
        list_checkpoints(tmp_path / "empty")
    Trainer(vgg(**VGG, seed=0), small_cfg(epochs=1), tmp_path / "r").fit(small)
    other = vgg(num_classes=10, width=0.25)
    with pytest.raises(CheckpointError, match="another model"):
        list_checkpoints(tmp_path / "r")[0].load_into(other)
    with pytest.raises(ConfigMismatchError, match="config"):  # same folder, other hyperparameters
        Trainer(vgg(**VGG, seed=0), small_cfg(epochs=1, lr=0.1), tmp_path / "r").fit(small)
    # resume=False starts over in the folder, whatever it held
    Trainer(vgg(**VGG, seed=0), small_cfg(epochs=1, lr=0.1), tmp_path / "r").fit(small, resume=False)
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["lr"] == 0.1
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        Trainer(vgg(**VGG, seed=0), small_cfg(epochs=1, lr=1e30, momentum=0.0)).fit(train)
    with pytest.raises(TypeError):
        Trainer(vgg(**VGG)).fit([1, 2, 3])
