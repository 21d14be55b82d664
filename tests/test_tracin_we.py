"""Ground-truth tests of TracIn-WE: the sparse shared-token sum equals the dense embedding-matrix
gradient dot product (brute-force autograd per example), zero without shared tokens, top-k
approaches the full score, word attributions sum to the score, lr weighting over checkpoints,
another BERT-family model, and the cancellation ratio."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repro.data import TextDataset, load
from repro.influence import NotFittedError, per_example_grads
from repro.influence.tracin_we import (TokenGrads, TracInWE, cancellation_ratio,
                                       cancellation_ratio_from_grads, position_grads, sparse_dot,
                                       token_grads)
from repro.models import text_classifier
from repro.train import TrainConfig, Trainer, list_checkpoints


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """MiniLM fine-tuned 2 epochs on 8 SNLI pairs with a step schedule: 2 checkpoints, lrs 1e-3, 5e-4."""
    run_dir = tmp_path_factory.mktemp("we_run")
    model = text_classifier(num_classes=3, max_length=32, seed=0)
    train = load("snli", n=8, seed=1)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3, optimizer="adamw", schedule="step", milestones=[1],
                      gamma=0.5, progress=False, device="cpu", seed=0)
    Trainer(model, cfg, run_dir).fit(train)
    test = load("snli", split="test", n=3, seed=0)
    fresh = text_classifier(num_classes=3, max_length=32, seed=1)  # other head: checkpoints must be used
    return dict(run_dir=run_dir, cks=list_checkpoints(run_dir), model=fresh, train_ds=train, test_ds=test,
                train=fresh.encode(train), test=fresh.encode(test))


def dense_scores(model, cks, weights, train, test, emb_name, zero_rows=()):
    """Brute force: sum_c w_c <dL_test/dE, dL_train/dE> with the full V x H gradient of each example
    (one autograd call per example), special rows zeroed when asked."""
    m = copy.deepcopy(model).eval()
    params = dict(m.named_parameters())
    zero_rows = torch.as_tensor(list(zero_rows), dtype=torch.int64)

    def grad(ex):
        loss = F.cross_entropy(m(**ex.inputs), ex.labels)
        (g,) = torch.autograd.grad(loss, [params[emb_name]])
        if len(zero_rows):
            g[zero_rows] = 0
        return g

    out = torch.zeros(len(test), len(train), dtype=torch.float64)
    for ck, w in zip(cks, weights):
        if ck is not None:
            ck.load_into(m)
        te = [grad(test[i]) for i in range(len(test))]
        for j in range(len(train)):
            g = grad(train[j])
            for i in range(len(test)):
                out[i, j] += w * float((te[i].double() * g.double()).sum())
    return out.float()


def close(a, b, rtol=1e-4):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


EMB = "encoder.embeddings.word_embeddings.weight"


# ---------------------------------------------------------------------------- position gradients
def test_batched_position_grads_equal_per_example_autograd(run):
    m, b = copy.deepcopy(run["model"]).eval(), run["train"]
    assert len(set(b.inputs["attention_mask"].sum(1).tolist())) > 1  # padding really occurs
    g = position_grads(m, b)
    for i in range(len(b)):
        ex = b[i]  # trimmed to its own length: nothing else in the batch
        with torch.enable_grad():
            leaf = m.word_embeddings(ex.inputs["input_ids"]).detach().requires_grad_(True)
            # the classifier run on precomputed word embeddings (inputs_embeds), one example
            out = m.encoder(inputs_embeds=leaf, attention_mask=ex.inputs["attention_mask"],
                            token_type_ids=ex.inputs["token_type_ids"])
            loss = F.cross_entropy(m.classifier(m.drop(out.pooler_output)), ex.labels)
            (want,) = torch.autograd.grad(loss, leaf)
        L = want.shape[1]
        close(g[i, :L], want[0], rtol=1e-4)
        assert float(g[i, L:].abs().max()) == 0 if L < g.shape[1] else True  # padding positions


# ---------------------------------------------------------------------------- sparse = dense
@pytest.mark.parametrize("exclude_special", [True, False])
def test_sparse_equals_dense_embedding_gradient_dot(run, exclude_special):
    m = run["model"]
    train, test = run["train"][torch.arange(4)], run["test"][torch.arange(2)]
    # two lr-weighted checkpoints with the special tokens excluded, the last one alone without
    cks = run["cks"] if exclude_special else run["cks"][-1:]
    we = TracInWE(m, cks, exclude_special=exclude_special, progress=False).fit(train)
    zero = m.special_token_ids() if exclude_special else ()
    want = dense_scores(m, cks, [c.lr for c in cks], train, test, EMB, zero)
    close(we.scores(test), want, rtol=1e-3)


def test_explicit_exclusion_list(run):
    m = run["model"]
    train, test = run["train"][torch.arange(3)], run["test"][torch.arange(1)]
    # exclude [CLS], [SEP] and the most frequent word piece of the test example
    ids = test.inputs["input_ids"][0]
    word = int(ids[1])
    excl = [m.tokenizer.cls_token_id, m.tokenizer.sep_token_id, word]
    we = TracInWE(m, run["cks"][-1], lr_weighting=False, exclude_special=excl, progress=False).fit(train)
    assert word in we.excluded_ids and 0 in we.excluded_ids  # padding_idx always excluded
    want = dense_scores(m, [run["cks"][-1]], [1.0], train, test, EMB, excl)
    close(we.scores(test), want, rtol=1e-3)


def test_zero_without_shared_tokens(run):
    m = run["model"]
    mk = lambda texts, start: TextDataset("toy", "train", np.array([0] * len(texts)),
                                          np.arange(start, start + len(texts)), ("a", "b", "c"),
                                          texts=np.array(texts, dtype=object))
    a, b = mk(["apple banana orchard"], 0), mk(["zebra quantum violin"], 1)
    toks_a = set(m.tokenizer(str(a.texts[0]))["input_ids"]) - set(m.special_token_ids())
    toks_b = set(m.tokenizer(str(b.texts[0]))["input_ids"]) - set(m.special_token_ids())
    assert toks_a and toks_b and not toks_a & toks_b
    we = TracInWE(m, run["cks"], progress=False).fit(a)
    assert float(we.scores(b)[0, 0]) == 0.0
    assert we.word_attributions(b, 0) == []
    # with special tokens counted, [CLS] and [SEP] are shared
    we_all = TracInWE(m, run["cks"], exclude_special=False, progress=False).fit(a)
    s = float(we_all.scores(b)[0, 0])
    assert s != 0.0
    names = [t for t, _ in we_all.word_attributions(b, 0)]
    assert sorted(names) == ["[CLS]", "[SEP]"]


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoints_combine_as_lr_weighted_sum(run):
    m, train, test = run["model"], run["train"], run["test"]
    cks = run["cks"]
    assert len(cks) == 2 and cks[0].lr != cks[1].lr
    per = [TracInWE(m, ck, lr_weighting=False, progress=False).fit(train).scores(test) for ck in cks]
    full = TracInWE(m, run["run_dir"], progress=False).fit(train).scores(test)
    close(full, cks[0].lr * per[0] + cks[1].lr * per[1])
    mean = TracInWE(m, cks, lr_weighting="mean", progress=False).fit(train).scores(test)
    close(mean, cks[0].lr_mean * per[0] + cks[1].lr_mean * per[1])
    plain = TracInWE(m, cks, lr_weighting=False, progress=False).fit(train).scores(test)
    close(plain, per[0] + per[1])


def test_self_influence_top_k_and_caller_model(run):
    m, train, test = run["model"], run["train"], run["test"]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    we = TracInWE(m, run["cks"], progress=False).fit(train)
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    m.eval()
    si = we.self_influence()
    assert (si >= 0).all()
    close(si, torch.diagonal(we.scores(train)), rtol=1e-4)
    s = we.scores(test)
    top = we.top_k(test, k=3)
    assert torch.equal(top["proponents"], train.ids[s.argsort(1, descending=True)[:, :3]])
    assert torch.equal(top["opponents"], train.ids[s.argsort(1)[:, :3]])
    assert torch.equal(top["test_ids"], test.ids) and torch.equal(we.train_ids, train.ids)


def test_word_attributions_sum_to_score(run):
    m, train, test = run["model"], run["train"], run["test"]
    for k in (None, 3):
        we = TracInWE(m, run["cks"], top_k_tokens=k, progress=False).fit(train)
        s = we.scores(test)
        for j in (0, 5):
            att = we.word_attributions(test[0], int(train.ids[j]))
            assert att, "SNLI pairs share at least one word piece here"
            mags = [abs(v) for _, v in att]
            assert mags == sorted(mags, reverse=True)
            assert all(isinstance(t, str) and not t.startswith("[") for t, _ in att)
            assert sum(v for _, v in att) == pytest.approx(float(s[0, j]), rel=1e-4, abs=1e-9)
        # a training example given as data (not by id) gives the same terms
        by_data = dict(we.word_attributions(test[0], train[5]))
        assert by_data == pytest.approx(dict(we.word_attributions(test[0], int(train.ids[5]))), rel=1e-5)


# ---------------------------------------------------------------------------- top-k
def test_top_k_tokens_approach_full(run):
    m, train, test = run["model"], run["train"], run["test"]
    ck = run["cks"][-1]
    full = TracInWE(m, ck, progress=False).fit(train)
    s_full = full.scores(test).flatten()
    # the top-k rows are the k largest-norm rows of each example
    rows = full._rows[0]
    top3 = rows.top_k(3)
    for i in range(len(train)):
        norms = rows.rows[rows.ex == i].norm(dim=1)
        kept = top3.rows[top3.ex == i].norm(dim=1)
        assert len(kept) == min(3, len(norms))
        close(kept.sort(descending=True).values, norms.sort(descending=True).values[:3])
    max_tokens = int(torch.bincount(rows.ex).max())
    corrs = []
    for k in (1, 3, 6, 12):
        s_k = TracInWE(m, ck, top_k_tokens=k, progress=False).fit(train).scores(test).flatten()
        c = np.corrcoef(s_k.numpy(), s_full.numpy())[0, 1] if s_k.std() > 0 else 0.0  # all zero: 0
        corrs.append(float(c))
    assert corrs == sorted(corrs) and corrs[-1] > 0.95 and corrs[0] < corrs[-1]
    for k in (max_tokens, max_tokens + 10):
        s_k = TracInWE(m, ck, top_k_tokens=k, progress=False).fit(train).scores(test).flatten()
        torch.testing.assert_close(s_k, s_full, rtol=0, atol=0)


# ---------------------------------------------------------------------------- pairwise kernel
def _random_token_grads(n, vocab, h, seed):
    g = torch.Generator().manual_seed(seed)
    ex, tok = [], []
    for i in range(n):
        t = torch.randperm(vocab, generator=g)[: int(torch.randint(1, vocab, (1,), generator=g))]
        ex.append(torch.full((len(t),), i))
        tok.append(t.sort().values)
    ex, tok = torch.cat(ex), torch.cat(tok)
    return TokenGrads(ex, tok, torch.randn(len(ex), h, generator=g), n)


def _dense(tg, vocab):
    d = torch.zeros(tg.n, vocab, tg.rows.shape[1])
    d[tg.ex, tg.tok] = tg.rows
    return d.reshape(tg.n, -1)


@pytest.mark.parametrize("heavy_pairs,pair_chunk", [(0, 4096), (10**9, 7), (6, 50)])
def test_sparse_dot_routes_equal_dense(heavy_pairs, pair_chunk):
    vocab, h = 12, 5
    te, tr = _random_token_grads(7, vocab, h, 0), _random_token_grads(11, vocab, h, 1)
    want = _dense(te, vocab) @ _dense(tr, vocab).T
    got = sparse_dot(te, tr, heavy_pairs=heavy_pairs, pair_chunk=pair_chunk)
    close(got, want, rtol=1e-5)
    # accumulation with a weight
    got2 = sparse_dot(te, tr, out=got.clone(), alpha=-0.5, heavy_pairs=heavy_pairs, pair_chunk=pair_chunk)
    close(got2, 0.5 * want, rtol=1e-5)


# ---------------------------------------------------------------------------- other BERT models
class TinyBert(nn.Module):
    """A randomly initialised 2-layer BERT (hidden 32) with a linear head: not a ReproModel, no
    ``word_embeddings`` property; its embeddings are found through ``get_input_embeddings``."""

    def __init__(self, tokenizer):
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.bert = BertModel(cfg)
            self.head = nn.Linear(32, 3)
        self.tokenizer = tokenizer

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self.head(out.pooler_output)


def test_any_bert_family_model(run):
    tiny = TinyBert(run["model"].tokenizer)
    train, test = run["train"][torch.arange(4)], run["test"][torch.arange(2)]
    we = TracInWE(tiny, None, progress=False).fit(train)  # None: current weights, weight 1
    want = dense_scores(tiny, [None], [1.0], train, test, "bert.embeddings.word_embeddings.weight",
                        run["model"].special_token_ids())
    close(we.scores(test), want, rtol=1e-3)
    att = we.word_attributions(test[0], int(train.ids[1]))
    assert sum(v for _, v in att) == pytest.approx(float(we.scores(test)[0, 1]), rel=1e-4, abs=1e-12)


# ---------------------------------------------------------------------------- cancellation ratio
def test_cancellation_ratio_formula_by_hand():
    assert cancellation_ratio_from_grads(torch.tensor([[3.0, 4.0], [0.0, 0.0]])) == pytest.approx(1.0)
    assert cancellation_ratio_from_grads(torch.tensor([[3.0, 4.0], [6.0, 8.0]])) == pytest.approx(1.0)
    assert cancellation_ratio_from_grads(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(2 / 2 ** 0.5)
    # norms 5 + 3 = 8, sum (0, 4): ratio 2
    assert cancellation_ratio_from_grads(torch.tensor([[3.0, 4.0], [-3.0, 0.0]])) == pytest.approx(2.0)
    assert cancellation_ratio_from_grads(torch.tensor([[1.0, 2.0], [-1.0, -2.0]])) == float("inf")
    # decomposition: ratio = orthogonal part x beyond-orthogonal part
    ortho = cancellation_ratio_from_grads(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), parts=True)
    assert ortho["orthogonal_ratio"] == pytest.approx(2 ** 0.5) and ortho["beyond_orthogonal"] == pytest.approx(1.0)
    d = cancellation_ratio_from_grads(torch.tensor([[3.0, 4.0], [-3.0, 0.0]]), parts=True)
    assert d["ratio"] == pytest.approx(2.0) and d["sum_of_norms"] == pytest.approx(8.0)
    assert d["norm_of_sum"] == pytest.approx(4.0) and d["orthogonal_ratio"] == pytest.approx(8 / 34 ** 0.5)
    assert d["orthogonal_ratio"] * d["beyond_orthogonal"] == pytest.approx(d["ratio"])
    assert cancellation_ratio_from_grads(torch.tensor([[3.0, 4.0], [6.0, 8.0]]), parts=True)["beyond_orthogonal"] < 1


def test_cancellation_ratio_of_blocks(run):
    m = copy.deepcopy(run["model"])
    run["cks"][-1].load_into(m)
    batch = run["train"][torch.arange(3)]
    last = cancellation_ratio(m, batch, "last")
    assert last == pytest.approx(cancellation_ratio_from_grads(per_example_grads(m, batch, "last")), rel=1e-6)
    # embeddings: the sparse route equals the dense per-example gradients of the V x H matrix
    emb = cancellation_ratio(m, batch, "embeddings")
    m.eval()
    w = m.word_embeddings.weight
    norms, sq, total = 0.0, 0.0, torch.zeros_like(w, dtype=torch.float64)
    for i in range(len(batch)):
        ex = batch[i]
        (g,) = torch.autograd.grad(F.cross_entropy(m(**ex.inputs), ex.labels), [w])
        norms += float(g.double().norm())
        sq += float(g.double().norm()) ** 2
        total += g.double()
    assert emb == pytest.approx(norms / float(total.norm()), rel=1e-4)
    parts = cancellation_ratio(m, batch, "embeddings", parts=True)
    assert parts["ratio"] == pytest.approx(emb, rel=1e-9)
    assert parts["norm_of_sum"] == pytest.approx(float(total.norm()), rel=1e-4)
    assert parts["orthogonal_ratio"] == pytest.approx(norms / sq ** 0.5, rel=1e-4)
    assert parts["orthogonal_ratio"] * parts["beyond_orthogonal"] == pytest.approx(emb, rel=1e-9)
    assert emb >= 1.0 and last >= 1.0
    assert cancellation_ratio(m, batch, [EMB]) == pytest.approx(emb, rel=1e-6)
    assert cancellation_ratio(m, batch, "embeddings", exclude_special=True) != pytest.approx(emb, rel=1e-6)


# ---------------------------------------------------------------------------- errors
def test_not_fitted_and_bad_arguments(run):
    m = run["model"]
    we = TracInWE(m, run["cks"], progress=False)
    with pytest.raises(NotFittedError):
        we.scores(run["test"])
    with pytest.raises(ValueError, match="lr_weighting"):
        TracInWE(m, run["cks"], lr_weighting="bogus")
    with pytest.raises(ValueError, match="top_k_tokens"):
        TracInWE(m, run["cks"], top_k_tokens=0)
    we.fit(run["train"])
    with pytest.raises(KeyError):
        we.word_attributions(run["test"][0], 10**9)
    with pytest.raises(ValueError, match="single example"):
        we.word_attributions(run["test"], int(run["train"].ids[0]))
    with pytest.raises(TypeError):
        token_grads(m, run["train"], exclude_special="yes")
