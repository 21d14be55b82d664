"""Influence functions: HVPs equal the explicit Hessian (with the weight-decay convention), LiSSA
converges to the exact (H + lambda I)^-1 v and its error falls with depth, influence predicts exact
leave-one-out retraining on a convex model, and the sign convention holds (an SGD step on the most
helpful points lowers the test loss)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.datasets import load_digits
from torch import nn

from repro.data.core import Batch
from repro.errors import UnknownNameError
from repro.influence.hessian import (LissaConfig, LissaDivergedError, TrainingObjective,
                                     WeightDecay, conjugate_gradient, exact_ihvp, lissa, stream_seed)
from repro.influence.ifunc import InfluenceFunction, NotFittedError


pytestmark = pytest.mark.usefixtures("one_thread")


def digits(classes, n_train, seed=0):
    d = load_digits()
    keep = np.isin(d.target, classes)
    X = torch.tensor(d.data[keep] / 16.0)
    y = torch.tensor(np.searchsorted(classes, d.target[keep]).astype(np.int64))
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train:]
    return Batch({"x": X[tr]}, y[tr], tr.clone()), Batch({"x": X[te]}, y[te], te.clone() + 10_000)


class MLP(nn.Module):
    def __init__(self, d_in=64, hidden=8, classes=3):
        super().__init__()
        self.fc = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, classes)

    def features(self, x):
        return torch.tanh(self.norm(self.fc(x)))

    def forward(self, x):
        return self.classifier(self.features(x))


class LogReg(nn.Module):
    def __init__(self, d_in=64, classes=2):
        super().__init__()
        self.linear = nn.Linear(d_in, classes)

    def forward(self, x):
        return self.linear(x)


def flat_loss_fn(model, batch, wd_mask):
    """Objective as a function of the flat parameter vector (for torch.func.hessian)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]

    def f(theta):
        ps, s = {}, 0
        for n, sh in zip(names, shapes):
            ps[n] = theta[s:s + sh.numel()].view(sh)
            s += sh.numel()
        logits = torch.func.functional_call(model, ps, (), batch.inputs)
        return F.cross_entropy(logits, batch.labels) + 0.5 * (wd_mask * theta * theta).sum()
    return f


@pytest.fixture(scope="module")
def mlp_setup():
    train, test = digits([0, 3, 8], 150)
    torch.manual_seed(0)
    model = MLP().double()
    wd = WeightDecay(0.05)
    obj = TrainingObjective(model, train, "all", wd)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        theta = torch.cat([p.reshape(-1) for p in model.parameters()])
        loss = F.cross_entropy(model(**train.inputs), train.labels) + 0.5 * (obj.decay * theta ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return model, train, test


# ---------------------------------------------------------------------------- HVP / Hessian
def test_hvp_and_explicit_hessian_match_torch_func_with_weight_decay():
    train, _ = digits([0, 3, 8], 40)
    torch.manual_seed(1)
    model = LogReg(64, 3).double()
    # FastIF's convention: biases excluded from decay
    obj = TrainingObjective(model, train, "all", WeightDecay(0.1, exclude="bias_norm"))
    mask = obj.decay / 0.1
    assert mask[:192].eq(1).all() and mask[192:].eq(0).all()  # weight decayed, bias not
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ref = torch.func.hessian(flat_loss_fn(model, train, obj.decay))(theta)
    H = obj.hessian(batch_size=16)  # accumulated over 3 mini-batches
    torch.testing.assert_close(H, ref, rtol=1e-10, atol=1e-12)
    v = torch.randn(3, obj.dim, dtype=torch.float64)
    torch.testing.assert_close(obj.hvp(v), v @ ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(obj.full_hvp(v[0], batch_size=7), ref @ v[0], rtol=1e-10, atol=1e-12)
    # the mini-batch HVP is the Hessian of the mini-batch mean loss (+ the same L2 term)
    mb = train[torch.arange(5)]
    ref_mb = torch.func.hessian(flat_loss_fn(model, mb, obj.decay))(theta)
    torch.testing.assert_close(obj.hvp(v[0], mb), ref_mb @ v[0], rtol=1e-10, atol=1e-12)
    # gradient of the objective includes wd * theta on decayed coordinates
    g_ref = torch.func.grad(flat_loss_fn(model, train, obj.decay))(theta)
    torch.testing.assert_close(obj.gradient(batch_size=16), g_ref, rtol=1e-10, atol=1e-12)


def test_weight_decay_conventions():
    model = MLP()
    wd = WeightDecay(0.02, exclude="bias_norm")
    assert wd.is_decayed(model, "fc.weight") and wd.is_decayed(model, "classifier.weight")
    assert not wd.is_decayed(model, "fc.bias") and not wd.is_decayed(model, "norm.weight")
    assert WeightDecay(0.02).is_decayed(model, "norm.weight")  # torch optimizers decay everything
    assert WeightDecay(0.02, exclude=["classifier"]).is_decayed(model, "fc.bias")
    assert not WeightDecay(0.02, exclude=["classifier"]).is_decayed(model, "classifier.bias")
    assert WeightDecay.from_l2_coef(0.005).coef == pytest.approx(0.01)  # FastIF's 0.005 * sum theta^2
    assert WeightDecay.resolve(0.3) == WeightDecay(0.3)
    with pytest.raises(ValueError):
        WeightDecay.resolve(-1.0)
    with pytest.raises(UnknownNameError):
        WeightDecay(0.1, exclude="biases").is_decayed(model, "fc.bias")


def test_hvp_through_minilm_is_symmetric_and_matches_finite_differences(minilm_spec):
    """Double backprop through BERT layers (eager attention) on the trainable parameters."""
    from repro.data import load
    from repro.models import build_model

    model = build_model({**minilm_spec, "max_length": 24, "train_top_layers": 1}, seed=0).double()
    train = model.encode(load("snli2", n=6, seed=0))
    obj = TrainingObjective(model, train, "trainable", WeightDecay(0.01, exclude="bias_norm"))
    assert obj.dim > 1_000_000 and any(n.startswith("encoder.encoder.layer.5.") for n in obj.names)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(obj.dim, generator=g, dtype=torch.float64)
    v = torch.randn(obj.dim, generator=g, dtype=torch.float64)
    Hv, Hu = obj.hvp(torch.stack([v, u]))
    assert float(u @ Hv) == pytest.approx(float(v @ Hu), rel=1e-8)
    eps = 1e-5
    theta = torch.cat([p.detach().reshape(-1) for p in obj.chosen]).clone()

    def grad_at(t):
        with torch.no_grad():
            s = 0
            for p in obj.chosen:
                p.copy_(t[s:s + p.numel()].view_as(p))
                s += p.numel()
        return obj.gradient()
    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    grad_at(theta)
    assert float((fd - Hv).norm() / Hv.norm()) < 1e-5


# ---------------------------------------------------------------------------- solvers
def test_exact_and_cg_solve_the_damped_system(mlp_setup):
    model, train, test = mlp_setup
    obj = TrainingObjective(model, train, "all", 0.05)
    H = obj.hessian()
    lam = 0.1
    v = torch.randn(2, obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = torch.linalg.solve(H + lam * torch.eye(obj.dim, dtype=torch.float64), v.T).T
    torch.testing.assert_close(exact_ihvp(obj, v, lam), ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(conjugate_gradient(obj, v, lam, tol=1e-10, maxiter=2000), ref,
                               rtol=1e-6, atol=1e-8)


def test_lissa_matches_exact_and_error_falls_with_depth(mlp_setup):
    model, train, test = mlp_setup
    obj = TrainingObjective(model, train, "all", 0.05)
    H = obj.hessian()
    lam_max = float(torch.linalg.eigvalsh(H).max())
    scale = 3.0 * lam_max
    cfg = LissaConfig(damp=0.05, scale=scale, depth=400)
    lam = cfg.damping  # = scale * damp
    v = torch.randn(2, obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = torch.linalg.solve(H + lam * torch.eye(obj.dim, dtype=torch.float64), v.T).T
    # full-batch recursion: deterministic, converges to (H + scale*damp I)^-1 v
    s, info = lissa(obj, v, cfg, batch_size=len(train), tol=1e-9, return_info=True)
    assert float((s - exact).norm() / exact.norm()) < 1e-6
    assert info.steps[0] < 400  # stopped early on the relative-change tolerance

    def err(depth):
        est = lissa(obj, v, cfg, depth=depth, batch_size=16, repetitions=6, seed=3)
        return float((est - exact).norm() / exact.norm())
    errors = [err(j) for j in (5, 20, 150)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05, errors
    # the same seed gives the same estimate; repetition r's stream does not depend on how many run
    a = lissa(obj, v[0], cfg, depth=30, batch_size=4, repetitions=2, seed=7)
    r0 = lissa(obj, v[0], cfg, depth=30, batch_size=4, repetitions=1, seed=7)
    torch.testing.assert_close(a, lissa(obj, v[0], cfg, depth=30, batch_size=4, repetitions=2, seed=7))
    assert not torch.allclose(a, r0)
    assert stream_seed(7, 0) != stream_seed(7, 1)


def test_lissa_diverges_loudly_when_scale_is_too_small(mlp_setup):
    model, train, _ = mlp_setup
    obj = TrainingObjective(model, train, "all", 0.05)
    v = torch.ones(obj.dim, dtype=torch.float64)
    with pytest.raises(LissaDivergedError, match="raise scale"):
        lissa(obj, v, scale=1e-3, damp=0.01, depth=200, batch_size=8)


def test_lissa_config_options():
    cfg = LissaConfig.make(scale=100.0, damping=2.0)
    assert cfg.damp == pytest.approx(0.02) and cfg.damping == pytest.approx(2.0)
    with pytest.raises(TypeError, match="unknown LiSSA option"):
        LissaConfig.make(depht=10)
    with pytest.raises(ValueError):
        LissaConfig.make(scale=10.0, damp=0.1, damping=5.0)
    with pytest.raises(ValueError):
        LissaConfig(damp=1.5)


# ---------------------------------------------------------------------------- influence
def newton_fit(X, y, wd, theta=None, iters=30):
    """L2-regularised multinomial logistic regression (weights and bias in one (C, d+1) matrix),
    trained to machine precision with Newton's method: mean CE + (wd/2)||theta||^2."""
    Xa = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    C = int(y.max()) + 1
    th = torch.zeros(C, Xa.shape[1], dtype=X.dtype) if theta is None else theta.clone()
    onehot = F.one_hot(y, C).to(X.dtype)
    for _ in range(iters):
        p = torch.softmax(Xa @ th.T, 1)
        g = (p - onehot).T @ Xa / len(X) + wd * th
        if float(g.norm()) < 1e-13:
            break
        A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (n, C, C)
        H = torch.einsum("ncd,na,nb->cadb", A, Xa, Xa).reshape(C * Xa.shape[1], -1) / len(X)
        H += wd * torch.eye(len(H), dtype=X.dtype)
        th = th - torch.linalg.solve(H, g.reshape(-1)).view_as(th)
    return th


@pytest.fixture(scope="module")
def logreg():
    train, test = digits([3, 8], 200)
    wd = 0.01
    X, y = train.inputs["x"], train.labels
    theta = newton_fit(X, y, wd)
    model = LogReg(64, 2).double()
    with torch.no_grad():
        model.linear.weight.copy_(theta[:, :-1])
        model.linear.bias.copy_(theta[:, -1])
    return model, train, test, theta, wd


def test_influence_predicts_exact_leave_one_out_retraining(logreg):
    """Removing z changes the test loss by about +score/n (score = grad_test . H^-1 grad_z, H of
    the mean loss + L2): Pearson and Spearman > 0.9 against exact retraining without z."""
    model, train, test, theta, wd = logreg
    X, y = train.inputs["x"], train.labels
    Xte = torch.cat([test.inputs["x"], torch.ones(len(test), 1, dtype=torch.float64)], 1)
    te_loss = F.cross_entropy(Xte @ theta.T, test.labels, reduction="none")
    points = [int(i) for i in te_loss.argsort(descending=True)[:2]]  # the two hardest test points
    inf = InfluenceFunction(model, train, params="all", weight_decay=wd, solver="exact",
                            progress=False, device="cpu")
    pred = inf.predict_removal(test[points])  # (2, n)
    torch.testing.assert_close(pred, inf.scores(test[points]) / len(train))
    actual = torch.empty(len(points), len(train), dtype=torch.float64)
    for i in range(len(train)):
        keep = torch.arange(len(train)) != i
        th_i = newton_fit(X[keep], y[keep], wd, theta=theta)  # retrain from the optimum
        loss_i = F.cross_entropy(Xte[points] @ th_i.T, test.labels[points], reduction="none")
        actual[:, i] = loss_i - te_loss[points]
    for r in range(len(points)):
        pearson = stats.pearsonr(pred[r].numpy(), actual[r].numpy())[0]
        spearman = stats.spearmanr(pred[r].numpy(), actual[r].numpy())[0]
        print(f"LOO test point {points[r]}: Pearson {pearson:.4f} Spearman {spearman:.4f}")
        assert pearson > 0.9 and spearman > 0.9
    # the sign: the most helpful point's removal raises the test loss, the most harmful lowers it
    assert float(actual[0, pred[0].argmax()]) > 0 > float(actual[0, pred[0].argmin()])


def test_sign_convention_sgd_step_on_helpful_lowers_test_loss(logreg):
    model, train, test, theta, wd = logreg
    with torch.no_grad():
        losses = F.cross_entropy(model(**test.inputs), test.labels, reduction="none")
    point = test[[int(losses.argmax())]]
    inf = InfluenceFunction(model, train, params="all", weight_decay=wd, solver="exact",
                            progress=False, device="cpu")
    s = inf.scores(point)[0]
    torch.testing.assert_close(inf.paper_influence(point)[0], -s)
    top = inf.top_k(point, k=10)
    assert (top["proponent_scores"] > 0).all() and (top["opponent_scores"] < 0).all()

    def loss_after_step(ids, lr=0.5):
        m = copy.deepcopy(model)
        pos = {int(i): k for k, i in enumerate(train.ids)}
        mb = train[torch.as_tensor([pos[int(i)] for i in ids])]
        loss = F.cross_entropy(m(**mb.inputs), mb.labels)
        grads = torch.autograd.grad(loss, list(m.parameters()))
        with torch.no_grad():
            for p, g in zip(m.parameters(), grads):
                p.sub_(lr * g)
            return float(F.cross_entropy(m(**point.inputs), point.labels))
    with torch.no_grad():
        base = float(F.cross_entropy(model(**point.inputs), point.labels))
    assert loss_after_step(top["proponents"][0]) < base < loss_after_step(top["opponents"][0])


def test_scores_self_influence_and_aggregation(mlp_setup):
    model, train, test = mlp_setup
    inf = InfluenceFunction(model, train, params="all", weight_decay=0.05, solver="exact",
                            damping=0.01, progress=False, device="cpu")
    G = inf._grads(train).double()
    H = inf.objective.hessian() + 0.01 * torch.eye(inf.dim, dtype=torch.float64)
    T = inf._grads(test[torch.arange(4)]).double()
    ref = T @ torch.linalg.solve(H, G.T)  # grad_test . H^-1 grad_train
    s = inf.scores(test[torch.arange(4)])
    torch.testing.assert_close(s, ref, rtol=1e-6, atol=1e-9)
    assert inf._train_grads is not None  # train gradients cached after the first call
    # streaming the train gradients (no cache) gives the same numbers
    inf2 = InfluenceFunction(model, train, params="all", weight_decay=0.05, solver="exact",
                             damping=0.01, progress=False, device="cpu", cache_train_grads=False,
                             grad_chunk=32)
    torch.testing.assert_close(inf2.scores(test[torch.arange(4)]), s, rtol=1e-9, atol=1e-12)
    assert inf2._train_grads is None
    # the mean query is linear: it scores the mean of the rows
    mean = inf.scores(test[torch.arange(4)], aggregate="mean")
    torch.testing.assert_close(mean[0], s.mean(0), rtol=1e-5, atol=1e-5 * float(s.abs().max()))  # float32 grads
    # another pool scored against the same Hessian = the matching columns
    sub = inf.scores(test[torch.arange(4)], train=train[torch.arange(10, 20)])
    torch.testing.assert_close(sub, s[:, 10:20], rtol=1e-9, atol=1e-12)
    # precomputed s_test
    S = inf.s_test(test[torch.arange(4)])
    torch.testing.assert_close(inf.scores(None, s_test=S), s)
    # self-influence = diagonal of G H^-1 G^T, >= 0
    si = inf.self_influence()
    diag = (G * torch.linalg.solve(H, G.T).T).sum(1)
    torch.testing.assert_close(si, diag, rtol=1e-6, atol=1e-9)
    assert (si >= 0).all()


def smoothed_ce(logits, labels):
    """A training loss other than plain cross-entropy (label smoothing 0.2), per example."""
    return F.cross_entropy(logits, labels, reduction="none", label_smoothing=0.2)


def test_train_loss_is_used_for_the_training_gradients_too(mlp_setup):
    """With a label-smoothed training loss, scores = grad test-loss . (H_smooth + lambda I)^-1
    grad smoothed-loss(z_i): brute-force gradients by autograd, one example at a time; streamed and
    cached training gradients and self-influence agree, and the result differs from plain CE's."""
    model, train, test = mlp_setup
    pts = test[torch.arange(3)]
    kw = dict(params="all", weight_decay=0.05, solver="exact", damping=0.01, progress=False, device="cpu")
    inf = InfluenceFunction(model, train, train_loss=smoothed_ce, **kw)
    params = list(model.parameters())

    def grad(loss):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double()

    G = torch.stack([grad(smoothed_ce(model(**train[torch.arange(i, i + 1)].inputs), train.labels[i:i + 1]).sum())
                     for i in range(len(train))])
    T = torch.stack([grad(F.cross_entropy(model(**pts[torch.arange(j, j + 1)].inputs), pts.labels[j:j + 1]))
                     for j in range(len(pts))])
    H = inf.objective.hessian() + 0.01 * torch.eye(inf.dim, dtype=torch.float64)
    ref = T @ torch.linalg.solve(H, G.T)
    s = inf.scores(pts)
    tol = dict(rtol=1e-4, atol=1e-5 * float(ref.abs().max()))  # the engine's gradients are float32
    torch.testing.assert_close(s, ref, **tol)
    streamed = InfluenceFunction(model, train, train_loss=smoothed_ce, cache_train_grads=False, grad_chunk=16, **kw)
    torch.testing.assert_close(streamed.scores(pts), s, rtol=1e-9, atol=1e-12)
    si_ref = (G * torch.linalg.solve(H, G.T).T).sum(1)
    torch.testing.assert_close(inf.self_influence(), si_ref, rtol=1e-4, atol=1e-5 * float(si_ref.abs().max()))
    plain = InfluenceFunction(model, train, **kw).scores(pts)
    assert float((plain - s).abs().max()) > 0.05 * float(s.abs().max())


def test_lissa_influence_agrees_with_exact(mlp_setup):
    model, train, test = mlp_setup
    pts = test[torch.arange(3)]
    obj = TrainingObjective(model, train, "all", 0.05)
    scale = 3 * float(torch.linalg.eigvalsh(obj.hessian()).max())
    approx = InfluenceFunction(model, train, params="all", weight_decay=0.05, solver="lissa",
                               scale=scale, damp=0.1, depth=150, batch_size=32, repetitions=4,
                               progress=False, device="cpu")
    exact = InfluenceFunction(model, train, params="all", weight_decay=0.05, solver="exact",
                              damping=approx.damping, progress=False, device="cpu")
    assert approx.damping == pytest.approx(0.1 * scale)
    a, b = exact.scores(pts), approx.scores(pts)
    for r in range(3):
        assert stats.pearsonr(a[r].numpy(), b[r].numpy())[0] > 0.95
    assert approx.last_lissa_info.steps == [150] * 4


def test_errors(mlp_setup):
    model, train, test = mlp_setup
    with pytest.raises(UnknownNameError):
        InfluenceFunction(model, solver="newton")
    with pytest.raises(TypeError, match="only apply to solver='lissa'"):
        InfluenceFunction(model, params="all", solver="exact", depth=10)
    with pytest.raises(TypeError, match="unknown LiSSA option"):
        InfluenceFunction(model, params="all", scael=10.0)
    inf = InfluenceFunction(model, params="all", solver="exact", progress=False)
    with pytest.raises(NotFittedError):
        inf.scores(test)
    inf.fit(train)
    with pytest.raises(UnknownNameError):
        inf.scores(test, aggregate="sum")
    with pytest.raises(ValueError, match="unique"):
        InfluenceFunction(model, Batch(train.inputs, train.labels, torch.zeros(len(train), dtype=torch.long)),
                          params="all", solver="exact")
