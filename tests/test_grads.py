"""Ground-truth tests of the per-example gradient engine and the random projection.

Every engine result is compared with a brute-force autograd loop (one example at a time, eval mode,
the example's own unpadded tokens)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repro.data import load
from repro.influence import (Projector, Target, batch_grad, choose_method, flat_params, grad_dim,
                             param_names, per_example_grads, unflatten)
from repro.models import text_classifier, vgg

VGG_SUBSET = ["features_net.8", "fc.weight", "classifier.bias"]


def brute_force(model, batch, names, target=None):
    """One autograd.grad call per example (eval mode); rows flattened in ``names`` order."""
    model = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(True)
    rows = []
    for i in range(len(batch)):
        ex = batch[i]
        logits = model(**ex.inputs)
        if target is None:
            value = F.cross_entropy(logits, ex.labels)
        else:
            value = target(logits, ex.labels).sum()
        gs = torch.autograd.grad(value, [params[n] for n in names], allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(params[n]) if g is None else g).reshape(-1)
                               for n, g in zip(names, gs)]))
    return torch.stack(rows)


def assert_close(a, b, rtol=1e-4, atol_frac=1e-5):
    scale = float(b.abs().max())
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol_frac * max(scale, 1e-12))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vgg_model():
    m = vgg(num_classes=10, width=0.125, seed=0)
    # non-trivial BatchNorm running statistics, so eval mode (not batch statistics) matters
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=g))
    return m


@pytest.fixture(scope="module")
def img_batch(vgg_model):
    return vgg_model.encode(load("fashion_mnist", n=6, seed=3))


@pytest.fixture(scope="module")
def text_model():
    return text_classifier(num_classes=3, max_length=32, seed=0)


@pytest.fixture(scope="module")
def text_batch(text_model):
    b = text_model.encode(load("snli", n=4, seed=5))
    lengths = b.inputs["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1, "the test needs examples of different lengths"
    return b


# ---------------------------------------------------------------------------- VGG
@pytest.mark.parametrize("method", ["hooks", "vmap", "loop"])
@pytest.mark.parametrize("params", ["all", "last", "subset"])
def test_vgg_matches_brute_force(vgg_model, img_batch, params, method):
    group = VGG_SUBSET if params == "subset" else params
    names = vgg_model.param_group(group)
    got = per_example_grads(vgg_model, img_batch, group, method=method, chunk_size=4)
    want = brute_force(vgg_model, img_batch, names)
    assert got.dtype == torch.float32 and got.shape == (len(img_batch), grad_dim(vgg_model, group))
    assert_close(got, want)


def test_vgg_subset_columns_follow_parameter_order(vgg_model, img_batch):
    full = per_example_grads(vgg_model, img_batch, "all", method="vmap")
    sub = per_example_grads(vgg_model, img_batch, VGG_SUBSET, method="vmap")
    parts = unflatten(full, vgg_model, "all")
    want = torch.cat([parts[n].reshape(len(img_batch), -1) for n in param_names(vgg_model, VGG_SUBSET)], 1)
    assert_close(sub, want)


def test_eval_mode_and_flags_restored(vgg_model, img_batch):
    model = copy.deepcopy(vgg_model).train()  # dropout + batch statistics if eval mode were not used
    model.fc.weight.requires_grad_(False)
    a = per_example_grads(model, img_batch, "all", method="loop")
    b = per_example_grads(model, img_batch, "all", method="loop")
    assert torch.equal(a, b)  # no dropout noise
    assert_close(a, brute_force(vgg_model, img_batch, vgg_model.param_group("all")))
    assert model.training
    assert not model.fc.weight.requires_grad and model.classifier.weight.requires_grad


def test_target_logit(vgg_model, img_batch):
    def logit(lg, y):
        return lg.gather(1, y.view(-1, 1)).squeeze(1)
    got = per_example_grads(vgg_model, img_batch, "last", target="logit", method="vmap")
    assert_close(got, brute_force(vgg_model, img_batch, vgg_model.param_group("last"), target=logit))
    custom = per_example_grads(vgg_model, img_batch, "last", target=Target(logit, "my_logit", True))
    assert_close(custom, got)


def test_batch_grad_is_mean_of_rows(vgg_model, img_batch):
    rows = per_example_grads(vgg_model, img_batch, VGG_SUBSET, method="vmap")
    bg = batch_grad(vgg_model, img_batch, VGG_SUBSET, batch_size=4)
    assert_close(bg, rows.mean(0))


def test_auto_method_choice(vgg_model, text_model):
    cpu = torch.device("cpu")
    # every VGG parameter is a Conv2d / BatchNorm / Linear weight or bias: closed-form hooks
    assert choose_method(vgg_model, cpu, "auto", vgg_model.param_group("all")) == "hooks"
    assert choose_method(vgg_model, torch.device("cuda"), "auto", vgg_model.param_group("last")) == "hooks"
    assert choose_method(text_model, cpu, "auto", text_model.param_group("last")) == "hooks"
    # word embeddings have no closed form here: vmap (loop for differentiated convs on the CPU)
    assert choose_method(text_model, cpu, "auto", text_model.param_group("all")) == "vmap"
    assert choose_method(text_model, cpu, "auto", text_model.param_group("embeddings")) == "vmap"
    with pytest.raises(ValueError, match="hooks"):
        choose_method(text_model, cpu, "hooks", text_model.param_group("embeddings"))


class _Shared(nn.Module):
    """One Linear applied twice (shared weights): per-example gradients need the sum of both uses,
    which the hooks method does not model, so it must fall back."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def test_hooks_layernorm_batchnorm1d_and_strided_conv():
    """Closed forms for LayerNorm over (T, d) inputs, BatchNorm1d, and a strided, dilated,
    padded convolution, against one autograd call per example."""
    from repro.data import Batch

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=2, dilation=2)
            self.ln = nn.LayerNorm(4)
            self.bn = nn.BatchNorm1d(12)
            self.head = nn.Linear(12, 3)

        def forward(self, x):
            h = self.conv(x)                          # (n, 3, 4, 4)
            h = self.ln(h.flatten(2)[..., :4])        # (n, 3, 4): LayerNorm over the last dim
            return self.head(self.bn(torch.tanh(h).flatten(1)))

    torch.manual_seed(0)
    model = Net()
    model.bn.running_mean.normal_()
    model.bn.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        model.ln.weight.normal_()
    b = Batch({"x": torch.randn(5, 2, 8, 8)}, torch.tensor([0, 1, 2, 0, 1]), torch.arange(5))
    assert choose_method(model, torch.device("cpu"), "auto", None) == "hooks"
    got = per_example_grads(model, b, "all", method="hooks", chunk_size=3)
    assert_close(got, brute_force(model, b, [n for n, _ in model.named_parameters()]))


class _ControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        h = self.lin(x)
        if h.sum() > 0:  # data-dependent control flow: vmap refuses it
            return h * 2
        return h


@pytest.mark.parametrize("model_cls, method, match", [
    (_ControlFlow, "vmap", "falling back to the per-example loop"),
    (_Shared, "hooks", "hooks do not apply"),
])
def test_method_failure_falls_back(model_cls, method, match):
    from repro.data import Batch

    torch.manual_seed(0)
    model = model_cls()
    b = Batch({"x": torch.randn(5, 4)}, torch.tensor([0, 1, 2, 0, 1]), torch.arange(5))
    with pytest.warns(RuntimeWarning, match=match):
        got = per_example_grads(model, b, "all", method=method)
    assert_close(got, brute_force(model, b, [n for n, _ in model.named_parameters()]))


# ---------------------------------------------------------------------------- text
@pytest.mark.parametrize("method", ["hooks", "vmap", "loop"])
@pytest.mark.parametrize("params", ["last", "embeddings"])
def test_text_matches_brute_force(text_model, text_batch, params, method):
    # one chunk of 4 padded examples under vmap vs each example alone, unpadded
    if method == "hooks" and params == "embeddings":
        pytest.skip("no closed form for embeddings (choose_method raises; tested above)")
    names = text_model.param_group(params)
    got = per_example_grads(text_model, text_batch, params, method=method, chunk_size=4)
    want = brute_force(text_model, text_batch, names)
    assert_close(got, want, rtol=1e-3, atol_frac=1e-4)


def test_text_padding_does_not_change_gradients(text_model, text_batch):
    padded = per_example_grads(text_model, text_batch, "last", method="vmap", chunk_size=4)
    alone = per_example_grads(text_model, text_batch, "last", method="vmap", chunk_size=1)
    assert_close(padded, alone, rtol=1e-4, atol_frac=1e-5)


def test_text_all_and_trainable(text_model, text_batch):
    sub = text_batch[[2, 3]]
    got = per_example_grads(text_model, sub, "all", method="vmap")
    assert got.shape == (2, sum(p.numel() for p in text_model.parameters()))
    assert_close(got, brute_force(text_model, sub, text_model.param_group("all")), rtol=1e-3, atol_frac=1e-4)
    frozen = copy.deepcopy(text_model)
    frozen.freeze_lower(1)
    names = frozen.param_group("trainable")
    assert 0 < len(names) < len(frozen.param_group("all"))
    got_t = per_example_grads(frozen, sub, "trainable")
    assert_close(got_t, brute_force(frozen, sub, names), rtol=1e-3, atol_frac=1e-4)
    # the top layer alone (attention and feed-forward Linears, LayerNorms, pooler, head): hooks
    top_names = [n for n in frozen.param_group("all") if "embeddings" not in n]
    assert choose_method(frozen, torch.device("cpu"), "auto", top_names) == "hooks"
    got_h = per_example_grads(frozen, text_batch, top_names, method="hooks", chunk_size=4)
    assert_close(got_h, brute_force(frozen, text_batch, top_names), rtol=1e-3, atol_frac=1e-4)
    assert not frozen.encoder.embeddings.word_embeddings.weight.requires_grad  # flags restored


# ---------------------------------------------------------------------------- projection
def test_projector_deterministic_and_chunk_independent():
    g = torch.randn(10, 3000, generator=torch.Generator().manual_seed(0))
    p = Projector(3000, 64, seed=3, block_size=700)
    whole = p.project(g)
    again = Projector(3000, 64, seed=3, block_size=700).project(g)
    rows = torch.cat([p.project(g[:3]), p.project(g[3:])])
    blockwise = Projector(3000, 64, seed=3, block_size=700, cache_bytes=0).project(g)
    assert torch.equal(whole, again)
    # row chunking only changes float summation order (BLAS kernels), not the matrix
    torch.testing.assert_close(rows, whole, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(blockwise, whole, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(p.project(g[0]), whole[0], rtol=1e-5, atol=1e-4)
    assert not torch.allclose(Projector(3000, 64, seed=4, block_size=700).project(g), whole)
    assert p.spec() == {"kind": "gaussian", "dim_in": 3000, "dim_out": 64, "seed": 3,
                        "block_size": 700, "version": 1}


def test_projector_skips_zero_blocks_exactly():
    g = torch.zeros(3, 5000)
    g[:, 1200:1300] = torch.randn(3, 100, generator=torch.Generator().manual_seed(1))
    sparse = Projector(5000, 32, kind="rademacher", seed=0, block_size=512, cache_bytes=0).project(g)
    dense = g @ Projector(5000, 32, kind="rademacher", seed=0, block_size=512).matrix()
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_projection_preserves_dot_products(kind):
    """E[<Pg, Pg'>] = <g, g'>, with sd <= sqrt(2/k) |g||g'| (JL variance)."""
    gen = torch.Generator().manual_seed(0)
    d, k = 4000, 2048
    base = torch.randn(1, d, generator=gen)
    g = 0.7 * base + torch.randn(40, d, generator=gen)  # correlated rows, like gradients
    p = Projector(d, k, kind=kind, seed=11)
    exact = g @ g.T
    approx = p.project(g) @ p.project(g).T
    norms = g.norm(dim=1)
    bound = 6 * math.sqrt(2 / k) * norms[:, None] * norms[None, :]
    assert ((approx - exact).abs() <= bound).all()
    pearson = torch.corrcoef(torch.stack([exact.flatten(), approx.flatten()]))[0, 1]
    assert pearson > 0.95
    rademacher_entries = p.block(0).abs().unique()
    if kind == "rademacher":
        torch.testing.assert_close(rademacher_entries, torch.tensor([1 / math.sqrt(k)]))


def test_per_example_grads_with_projector(vgg_model, img_batch):
    d = grad_dim(vgg_model, "last")
    proj = Projector(d, 128, seed=0)
    got = per_example_grads(vgg_model, img_batch, "last", projector=proj, chunk_size=4)
    full = per_example_grads(vgg_model, img_batch, "last")
    torch.testing.assert_close(got, proj.project(full), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="dim_in"):
        per_example_grads(vgg_model, img_batch, "all", projector=proj)


def test_flat_params_roundtrip(vgg_model):
    v = flat_params(vgg_model, VGG_SUBSET)
    parts = unflatten(v, vgg_model, VGG_SUBSET)
    for n, p in vgg_model.named_parameters():
        if n in parts:
            assert torch.equal(parts[n], p.detach())
