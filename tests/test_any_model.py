"""The estimators on models repro did not build (plain nn.Module, bare nn.Linear, a Hugging Face
BERT classifier, a torchvision ResNet), with data as plain tensors / DataLoaders and checkpoints as
``(state_dict or path, lr)`` pairs: every score against brute-force gradients computed here on the
raw module with one autograd call per example."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brute import brute_grads
from repro.errors import ReproError
from repro.influence import InfluenceFunction, TracInCP
from repro.influence.grads import per_example_grads
from repro.influence.lastlayer import LastLayerInfluence

pytestmark = pytest.mark.usefixtures("one_thread")


def raw_grads(module, inputs, labels, names, state=None):
    """Brute-force per-example gradients of the raw module (see tests/brute.py)."""
    return brute_grads(module, (inputs, labels), names, state=state)


def brute_tracin(module, ckpts, x_te, y_te, x_tr, y_tr, names):
    total = 0
    for state, lr in ckpts:
        total = total + lr * raw_grads(module, x_te, y_te, names, state) @ raw_grads(module, x_tr, y_tr, names, state).T
    return total


def perturbed_states(module, n, scale=0.3, seed=0):
    """``n`` state dicts near the module's (a stand-in for checkpoints along a trajectory)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append({k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
                    for k, v in module.state_dict().items()})
    return out


@pytest.fixture(scope="module")
def mlp_data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    X = torch.randn(20, 1, 4, 4)
    y = torch.randint(0, 3, (20,))
    return net, X, y


def test_plain_sequential_tracincp_all_and_last_match_brute_force(mlp_data):
    net, X, y = mlp_data
    states = perturbed_states(net, 2)
    ckpts = [(states[0], 0.1), (states[1], 0.05)]
    all_names = [n for n, _ in net.named_parameters()]
    for params, names in (("all", all_names), ("last", ["3.weight", "3.bias"]), (["1.weight"], ["1.weight"])):
        tr = TracInCP(net, ckpts, params=params, progress=False).fit((X[:15], y[:15]))
        got = tr.scores((X[15:], y[15:]))
        want = brute_tracin(net, ckpts, X[15:], y[15:], X[:15], y[:15], names)
        assert torch.allclose(got, want.float(), rtol=1e-5, atol=1e-6), params
        si = tr.self_influence()
        want_si = torch.diagonal(brute_tracin(net, ckpts, X[:15], y[:15], X[:15], y[:15], names))
        assert torch.allclose(si, want_si.float(), rtol=1e-5, atol=1e-6), params
    assert tr.train_ids.tolist() == list(range(15))  # ids default to positions
    top = tr.top_k((X[15:], y[15:]), k=3)
    assert torch.equal(top["proponents"][0], got[0].topk(3).indices)


def test_data_loader_and_weight_files_give_the_same_scores(mlp_data, tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    net, X, y = mlp_data
    states = perturbed_states(net, 2, seed=1)
    paths = []
    for i, s in enumerate(states):
        paths.append(tmp_path / f"ck{i}.pt")
        torch.save(s, paths[-1])
    a = TracInCP(net, [(states[0], 0.1), (states[1], 0.1)], params="all", progress=False).fit((X[:15], y[:15]))
    b = TracInCP(net, [(paths[0], 0.1), (paths[1], 0.1)], params="all", progress=False).fit(
        DataLoader(TensorDataset(X[:15], y[:15]), batch_size=4, shuffle=False))
    assert torch.equal(a.scores((X[15:], y[15:])), b.scores((X[15:], y[15:])))


def test_same_weights_twice_and_bad_pairs_are_refused(mlp_data):
    from repro.errors import CheckpointError

    net, X, y = mlp_data
    s = net.state_dict()
    with pytest.raises(CheckpointError, match="same weights"):
        TracInCP(net, [(s, 0.1), (s, 0.1)])
    with pytest.raises(TypeError, match="state dict or a weights path"):
        TracInCP(net, [(3, 0.1)])
    with pytest.raises(ReproError, match="must be a finite number|must be >= 0"):
        TracInCP(net, [(s, float("nan"))])


def test_bare_linear_as_the_whole_model_uses_hooks_without_error():
    torch.manual_seed(1)
    lin = nn.Linear(5, 3)
    X, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    for method in ("auto", "hooks", "vmap", "loop"):
        g = per_example_grads(lin, (X, y), "all", method=method)
        assert torch.allclose(g, raw_grads(lin, X, y, ["weight", "bias"]), atol=1e-6), method
    tr = TracInCP(lin, [(lin.state_dict(), 1.0)], params="last", progress=False).fit((X, y))
    assert torch.allclose(tr.scores((X[:2], y[:2])), brute_tracin(lin, [(lin.state_dict(), 1.0)], X[:2], y[:2], X, y,
                                                                   ["weight", "bias"]), atol=1e-6)


def test_output_transformed_after_last_linear_falls_back_from_the_fast_path():
    """A model that scales its logits after the last linear layer: the factorised last-layer form
    would be wrong, so "auto" must notice and compute real gradients."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(6, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return 2.5 * self.head(torch.tanh(self.body(x)))

    torch.manual_seed(2)
    net = Scaled()
    X, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    with pytest.warns(RuntimeWarning, match="fast path does not apply"):
        tr = TracInCP(net, [(net.state_dict(), 1.0)], params="last", progress=False).fit((X, y))
    want = brute_tracin(net, [(net.state_dict(), 1.0)], X[:3], y[:3], X, y, ["head.weight", "head.bias"])
    assert torch.allclose(tr.scores((X[:3], y[:3])), want, atol=1e-6)


def test_influence_function_on_a_plain_module_matches_the_explicit_inverse_hessian(mlp_data):
    net, X, y = mlp_data
    names = ["3.weight", "3.bias"]
    inf = InfluenceFunction(net, (X[:15], y[:15]), params="last", solver="exact", damping=0.01, progress=False)
    got = inf.scores((X[15:], y[15:]))
    # explicit Hessian of the mean training loss w.r.t. the last layer, by double autograd
    m = copy.deepcopy(net).eval()
    w, b = m[3].weight, m[3].bias

    def mean_loss(flat):
        W = flat[:w.numel()].reshape(w.shape)
        B = flat[w.numel():]
        h = m[2](m[1](m[0](X[:15])))
        return F.cross_entropy(h @ W.T + B, y[:15])

    theta = torch.cat([w.detach().reshape(-1), b.detach()]).double().float()
    H = torch.autograd.functional.hessian(mean_loss, theta)
    H = H + 0.01 * torch.eye(len(theta))
    g_te = raw_grads(net, X[15:], y[15:], names)
    g_tr = raw_grads(net, X[:15], y[:15], names)
    want = g_te @ torch.linalg.solve(H, g_tr.T)  # helpful = positive
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=24, max_position_embeddings=16, num_labels=3,
                                  attn_implementation="eager")
    torch.manual_seed(3)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(5, 40, (10, 7))
    mask = torch.ones_like(ids)
    mask[::3, 5:] = 0  # some padding
    ids[mask == 0] = 0
    y = torch.randint(0, 3, (10,))
    return model, {"input_ids": ids, "attention_mask": mask}, y


def test_hugging_face_model_raw_tracincp_last_and_all(tiny_bert):
    model, inputs, y = tiny_bert
    ckpts = [(s, 0.1) for s in perturbed_states(model, 2, scale=0.05, seed=4)]
    tr_in = {k: v[:7] for k, v in inputs.items()}
    te_in = {k: v[7:] for k, v in inputs.items()}
    for params, names in (("last", ["classifier.weight", "classifier.bias"]),
                          (["bert.encoder.layer.0.output.dense.weight"], ["bert.encoder.layer.0.output.dense.weight"])):
        tr = TracInCP(model, ckpts, params=params, progress=False).fit((tr_in, y[:7]))
        want = brute_tracin(model, ckpts, te_in, y[7:], tr_in, y[:7], names)
        assert torch.allclose(tr.scores((te_in, y[7:])), want, rtol=1e-4, atol=1e-6), params


def test_hugging_face_model_tracin_we_matches_the_embedding_gradient_dot_product(tiny_bert):
    from repro.influence import TracInWE

    model, inputs, y = tiny_bert
    we = TracInWE(model, None, exclude_special=[], progress=False).fit((inputs, y))
    got = we.scores(({k: v[:3] for k, v in inputs.items()}, y[:3]))
    # brute force: gradient w.r.t. the whole word-embedding matrix (non-padding rows only matter:
    # padding positions use token 0, whose row is the embedding's padding_idx and is not counted)
    G = raw_grads(model, inputs, y, ["bert.embeddings.word_embeddings.weight"]).reshape(10, 40, -1)
    G[:, 0] = 0
    want = G[:3].reshape(3, -1) @ G.reshape(10, -1).T
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_torchvision_resnet_last_layer_influence_uses_the_fc_input():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(5)
    net = tv.models.resnet18(num_classes=3).eval()
    X, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    tr = TracInCP(net, [(net.state_dict(), 1.0)], params="last", progress=False).fit((X, y))
    want = brute_tracin(net, [(net.state_dict(), 1.0)], X[:2], y[:2], X, y, ["fc.weight", "fc.bias"])
    assert torch.allclose(tr.scores((X[:2], y[:2])), want, rtol=1e-4, atol=1e-6)
    ll = LastLayerInfluence(net, (X, y), damping=0.1)
    assert ll.scores((X[:2], y[:2])).shape == (2, 8) and torch.isfinite(ll.scores((X[:2], y[:2]))).all()


def test_trainer_trains_a_plain_module_and_tracin_reads_its_run(mlp_data, tmp_path):
    from repro.train import TrainConfig, Trainer

    net, X, y = mlp_data
    net = copy.deepcopy(net)
    res = Trainer(net, TrainConfig(epochs=2, lr=0.1, batch_size=5, seed=0, device="cpu", progress=False),
                  tmp_path / "run").fit((X[:15], y[:15]))
    assert len(res.checkpoints) == 2
    tr = TracInCP(net, tmp_path / "run", params="all", progress=False).fit((X[:15], y[:15]))
    # the run's checkpoints hold the wrapped names; load them into raw copies for the brute force
    states = []
    for ck in res.checkpoints:
        from repro.train import _load_weights
        states.append(({k[len("module."):]: v for k, v in _load_weights(ck.path).items()}, ck.lr))
    want = brute_tracin(net, states, X[15:], y[15:], X[:15], y[:15], [n for n, _ in net.named_parameters()])
    assert torch.allclose(tr.scores((X[15:], y[15:])), want, rtol=1e-5, atol=1e-6)


def test_named_errors_for_foreign_models_and_data(mlp_data):
    from repro.data import load

    net, X, y = mlp_data
    with pytest.raises(TypeError, match="cannot encode a repro"):
        TracInCP(net, [(net.state_dict(), 1.0)], progress=False).fit(load("fashion_mnist", n=20, seed=0))
    with pytest.raises(ReproError, match="no nn.Linear"):
        TracInCP(nn.Sequential(nn.Flatten(), nn.Conv1d(1, 1, 1)), [({}, 1.0)], params="last")
    with pytest.raises(TypeError, match="labels must be a 1-D integer"):
        TracInCP(net, [(net.state_dict(), 1.0)], progress=False).fit((X, y.float()))
    with pytest.raises(ValueError, match="rows but there are"):
        TracInCP(net, [(net.state_dict(), 1.0)], progress=False).fit((X, y[:5]))


def test_fastif_workers_take_any_module(mlp_data):
    """The parallel s_test ships the module itself to the workers (no spec to rebuild from)."""
    from repro.influence import FastIF

    net, X, y = mlp_data
    kw = dict(k=10, params="all", scale=50.0, damp=0.01, depth=20, batch_size=1, seed=3, progress=False)
    test = (X[15:17], y[15:17])
    seq = FastIF(net, (X[:15], y[:15]), repetitions=2, **kw).candidates(test, keep_s_test=True)
    par = FastIF(net, (X[:15], y[:15]), repetitions=1, workers=2, **kw).candidates(test, keep_s_test=True)
    assert par.timings["workers"] == 2
    torch.testing.assert_close(par.s_test, seq.s_test, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(par.scores, seq.scores, rtol=1e-5, atol=1e-6 * float(seq.scores.abs().max()))


def _readme_example(name: str) -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split(f"<!-- example: {name} -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    return block


@pytest.mark.parametrize("name", ["plain", "huggingface"])
def test_readme_examples_run_as_written(name):
    """The README's "use it on your own model" examples, executed verbatim (at most 6 lines from
    import to top-k); their top-k must agree with the score matrix."""
    code = _readme_example(name)
    assert len(code.strip().splitlines()) <= 6
    env: dict = {}
    exec(compile(code, f"README:{name}", "exec"), env)
    top = env["top"]
    assert top["proponents"].shape[1] == top["proponent_scores"].shape[1] > 0
    assert torch.all(top["proponent_scores"][:, :-1] >= top["proponent_scores"][:, 1:])
    assert torch.all(top["opponent_scores"][:, :1] <= top["proponent_scores"][:, -1:])
