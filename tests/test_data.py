"""Loaders return real data offline, ids are stable, label noise flips exactly the reported ids."""
import json
import time

import numpy as np
import pytest
import torch

from repro.data import Batch, flip_labels, load
from repro.data.registry import OFFLINE_DIR
from repro.errors import DataUnavailableError, EmptyDatasetError, UnknownNameError

EXPECTED = {  # name: (n_train, n_test, classes)
    "fashion_mnist": (12_000, 3_000, 10),
    "mnist": (8_000, 2_000, 10),
    "snli": (20_000, 9_824, 3),
    "snli2": (20_000, 9_824, 2),
    "spam": (4_837, 1_209, 2),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_offline_loaders_return_real_data(name):
    n_train, n_test, k = EXPECTED[name]
    train, test = load(name, "train"), load(name, "test")
    assert (len(train), len(test)) == (n_train, n_test)
    assert train.num_classes == k and set(np.unique(train.labels)) == set(range(k))
    assert len(np.unique(train.ids)) == len(train) and len(np.unique(test.ids)) == len(test)
    assert not set(train.ids) & set(test.ids)
    if hasattr(train, "images") and train.images is not None:
        assert train.images.dtype == np.uint8 and train.images.shape[1:] == (1, 28, 28)
        assert train.images.std() > 40  # real pictures, not blanks
    else:
        lengths = [len(t) for t in train.texts[:200]]
        assert min(lengths) > 0 and np.mean(lengths) > 20


def test_known_content():
    snli = load("snli", "test")
    # SNLI test pair ids are line numbers of the source file (+1,000,000), stable across loads
    first = snli.select_ids([1_000_000])
    assert first.texts[0].startswith("This church choir sings to the masses")
    assert snli.classes[first.labels[0]] == "neutral"
    snli2 = load("snli2", "test")
    assert np.array_equal(snli2.labels, (snli.labels != 0).astype(int))
    spam = load("spam", "train")
    assert not any(t.lower().startswith(("received:", "return-path:")) for t in spam.texts)  # headers stripped


def test_provenance_lists_every_source():
    prov = json.loads((OFFLINE_DIR / "PROVENANCE.json").read_text())
    for name in ("fashion_mnist", "mnist", "snli", "spam"):
        assert len(prov[name]["sha256"]) == 64 and prov[name]["licence"] and prov[name]["source"]


def test_ids_survive_subsetting_shuffling_and_batching():
    full = load("fashion_mnist", "train")
    sub = load("fashion_mnist", "train", n=500, seed=3)
    pos = full.positions(sub.ids)
    assert np.array_equal(full.images[pos], sub.images) and np.array_equal(full.labels[pos], sub.labels)
    shuffled = sub.shuffled(seed=1)
    assert not np.array_equal(shuffled.ids, sub.ids)
    back = shuffled.select_ids(sub.ids)
    assert np.array_equal(back.images, sub.images)
    batch = Batch({"x": torch.from_numpy(sub.images)}, torch.from_numpy(sub.labels), torch.from_numpy(sub.ids))
    seen = []
    for mb in batch.batches(64, shuffle_seed=7):
        for i, x in zip(mb.ids.tolist(), mb.inputs["x"]):
            assert torch.equal(x, torch.from_numpy(full.images[full.positions([i])[0]]))
            seen.append(i)
    assert sorted(seen) == sorted(sub.ids.tolist())
    # the same n and seed give the same subset; another seed another
    assert np.array_equal(load("fashion_mnist", n=500, seed=3).ids, sub.ids)
    assert not np.array_equal(load("fashion_mnist", n=500, seed=4).ids, sub.ids)


def test_stratified_sample_keeps_proportions():
    ds = load("spam", "train", n=300, seed=0, stratify=True)
    full = load("spam", "train")
    assert abs(ds.labels.mean() - full.labels.mean()) < 0.01


def test_exclude_by_id():
    ds = load("mnist", "train", n=100)
    drop = ds.ids[[0, 5, 9]]
    kept = ds.exclude(drop)
    assert len(kept) == 97 and not set(drop) & set(kept.ids)
    with pytest.raises(KeyError, match="not in"):
        ds.exclude([123456789])
    with pytest.raises(EmptyDatasetError):
        ds.exclude(ds.ids)


@pytest.mark.parametrize("mode", ["uniform", "class_conditional"])
def test_label_noise_flips_exactly_the_reported_ids(mode):
    ds = load("fashion_mnist", "train", n=2000, seed=1)
    noisy, flipped = flip_labels(ds, 0.2, mode=mode, seed=5)
    changed = ds.ids[noisy.labels != ds.labels]
    assert np.array_equal(np.sort(changed), flipped)
    assert abs(len(flipped) - 400) <= 10
    assert np.array_equal(noisy.ids, ds.ids) and np.array_equal(ds.labels, load("fashion_mnist", n=2000, seed=1).labels)
    if mode == "class_conditional":  # pair flipping c -> c+1
        pos = ds.positions(flipped)
        assert np.all(noisy.labels[pos] == (ds.labels[pos] + 1) % 10)
    again, flipped2 = flip_labels(ds, 0.2, mode=mode, seed=5)
    assert np.array_equal(flipped, flipped2) and np.array_equal(again.labels, noisy.labels)


def test_label_noise_with_transition_matrix():
    ds = load("snli", "train", n=900, seed=0)
    T = np.array([[0, 1, 0], [0.5, 0, 0.5], [1, 0, 0]])
    noisy, flipped = flip_labels(ds, 0.3, mode="class_conditional", transition=T, seed=0)
    pos = ds.positions(flipped)
    old, new = ds.labels[pos], noisy.labels[pos]
    assert np.all(new != old) and np.all(new[old == 0] == 1) and np.all(new[old == 2] == 0)
    with pytest.raises(ValueError):
        flip_labels(ds, 0.3, mode="class_conditional", transition=np.eye(3))
    with pytest.raises(UnknownNameError):
        flip_labels(ds, 0.3, mode="bogus")


def test_bad_names_and_hub_without_network_fail_fast_and_clearly():
    with pytest.raises(UnknownNameError, match="unknown dataset 'cifar100'.*fashion_mnist"):
        load("cifar100")
    with pytest.raises(UnknownNameError, match="split"):
        load("mnist", "validation")
    with pytest.raises(DataUnavailableError, match="no embedded offline copy"):
        load("mnli", source="offline")
    for name in ("mnli", "ag_news", "cifar10", "hans"):
        t0 = time.perf_counter()
        with pytest.raises(DataUnavailableError, match="internet"):
            load(name, source="hub")
        assert time.perf_counter() - t0 < 15


def test_hans_style_data_through_the_registry():
    ev, tr = load("hans", "test"), load("hans", "train")
    assert ev.classes == ("entailment", "non-entailment") and len(ev) == 3000
    assert not set(ev.ids) & set(tr.ids)
    assert set(ev.extra["heuristic"]) == {"lexical_overlap", "subsequence", "constituent"}
    sub = ev.subset(np.arange(10))
    assert len(sub.extra["subcase"]) == 10
