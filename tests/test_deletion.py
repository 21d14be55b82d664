"""Case-deletion harness on a tiny model where retraining takes ~0.1 s: planted duplicates of a
test point (ground truth: deleting them must flip its prediction, random deletion must not), the
deleted ids are exactly each method's top-k, the summary arithmetic, and the uniform method scores."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repro.data.core import Batch, ImageDataset
from repro.experiments import deletion as D
from repro.influence import TracInCP
from repro.influence.lastlayer import LastLayerInfluence, RepresenterPoints
from repro.models.base import ReproModel
from repro.train import TrainConfig, Trainer, list_checkpoints

N_DUP = 6


class TinyMLP(ReproModel):
    """2 -> 16 (tanh) -> 2 classifier on 2-d points stored as 1x1x2 uint8 "images"."""

    last_layer_name = "fc"

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.spec = {"kind": "tiny_mlp", "hidden": hidden}
        self.num_classes = 2
        self.hidden = nn.Linear(2, hidden)
        self.fc = nn.Linear(hidden, 2)

    def features(self, x, ids=None, flip=None):
        return torch.tanh(self.hidden(x))

    def forward(self, x, ids=None, flip=None):
        return self.fc(self.features(x))

    def encode(self, ds):
        self.check_labels(ds)
        x = torch.from_numpy(ds.images.reshape(len(ds), -1).astype(np.float32)) / 255 * 4 - 2
        return Batch({"x": x}, torch.from_numpy(ds.labels), torch.from_numpy(ds.ids))


def build(seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyMLP()


CFG = TrainConfig(epochs=60, batch_size=66, lr=0.05, optimizer="adamw", device="cpu", progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Two Gaussian blobs (class 0 around (70, 70), class 1 around (185, 185)) plus 6 planted copies
    of test point 0 at (120, 60) -- inside class 0's side -- labelled 1. Test point 1 is a plain
    class-1 point."""
    rng = np.random.default_rng(0)
    a = rng.normal([70, 70], 18, size=(30, 2))
    b = rng.normal([185, 185], 18, size=(30, 2))
    star = np.array([[120, 60]])
    X = np.concatenate([a, b, np.repeat(star, N_DUP, 0)]).clip(0, 255).astype(np.uint8)
    y = np.array([0] * 30 + [1] * 30 + [1] * N_DUP)
    ids = np.arange(len(y)) + 100
    train = ImageDataset("toy", "train", y, ids, ("a", "b"), images=X.reshape(-1, 1, 1, 2))
    test = ImageDataset("toy", "test", np.array([1, 1]), np.array([0, 1]), ("a", "b"),
                        images=np.array([[120, 60], [180, 190]], np.uint8).reshape(-1, 1, 1, 2))
    run_dir = tmp_path_factory.mktemp("toy_run")
    model = build(0)
    Trainer(model, CFG, run_dir).fit(train)
    return dict(train=train, test=test, dup_ids=ids[-N_DUP:], run_dir=run_dir,
                cks=list_checkpoints(run_dir)[-3:], model=build(1))


def test_planted_duplicates_beat_random_deletion(toy):
    train, test = toy["train"], toy["test"]
    oracle = torch.zeros(len(test), len(train))
    oracle[0, -N_DUP:] = 1.0  # the duplicates are the proponents of test point 0
    scores = {"oracle": oracle, "random": D.method_scores("random", None, None, train, test, seed=3)}
    retrain = D.make_retrain(build, CFG)
    frame = D.case_deletion(scores, train, test, retrain, ks=(N_DUP,), seeds=(0, 1),
                            directions=("proponents",), test_positions=[0], progress=False)
    assert set(frame.columns) >= {"test_id", "method", "direction", "k", "seed", "p_before", "p_after", "delta",
                                  "dlogodds", "deleted_ids"}
    assert len(frame) == 4 and set(frame["test_id"]) == {0}
    assert (frame["delta"] == frame["p_after"] - frame["p_before"]).all()
    o = frame[frame.method == "oracle"]
    r = frame[frame.method == "random"]
    assert all(set(ids) == set(toy["dup_ids"].tolist()) for ids in o["deleted_ids"])
    assert (o["p_before"] > 0.9).all()  # the duplicates made the model predict the planted label
    assert o["delta"].max() < -0.5  # deleting them flips it
    assert r["delta"].abs().max() < 0.2 and o["delta"].mean() < r["delta"].mean() - 0.5


def test_last_layer_methods_find_the_duplicates(toy):
    train, test = toy["train"], toy["test"]
    for name in D.LAST_LAYER_METHODS:
        s = D.method_scores(name, toy["model"], toy["cks"], train, test)
        top = D.top_ids(s[0], train.ids, N_DUP, "proponents")
        found = len(set(top.tolist()) & set(toy["dup_ids"].tolist()))
        assert found >= N_DUP - 1, (name, found)


def test_deleted_ids_are_exactly_the_top_k(toy):
    train, test = toy["train"], toy["test"]
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(2, len(train), generator=g), "b": torch.randn(2, len(train), generator=g)}
    scores["a_copy"] = scores["a"].clone()  # same deleted sets as "a": retrained only once
    calls = []
    const = build(0).eval()

    def retrain(full, seed, deleted_ids=()):
        assert full is train  # masked deletion: always the whole training set
        calls.append((seed, tuple(sorted(int(i) for i in deleted_ids))))
        return const

    frame = D.case_deletion(scores, train, test, retrain, ks=(1, 4), seeds=(0, 5), progress=False)
    assert len(frame) == 3 * 2 * 2 * 2 * 2  # methods x test x k x directions x seeds
    for _, row in frame.iterrows():
        pos = int(np.flatnonzero(test.ids == row.test_id)[0])
        s = scores[row.method][pos]
        idx = s.topk(row.k, largest=row.direction == "proponents").indices
        assert set(row.deleted_ids) == set(train.ids[idx.numpy()].tolist())
        assert len(row.deleted_ids) == row.k
    # one full-data model per seed, then each distinct (seed, deleted set) once
    distinct = {(r.seed, tuple(sorted(r.deleted_ids))) for r in frame.itertuples()}
    assert sorted(calls) == sorted([(0, ()), (5, ())] + list(distinct))
    assert (frame["delta"] == 0).all()  # the constant model: nothing changes
    with pytest.raises(ValueError, match="shape"):
        D.case_deletion({"x": torch.zeros(2, 3)}, train, test, retrain)


def test_top_ids_ties_and_direction():
    s = torch.tensor([0.5, 2.0, 2.0, -1.0, -1.0])
    ids = np.array([10, 11, 12, 13, 14])
    assert D.top_ids(s, ids, 2, "proponents").tolist() == [11, 12]
    assert D.top_ids(s, ids, 3, "opponents").tolist() == [13, 14, 10]
    with pytest.raises(ValueError):
        D.top_ids(s, ids, 2, "sideways")


def test_summary_arithmetic():
    rows = []
    deltas = {("we", "proponents"): [-0.4, -0.2], ("we", "opponents"): [0.3, 0.1],
              ("last", "proponents"): [-0.1, -0.05], ("last", "opponents"): [0.05, 0.0],
              ("random", "proponents"): [0.0, -0.02], ("random", "opponents"): [0.01, -0.01]}
    for (m, d), vals in deltas.items():
        for seed, v in enumerate(vals):
            rows.append({"test_id": 7, "method": m, "direction": d, "k": 5, "seed": seed, "p_before": 0.5,
                         "p_after": 0.5 + v, "delta": v, "deleted_ids": ()})
    frame = pd.DataFrame(rows)
    s = D.summarize(frame).set_index(["method", "direction", "k"])
    assert s.loc[("we", "proponents", 5), "mean"] == pytest.approx(-0.3)
    assert s.loc[("we", "proponents", 5), "std"] == pytest.approx(np.std([-0.4, -0.2], ddof=1))
    assert s.loc[("we", "proponents", 5), "sem"] == pytest.approx(np.std([-0.4, -0.2], ddof=1) / np.sqrt(2))
    assert s.loc[("we", "proponents", 5), "n"] == 2
    t = D.del_table(frame).set_index(["method", "k"])
    assert list(t.index.get_level_values(0)) == ["we", "last", "random"]
    assert t.loc[("we", 5), "del_minus"] == pytest.approx(-0.3)
    assert t.loc[("we", 5), "del_plus"] == pytest.approx(0.2)
    assert t.loc[("we", 5), "del_gap"] == pytest.approx(0.5)
    assert t.loc[("last", 5), "del_minus"] == pytest.approx(-0.075)
    r = D.effect_ratios(frame, reference="we").set_index("method")
    assert set(r.index) == {"last", "random"}
    assert r.loc["last", "ratio_minus"] == pytest.approx(-0.3 / -0.075)
    assert r.loc["last", "ratio_plus"] == pytest.approx(0.2 / 0.025)
    assert r.loc["last", "excess_ratio_minus"] == pytest.approx((-0.3 + 0.01) / (-0.075 + 0.01))
    assert r.loc["last", "excess_ratio_plus"] == pytest.approx(0.2 / 0.025)  # random's del_plus is 0
    assert np.isnan(r.loc["random", "ratio_plus"])  # random's effect is 0
    with pytest.raises(ValueError, match="reference"):
        D.effect_ratios(frame, reference="nope")


def test_method_scores_match_the_estimators(toy):
    train, test, model, cks = toy["train"], toy["test"], toy["model"], toy["cks"]
    tracin = D.method_scores("tracin_last", model, cks, train, test)
    want = TracInCP(model, cks, params="last", progress=False).fit(train).scores(test)
    torch.testing.assert_close(tracin, want)
    final = copy.deepcopy(model)
    cks[-1].load_into(final)
    final.eval()
    torch.testing.assert_close(D.method_scores("if_last", model, cks, train, test, damping=0.01),
                               LastLayerInfluence(final, train, damping=0.01).scores(test))
    torch.testing.assert_close(D.method_scores("representer", model, cks, train, test, lam=0.01),
                               RepresenterPoints(final, train, lam=0.01).scores(test))
    # gradient cosine: brute-force per-example last-layer gradients at the last checkpoint, in
    # float64 (test point 1 is predicted with p ~ 1 - 1e-5: float32 gradients lose digits there)
    m64 = copy.deepcopy(final).double()

    def grads(ds):
        b = m64.encode(ds)
        rows = []
        for i in range(len(b)):
            loss = F.cross_entropy(m64(b.inputs["x"][i:i + 1].double()), b.labels[i:i + 1])
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [m64.fc.weight, m64.fc.bias])]))
        return torch.stack(rows)

    cos = F.normalize(grads(test), dim=1) @ F.normalize(grads(train), dim=1).T
    torch.testing.assert_close(D.method_scores("grad_cos_last", model, cks, train, test), cos.float(),
                               rtol=1e-4, atol=1e-5)
    r1 = D.method_scores("random", model, cks, train, test, seed=1)
    assert torch.equal(r1, D.method_scores("random", model, cks, train, test, seed=1))
    assert not torch.equal(r1, D.method_scores("random", model, cks, train, test, seed=2))
    both = D.all_method_scores(["random", "tracin_last"], model, cks, train, test, {"random": {"seed": 1}})
    assert torch.equal(both["random"], r1) and torch.equal(both["tracin_last"], tracin)
    with pytest.raises(TypeError, match="damping"):
        D.method_scores("tracin_last", model, cks, train, test, damping=1.0)
    with pytest.raises(ValueError, match="unknown method"):
        D.method_scores("tracin_first", model, cks, train, test)
    with pytest.raises(ValueError, match="middle"):  # TinyMLP names no middle group
        D.method_scores("tracin_middle", model, cks, train, test)
    mid = D.method_scores("tracin_middle", model, cks, train, test, params=["hidden"])
    torch.testing.assert_close(mid, TracInCP(model, cks, params=["hidden"], progress=False).fit(train).scores(test))


def test_masked_and_dropped_retraining(toy):
    train = toy["train"]
    dup = toy["dup_ids"].tolist()
    masked = D.make_retrain(build, CFG)(train, 0, dup)
    dropped = D.make_retrain(build, CFG, deletion="drop")(train, 0, dup)
    direct = build(0)
    Trainer(direct, CFG).fit(train, masked_ids=dup)
    assert all(torch.equal(a, b) for a, b in zip(masked.state_dict().values(), direct.state_dict().values()))
    direct = build(0)
    Trainer(direct, CFG).fit(train.exclude(dup))
    assert all(torch.equal(a, b) for a, b in zip(dropped.state_dict().values(), direct.state_dict().values()))
    with pytest.raises(ValueError, match="deletion"):
        D.make_retrain(build, CFG, deletion="hide")


def test_select_checkpoints(toy):
    cks = list_checkpoints(toy["run_dir"])  # 60 epoch checkpoints
    two = D.select_checkpoints(cks, 2)
    assert [c.epoch for c in two] == [30, 60]
    assert D.select_checkpoints(cks, None) == cks and len(D.select_checkpoints(cks, 100)) == 60


def test_make_retrain_is_deterministic_and_starts_from_the_same_init(toy):
    train = toy["train"]
    rt = D.make_retrain(build, CFG)
    a, b = rt(train, 0), rt(train, 0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = rt(train, 1)  # another seed: another init and data order
    assert not torch.equal(a.fc.weight, c.fc.weight)
    start = build(7)
    rt_model = D.make_retrain(start, CFG)
    d = rt_model(train, 0)
    assert d is not start and torch.equal(start.fc.weight, build(7).fc.weight)  # the start is not trained
    e = D.make_retrain(build, CFG, init_seed=7)(train, 0)
    assert torch.equal(d.fc.weight, e.fc.weight)


def test_tracin_we_method_scores():
    from repro.data import load
    from repro.influence.tracin_we import TracInWE
    from repro.models import text_classifier

    model = text_classifier(num_classes=2, max_length=24, seed=0)
    train, test = load("spam", n=4, seed=0), load("spam", split="test", n=2, seed=0)
    s = D.method_scores("tracin_we_topk", model, None, train, test)
    torch.testing.assert_close(s, TracInWE(model, None, top_k_tokens=10, progress=False).fit(train).scores(test))
    full = D.method_scores("tracin_we", model, None, train, test, exclude_special=False)
    assert full.shape == (2, 4) and not torch.equal(full, s)
