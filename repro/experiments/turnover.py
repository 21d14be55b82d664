"""Protocols of the turn-over dropout replication (notebooks/turnover_cleansing.ipynb).

* :func:`cleansing` -- rank training instances by turn-over influence summed over a validation set,
  remove the k most harmful, retrain from scratch, compare test accuracy with no removal and with
  removing k random instances (and k by any other ranking, e.g. :func:`removal_rankings`), over
  several seeds.
* :func:`explain` -- the most helpful / harmful training instances of given test examples.

Ground truths that measure influence (same initialisation and mini-batch order, only the removed
examples weighted 0) live in :mod:`repro.experiments.loo` (fixed-order leave-one-out with its noise
ceiling) and :mod:`repro.experiments.lds` (linear datamodeling score over random subsets). (Retraining
without an example on a fresh shuffle, as an earlier version here did, measures mostly the reshuffle.)
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from repro.data.core import Dataset
from repro.distributed import shard
from repro.errors import InvalidParameterError
from repro.influence.turnover import TurnOverInfluence
from repro.train import TrainConfig, Trainer, evaluate
from repro.utils import progress as _progress

ModelFactory = Callable[[int], torch.nn.Module]  # seed -> fresh model


def train_fresh(make_model: ModelFactory, train: Dataset, cfg: TrainConfig, seed: int, eval=None):
    """A new model (initialised from ``seed``) trained on ``train`` with ``cfg`` (its seed replaced)."""
    model = make_model(seed)
    cfg = TrainConfig(**{**cfg.__dict__, "seed": seed, "progress": False})
    res = Trainer(model, cfg).fit(train, eval=eval)
    return model, res


def _check_rankings(rankings: dict | None, train: Dataset, ks: Sequence[int]) -> dict:
    out = {}
    for name, order in (rankings or {}).items():
        if name in ("none", "harmful", "random"):
            raise InvalidParameterError(f"ranking name {name!r} is taken by a built-in method; rename it")
        order = np.asarray(order, dtype=np.int64).reshape(-1)
        if len(np.unique(order)) != len(order):
            raise InvalidParameterError(f"ranking {name!r} lists some ids twice")
        missing = np.setdiff1d(order, train.ids)
        if len(missing):
            raise KeyError(f"ranking {name!r}: {len(missing)} id(s) not in the training set: {missing[:10].tolist()}")
        if ks and len(order) < max(ks):
            raise InvalidParameterError(f"ranking {name!r} has {len(order)} ids but k goes up to {max(ks)}")
        out[name] = order
    return out


def cleansing(make_model: ModelFactory, train: Dataset, val: Dataset, test: Dataset, cfg: TrainConfig,
              ks: Sequence[int], seeds: Sequence[int], flipped_ids=None, influence_seed: int = 0,
              progress: bool = True, rankings: dict | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Data cleansing with turn-over influence.

    Trains one turn-over model (seed ``influence_seed``), sums its influence over ``val`` for every
    training instance, then for every seed retrains from scratch on (a) all data, (b) all but the k
    most harmful (most negative summed influence), (c) all but k random instances, and (d) for
    every entry ``name: ids`` of ``rankings`` (training ids, the first to remove first; e.g. from
    :func:`removal_rankings`), all but its first k.

    Returns ``(rows, summed_influence)``: one row per (method, k, seed) with test accuracy and loss,
    and how many removed instances were injected label flips (``flipped_ids``)."""
    extra = _check_rankings(rankings, train, ks)
    model, _ = train_fresh(make_model, train, cfg, influence_seed)
    summed = TurnOverInfluence(model, progress=False).summed(val, train).numpy()
    harmful_order = train.ids[np.argsort(summed)]  # most negative first
    flipped = set(np.asarray(flipped_ids if flipped_ids is not None else [], dtype=np.int64).tolist())
    rows = []
    jobs = [("none", 0)] + [(m, k) for k in ks for m in ("harmful", "random", *extra)]
    bar = _progress(total=len(jobs) * len(seeds), desc="cleansing retrains", disable=not progress)
    for seed in seeds:
        rng = np.random.default_rng(10_000 + seed)
        for method, k in jobs:
            if method == "none":
                removed = np.array([], dtype=np.int64)
            elif method == "harmful":
                removed = harmful_order[:k]
            elif method == "random":
                removed = rng.choice(train.ids, size=k, replace=False)
            else:
                removed = extra[method][:k]
            kept = train.exclude(removed) if len(removed) else train
            m, _ = train_fresh(make_model, kept, cfg, seed)
            ev = evaluate(m, test)
            rows.append({"method": method, "k": k, "seed": seed, "test_accuracy": ev["accuracy"],
                         "test_loss": ev["loss"], "removed_flipped": len(flipped.intersection(removed.tolist())),
                         "n_train": len(kept)})
            bar.update()
    bar.close()
    return pd.DataFrame(rows), summed


def removal_rankings(model, train: Dataset, checkpoints=None,
                     tracin_params="last") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Orders of training ids to remove (the first to remove first) from one trained turn-over
    model, for :func:`cleansing` (``rankings=``) and for label-noise detection:

    * ``"turn-over self-influence"``: largest I(z_i -> z_i) first;
    * ``"tracin self-influence"`` (when ``checkpoints`` are given): largest TracInCP self-influence
      over ``tracin_params`` first;
    * ``"loss"``: largest training loss of ``model`` (no masks) first.

    Returns ``(orders, scores)``: ``orders[name]`` the ids to pass as ``cleansing(rankings=orders)``,
    ``scores[name]`` the scores aligned with ``train.ids`` (e.g. for :func:`flip_detection_auc`)."""
    from repro.influence import TracInCP
    from repro.train import predict

    import torch.nn.functional as F

    scores = {"turn-over self-influence": TurnOverInfluence(model, progress=False).self_influence(train).numpy()}
    if checkpoints is not None:
        tr = shard(TracInCP(model, checkpoints, params=tracin_params, progress=False)).fit(train)
        scores["tracin self-influence"] = tr.self_influence().numpy()
    logits = predict(model, train)
    scores["loss"] = F.cross_entropy(logits, torch.from_numpy(train.labels), reduction="none").numpy()
    orders = {name: train.ids[np.argsort(-sc, kind="stable")] for name, sc in scores.items()}
    return orders, scores


def flip_detection_auc(scores, train_ids, flipped_ids) -> float:
    """ROC AUC of ``scores`` (higher = more suspicious; aligned with ``train_ids``) for telling the
    injected label flips ``flipped_ids`` from the rest (0.5 = chance)."""
    from sklearn.metrics import roc_auc_score

    is_flip = np.isin(np.asarray(train_ids), np.asarray(flipped_ids))
    if is_flip.all() or not is_flip.any():
        raise InvalidParameterError("flip detection needs both flipped and clean examples among train_ids")
    return float(roc_auc_score(is_flip, np.asarray(scores, dtype=np.float64)))


def cleansing_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per (method, k), with the gain over no removal."""
    base = rows[rows.method == "none"].set_index("seed")["test_accuracy"]
    rows = rows.assign(gain=rows["test_accuracy"] - rows["seed"].map(base))
    agg = rows.groupby(["method", "k"], sort=False).agg(
        acc_mean=("test_accuracy", "mean"), acc_std=("test_accuracy", "std"),
        gain_mean=("gain", "mean"), gain_std=("gain", "std"),
        removed_flipped=("removed_flipped", "mean"), seeds=("seed", "nunique")).reset_index()
    return agg


def explain(model, train: Dataset, test: Dataset, k: int = 3) -> list[dict]:
    """For each test example: its prediction, the k most helpful and k most harmful training ids.

    As in the paper's demo, the harmful list is restricted to training instances whose label equals
    the wrong predicted class when the prediction is wrong."""
    from repro.train import predict

    est = TurnOverInfluence(model, progress=False)
    scores = est.scores(test, train).numpy()
    preds = predict(model, test).argmax(1).numpy()
    out = []
    for t in range(len(test)):
        s = scores[t]
        helpful = np.argsort(-s)[:k]
        pool = np.flatnonzero(train.labels == preds[t]) if preds[t] != test.labels[t] else np.arange(len(train))
        harmful = pool[np.argsort(s[pool])[:k]]
        out.append({"test_pos": t, "test_id": int(test.ids[t]), "label": int(test.labels[t]), "pred": int(preds[t]),
                    "helpful": helpful, "helpful_scores": s[helpful],
                    "harmful": harmful, "harmful_scores": s[harmful]})
    return out
