"""Last-layer baselines against ground truth: the closed-form Hessian equals autograd's, influence
equals an explicit solve, representer points satisfy the representer theorem."""
import pytest
import torch
import torch.nn.functional as F

from repro.data import load
from repro.influence.lastlayer import LastLayerInfluence, RepresenterPoints, features_and_logits, loss_per_example
from repro.models import vgg
from repro.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def trained():
    train = load("fashion_mnist", n=120, seed=0, stratify=True)
    test = load("fashion_mnist", "test", n=10, seed=0)
    model = vgg(num_classes=10, width=0.125, hidden=16, seed=0)
    Trainer(model, TrainConfig(epochs=2, lr=0.05, batch_size=32, progress=False)).fit(train)
    return model.eval(), train, test


def test_closed_form_hessian_and_scores_match_autograd(trained):
    model, train, test = trained
    ll = LastLayerInfluence(model, train, damping=0.01)
    feats, _, batch = features_and_logits(model, train)
    W0 = torch.cat([model.last_layer.weight.detach().double(), model.last_layer.bias.detach().double()[:, None]], 1)

    def mean_loss(theta):
        Wb = theta.reshape(W0.shape)
        return F.cross_entropy(feats @ Wb[:, :-1].T + Wb[:, -1], batch.labels)

    H = torch.autograd.functional.hessian(mean_loss, W0.reshape(-1))
    assert torch.allclose(ll.hessian, H, atol=1e-8)
    # scores = g_test^T (H + lambda I)^-1 g_train with autograd gradients
    tfeats, _, tb = features_and_logits(model, test)
    g = lambda f, y: torch.autograd.functional.jacobian(
        lambda th: F.cross_entropy(f[None] @ th.reshape(W0.shape)[:, :-1].T + th.reshape(W0.shape)[:, -1], y[None]),
        W0.reshape(-1))
    gt = torch.stack([g(tfeats[i], tb.labels[i]) for i in range(3)])
    gtr = torch.stack([g(feats[i], batch.labels[i]) for i in range(5)])
    expect = gt @ torch.linalg.solve(H + 0.01 * torch.eye(len(H), dtype=H.dtype), gtr.T)
    assert torch.allclose(ll.scores(test)[:3, :5].double(), expect, rtol=1e-4, atol=1e-6)
    si = ll.self_influence()
    assert (si >= 0).all()
    assert torch.allclose(si[:5].double(), torch.einsum("id,de,ie->i", gtr, torch.linalg.inv(H + 0.01 * torch.eye(len(H), dtype=H.dtype)), gtr), rtol=1e-4)


def test_representer_theorem_holds_at_the_optimum(trained):
    model, train, test = trained
    rp = RepresenterPoints(model, train, lam=0.01)
    assert rp.stationarity < 1e-5  # W* = sum_i alpha_i f_i^T
    tfeats, _, tb = features_and_logits(model, test)
    logits = tfeats @ rp.W.T
    decomposed = rp.scores(test, classes=torch.arange(10).repeat(len(test) // 10 + 1)[: len(test)])
    # the representer values of each test point's class sum to its logit for that class
    c = torch.arange(10).repeat(len(test) // 10 + 1)[: len(test)]
    assert torch.allclose(decomposed.double().sum(1), logits[torch.arange(len(test)), c], atol=1e-4)
    assert (rp.self_importance() >= 0).all()


def test_loss_baseline(trained):
    model, train, _ = trained
    losses = loss_per_example(model, train)
    batch = model.encode(train)
    with torch.no_grad():
        expect = F.cross_entropy(model(**batch.inputs), batch.labels, reduction="none")
    assert torch.allclose(torch.from_numpy(losses).float(), expect, atol=1e-5)
