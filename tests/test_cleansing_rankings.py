"""Cleansing with extra removal rankings: each ranking removes exactly its first k ids (the count
of removed flips says so), self-influence / TracIn / loss orders rank injected label flips high
(AUC well above chance), and bad rankings are named. Tiny 2-d turn-over MLP: retraining ~50 ms."""
import numpy as np
import pytest

from repro.data import flip_labels
from repro.data.core import ImageDataset
from repro.errors import InvalidParameterError
from repro.experiments import turnover as T
from repro.models import mlp
from repro.train import TrainConfig, Trainer, list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = TrainConfig(epochs=30, batch_size=16, lr=0.1, device="cpu", progress=False)


def make(seed):
    return mlp(num_classes=2, in_features=2, hidden=[32], turnover={"p": 0.5, "seed": 5}, seed=seed)


def blobs(n, seed):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal([80, 80], 20, (n, 2)), rng.normal([175, 175], 20, (n, 2))])
    y = np.array([0] * n + [1] * n)
    return X.clip(0, 255).astype(np.uint8).reshape(-1, 1, 1, 2), y


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    X, y = blobs(60, 0)
    train = ImageDataset("toy", "train", y, np.arange(len(y)) + 10, ("a", "b"), images=X)
    noisy, flipped = flip_labels(train, 0.1, seed=0)
    run = tmp_path_factory.mktemp("run")
    model = make(0)
    Trainer(model, CFG, run).fit(noisy)
    Xv, yv = blobs(20, 1)
    val = ImageDataset("toy", "test", yv, np.arange(len(yv)), ("a", "b"), images=Xv)
    Xt, yt = blobs(30, 2)
    test = ImageDataset("toy", "test", yt, np.arange(len(yt)) + 1000, ("a", "b"), images=Xt)
    return noisy, flipped, model, list_checkpoints(run), val, test


def test_rankings_rank_flips_high(noisy):
    train, flipped, model, cks, _, _ = noisy
    orders, scores = T.removal_rankings(model, train, checkpoints=cks)
    assert set(orders) == {"turn-over self-influence", "tracin self-influence", "loss"}
    for name, sc in scores.items():
        assert np.array_equal(orders[name], train.ids[np.argsort(-sc, kind="stable")])
        assert T.flip_detection_auc(sc, train.ids, flipped) > 0.8, name  # chance 0.5
    with pytest.raises(InvalidParameterError, match="both flipped and clean"):
        T.flip_detection_auc(scores["loss"], train.ids, [])


def test_cleansing_removes_each_rankings_first_k(noisy):
    train, flipped, model, cks, val, test = noisy
    orders, _ = T.removal_rankings(model, train, checkpoints=cks)
    planted = {"flips first": np.concatenate([flipped, np.setdiff1d(train.ids, flipped)]),
               "loss": orders["loss"]}
    rows, summed = T.cleansing(make, train, val, test, CFG, ks=[6], seeds=[0], flipped_ids=flipped,
                               progress=False, rankings=planted)
    got = rows.set_index("method")
    assert set(got.index) == {"none", "harmful", "random", "flips first", "loss"}
    assert got.loc["flips first", "removed_flipped"] == 6
    assert got.loc["loss", "removed_flipped"] == len(set(orders["loss"][:6]) & set(flipped))
    assert (got.n_train.drop("none") == len(train) - 6).all()
    assert len(summed) == len(train)


def test_bad_rankings_are_named(noisy):
    train, flipped, _, _, val, test = noisy
    with pytest.raises(KeyError, match="not in the training set"):
        T.cleansing(make, train, val, test, CFG, [2], [0], rankings={"x": [-1, -2]})
    with pytest.raises(InvalidParameterError, match="twice"):
        T.cleansing(make, train, val, test, CFG, [2], [0], rankings={"x": [10, 10]})
    with pytest.raises(InvalidParameterError, match="k goes up to 5"):
        T.cleansing(make, train, val, test, CFG, [5], [0], rankings={"x": [10, 11]})
    with pytest.raises(InvalidParameterError, match="taken"):
        T.cleansing(make, train, val, test, CFG, [2], [0], rankings={"random": [10, 11]})
