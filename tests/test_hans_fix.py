"""The HANS correction loop: with a first-order (gradient-dot) scorer, one step on the most helpful
points lowers the HANS-style loss and one on the most harmful raises it; per-heuristic evaluation."""
import numpy as np
import pytest

from repro.data import load
from repro.experiments.hans_fix import (correction_run, correction_summary, per_heuristic,
                                        split_anchor_test)
from repro.influence import batch_grad, per_example_grads
from repro.models import text_classifier


@pytest.fixture(scope="module")
def setup():
    model = text_classifier(num_classes=2, max_length=40, train_top_layers=0, seed=0).eval()
    pool = load("snli2", n=40, seed=0)
    hans = load("hans", "test").sample(300, seed=0, stratify=True)
    anchors, test = split_anchor_test(hans, 0.5, seed=0)
    return model, pool, anchors, test


def grad_dot_scorer(model, anchors, pool):
    g = batch_grad(model, anchors, params="trainable")
    rows = per_example_grads(model, pool, params="trainable")
    return np.arange(len(pool)), (rows @ g).numpy()  # positive = a step on it lowers the anchor loss


def test_split_is_disjoint_and_stratified(setup):
    _, _, anchors, test = setup
    assert not set(anchors.ids) & set(test.ids)
    assert set(anchors.extra["subcase"]) == set(test.extra["subcase"])


def test_helpful_step_lowers_and_harmful_raises_the_loss(setup):
    model, pool, anchors, test = setup
    ends = {}
    for mode in ("helpful", "harmful", "random"):
        runs = correction_run(model, pool, anchors, test, "lexical_overlap", mode, grad_dot_scorer, steps=1,
                              anchors_per_step=len(anchors), per_step=5, lr=1e-3, seed=0)
        assert set(runs.step) == {0, 1} and set(runs.heuristic) == {"lexical_overlap", "subsequence", "constituent"}
        ends[mode] = runs
    start = ends["helpful"][ends["helpful"].step == 0]
    loss = lambda mode: ends[mode][ends[mode].step == 1]["loss"].mean()
    assert loss("helpful") < start["loss"].mean() < loss("harmful")
    summary = correction_summary(pd_concat(ends.values()))
    assert set(summary["mode"]) == {"helpful", "harmful", "random"}


def pd_concat(frames):
    import pandas as pd
    return pd.concat(list(frames), ignore_index=True)


def test_per_heuristic_table(setup):
    model, _, _, test = setup
    table = per_heuristic(model, test)
    assert set(table.heuristic) == {"lexical_overlap", "subsequence", "constituent"}
    assert table.n.sum() == len(test) and table.accuracy.between(0, 1).all()
