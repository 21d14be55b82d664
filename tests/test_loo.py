"""Fixed-order leave-one-out: a masked removal equals training without the example in the reference
order (re-derived by hand), batched and one-by-one retraining agree, a planted mislabelled
neighbour of a target is harmful to it, an estimator equal to the ground truth agrees perfectly,
and the noise ceiling is high under a 1e-6 perturbation. Tiny 2-d model: each retraining ~10 ms."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from repro.data.core import ImageDataset
from repro.errors import ConfigMismatchError, EmptyDatasetError, InvalidParameterError, ReproError
from repro.experiments import loo as L
from repro.experiments.masked import masked_outputs
from repro.models import mlp
from repro.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = TrainConfig(epochs=8, batch_size=16, lr=0.1, momentum=0.9, device="cpu", progress=False)
PLANT = 999


def make(seed):
    return mlp(num_classes=2, in_features=2, hidden=[16], seed=seed)


def blobs():
    """Two 2-d blobs (class 0 around (80, 80), class 1 around (175, 175)), a target at (115, 100)
    (class 0) and a planted example right on it labelled 1 (id 999)."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal([80, 80], 22, (40, 2)), rng.normal([175, 175], 22, (40, 2)), [[115, 100]]])
    y = np.array([0] * 40 + [1] * 40 + [1])
    ids = np.concatenate([np.arange(80) + 100, [PLANT]])
    train = ImageDataset("toy", "train", y, ids, ("a", "b"), images=X.clip(0, 255).astype(np.uint8).reshape(-1, 1, 1, 2))
    T = np.array([[115, 100], [170, 180], [90, 70]])
    targets = ImageDataset("toy", "test", np.array([0, 1, 0]), np.array([0, 1, 2]), ("a", "b"),
                           images=T.astype(np.uint8).reshape(-1, 1, 1, 2))
    return train, targets


@pytest.fixture(scope="module")
def toy():
    train, targets = blobs()
    removed = np.sort(np.concatenate([L.random_removals(train.exclude([PLANT]), 23, seed=0), [PLANT]]))
    truth = L.fixed_order_loo(make, train, targets, CFG, removed, seed=0, chunk=8, progress=False)
    return train, targets, removed, truth


def by_hand(train, targets, removed_id, seed=0):
    """Plain loop: the reference run's mini-batches with ``removed_id`` struck out (an emptied batch
    makes no step), torch.optim.SGD; returns the targets' losses."""
    model = make(seed)
    b, t = model.encode(train), model.encode(targets)
    opt = torch.optim.SGD(model.parameters(), lr=CFG.lr, momentum=CFG.momentum)
    for epoch in range(1, CFG.epochs + 1):
        order = torch.randperm(len(b), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        for s in range(0, len(b), CFG.batch_size):
            idx = order[s:s + CFG.batch_size]
            idx = idx[b.ids[idx] != removed_id]
            if len(idx) == 0:
                continue
            mb = b[idx]
            loss = F.cross_entropy(model(**mb.inputs, ids=mb.ids), mb.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return F.cross_entropy(model(**t.inputs), t.labels, reduction="none").numpy()


def test_masked_removal_equals_training_without_it_in_the_reference_order(toy):
    train, targets, removed, truth = toy
    for j in (0, list(removed).index(PLANT)):
        expected = by_hand(train, targets, int(removed[j]))
        np.testing.assert_allclose(truth.reference + truth.effects[:, j], expected, atol=2e-5)
    base = by_hand(train, targets, -1)
    np.testing.assert_allclose(truth.reference, base, atol=2e-5)
    assert np.abs(truth.effects).max() > 1e-3  # removals do change the targets


def test_one_by_one_fallback_equals_batched(toy):
    train, targets, removed, truth = toy
    few = removed[:3]
    slow = L.fixed_order_loo(make, train, targets, CFG, few, seed=0, batched=False, progress=False)
    np.testing.assert_allclose(slow.effects, truth.effects[:, :3], atol=2e-5)


def test_planted_mislabelled_neighbour_is_harmful(toy):
    train, targets, removed, truth = toy
    j = list(removed).index(PLANT)
    assert truth.effects[0, j] < 0  # removing it lowers the loss of the target it sits on
    assert truth.effects[0, j] == truth.effects[0].min()  # the most harmful of all removals


def test_ground_truth_as_estimator_agrees_perfectly_and_random_does_not(toy):
    train, targets, removed, truth = toy
    full = np.zeros((len(targets), len(train)))
    col = {int(i): k for k, i in enumerate(train.ids)}
    full[:, [col[int(i)] for i in removed]] = truth.effects
    agr = L.agreement(full, truth, train_ids=train.ids)
    for level in ("per-target mean", "pooled", "summed over targets"):
        assert agr.value("spearman", level)[0] == pytest.approx(1.0)
    assert agr.value("pearson")[0] == pytest.approx(1.0)
    rnd = np.random.default_rng(0).normal(size=truth.effects.shape)
    m, ci = L.agreement(rnd, truth).value("spearman")
    assert abs(m) < 0.4


def test_combined_agreement_over_seeds(toy):
    """One measurement: the per-target mean of agreement(); two: the per-target average of both
    (checked by hand), with the truth itself agreeing perfectly in both."""
    train, targets, removed, truth = toy
    col = {int(i): k for k, i in enumerate(train.ids)}
    rnd = np.random.default_rng(1).normal(size=(len(targets), len(train)))
    m1, ci1, per1 = L.combined_agreement([(rnd, truth, train.ids)], n_resamples=200)
    assert m1 == pytest.approx(L.agreement(rnd, truth, train_ids=train.ids).value("spearman")[0])
    assert ci1[0] <= m1 <= ci1[1]
    other = L.fixed_order_loo(make, train, targets, CFG, removed, seed=1, progress=False)
    full = np.zeros((len(targets), len(train)))
    full[:, [col[int(i)] for i in removed]] = other.effects
    m2, _, per2 = L.combined_agreement([(rnd, truth, train.ids), (full, other, train.ids)], n_resamples=200)
    np.testing.assert_allclose(per2, (per1 + 1.0) / 2)  # the second pair agrees perfectly
    with pytest.raises(InvalidParameterError, match="statistic"):
        L.combined_agreement([(rnd, truth, train.ids)], statistic="kendall")


def test_noise_ceiling(toy):
    train, targets, removed, truth = toy
    same = L.fixed_order_loo(make, train, targets, CFG, removed, seed=0, progress=False)
    assert L.noise_ceiling(truth, same).value("spearman")[0] == pytest.approx(1.0)
    tiny = L.fixed_order_loo(make, train, targets, CFG, removed, seed=0, perturb=1e-6, progress=False)
    assert not np.array_equal(tiny.effects, truth.effects)
    assert L.noise_ceiling(truth, tiny).value("spearman")[0] > 0.9
    with pytest.raises(ConfigMismatchError, match="different ids"):
        L.noise_ceiling(truth, L.fixed_order_loo(make, train, targets, CFG, removed[:2], progress=False))


def test_bad_inputs_are_named(toy):
    train, targets, removed, truth = toy
    with pytest.raises(KeyError, match="not in the training set"):
        L.fixed_order_loo(make, train, targets, CFG, [-7], progress=False)
    with pytest.raises(InvalidParameterError, match="duplicates"):
        L.fixed_order_loo(make, train, targets, CFG, [100, 100], progress=False)
    with pytest.raises(InvalidParameterError, match="n_targets=3"):
        L.agreement(np.zeros((2, len(train))), truth, train_ids=train.ids)
    with pytest.raises(KeyError, match="no score column"):
        L.agreement(np.zeros((3, 5)), truth, train_ids=train.ids[:5])
    with pytest.raises(InvalidParameterError, match="train_ids"):
        L.agreement(np.zeros((3, len(train))), truth)
    with pytest.raises(InvalidParameterError, match="k must be"):
        L.random_removals(train, 0)
    W = np.ones((2, len(train)), np.float32)
    with pytest.raises(InvalidParameterError, match=r"weights must be \(M, 81\)"):
        masked_outputs(make, train, targets, CFG, W[:, :5], progress=False)
    with pytest.raises(InvalidParameterError, match="0 \\(masked\\) or 1"):
        masked_outputs(make, train, targets, CFG, W * 0.5, progress=False)
    W[1] = 0
    with pytest.raises(EmptyDatasetError, match="rows \\[1\\]"):
        masked_outputs(make, train, targets, CFG, W, progress=False)
    with pytest.raises(ReproError, match="clip"):
        masked_outputs(make, train, targets, dataclasses.replace(CFG, max_grad_norm=1.0), W[:1], batched=True,
                       progress=False)


def test_batchnorm_model_falls_back_to_one_by_one():
    """BatchNorm running statistics cannot be trained for many copies at once: the default falls
    back to one Trainer run per removal, and batched=True names the reason."""
    from repro.data import load
    from repro.models import vgg

    train = load("fashion_mnist", n=48, seed=0)
    targets = load("fashion_mnist", "test", n=4, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, device="cpu", progress=False)

    def make_vgg(seed):
        return vgg(num_classes=10, width=0.125, seed=seed, turnover={"p": 0.5, "seed": 3})

    res = L.fixed_order_loo(make_vgg, train, targets, cfg, train.ids[:2], progress=False)
    assert res.effects.shape == (4, 2) and np.abs(res.effects).max() > 0
    with pytest.raises(ReproError, match="BatchNorm"):
        L.fixed_order_loo(make_vgg, train, targets, cfg, train.ids[:2], batched=True, progress=False)
