"""Case deletion (Yeh et al. 2022, "First is Better Than Last"): first-layer vs last-layer influence.

For every test example and influence method: delete the method's top-k proponents (or opponents) of
that example from the training set, retrain with the same initialization and seed, and measure the
change of the test example's predicted probability of its label (``delta = p_after - p_before``,
``p_before`` from the same retraining on the full training set with the same seed). A good method
has a large negative delta when proponents are deleted (DEL-) and a large positive delta when
opponents are deleted (DEL+); random deletion shows the noise level of retraining.

* :func:`method_scores` -- every method as an ``(n_test, n_train)`` matrix, **positive = proponent**:
  ``tracin_we``, ``tracin_we_topk`` (TracIn-WE through the word embeddings), ``tracin_last``
  (TracInCP on the last layer), ``if_last`` (influence function on the last layer, exact damped
  Hessian), ``representer`` (representer points), ``grad_cos_last`` (cosine of last-layer gradients)
  and ``random``.
* :func:`make_retrain` -- the default retraining: fine-tune a fresh copy of the same start (the
  pretrained encoder, head initialised from a fixed seed) with :class:`repro.train.Trainer`.
* :func:`case_deletion` -- the retraining loop, returning a tidy table.
* :func:`summarize`, :func:`del_table`, :func:`effect_ratios` -- means, DEL-/DEL+ and the ratio of
  TracIn-WE's effect to each other method's (the paper reports 4-10x over last-layer methods).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from repro.errors import UnknownNameError
from repro.influence.grads import as_batch
from repro.influence.lastlayer import LastLayerInfluence, RepresenterPoints
from repro.influence.tracin import TracInCP, resolve_checkpoints
from repro.influence.tracin_we import TracInWE
from repro.train import TrainConfig, Trainer, predict
from repro.utils import progress

__all__ = ["METHODS", "LAST_LAYER_METHODS", "method_scores", "all_method_scores", "make_retrain",
           "top_ids", "case_deletion", "summarize", "del_table", "effect_ratios"]

# method name -> options it accepts (anything else raises: no silently ignored arguments)
_OPTIONS = {
    "tracin_we": {"lr_weighting", "exclude_special", "top_k_tokens", "batch_size", "device", "progress"},
    "tracin_we_topk": {"lr_weighting", "exclude_special", "top_k_tokens", "batch_size", "device", "progress"},
    "tracin_last": {"lr_weighting", "batch_size", "device", "progress"},
    "if_last": {"damping", "batch_size", "device"},
    "representer": {"lam", "max_iter", "batch_size", "device"},
    "grad_cos_last": {"batch_size", "device"},
    "random": {"seed"},
}
METHODS = tuple(_OPTIONS)
LAST_LAYER_METHODS = ("tracin_last", "if_last", "representer", "grad_cos_last")
Retrain = Callable[[object, int], torch.nn.Module]  # (train subset, seed) -> trained model


def _final_model(model, checkpoints):
    """A copy of ``model`` with the weights of the last checkpoint (the model as it is when there
    are no checkpoints), in eval mode."""
    m = copy.deepcopy(model)
    if checkpoints is not None:
        resolve_checkpoints(checkpoints)[-1].load_into(m)
    return m.eval()


def _n(data) -> int:
    return len(data)


def method_scores(name: str, model, checkpoints, train, test, **options) -> torch.Tensor:
    """Influence of every training example on every test example, ``(n_test, n_train)``, float32,
    positive = proponent (helps the test example's label), for every method.

    Args:
        name: one of :data:`METHODS`.
        model: the model the checkpoints belong to (copied, never changed).
        checkpoints: a run folder or Checkpoint(s) (TracIn methods use all of them, in order; the
            others the last one), or ``None`` for the model's current weights.
        train, test: Datasets or encoded Batches (columns / rows in their order).
        options: per method (others raise TypeError):

          * ``tracin_we`` / ``tracin_we_topk``: ``lr_weighting`` (True), ``exclude_special`` (True),
            ``top_k_tokens`` (None / 10), ``batch_size``, ``device``, ``progress``;
          * ``tracin_last``: ``lr_weighting`` (True), ``batch_size``, ``device``, ``progress``;
          * ``if_last``: ``damping`` (1e-3); ``representer``: ``lam`` (1e-3), ``max_iter``;
          * ``grad_cos_last``: cosine of the last-layer loss gradients at the last checkpoint;
          * ``random``: ``seed`` (0): i.i.d. normal scores (top-k = a random set).
    """
    if name not in _OPTIONS:
        raise UnknownNameError(f"unknown method {name!r}; use one of {METHODS}")
    bad = set(options) - _OPTIONS[name]
    if bad:
        raise TypeError(f"method {name!r} takes no option(s) {sorted(bad)}; it takes {sorted(_OPTIONS[name])}")
    o = dict(options)
    if name in ("tracin_we", "tracin_we_topk"):
        if name == "tracin_we_topk":
            o.setdefault("top_k_tokens", 10)
        o.setdefault("progress", False)
        return TracInWE(model, checkpoints, **o).fit(train).scores(test)
    if name == "tracin_last":
        if checkpoints is None:
            raise ValueError("tracin_last needs checkpoints (a run folder or Checkpoint list)")
        o.setdefault("progress", False)
        return TracInCP(model, checkpoints, params="last", **o).fit(train).scores(test)
    if name == "random":
        g = torch.Generator().manual_seed(int(o.get("seed", 0)))
        return torch.randn(_n(test), _n(train), generator=g)
    final = _final_model(model, checkpoints)
    bs = o.pop("batch_size", 256) or 256
    device = o.pop("device", "auto")
    if name == "if_last":
        return LastLayerInfluence(final, train, batch_size=bs, device=device, **o).scores(test).float()
    if name == "representer":
        return RepresenterPoints(final, train, batch_size=bs, device=device, **o).scores(test).float()
    # grad_cos_last: g = (e a^T, e) so g.g' = (e.e')(a.a' + 1) and |g|^2 = |e|^2 (|a|^2 + 1)
    from repro.influence.lastlayer import softmax_errors, features_and_logits

    def factors(data):
        a, logits, batch = features_and_logits(final, data, bs, device)
        e = softmax_errors(logits, batch.labels)
        if final.last_layer.bias is not None:
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
        return e, a

    e_te, a_te = factors(test)
    e_tr, a_tr = factors(train)
    dots = (e_te @ e_tr.T) * (a_te @ a_tr.T)
    n_te = e_te.norm(dim=1) * a_te.norm(dim=1)
    n_tr = e_tr.norm(dim=1) * a_tr.norm(dim=1)
    return (dots / (n_te[:, None] * n_tr[None, :]).clamp_min(1e-30)).float()


def all_method_scores(names: Iterable[str], model, checkpoints, train, test,
                      options: dict[str, dict] | None = None) -> dict[str, torch.Tensor]:
    """:func:`method_scores` for several methods: ``{name: (n_test, n_train)}``; ``options`` maps a
    method name to its keyword options."""
    options = options or {}
    unknown = set(options) - set(names)
    if unknown:
        raise ValueError(f"options given for methods that are not run: {sorted(unknown)}")
    return {m: method_scores(m, model, checkpoints, train, test, **options.get(m, {})) for m in names}


# ---------------------------------------------------------------------------- retraining
def make_retrain(init, config: TrainConfig, init_seed: int | None = None) -> Retrain:
    """The default retraining for case deletion: ``retrain(train_subset, seed) -> trained model``.

    Every retraining starts from the **same initialization** and fine-tunes it with
    :class:`repro.train.Trainer` and ``config`` (its ``seed`` replaced by ``seed``, which fixes the
    shuffling order and dropout noise; no checkpoints are written):

    * ``init`` a model: a deep copy of its current weights (for the text classifier: the pretrained
      encoder and a head initialised once), whatever the seed;
    * ``init`` a callable ``seed -> fresh model``: the model built from ``init_seed`` when given
      (one shared initialization), else from ``seed`` (initialization varies with the seed, as
      "retraining from scratch over several seeds" does).

    Why this is the default: the influence scores explain a fine-tuning run, so the counterfactual
    is the same fine-tuning without the deleted examples. Fine-tuning from the pretrained start for
    the original number of epochs is "retraining from scratch" for a BERT-family model, and is the
    cheapest retraining that keeps the effect: fewer steps blunt the effect of the deleted examples,
    while training only the head would change the model being explained. ``p_before`` comes from the
    same function on the full training set, so the delta isolates the deletion.
    """
    base_cfg = dataclasses.replace(config, progress=False)

    def build(seed: int):
        if isinstance(init, torch.nn.Module):
            return copy.deepcopy(init)
        return init(seed if init_seed is None else init_seed)

    def retrain(train_subset, seed: int):
        model = build(seed)
        Trainer(model, dataclasses.replace(base_cfg, seed=int(seed))).fit(train_subset)
        return model.eval()

    retrain.config = base_cfg  # type: ignore[attr-defined]
    return retrain


# ---------------------------------------------------------------------------- the protocol
def top_ids(scores: torch.Tensor, train_ids, k: int, direction: str) -> np.ndarray:
    """Ids of the ``k`` highest (``"proponents"``) or lowest (``"opponents"``) scores of one row;
    ties broken by training position (stable)."""
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if direction == "proponents":
        order = torch.sort(-s, stable=True).indices
    elif direction == "opponents":
        order = torch.sort(s, stable=True).indices
    else:
        raise UnknownNameError(f"direction must be 'proponents' or 'opponents', got {direction!r}")
    return np.asarray(train_ids)[order[:int(k)].numpy()]


def _label_probs(model, data) -> np.ndarray:
    """Predicted probability of each example's own label (eval mode)."""
    batch = as_batch(model, data)
    logits = predict(model, batch)
    return F.softmax(logits, 1).gather(1, batch.labels.view(-1, 1)).squeeze(1).numpy()


def case_deletion(scores: dict[str, torch.Tensor], train, test, retrain: Retrain, ks: Sequence[int] = (10,),
                  seeds: Sequence[int] = (0,), directions: Sequence[str] = ("proponents", "opponents"),
                  test_positions: Sequence[int] | None = None, show_progress: bool = True) -> pd.DataFrame:
    """Run case deletion for every (test example, method, k, direction, seed).

    Args:
        scores: ``{method: (n_test, n_train)}`` (from :func:`method_scores`), positive = proponent;
            rows follow ``test``, columns ``train``.
        train, test: Datasets (or Batches) with stable ids; the deleted examples are removed with
            ``train.exclude(ids)``.
        retrain: ``(train subset, seed) -> trained model`` (e.g. :func:`make_retrain`).
        ks: numbers of examples to delete.
        seeds: retraining seeds; each seed also gets a full-data model for ``p_before``.
        directions: ``"proponents"`` and/or ``"opponents"``.
        test_positions: which test rows to run (default: all).
        show_progress: progress bar over retrainings.

    Returns a tidy table: ``test_id, method, direction, k, seed, p_before, p_after, delta,
    deleted_ids`` (``delta = p_after - p_before``, probabilities of the test example's label).
    Retrainings with the same (seed, deleted set) are done once and reused (e.g. when two methods
    pick the same examples).
    """
    n_test, n_train = len(test), len(train)
    for m, s in scores.items():
        if tuple(s.shape) != (n_test, n_train):
            raise ValueError(f"scores[{m!r}] has shape {tuple(s.shape)}, expected ({n_test}, {n_train})")
    if max(ks) > n_train - 1:
        raise ValueError(f"k={max(ks)} would delete (almost) the whole training set of {n_train}")
    positions = list(range(n_test)) if test_positions is None else [int(p) for p in test_positions]
    train_ids = np.asarray(train.ids)
    test_ids = np.asarray(test.ids)
    jobs = []
    for seed in seeds:
        for pos in positions:
            for m, s in scores.items():
                for k in ks:
                    for d in directions:
                        jobs.append((seed, pos, m, int(k), d, top_ids(s[pos], train_ids, k, d)))
    unique = {(seed, tuple(sorted(ids.tolist()))) for seed, _, _, _, _, ids in jobs}
    bar = progress(total=len(unique) + len(seeds), desc="case-deletion retrains", disable=not show_progress)
    before: dict[int, np.ndarray] = {}
    after: dict[tuple, np.ndarray] = {}
    for seed in seeds:
        before[seed] = _label_probs(retrain(train, seed), test)
        bar.update(1)
    rows = []
    for seed, pos, m, k, d, ids in jobs:
        key = (seed, tuple(sorted(ids.tolist())))
        if key not in after:
            after[key] = _label_probs(retrain(train.exclude(ids), seed), test)
            bar.update(1)
        p0, p1 = float(before[seed][pos]), float(after[key][pos])
        rows.append({"test_id": int(test_ids[pos]), "method": m, "direction": d, "k": k, "seed": int(seed),
                     "p_before": p0, "p_after": p1, "delta": p1 - p0,
                     "deleted_ids": tuple(int(i) for i in ids)})
    bar.close()
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- summaries
def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation, standard error and count of ``delta`` per (method, direction, k)
    over test examples and seeds."""
    g = frame.groupby(["method", "direction", "k"], sort=False)["delta"]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    out["sem"] = out["std"] / np.sqrt(out["n"])
    return out[["method", "direction", "k", "mean", "std", "sem", "n"]]


def del_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, k): ``del_minus`` = mean delta when the top-k **proponents** are deleted
    (more negative = better), ``del_plus`` = mean delta when the top-k **opponents** are deleted
    (more positive = better), and ``del_gap = del_plus - del_minus`` (larger = better)."""
    s = summarize(frame)
    wide = s.pivot_table(index=["method", "k"], columns="direction", values="mean", sort=False)
    out = pd.DataFrame({"del_minus": wide.get("proponents"), "del_plus": wide.get("opponents")})
    out["del_gap"] = out["del_plus"] - out["del_minus"]
    order = list(dict.fromkeys(frame["method"]))
    out = out.reset_index()
    out["_o"] = out["method"].map({m: i for i, m in enumerate(order)})
    return out.sort_values(["_o", "k"]).drop(columns="_o").reset_index(drop=True)


def effect_ratios(frame: pd.DataFrame, reference: str = "tracin_we", random: str | None = "random") -> pd.DataFrame:
    """How many times larger the reference method's deletion effect is than each other method's,
    per k: ``ratio_minus = del_minus[ref] / del_minus[m]``, ``ratio_plus = del_plus[ref] /
    del_plus[m]`` (the paper's "4-10x" is of this kind), and the same after subtracting the random
    baseline's effect (``excess_ratio_*``; needs the ``random`` method in the table). A ratio is NaN
    where the other method's effect is 0 and negative where the two effects have opposite signs."""
    t = del_table(frame).set_index(["method", "k"])
    if reference not in t.index.get_level_values(0):
        raise ValueError(f"reference method {reference!r} is not in the table")
    has_random = random is not None and random in t.index.get_level_values(0)
    rows = []
    for (m, k), r in t.iterrows():
        if m == reference:
            continue
        ref = t.loc[(reference, k)]
        row = {"method": m, "k": k,
               "ratio_minus": _ratio(ref["del_minus"], r["del_minus"]),
               "ratio_plus": _ratio(ref["del_plus"], r["del_plus"])}
        if has_random and m != random:
            rnd = t.loc[(random, k)]
            row["excess_ratio_minus"] = _ratio(ref["del_minus"] - rnd["del_minus"], r["del_minus"] - rnd["del_minus"])
            row["excess_ratio_plus"] = _ratio(ref["del_plus"] - rnd["del_plus"], r["del_plus"] - rnd["del_plus"])
        rows.append(row)
    return pd.DataFrame(rows)


def _ratio(a, b) -> float:
    a, b = float(a), float(b)
    return a / b if b != 0 and np.isfinite(a) and np.isfinite(b) else float("nan")
