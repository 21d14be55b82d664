"""Turn-over dropout influence: exact agreement of the fast and general paths, a planted mislabelled
example, label-noise detection. (The comparison with leave-one-out retraining is an experiment with
a reported correlation, in notebooks/turnover_cleansing.ipynb and repro.experiments.turnover.)"""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from repro.data import flip_labels, load
from repro.errors import ReproError
from repro.influence.turnover import TurnOverInfluence
from repro.models import vgg
from repro.models.turnover import TurnOverDropout
from repro.train import TrainConfig, Trainer

from brute import planted_mislabelled


@pytest.fixture(scope="module")
def planted():
    """A VGG trained on 400 Fashion-MNIST images plus one planted test image with a wrong label."""
    tr, target, wrong_label = planted_mislabelled()
    model = vgg(num_classes=10, width=0.25, seed=0, turnover={"p": 0.5, "seed": 7})
    Trainer(model, TrainConfig(epochs=8, lr=0.05, batch_size=32, progress=False)).fit(tr)
    return model, tr, target, wrong_label


def test_head_path_equals_general_forward_path(planted):
    model, tr, target, _ = planted
    head = TurnOverInfluence(model, method="head", progress=False)
    full = TurnOverInfluence(model, method="forward", progress=False)
    sub = tr.subset(slice(0, 40))
    assert torch.allclose(head.scores(target, sub), full.scores(target, sub), atol=1e-4)
    si_head = head.self_influence(sub.subset(slice(0, 8)))
    si_full = torch.stack([full.scores(sub.subset([i]), sub.subset([i]))[0, 0] for i in range(8)])
    assert torch.allclose(si_head, si_full, atol=1e-4)


def test_planted_mislabelled_instance_is_harmful_and_its_label_helpful(planted):
    model, tr, target, wrong_label = planted
    est = TurnOverInfluence(model, progress=False)
    ids = torch.from_numpy(tr.ids)
    where = ids == 900_001
    true_scores = est.scores(target, tr)[0]  # target with its true label
    wrong_scores = est.scores(dataclasses.replace(target, labels=wrong_label), tr)[0]
    assert true_scores[where].item() < 0 < wrong_scores[where].item()
    # rank: among the most harmful for the true label, the most helpful for the planted label
    assert (true_scores < true_scores[where]).sum().item() <= 0.05 * len(tr)
    assert (wrong_scores > wrong_scores[where]).sum().item() <= 0.01 * len(tr)
    top = est.fit(tr).top_k(target, k=20)
    assert 900_001 in top.opponents[0].tolist()
    assert torch.equal(est.scores(target), true_scores[None])  # fitted ids = the explicit ones


def test_self_influence_finds_flipped_labels():
    train = load("fashion_mnist", n=400, seed=1, stratify=True)
    noisy, flipped = flip_labels(train, 0.1, seed=0)
    model = vgg(num_classes=10, width=0.25, seed=0, turnover={"p": 0.5, "seed": 3})
    Trainer(model, TrainConfig(epochs=8, lr=0.05, batch_size=32, progress=False)).fit(noisy)
    si = TurnOverInfluence(model, progress=False).self_influence(noisy).numpy()
    is_flip = np.isin(noisy.ids, flipped)
    from sklearn.metrics import roc_auc_score
    auc = roc_auc_score(is_flip, si)
    assert auc > 0.75, auc  # chance = 0.5


def test_errors():
    with pytest.raises(ReproError, match="no TurnOverDropout"):
        TurnOverInfluence(vgg(num_classes=10, width=0.125))
    with pytest.raises(ReproError, match="head"):
        TurnOverInfluence(_MLP(0), method="head")


class _MLP(nn.Module):
    """64 -> 128 -> turn-over dropout -> 10: turn-over layer not directly exposed as a head."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1, self.drop, self.l2 = nn.Linear(64, 128), TurnOverDropout(128, 0.5, seed=3), nn.Linear(128, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)

    def forward(self, x, ids=None, flip=None):
        return self.l2(self.drop(torch.relu(self.l1(x)), ids=ids, flip=flip))


