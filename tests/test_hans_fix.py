"""The HANS correction loop: with a first-order (gradient-dot) scorer, one step on the most helpful
points lowers the HANS-style loss and one on the most harmful raises it; per-heuristic evaluation."""
import numpy as np
import pytest

from repro.data import load
from repro.experiments.hans_fix import (HansSplit, correction_experiment, correction_gains, correction_run,
                                        correction_summary,
                                        paired_contrast, per_heuristic, split_anchor_test)
from repro.influence import batch_grad, per_example_grads
from repro.models import text_classifier


@pytest.fixture(scope="module")
def setup():
    model = text_classifier(num_classes=2, max_length=40, train_top_layers=0, seed=0).eval()
    pool = load("snli2", n=40, seed=0)
    hans = load("hans", "test").sample(300, seed=0, stratify=True)
    anchors, test = split_anchor_test(hans, 0.5, seed=0)
    return model, pool, anchors, test


def make_scorer(pool):
    def grad_dot_scorer(model, anchors):
        g = batch_grad(model, anchors, params="trainable")
        rows = per_example_grads(model, pool, params="trainable")
        return np.arange(len(pool)), (rows @ g).numpy()  # positive = a step on it lowers the anchor loss
    return grad_dot_scorer


def test_split_is_disjoint_and_stratified(setup):
    _, _, anchors, test = setup
    assert not set(anchors.ids) & set(test.ids)
    assert set(anchors.extra["subcase"]) == set(test.extra["subcase"])


def test_helpful_step_lowers_and_harmful_raises_the_loss(setup):
    model, pool, anchors, test = setup
    ends = {}
    for mode in ("helpful", "harmful", "random", "anchors"):
        runs = correction_run(model, pool, anchors, test, "lexical_overlap", mode, make_scorer(pool), steps=1,
                              anchors_per_step=len(anchors), per_step=5, lr=1e-3, seed=0)
        assert set(runs.step) == {0, 1} and set(runs.heuristic) == {"lexical_overlap", "subsequence", "constituent"}
        ends[mode] = runs
    start = ends["helpful"][ends["helpful"].step == 0]
    loss = lambda mode: ends[mode][ends[mode].step == 1]["loss"].mean()
    assert loss("helpful") < start["loss"].mean() < loss("harmful")
    # the control steps on the anchors themselves: the anchors' own heuristic loss falls
    own = lambda mode, step: ends[mode][(ends[mode].step == step) & (ends[mode].heuristic == "lexical_overlap")]
    assert own("anchors", 1)["loss"].item() < own("anchors", 0)["loss"].item()
    all_runs = pd_concat(ends.values())
    summary = correction_summary(all_runs)
    assert set(summary["mode"]) == {"helpful", "harmful", "random", "anchors"}
    gains = correction_gains(all_runs)
    diff = paired_contrast(gains, "helpful", "harmful", metric="loss")
    expected = (own("helpful", 1)["loss"].item() - own("harmful", 1)["loss"].item())
    assert diff["diff"].item() == pytest.approx(expected)


def test_replicas_see_the_same_anchors_in_every_mode(setup):
    model, pool, anchors, test = setup
    seen = {}

    def recording_scorer(mode):
        def scorer(m, anchor_batch):
            seen.setdefault(mode, []).append(anchor_batch.ids.tolist())
            return np.arange(len(pool)), np.zeros(len(pool))
        return scorer
    for mode in ("helpful", "harmful"):
        correction_run(model, pool, anchors, test, "subsequence", mode, recording_scorer(mode), steps=2,
                       anchors_per_step=4, per_step=2, lr=0.0, seed=3, anchor_label=1)
    assert seen["helpful"] == seen["harmful"] and len(seen["helpful"]) == 2
    hans_split = HansSplit.from_dataset(model, anchors)
    labels = dict(zip(hans_split.batch.ids.tolist(), hans_split.labels.tolist()))
    heur = dict(zip(hans_split.batch.ids.tolist(), hans_split.heuristic.tolist()))
    assert all(labels[i] == 1 and heur[i] == "subsequence" for step in seen["helpful"] for i in step)


def pd_concat(frames):
    import pandas as pd
    return pd.concat(list(frames), ignore_index=True)


def test_per_heuristic_table(setup):
    model, _, _, test = setup
    table = per_heuristic(model, test)
    assert set(table.heuristic) == {"lexical_overlap", "subsequence", "constituent"}
    assert table.n.sum() == len(test) and table.accuracy.between(0, 1).all()
    # the length-sorted model-ready split gives the same table
    split_table = per_heuristic(model, HansSplit.from_dataset(model, test))
    pd_testing = __import__("pandas").testing
    pd_testing.assert_frame_equal(table, split_table, check_exact=False, rtol=1e-5)


def test_forked_workers_give_the_same_runs(setup):
    """correction_experiment in 2 forked workers returns exactly the rows of the in-process run."""
    model, pool, anchors, test = setup
    kw = dict(modes=("helpful", "random"), replicas=2, steps=1, anchors_per_step=6, per_step=3, lr=1e-3,
              progress=False)
    one = correction_experiment(model, pool, anchors, test, make_scorer(pool), ["lexical_overlap"], workers=1, **kw)
    two = correction_experiment(model, pool, anchors, test, make_scorer(pool), ["lexical_overlap"], workers=2, **kw)
    assert len(one) == 2 * 2 * 2 * 3  # modes x replicas x steps 0-1 x test heuristics
    __import__("pandas").testing.assert_frame_equal(one, two)
