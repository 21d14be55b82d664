"""Cheaper NLI training on 2 CPU cores: length-bucketed mini-batches (``group_by_length``) and the
frozen lower layers of the text classifier computed once (``TextClassifier.cache_frozen``).

Ground truths: the bucketed order is checked against its definition (each example once, far smaller
length spread than plain shuffling, the default order is the old one); the cached batch against the
uncached model (logits, per-example gradients, a Hessian-vector product, one training epoch)."""
import numpy as np
import pytest
import torch

from repro.data import load
from repro.data.core import Batch
from repro.errors import InvalidParameterError
from repro.influence.fastif import compute_features
from repro.influence.grads import batch_grad, per_example_grads
from repro.influence.hessian import TrainingObjective
from repro.models import text_classifier, vgg, word_cnn
from repro.train import TrainConfig, Trainer, evaluate, predict

pytestmark = pytest.mark.usefixtures("one_thread")


def _text_batch(n: int, max_len: int = 64, seed: int = 0) -> Batch:
    """A token batch with random lengths in [4, max_len] (right padding, as the tokenizer gives)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, max_len + 1, size=n)
    mask = torch.from_numpy((np.arange(max_len)[None, :] < lengths[:, None]).astype(np.int64))
    ids = torch.randint(5, 1000, (n, max_len), generator=torch.Generator().manual_seed(seed)) * mask
    return Batch({"input_ids": ids, "attention_mask": mask}, torch.zeros(n, dtype=torch.long),
                 torch.arange(100, 100 + n))


def _spread(batches) -> float:
    """Mean over mini-batches of (longest - shortest) member."""
    spreads = []
    for mb in batches:
        lens = mb.inputs["attention_mask"].sum(1)
        spreads.append(int(lens.max() - lens.min()))
    return float(np.mean(spreads))


# ---------------------------------------------------------------------------- group_by_length
def test_grouped_batches_cover_every_example_once_and_keep_the_step_count():
    data = _text_batch(1003)
    for bs, group in [(16, 50), (32, 3), (7, 1)]:
        batches = list(data.batches(bs, shuffle_seed=5, group_by_length=True, group_batches=group))
        ids = torch.cat([mb.ids for mb in batches])
        assert sorted(ids.tolist()) == data.ids.tolist()  # each example exactly once
        assert len(batches) == -(-len(data) // bs)  # same number of optimizer steps as plain shuffling
        assert sum(len(mb) < bs for mb in batches) <= 1


def test_grouped_batches_have_a_much_smaller_length_spread_and_trim_padding():
    data = _text_batch(2000)
    plain = list(data.batches(16, shuffle_seed=1))
    grouped = list(data.batches(16, shuffle_seed=1, group_by_length=True))
    s_plain, s_grouped = _spread(plain), _spread(grouped)
    assert s_plain > 40  # uniform lengths in [4, 64]: a batch of 16 spans most of the range
    assert s_grouped < 0.1 * s_plain, (s_plain, s_grouped)
    cells = lambda bs: sum(mb.inputs["input_ids"].numel() for mb in bs)  # noqa: E731
    assert cells(grouped) < 0.7 * cells(plain)  # padding trimmed to each batch's longest member
    # the batches are shuffled: not sorted by length across the epoch
    first = [int(mb.inputs["attention_mask"].sum(1).max()) for mb in grouped]
    assert first != sorted(first) and first != sorted(first, reverse=True)


def test_grouped_batches_are_a_function_of_the_seed():
    data = _text_batch(500)
    a = [mb.ids for mb in data.batches(8, shuffle_seed=3, group_by_length=True)]
    b = [mb.ids for mb in data.batches(8, shuffle_seed=3, group_by_length=True)]
    c = [mb.ids for mb in data.batches(8, shuffle_seed=4, group_by_length=True)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_default_order_is_the_plain_seeded_permutation():
    data = _text_batch(103)
    order = torch.randperm(103, generator=torch.Generator().manual_seed(11))  # the order before the option
    got = list(data.batches(10, shuffle_seed=11))
    assert len(got) == 11
    for k, mb in enumerate(got):
        assert torch.equal(mb.ids, data.ids[order[10 * k:10 * k + 10]])
        assert torch.equal(mb.inputs["input_ids"], data[order[10 * k:10 * k + 10]].inputs["input_ids"])


def test_group_by_length_needs_text_inputs_and_a_seed():
    images = Batch({"pixel_values": torch.zeros(4, 1, 28, 28)}, torch.zeros(4, dtype=torch.long), torch.arange(4))
    with pytest.raises(InvalidParameterError, match="attention_mask"):
        list(images.batches(2, shuffle_seed=0, group_by_length=True))
    with pytest.raises(InvalidParameterError, match="shuffle_seed"):
        list(_text_batch(8).batches(2, group_by_length=True))
    cfg = TrainConfig(epochs=1, group_by_length=True, progress=False)
    with pytest.raises(InvalidParameterError, match="attention_mask"):
        Trainer(vgg(num_classes=10, width=0.125, seed=0), cfg).fit(images)
    with pytest.raises(InvalidParameterError, match="group_by_length"):
        TrainConfig(group_by_length="yes")
    with pytest.raises(InvalidParameterError, match="length_group_batches"):
        TrainConfig(group_by_length=True, length_group_batches=0)


def test_config_record_unchanged_without_group_by_length():
    off = TrainConfig().to_dict()
    assert "group_by_length" not in off and "length_group_batches" not in off  # old run records still match
    on = TrainConfig(group_by_length=True, length_group_batches=20).to_dict()
    assert on["group_by_length"] is True and on["length_group_batches"] == 20


@pytest.fixture(scope="module")
def snli_small():
    return load("snli", n=48, seed=0)


def _cnn(train):
    return word_cnn(train, num_classes=3, max_length=32, seed=0)


def test_training_with_group_by_length_is_deterministic_and_resumes_exactly(tmp_path, snli_small):
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=4, length_group_batches=3, group_by_length=True,
                      progress=False)
    a, b = _cnn(snli_small), _cnn(snli_small)
    Trainer(a, cfg).fit(snli_small)
    Trainer(b, cfg).fit(snli_small)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    plain = _cnn(snli_small)
    Trainer(plain, TrainConfig(epochs=2, lr=0.05, batch_size=4, progress=False)).fit(snli_small)
    assert not torch.equal(plain.fc.weight, a.fc.weight)  # the option does change the order
    part = _cnn(snli_small)
    Trainer(part, cfg, tmp_path / "run").fit(snli_small, until_epoch=1)
    fresh = _cnn(snli_small)
    res = Trainer(fresh, cfg, tmp_path / "run").fit(snli_small)
    assert res.resumed_from_epoch == 1
    for (k, x), y in zip(a.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(x, y), k


# ---------------------------------------------------------------------------- cached frozen layers
@pytest.fixture(scope="module")
def minilm():
    """MiniLM with its top 2 layers trained, 16 SNLI pairs of at most 32 tokens, and their cache."""
    ds = load("snli", n=16, seed=0)
    model = text_classifier(num_classes=3, max_length=32, train_top_layers=2, frozen_in_eval=True, seed=0).eval()
    batch = model.encode(ds)
    return model, ds, batch, model.cache_frozen(ds, batch_size=5)


def test_cached_batch_holds_the_frozen_output_and_trims_padding(minilm):
    model, ds, batch, cached = minilm
    assert torch.equal(cached.ids, batch.ids) and torch.equal(cached.labels, batch.labels)
    width = int(batch.inputs["attention_mask"].sum(1).max())
    assert cached.inputs["hidden_states"].shape == (16, width, 384)
    assert cached.inputs["frozen_layers"].tolist() == [4] * 16 and model.num_frozen_layers == 4
    idx = torch.argsort(batch.inputs["attention_mask"].sum(1))[:3]  # the three shortest pairs
    sub, tok = cached[idx], batch[idx]
    assert sub.inputs["hidden_states"].shape[1] == int(tok.inputs["attention_mask"].sum(1).max()) < width
    # ground truth: the 4th layer's output, from the encoder's own hidden states
    with torch.no_grad():
        out = model.encoder(input_ids=tok.inputs["input_ids"], attention_mask=tok.inputs["attention_mask"],
                            token_type_ids=tok.inputs["token_type_ids"], output_hidden_states=True)
    real = tok.inputs["attention_mask"].bool()
    assert torch.allclose(sub.inputs["hidden_states"][real], out.hidden_states[4][real], atol=1e-5)
    again = model.cache_frozen(batch, batch_size=16)  # chunking does not matter
    assert torch.allclose(again.inputs["hidden_states"], cached.inputs["hidden_states"], atol=1e-5)


def test_cached_logits_features_and_predict_equal_the_uncached_model(minilm):
    model, ds, batch, cached = minilm
    with torch.no_grad():
        assert torch.allclose(model(**cached.inputs), model(**batch.inputs), atol=1e-5)
        idx = torch.tensor([0, 2, 3, 11])
        assert torch.allclose(model(**cached[idx].inputs), model(**batch[idx].inputs), atol=1e-5)
    assert torch.allclose(compute_features(model, cached, batch_size=6), compute_features(model, batch, 6), atol=1e-5)
    assert torch.allclose(predict(model, cached, batch_size=7), predict(model, ds, batch_size=7), atol=1e-5)
    assert evaluate(model, cached)["loss"] == pytest.approx(evaluate(model, batch)["loss"], abs=1e-5)


@pytest.mark.parametrize("method", ["auto", "loop", "vmap"])
def test_cached_per_example_grads_equal_the_uncached_ones(minilm, method):
    model, _, batch, cached = minilm
    idx = torch.arange(4) if method != "auto" else torch.arange(16)
    ref = per_example_grads(model, batch[idx], params="trainable", method="auto")
    got = per_example_grads(model, cached[idx], params="trainable", method=method)
    assert ref.shape == got.shape and ref.abs().max() > 1e-3
    assert torch.allclose(got, ref, atol=1e-5)


def test_cached_batch_grad_and_hessian_vector_product_equal_the_uncached_ones(minilm):
    model, _, batch, cached = minilm
    assert torch.allclose(batch_grad(model, cached, params="trainable", batch_size=6),
                          batch_grad(model, batch, params="trainable", batch_size=6), atol=1e-5)
    sub = torch.arange(8)
    ref_obj = TrainingObjective(model, batch[sub], params="trainable", weight_decay=0.01)
    got_obj = TrainingObjective(model, cached[sub], params="trainable", weight_decay=0.01)
    v = torch.randn(ref_obj.dim, generator=torch.Generator().manual_seed(0))
    ref, got = ref_obj.hvp(v), got_obj.hvp(v)
    assert ref.abs().max() > 1e-3
    assert torch.allclose(got, ref, atol=1e-5)


def test_one_training_epoch_on_the_cache_equals_the_uncached_epoch(minilm):
    """Dropout stays on in the trained top layers and the head (same seed, same draws); the frozen
    part runs in eval mode in both (frozen_in_eval=True)."""
    _, ds, _, _ = minilm
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=4, optimizer="adamw", progress=False, seed=3)
    weights = []
    for cached in (False, True):
        m = text_classifier(num_classes=3, max_length=32, train_top_layers=2, frozen_in_eval=True, seed=0)
        data = m.cache_frozen(ds) if cached else ds
        Trainer(m, cfg).fit(data)
        weights.append({k: v.clone() for k, v in m.state_dict().items()})
    moved = (weights[0]["classifier.weight"] - minilm[0].classifier.weight).abs().max()
    assert moved > 1e-4  # it did train
    for k in weights[0]:
        if k.endswith("attention.self.key.bias"):
            # the softmax ignores a shift shared by all keys: this bias's gradient is exactly 0 and
            # numerically rounding noise, which AdamW's normalisation turns into lr-sized steps
            # that differ with the summation order; it does not change any output
            continue
        assert torch.allclose(weights[0][k], weights[1][k], atol=1e-5), k


def test_cache_misuse_raises_named_errors(minilm):
    model, ds, batch, cached = minilm
    with pytest.raises(InvalidParameterError, match="frozen parameter"):
        per_example_grads(model, cached[torch.arange(2)], params=["encoder.encoder.layer.0.output.dense"])
    with pytest.raises(InvalidParameterError, match="frozen parameter"), pytest.warns(RuntimeWarning):
        per_example_grads(model, cached[torch.arange(2)], params="all")  # vmap fails, the loop names it
    with pytest.raises(InvalidParameterError, match="frozen parameter"):
        batch_grad(model, cached, params="embeddings")
    with pytest.raises(InvalidParameterError, match="either input_ids or cached"):
        model(input_ids=batch.inputs["input_ids"], **cached.inputs)
    with pytest.raises(InvalidParameterError, match="already holds"):
        model.cache_frozen(cached)
    bad = Batch({**cached.inputs, "frozen_layers": torch.full((16,), 3)}, cached.labels, cached.ids)
    with pytest.raises(InvalidParameterError, match="cache them again"):
        model(**bad.inputs)
    with pytest.raises(InvalidParameterError, match="frozen_in_eval"):
        text_classifier(num_classes=3, max_length=32, frozen_in_eval=True)
    plain = text_classifier(num_classes=3, max_length=32, seed=0)
    with pytest.raises(InvalidParameterError, match="train_top_layers"):
        plain.cache_frozen(ds)
    with dropout_everywhere(model):  # a model whose frozen part trains with dropout
        with pytest.raises(InvalidParameterError, match="frozen_in_eval=True"):
            Trainer(model, TrainConfig(epochs=1, progress=False)).fit(cached)


class dropout_everywhere:
    """Pretend the model was built without frozen_in_eval (restored on exit)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.model.spec.pop("frozen_in_eval")
        self.state = {k: v.clone() for k, v in self.model.state_dict().items()}

    def __exit__(self, *exc):
        self.model.spec["frozen_in_eval"] = True
        self.model.load_state_dict(self.state)
        self.model.eval()
        return False


def test_spec_gains_frozen_in_eval_only_when_set(minilm):
    model = minilm[0]
    assert model.spec["frozen_in_eval"] is True
    model.train()
    assert not model.encoder.embeddings.training and not model.encoder.encoder.layer[3].training
    assert model.encoder.encoder.layer[4].training and model.drop.training
    model.eval()
    plain = text_classifier(num_classes=3, max_length=32, train_top_layers=2, seed=0)
    assert "frozen_in_eval" not in plain.spec
    plain.train()
    assert plain.encoder.embeddings.training
