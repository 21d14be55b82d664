"""Factored ("ghost") gradient inner products and streaming TracInCP equal the materialised ones.

Ground truth: per-example gradient rows from the per-example loop (one backward per example) and
their explicit products. Checked on a VGG (convolutions with large and small spatial maps, BatchNorm,
fully connected layers), a plain ``nn.Sequential`` MLP, a linear layer applied over a sequence
(several positions per example, factored), and the top layers of MiniLM; then TracInCP with
``store="stream"`` against ``store="rows"`` (scores and self-influence)."""
import pytest
import torch
from torch import nn

from repro.data import load
from repro.influence import TracInCP
from repro.influence import ghost as H
from repro.influence import grads as G
from repro.models import vgg
from repro.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _pieces(model, batch, params, plan=None, ghost=True, lazy=False):
    names = G.param_names(model, params)
    owners = G.hook_modules(model, names)
    assert owners is not None
    with G.EvalState(model, names, set_requires_grad=True):
        return H.factors(model, batch, names, G.resolve_target("loss"), owners, ghost=ghost, plan=plan, lazy=lazy)


def _check(model, batch, params, split, expect_ghost=True):
    rows = G.per_example_grads(model, batch, params, method="loop").double()
    x = _pieces(model, batch[torch.arange(0, split)], params)
    y = _pieces(model, batch[torch.arange(split, len(batch))], params, plan=x.plan)
    assert any(isinstance(p, H.Ghost) for p in x.pieces) == expect_ghost
    ref = rows[:split] @ rows[split:].T
    got = H.pair_products(x, y).double()
    assert (got - ref).abs().max() <= 1e-6 * ref.abs().max()
    sq = rows[split:].pow(2).sum(1)
    assert (H.self_products(y).double() - sq).abs().max() <= 1e-6 * sq.max()
    # lazy row layers (formed only while paired) give exactly the eager numbers, on either side
    y_lazy = _pieces(model, batch[torch.arange(split, len(batch))], params, plan=x.plan, lazy=True)
    assert any(isinstance(p, H.Layer) for p in y_lazy.pieces) == (not all(x.plan.values()))
    assert torch.equal(H.pair_products(x, y_lazy), H.pair_products(x, y))
    assert torch.equal(H.self_products(y_lazy), H.self_products(y))
    # forcing rows everywhere gives the same numbers (the two forms of every layer agree)
    x0 = _pieces(model, batch[torch.arange(0, split)], params, ghost=False)
    y0 = _pieces(model, batch[torch.arange(split, len(batch))], params, ghost=False)
    assert not any(isinstance(p, H.Ghost) for p in x0.pieces)
    assert (H.pair_products(x0, y0).double() - ref).abs().max() <= 1e-6 * ref.abs().max()
    return x.plan


def test_vgg_all_parameters():
    m = vgg(num_classes=10, depth=11, in_channels=1, image_size=28, width=0.25, seed=0).double().eval()
    b = m.encode(load("fashion_mnist", n=20, seed=0))
    b.inputs = {k: v.double() for k, v in b.inputs.items()}
    plan = _check(m, b, "all", 8)
    # the rule: late convolutions (3x3 maps and smaller) and the linear layers factored, early ones not
    assert plan["features_net.0"] is False and plan["fc"] is True and plan["classifier"] is True
    assert sum(plan.values()) >= 4


def test_plain_sequential_mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3)).double()
    x, y = torch.randn(14, 20, dtype=torch.float64), torch.randint(0, 3, (14,))
    from repro.models.foreign import as_model
    from repro.data.core import batch_from
    fm = as_model(m)
    _check(fm, batch_from((x, y), fm.input_name), "all", 5)


class SeqModel(nn.Module):
    """A linear layer applied at 3 positions per example, then mean-pooled: factored with T = 3."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(40, 48)
        self.head = nn.Linear(48, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.proj(x)).mean(1))


def test_linear_over_a_sequence():
    torch.manual_seed(1)
    from repro.data.core import batch_from
    from repro.models.foreign import as_model

    m = as_model(SeqModel().double())
    x, y = torch.randn(12, 3, 40, dtype=torch.float64), torch.randint(0, 4, (12,))
    assert H.use_ghost(3, 40, 48)
    plan = _check(m, batch_from((x, y), m.input_name), "all", 5)
    assert plan["module.proj"] is True


def test_minilm_top_layers():
    from repro.models import text_classifier

    m = text_classifier(num_classes=3, model_name="minilm", max_length=24, seed=0).double().eval()
    b = m.encode(load("snli", n=10, seed=0))
    names = [n for n, _ in m.named_parameters() if n.startswith(("encoder.encoder.layer.5.output.dense",
                                                                 "encoder.pooler", "classifier"))]
    plan = _check(m, b, names, 4)
    assert plan  # pooler and classifier (one position) factored, the sequence layer per example


@pytest.fixture(scope="module")
def vgg_run(tmp_path_factory):
    train = load("fashion_mnist", n=96, seed=0, stratify=True)
    m = vgg(num_classes=10, depth=11, in_channels=1, image_size=28, width=0.25, seed=0)
    run = tmp_path_factory.mktemp("ghost") / "run"
    Trainer(m, TrainConfig(epochs=2, lr=0.05, batch_size=32, seed=0, progress=False, device="cpu"), run).fit(train)
    return m, run, train, load("fashion_mnist", "test", n=7, seed=0)


def test_streaming_tracincp_equals_stored_rows(vgg_run):
    m, run, train, test = vgg_run
    rows = TracInCP(m, run, params="all", store="rows", progress=False).fit(train)
    stream = TracInCP(m, run, params="all", store="stream", batch_size=40, progress=False).fit(train)
    assert rows._rows and stream._rows is None and stream.stored == "stream"
    ref, got = rows.scores(test), stream.scores(test)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
    s_ref, s_got = rows.self_influence(), stream.self_influence()
    assert ((s_got - s_ref).abs() / s_ref).max() <= 2e-6  # every example, relative (rows once summed with einsum: 3e-4)
    top_r, top_s = rows.top_k(test, 3), stream.top_k(test, 3)
    assert torch.equal(top_r.proponents, top_s.proponents) and torch.equal(top_r.opponents, top_s.opponents)
    # without hooks (the per-example loop), streaming contracts per-example rows chunk by chunk
    sub = train.subset(list(range(30)))
    loop = TracInCP(m, run, params="all", method="loop", store="stream", batch_size=12, progress=False).fit(sub)
    ref_sub = TracInCP(m, run, params="all", store="rows", progress=False).fit(sub).scores(test)
    assert (loop.scores(test) - ref_sub).abs().max() <= 1e-5 * ref_sub.abs().max()


def test_auto_store(vgg_run, tmp_path):
    """Streams unless rows are small or asked for: the last-layer fast path, a projector, a cache."""
    from repro.influence import Projector

    m, run, train, test = vgg_run
    assert TracInCP(m, run, params="all", progress=False).fit(train).stored == "stream"
    assert TracInCP(m, run, params="all", method="vmap", progress=False).fit(train).stored == "stream"
    assert TracInCP(m, run, params="last", progress=False).fit(train).stored == "rows"
    assert TracInCP(m, run, params="last", fast_last_layer=False, cache_dir=tmp_path,
                    progress=False).fit(train).stored == "rows"
    d = sum(p.numel() for n, p in m.named_parameters() if n.startswith("classifier"))
    proj = TracInCP(m, run, params="last", fast_last_layer=False, projector=Projector(d, 16), progress=False)
    assert proj.fit(train).stored == "rows"


def test_store_names_are_checked(vgg_run, tmp_path):
    from repro.errors import InvalidParameterError, UnknownNameError

    m, run, _, _ = vgg_run
    with pytest.raises(UnknownNameError, match="store"):
        TracInCP(m, run, store="disk")
    with pytest.raises(InvalidParameterError, match="cache_dir"):
        TracInCP(m, run, store="stream", cache_dir=tmp_path)
