"""Ground-truth tests of TracInCP: brute-force gradient dot products, the last-layer fast path,
self-influence, learning-rate weighting over real checkpoints, projection, the on-disk cache."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from brute import brute_grads as _brute

from repro.data import load
from repro.errors import ConfigMismatchError
from repro.influence import NotFittedError, Projector, TracInCP, grad_dim
from repro.influence import tracin as tracin_mod
from repro.models import text_classifier, vgg
from repro.train import TrainConfig, Trainer, list_checkpoints

FC_HEAD = ["fc", "classifier"]  # a layer subset beyond the last layer (brute-force path)
PROJ = ["fc.bias", "classifier"]  # d = 5642: a 5642 x 2048 projection is drawn once and kept


def brute_grads(model, ck, batch, names):
    """Per-example loss gradients at checkpoint ``ck``, one autograd call per example."""
    return _brute(model, batch, names, checkpoint=ck)


def brute_scores(model, cks, weights, train, test, names):
    out = 0
    for ck, w in zip(cks, weights):
        out = out + w * brute_grads(model, ck, test, names) @ brute_grads(model, ck, train, names).T
    return out


def close(a, b, rtol=1e-4):
    scale = float(b.abs().max())
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny VGG trained 3 epochs with a step schedule: checkpoints with lrs 0.05, 0.025, 0.0125."""
    run_dir = tmp_path_factory.mktemp("vgg_run")
    train = load("fashion_mnist", n=48, seed=0)
    model = vgg(num_classes=10, width=0.125, seed=0)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, schedule="step", milestones=[1, 2], gamma=0.5,
                      progress=False, device="cpu", seed=0)
    Trainer(model, cfg, run_dir).fit(train)
    test = load("fashion_mnist", split="test", n=8, seed=0)
    fresh = vgg(num_classes=10, width=0.125, seed=1)  # other weights: the checkpoints must be used
    return dict(run_dir=run_dir, cks=list_checkpoints(run_dir), model=fresh, test_ds=test,
                train=fresh.encode(train), test=fresh.encode(test))


def test_checkpoint_lrs_differ(run):
    lrs = [ck.lr for ck in run["cks"]]
    assert len(lrs) == 3 and lrs == sorted(lrs, reverse=True) and len(set(lrs)) == 3


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_one_checkpoint_lr1_equals_brute_force_dot(run, method):
    ck, train, test = run["cks"][1], run["train"][torch.arange(16)], run["test"][torch.arange(4)]
    t = TracInCP(run["model"], [ck], params="all", lr_weighting=False, method=method,
                 progress=False).fit(train)
    want = brute_scores(run["model"], [ck], [1.0], train, test, run["model"].param_group("all"))
    close(t.scores(test), want)


@pytest.mark.parametrize("params", ["last", ["classifier.weight"], ["classifier.bias"]])
def test_fast_last_layer_equals_brute_force(run, params):
    fast = TracInCP(run["model"], run["run_dir"], params=params, progress=False).fit(run["train"])
    slow = TracInCP(run["model"], run["run_dir"], params=params, fast_last_layer=False,
                    progress=False).fit(run["train"])
    assert fast.fast and not slow.fast
    assert "e" in fast._rows[0] and "g" not in fast._rows[0]  # dW never materialised
    names = run["model"].param_group(params)
    want = brute_scores(run["model"], run["cks"], [c.lr for c in run["cks"]], run["train"], run["test"], names)
    close(fast.scores(run["test"]), want)
    close(slow.scores(run["test"]), want)
    close(fast.self_influence(), slow.self_influence())


def test_checkpoints_combine_as_lr_weighted_sum(run):
    cks, train, test = run["cks"], run["train"][torch.arange(24)], run["test"]
    total = TracInCP(run["model"], cks, params=FC_HEAD, progress=False).fit(train).scores(test)
    parts = [TracInCP(run["model"], [ck], params=FC_HEAD, lr_weighting=False, progress=False)
             .fit(train).scores(test) for ck in cks]
    close(total, sum(ck.lr * p for ck, p in zip(cks, parts)))
    unweighted = TracInCP(run["model"], cks, params=FC_HEAD, lr_weighting=False, progress=False)
    close(unweighted.fit(train).scores(test), sum(parts))
    mean = TracInCP(run["model"], cks, params=FC_HEAD, lr_weighting="mean", progress=False)
    close(mean.fit(train).scores(test), sum(ck.lr_mean * p for ck, p in zip(cks, parts)))
    names = run["model"].param_group(FC_HEAD)
    close(total, brute_scores(run["model"], cks, [c.lr for c in cks], train, test, names))


@pytest.mark.parametrize("params", ["last", "all"])
def test_self_influence_is_diagonal_and_nonnegative(run, params):
    sub = run["train"][torch.arange(16)]
    t = TracInCP(run["model"], run["run_dir"], params=params, progress=False).fit(sub)
    si = t.self_influence()
    assert si.shape == (16,) and bool((si >= 0).all()) and bool((si > 0).any())
    close(torch.diagonal(t.scores(sub)), si)


@pytest.mark.parametrize("params", ["last", FC_HEAD, "all"])
def test_streaming_and_per_checkpoint_self_influence_equal_brute_force(run, params):
    """Streaming (no fit, nothing stored) = from stored rows = brute-force lr-weighted squared
    gradient norms; per-checkpoint rows are each checkpoint's own term."""
    sub, cks = run["train"][torch.arange(12)], run["cks"]
    names = run["model"].param_group(params) if isinstance(params, str) else \
        [n for n, _ in run["model"].named_parameters() if n.split(".")[0] in params]
    want = torch.stack([ck.lr * brute_grads(run["model"], ck, sub, names).pow(2).sum(1) for ck in cks])
    t = TracInCP(run["model"], cks, params=params, progress=False, batch_size=5)
    per = t.self_influence(sub, per_checkpoint=True)  # streaming, chunks of 5 (uneven last chunk)
    assert per.shape == (len(cks), 12)
    close(per, want)
    close(t.self_influence(sub), want.sum(0))
    fitted = t.fit(sub)
    close(fitted.self_influence(per_checkpoint=True), want)
    close(fitted.self_influence(), want.sum(0))

def test_top_k_and_train_ids(run):
    t = TracInCP(run["model"], run["run_dir"], progress=False).fit(run["train"])
    s = t.scores(run["test"])
    top = t.top_k(run["test"], k=5)
    assert torch.equal(t.train_ids, run["train"].ids)
    assert torch.equal(top["test_ids"], run["test"].ids)
    for i in range(len(run["test"])):
        order = s[i].argsort(descending=True)
        assert torch.equal(top["proponents"][i], run["train"].ids[order[:5]])
        assert torch.equal(top["opponents"][i], run["train"].ids[order.flip(0)[:5]])
        close(top["proponent_scores"][i], s[i][order[:5]])
    assert torch.equal(t.scores(run["test_ds"]), s)  # a Dataset is encoded like the Batch
    assert bool((top["proponent_scores"][:, :-1] >= top["proponent_scores"][:, 1:]).all())
    assert bool((top["opponent_scores"][:, :-1] <= top["opponent_scores"][:, 1:]).all())


def test_positive_score_means_a_step_on_z_lowers_the_test_loss(run):
    """TracIn's first-order meaning: one SGD step of size eta on train example z changes the loss at
    z' by about -eta * score(z, z') (one checkpoint, lr weight 1, last layer)."""
    ck, eta = run["cks"][0], 1e-3
    train, test = run["train"][torch.arange(4)], run["test"]
    s = TracInCP(run["model"], [ck], params="last", lr_weighting=False, progress=False).fit(train).scores(test)
    base = copy.deepcopy(run["model"])
    ck.load_into(base)
    base.eval()
    with torch.no_grad():
        before = F.cross_entropy(base(**test.inputs), test.labels, reduction="none")
    drop = torch.zeros_like(s)
    for j in range(len(train)):
        m = copy.deepcopy(base)
        loss = F.cross_entropy(m(**train[j].inputs), train[j].labels)
        gw, gb = torch.autograd.grad(loss, [m.classifier.weight, m.classifier.bias])
        with torch.no_grad():
            m.classifier.weight -= eta * gw
            m.classifier.bias -= eta * gb
            drop[:, j] = before - F.cross_entropy(m(**test.inputs), test.labels, reduction="none")
    big = s.abs() > 0.1 * s.abs().max()
    assert big.sum() >= 8
    assert bool((torch.sign(drop[big]) == torch.sign(s[big])).all())
    torch.testing.assert_close(drop[big] / eta, s[big], rtol=0.05, atol=0.0)


def test_test_target_sign_convention(run):
    """log p(y|x) = -loss, and higher is better for it: the scores must equal the loss scores."""
    loss = TracInCP(run["model"], run["run_dir"], params=FC_HEAD, progress=False).fit(run["train"])
    logp = TracInCP(run["model"], run["run_dir"], params=FC_HEAD, test_target="log_prob",
                    progress=False).fit(run["train"])
    close(logp.scores(run["test"]), loss.scores(run["test"]))


def test_caller_model_unchanged(run):
    model = run["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    TracInCP(model, run["run_dir"], params="all", progress=False).fit(run["train"][torch.arange(4)]).scores(
        run["test"][torch.arange(2)])
    assert model.training
    model.eval()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_projection_preserves_scores(run):
    d = grad_dim(run["model"], PROJ)
    exact = TracInCP(run["model"], run["run_dir"], params=PROJ, progress=False).fit(run["train"])
    proj = TracInCP(run["model"], run["run_dir"], params=PROJ, projector=Projector(d, 2048, seed=0),
                    progress=False).fit(run["train"])
    assert proj._rows[0]["g"].shape == (len(run["train"]), 2048)
    s, sp = exact.scores(run["test"]), proj.scores(run["test"])
    pearson = torch.corrcoef(torch.stack([s.flatten(), sp.flatten()]))[0, 1]
    assert pearson > 0.95
    # per checkpoint the sketch error has sd <= sqrt(2/k) |g||g'|; sum over checkpoints bounded by
    # the lr-weighted sum of norm products (self-influences), with a 6-sigma margin
    si_test = TracInCP(run["model"], run["run_dir"], params=PROJ, progress=False).fit(run["test"]).self_influence()
    bound = 6 * math.sqrt(2 / 2048) * torch.sqrt(si_test[:, None] * exact.self_influence()[None, :])
    assert bool(((sp - s).abs() <= bound).all())
    with pytest.raises(ValueError, match="projector"):
        TracInCP(run["model"], run["run_dir"], params="last", fast_last_layer=True, projector=Projector(5130, 64))


class _Counting:
    """Wraps tracin.per_example_grads: counts calls, optionally fails on call number ``fail_at``."""

    def __init__(self, fn, fail_at=None):
        self.fn, self.fail_at, self.calls = fn, fail_at, 0

    def __call__(self, *a, **k):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return self.fn(*a, **k)


def test_cache_identical_and_resumes(run, tmp_path, monkeypatch):
    kw = dict(params=FC_HEAD, cache_chunk=16, progress=False)  # 48 rows -> 3 chunks per checkpoint
    plain = TracInCP(run["model"], run["run_dir"], store="rows", **kw).fit(run["train"]).scores(run["test"])
    cached = TracInCP(run["model"], run["run_dir"], cache_dir=tmp_path / "c", **kw).fit(run["train"])
    assert torch.equal(cached.scores(run["test"]), plain)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(ck.path.stem for ck in run["cks"])

    # everything cached: no gradient is computed again
    counter = _Counting(tracin_mod.per_example_grads)
    monkeypatch.setattr(tracin_mod, "per_example_grads", counter)
    again = TracInCP(run["model"], run["run_dir"], cache_dir=tmp_path / "c", **kw).fit(run["train"])
    assert counter.calls == 0
    assert torch.equal(again.scores(run["test"]), plain)

    # interrupted during the 5th chunk (2nd checkpoint, 2nd chunk), then resumed
    monkeypatch.setattr(tracin_mod, "per_example_grads", _Counting(counter.fn, fail_at=5))
    with pytest.raises(KeyboardInterrupt):
        TracInCP(run["model"], run["run_dir"], cache_dir=tmp_path / "r", **kw).fit(run["train"])
    done = sorted(p.relative_to(tmp_path / "r").as_posix() for p in (tmp_path / "r").glob("*/chunk-*"))
    assert len(done) == 4 and not list((tmp_path / "r").glob("*/.*tmp"))
    counter = _Counting(counter.fn)
    monkeypatch.setattr(tracin_mod, "per_example_grads", counter)
    resumed = TracInCP(run["model"], run["run_dir"], cache_dir=tmp_path / "r", **kw).fit(run["train"])
    assert counter.calls == 9 - 4
    assert torch.equal(resumed.scores(run["test"]) , plain)


def test_fast_path_cache(run, tmp_path):
    kw = dict(params="last", cache_chunk=20, progress=False, cache_dir=tmp_path)
    a = TracInCP(run["model"], run["run_dir"], **kw).fit(run["train"])
    (tmp_path / run["cks"][0].path.stem / "chunk-000001.safetensors").unlink()
    b = TracInCP(run["model"], run["run_dir"], **kw).fit(run["train"])
    assert torch.equal(a.scores(run["test"]), b.scores(run["test"]))
    assert torch.equal(a.self_influence(), b.self_influence())


def test_stamp_mismatch_raises(run, tmp_path):
    TracInCP(run["model"], run["run_dir"], params="last", cache_dir=tmp_path, progress=False).fit(run["train"])
    with pytest.raises(ConfigMismatchError, match="params"):
        TracInCP(run["model"], run["run_dir"], params=FC_HEAD, cache_dir=tmp_path,
                 progress=False).fit(run["train"])
    with pytest.raises(ConfigMismatchError, match="ids"):
        TracInCP(run["model"], run["run_dir"], params="last", cache_dir=tmp_path,
                 progress=False).fit(run["train"][torch.arange(1, 49)[:47]])


def test_not_fitted_and_bad_arguments(run):
    t = TracInCP(run["model"], run["run_dir"], progress=False)
    with pytest.raises(NotFittedError):
        t.scores(run["test"])
    with pytest.raises(ValueError, match="lr_weighting"):
        TracInCP(run["model"], run["run_dir"], lr_weighting="sometimes")
    with pytest.raises(ValueError, match="last layer"):
        TracInCP(run["model"], run["run_dir"], params="all", fast_last_layer=True)


# ---------------------------------------------------------------------------- text
@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("text_run")
    model = text_classifier(num_classes=3, max_length=32, seed=0)
    train = load("snli", n=8, seed=1)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, optimizer="adamw", progress=False, device="cpu")
    Trainer(model, cfg, run_dir).fit(train)
    test = load("snli", split="test", n=3, seed=0)
    return dict(run_dir=run_dir, cks=list_checkpoints(run_dir), model=model,
                train=model.encode(train)[torch.arange(5)], test=model.encode(test))


def test_text_fast_path_equals_brute_force(text_run):
    r = text_run
    t = TracInCP(r["model"], r["run_dir"], params="last", progress=False).fit(r["train"])
    assert t.fast
    names = r["model"].param_group("last")
    want = brute_scores(r["model"], r["cks"], [c.lr for c in r["cks"]], r["train"], r["test"], names)
    close(t.scores(r["test"]), want, rtol=1e-3)
    close(t.self_influence(), torch.diagonal(t.scores(r["train"])), rtol=1e-3)


def test_text_embeddings_one_checkpoint(text_run):
    r = text_run
    t = TracInCP(r["model"], r["cks"][0], params="embeddings", lr_weighting=False, store="rows", progress=False)
    train, test = r["train"][torch.arange(2)], r["test"][torch.arange(2)]
    t.fit(train)
    assert t._rows[0]["g"].shape == (2, r["model"].word_embeddings.weight.numel())
    want = brute_scores(r["model"], r["cks"], [1.0], train, test, r["model"].param_group("embeddings"))
    close(t.scores(test), want, rtol=1e-3)
    # the default streams (no hooks for embeddings: per-example rows chunk by chunk), same numbers
    stream = TracInCP(r["model"], r["cks"][0], params="embeddings", lr_weighting=False, progress=False).fit(train)
    assert stream.stored == "stream"
    close(stream.scores(test), want, rtol=1e-3)


def test_run_folder_counts_each_step_once(tmp_path):
    """checkpoint_every_steps that coincides with an epoch end is saved once (as the epoch one)."""
    train = load("fashion_mnist", n=32, seed=0)
    model = vgg(num_classes=10, width=0.125, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, checkpoint_every_steps=2, progress=False,
                      device="cpu")
    Trainer(model, cfg, tmp_path).fit(train)
    cks = list_checkpoints(tmp_path)
    assert [c.path.stem for c in cks] == ["epoch-0001", "epoch-0002"]
    t = TracInCP(model, tmp_path, progress=False)
    assert [c.path.stem for c in t.checkpoints] == ["epoch-0001", "epoch-0002"]