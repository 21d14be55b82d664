"""Ground truth for the word-embedding CNN and masked deletion: padding never changes the logits, the
vocabulary remap, TracIn-WE on the CNN equals the dense embedding-matrix gradient product, last-layer
and middle-layer TracIn equal brute-force gradient products, masked training equals dropping the
examples from the same mini-batch order, and the batched trainer equals one-at-a-time training."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from repro.data import load
from repro.errors import EmptyDatasetError, ReproError
from repro.experiments import deletion as D
from repro.influence.tracin_we import TracInWE, cancellation_ratio
from repro.models import build_model, word_cnn
from repro.models.cnn import PAD, UNK, build_vocab
from repro.multitrain import masked_fit, stacked_predict, unstack, weight_matrix
from repro.train import TrainConfig, Trainer, list_checkpoints
from brute import brute_grads

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = TrainConfig(epochs=2, batch_size=8, lr=0.05, momentum=0.9, device="cpu", progress=False, seed=3)


@pytest.fixture(scope="module")
def data():
    train = load("snli2", n=36, seed=2)
    test = load("snli2", split="test", n=4, seed=0)
    vocab = build_vocab(train, max_length=32)
    return dict(train=train, test=test, vocab=vocab)


def small(data, seed=0, **kw):
    return word_cnn(vocab=data["vocab"], num_classes=2, max_length=32, emb_dim=8, filters=6, seed=seed, **kw)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cnn_run")
    model = small(data)
    Trainer(model, CFG, run_dir).fit(data["train"])
    return dict(run_dir=run_dir, cks=list_checkpoints(run_dir), model=small(data, seed=5))


def test_padding_and_batch_mates_do_not_change_logits(data):
    m = small(data).eval()
    b = m.encode(data["train"])
    assert len(set(b.inputs["attention_mask"].sum(1).tolist())) > 1
    together = m(**b.inputs)  # padded to max_length
    for i in range(len(b)):
        alone = b[i]  # trimmed to its own length
        torch.testing.assert_close(m(**alone.inputs)[0], together[i], rtol=1e-5, atol=1e-6)


def test_vocab_remap_and_spec_roundtrip(data):
    m = small(data)
    tok = m.tokenizer
    b = m.encode(data["train"])
    wp = tok(str(data["train"].texts[0]), str(data["train"].pairs[0]), truncation=True, max_length=32)["input_ids"]
    want = [m.spec["vocab"].index(t) + 2 for t in wp]
    assert b.inputs["input_ids"][0, :len(wp)].tolist() == want
    assert (b.inputs["input_ids"][0, len(wp):] == PAD).all()
    # a word that never occurs in the training texts maps to the unknown row
    unseen = [i for i in range(1000, len(tok)) if i not in set(m.spec["vocab"])][0]
    assert int(m.remap[unseen]) == UNK
    assert m.convert_ids_to_tokens([want[1]]) == tok.convert_ids_to_tokens([wp[1]])
    specials = m.special_token_ids()
    assert {PAD, UNK, m.spec["vocab"].index(tok.cls_token_id) + 2} <= set(specials)
    again = build_model(m.spec, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(again.state_dict().values(), m.state_dict().values()))
    with pytest.raises(ValueError, match="odd"):
        word_cnn(vocab=data["vocab"], num_classes=2, kernel_sizes=(4,))
    with pytest.raises(ReproError, match="vocab"):
        word_cnn(vocab=[], num_classes=2)


def _dense_grads(model, batch, names):
    return brute_grads(model, batch, names).double()


def _brute_tracin(model, cks, train, test, names, zero_rows=None, weights=None):
    out = torch.zeros(len(test), len(train), dtype=torch.float64)
    m = copy.deepcopy(model)
    for c, ck in enumerate(cks):
        ck.load_into(m)
        gt, gr = _dense_grads(m, test, names), _dense_grads(m, train, names)
        if zero_rows is not None:  # embedding matrix: zero the excluded rows
            H = m.embedding.weight.shape[1]
            gt = gt.view(len(test), -1, H).clone()
            gr = gr.view(len(train), -1, H).clone()
            gt[:, zero_rows] = 0
            gr[:, zero_rows] = 0
            gt, gr = gt.flatten(1), gr.flatten(1)
        w = 1.0 if weights is None else weights[c]
        out += w * gt @ gr.T
    return out.float()


def close(a, b, rtol=1e-4):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


def test_tracin_we_on_the_cnn_equals_dense_embedding_gradient_product(data, run):
    m, cks = run["model"], run["cks"]
    train, test = m.encode(data["train"]), m.encode(data["test"])
    lrs = [c.lr for c in cks]
    we = TracInWE(m, cks, exclude_special=False, progress=False).fit(train).scores(test)
    close(we, _brute_tracin(m, cks, train, test, ["embedding.weight"], weights=lrs))
    specials = m.special_token_ids()
    we_x = D.method_scores("tracin_we", m, cks, train, test)  # special rows excluded (default)
    close(we_x, _brute_tracin(m, cks, train, test, ["embedding.weight"], zero_rows=specials, weights=lrs))
    two = D.method_scores("tracin_we_2ck", m, cks, train, test)  # 2 of 2 checkpoints, weight 1
    close(two, _brute_tracin(m, cks, train, test, ["embedding.weight"], zero_rows=specials))
    # word attributions name WordPiece strings and sum to the score
    w = TracInWE(m, cks, progress=False).fit(train)
    attr = w.word_attributions(test[0], int(train.ids[3]))
    contrib = w.token_contributions(test[0], int(train.ids[3]))
    by_abs = sorted(contrib, key=lambda t: -abs(contrib[t]))
    assert [t for t, _ in attr] == m.convert_ids_to_tokens(by_abs)  # WordPiece strings of the remapped rows
    assert sum(v for _, v in attr) == pytest.approx(float(we_x[0, 3]), rel=1e-4, abs=1e-7)


def test_last_and_middle_layer_tracin_on_the_cnn_equal_brute_force(data, run):
    m, cks = run["model"], run["cks"]
    train, test = m.encode(data["train"]), m.encode(data["test"])
    lrs = [c.lr for c in cks]
    last = D.method_scores("tracin_last", m, cks, train, test)
    close(last, _brute_tracin(m, cks, train, test, ["fc.weight", "fc.bias"], weights=lrs))
    mid = D.method_scores("tracin_middle", m, cks, train, test)
    assert m.param_group("middle") == ["convs.1.weight", "convs.1.bias"]
    close(mid, _brute_tracin(m, cks, train, test, ["convs.1.weight", "convs.1.bias"], weights=lrs))
    final = copy.deepcopy(m)
    cks[-1].load_into(final)
    assert cancellation_ratio(final, train, params="last") >= 1.0
    assert cancellation_ratio(final, train, params="embeddings") >= 1.0


def _drop_and_rederive(model, cfg, train, deleted):
    """Reference implementation of "dropping": the full run's shuffled order with the deleted
    examples struck out of every mini-batch, mean loss of what is left, torch SGD with momentum."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    model.train()
    keep_ids = set(int(i) for i in train.ids) - set(int(i) for i in deleted)
    for epoch in range(1, cfg.epochs + 1):
        g = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        order = torch.randperm(len(train), generator=g)
        for s in range(0, len(train), cfg.batch_size):
            idx = [int(i) for i in order[s:s + cfg.batch_size] if int(train.ids[i]) in keep_ids]
            if not idx:
                continue
            mb = train[torch.tensor(idx)]
            loss = F.cross_entropy(model(**mb.inputs), mb.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_masked_training_equals_dropping_with_the_order_rederived(data):
    m0 = small(data)
    train = m0.encode(data["train"])
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(CFG.seed * 7919 + 1))
    # delete a whole first mini-batch of epoch 1 (a step with nothing left) plus two other examples
    deleted = train.ids[order[:CFG.batch_size]].tolist() + train.ids[order[-2:]].tolist()
    masked = copy.deepcopy(m0)
    Trainer(masked, CFG).fit(train, masked_ids=deleted)
    ref = _drop_and_rederive(copy.deepcopy(m0), CFG, train, deleted)
    for (n, a), b in zip(masked.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    # weight 0 is not a no-op: the result differs from the full run
    full = copy.deepcopy(m0)
    Trainer(full, CFG).fit(train)
    assert not torch.allclose(full.fc.weight, masked.fc.weight)
    with pytest.raises(KeyError, match="masked"):
        Trainer(copy.deepcopy(m0), CFG).fit(train, masked_ids=[-5])
    with pytest.raises(EmptyDatasetError):
        Trainer(copy.deepcopy(m0), CFG).fit(train, masked_ids=train.ids.tolist())


ADAMW = TrainConfig(epochs=2, batch_size=8, lr=0.01, optimizer="adamw", weight_decay=0.05, device="cpu",
                    progress=False, seed=3)


@pytest.mark.parametrize("cfg", [CFG, ADAMW], ids=["sgd_momentum", "adamw"])
def test_batched_masked_training_equals_one_at_a_time(data, cfg):
    m0 = small(data)
    train, test = m0.encode(data["train"]), m0.encode(data["test"])
    ids = train.ids.tolist()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 7919 + 1))
    first_batch = train.ids[order[:cfg.batch_size]].tolist()  # this copy skips a step (own step count)
    sets = [[], ids[:3], ids[5:13], first_batch]
    W = weight_matrix(train.ids, sets)
    assert W.sum(1).tolist() == [len(ids), len(ids) - 3, len(ids) - 8, len(ids) - cfg.batch_size]
    stacked = masked_fit(copy.deepcopy(m0), cfg, train, W)
    logits = stacked_predict(m0, stacked, test)
    for j, s in enumerate(sets):
        one = copy.deepcopy(m0)
        Trainer(one, cfg).fit(train, masked_ids=s or None)
        got = unstack(copy.deepcopy(m0), stacked, j)
        for (n, a), b in zip(got.named_parameters(), one.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)
        torch.testing.assert_close(logits[j], one(**test.inputs), rtol=1e-4, atol=1e-5)
        if j:  # a deletion really changes the copy
            assert not torch.allclose(logits[j], logits[0], atol=1e-6)
    with pytest.raises(ReproError, match="clip"):
        masked_fit(m0, dataclasses_replace(cfg, max_grad_norm=1.0), train, W)
    with pytest.raises(KeyError):
        weight_matrix(train.ids, [[-1]])


def test_case_deletion_with_masked_retraining_and_shared_random_sets(data, run):
    m = run["model"]
    train, test = m.encode(data["train"]), m.encode(data["test"])
    init = lambda seed: small(data, seed=seed)
    rt = D.make_retrain(init, CFG)
    scores = {"tracin_we": D.method_scores("tracin_we", m, run["cks"], train, test)}
    f = D.case_deletion(scores, train, test, rt, ks=(2,), seeds=(0, 1), test_positions=[0, 1, 2],
                        n_random_sets=2, progress=False)
    rnd = f[f.method == "random"]
    # random sets: shared by all test examples, distinct across reps, the same for both seeds
    for (k, d, rep), g in rnd.groupby(["k", "direction", "rep"]):
        assert len(set(g.deleted_ids)) == 1
    assert rnd.groupby(["direction", "rep"]).ngroups == 4
    # p and log-odds columns agree; the before-model is the full-data retraining of the seed
    np.testing.assert_allclose(f.dlogodds, D.logodds(f.p_after) - D.logodds(f.p_before), rtol=1e-9)
    pos_of = {int(t): i for i, t in enumerate(test.ids.tolist())}
    for seed in (0, 1):
        p_full = D._label_probs(rt(train, seed), test)
        for tid, p0 in f[f.seed == seed].groupby("test_id").p_before.first().items():
            assert p0 == pytest.approx(p_full[pos_of[tid]], rel=1e-12)
    # a masked retraining really is Trainer(masked_ids=...) of the init of its seed
    row = f[(f.method == "tracin_we") & (f.seed == 1)].iloc[0]
    m1 = init(1)
    Trainer(m1, dataclasses_replace(CFG, seed=1)).fit(train, masked_ids=list(row.deleted_ids))
    pos = int(np.flatnonzero(test.ids.numpy() == row.test_id)[0])
    assert D._label_probs(m1, test)[pos] == pytest.approx(row.p_after, rel=1e-6)
    with pytest.raises(ValueError, match="not both"):
        D.case_deletion({"random": scores["tracin_we"]}, train, test, rt, ks=(2,), n_random_sets=1)


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_paired_stats_arithmetic():
    import pandas as pd

    rows = []
    # 4 test examples, 2 seeds; we lowers p by 0.1 more than last on proponents
    for t in range(4):
        for seed in (0, 1):
            base = 0.01 * t + 0.001 * seed
            for m, dp, do in (("we", -0.2 - base, 0.05), ("last", -0.1 - base, 0.04), ("random", -base, 0.0)):
                rows.append(dict(test_id=t, method=m, direction="proponents", k=3, seed=seed, rep=0, delta=dp))
                rows.append(dict(test_id=t, method=m, direction="opponents", k=3, seed=seed, rep=0, delta=do))
    f = pd.DataFrame(rows)
    s = D.paired_stats(f, reference="we", n_resamples=200).set_index(["method", "direction"])
    assert s.loc[("last", "proponents"), "ref_adv"] == pytest.approx(0.1)
    assert s.loc[("last", "proponents"), "ref_adv_lo"] == pytest.approx(0.1)  # constant difference
    assert s.loc[("last", "opponents"), "ref_adv"] == pytest.approx(0.01)
    assert s.loc[("we", "proponents"), "excess"] == pytest.approx(-0.2)
    assert s.loc[("last", "proponents"), "ratio"] == pytest.approx((-0.2 - 0.0155) / (-0.1 - 0.0155))
    assert s.loc[("we", "proponents"), "n"] == 4
    pooled = D.pooled_advantage(f, "we", "last", "proponents", n_resamples=200)
    assert pooled["advantage"] == pytest.approx(0.1) and pooled["n"] == 4
    assert pooled["ratio"] == pytest.approx((-0.2 - 0.0155) / (-0.1 - 0.0155))
    with pytest.raises(KeyError):
        D.pooled_advantage(f, "we", "nope", "proponents")
