"""Case deletion (Yeh et al. 2022, "First is Better Than Last"): first-layer vs last-layer influence.

For every test example and influence method: delete the method's top-k proponents (or opponents) of
that example from the training set, retrain, and measure the change of the test example's predicted
probability of its label (``delta = p_after - p_before``) and of its log-odds
(``dlogodds = logit(p_after) - logit(p_before)``), ``p_before`` from the same retraining on the full
training set with the same seed. A good method has a large negative delta when proponents are deleted
(DEL-) and a large positive delta when opponents are deleted (DEL+); random deletion shows the noise
level of retraining.

**Masked deletion** (``make_retrain(..., deletion="masked")``, the default): the deleted examples stay
in the data with weight 0, so every retraining has the initialisation and mini-batch order of the
full-data reference of its seed. The comparison is paired: method A and method B differ only in which
examples got weight 0, which keeps the retraining noise far below what "drop and reshuffle" gives.

* :data:`RECIPES` / :func:`method_scores` -- every method (an estimator of the registry
  ``repro.influence.ESTIMATORS`` with preset settings) as an ``(n_test, n_train)`` matrix, **positive = proponent**:
  ``tracin_we`` (TracIn-WE over every checkpoint), ``tracin_we_2ck`` (two checkpoints, the middle and
  the last, no learning-rate factor: the authors' notebook), ``tracin_we_topk`` (top-k token rows),
  ``tracin_last`` (TracInCP on the last layer), ``if_last`` (influence function on the last layer,
  exact damped Hessian), ``representer`` (representer points), ``grad_cos_last`` (cosine of
  last-layer gradients), ``tracin_middle`` (TracInCP on the model's ``"middle"`` parameter group)
  and ``random``.
* :func:`make_retrain` -- the retraining: ``retrain(train, seed, deleted_ids) -> model``.
* :func:`case_deletion` -- the retraining loop (optionally over worker processes), with shared
  random deletion sets, returning a tidy table.
* :func:`paired_stats` -- per (method, k, direction): mean effect with a bootstrap CI over test
  examples, the excess over random and the paired advantage of a reference method, with CIs.
* :func:`summarize`, :func:`del_table`, :func:`effect_ratios` -- means, DEL-/DEL+ and ratios of means.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from repro.distributed import shard
from repro.errors import UnknownNameError
from repro.influence.grads import as_batch
from repro.influence.tracin import resolve_checkpoints
from repro.train import TrainConfig, Trainer, predict
from repro.utils import fork_map
from repro.utils import progress as _progress

__all__ = ["METHODS", "LAST_LAYER_METHODS", "RECIPES", "Recipe", "method_scores", "all_method_scores", "make_retrain",
           "top_ids", "random_sets", "case_deletion", "unit_values", "paired_stats", "logodds", "summarize",
           "del_table", "effect_ratios"]

@dataclasses.dataclass(frozen=True)
class Recipe:
    """A deletion method: an estimator of :data:`repro.influence.ESTIMATORS` with preset settings.

    Attributes:
        estimator: its registry name.
        config: settings passed to its constructor (a caller's options override them; an option
            the constructor does not take raises TypeError naming the ones it takes).
        weights: ``"run"`` -- the estimator gets the model and the run's checkpoints (TracIn
            methods); ``"final"`` -- a copy of the model with the last checkpoint's weights;
            ``"none"`` -- no model (the random baseline).
        n_checkpoints: ``None`` = every checkpoint, else that many, evenly spaced, ending with the
            last (see :func:`select_checkpoints`); callers may override it with ``n_checkpoints=``.
    """

    estimator: str
    config: dict = dataclasses.field(default_factory=dict)
    weights: str = "run"
    n_checkpoints: int | None = None


#: the methods of the case-deletion experiment, by name
RECIPES: dict[str, Recipe] = {
    "tracin_we": Recipe("tracin_we"),
    "tracin_we_2ck": Recipe("tracin_we", {"lr_weighting": False}, n_checkpoints=2),
    "tracin_we_topk": Recipe("tracin_we", {"top_k_tokens": 10}),
    "tracin_last": Recipe("tracincp", {"params": "last"}),
    "tracin_middle": Recipe("tracincp", {"params": "middle"}),
    "if_last": Recipe("last_layer_influence", weights="final"),
    "representer": Recipe("representer_points", weights="final"),
    "grad_cos_last": Recipe("last_layer_cosine", weights="final"),
    "random": Recipe("random", weights="none"),
}
METHODS = tuple(RECIPES)
LAST_LAYER_METHODS = ("tracin_last", "if_last", "representer", "grad_cos_last")
Retrain = Callable[..., torch.nn.Module]  # (train, seed, deleted_ids=()) -> trained model


def _final_model(model, checkpoints):
    """A copy of ``model`` with the weights of the last checkpoint (the model as it is when there
    are no checkpoints), in eval mode."""
    m = copy.deepcopy(model)
    if checkpoints is not None:
        resolve_checkpoints(checkpoints)[-1].load_into(m)
    return m.eval()


def select_checkpoints(checkpoints, n: int | None):
    """All checkpoints (``n`` None), or ``n`` of them evenly spaced and ending with the last one
    (``n = 2`` of 10 epoch checkpoints: epochs 5 and 10, the authors' "epoch-4 and epoch-9")."""
    cks = resolve_checkpoints(checkpoints)
    if n is None or n >= len(cks):
        return cks
    if n < 1:
        raise ValueError(f"n_checkpoints must be >= 1, got {n}")
    step = len(cks) / n
    return [cks[int(round(step * (i + 1))) - 1] for i in range(n)]


def method_scores(name: str, model, checkpoints, train, test, **options) -> torch.Tensor:
    """Influence of every training example on every test example, ``(n_test, n_train)``, float32,
    positive = proponent (helps the test example's label), for the method ``name`` of
    :data:`RECIPES`: its estimator, built with the recipe's settings and ``options``, fitted on
    ``train`` and scored on ``test``.

    Args:
        name: one of :data:`METHODS`.
        model: the model the checkpoints belong to (copied, never changed).
        checkpoints: a run folder or Checkpoint(s) (TracIn methods use all of them, in order, or
            ``n_checkpoints`` of them; the others the last one), or ``None`` for the model's current
            weights.
        train, test: Datasets or encoded Batches (columns / rows in their order).
        options: settings of the method's estimator (e.g. ``damping`` for ``if_last``, ``lam`` for
            ``representer``, ``seed`` for ``random``, ``batch_size`` / ``device`` / ``progress``),
            plus ``n_checkpoints`` for the TracIn methods. Progress bars are off unless asked for.
    """
    from repro.influence import ESTIMATORS

    if name not in RECIPES:
        raise UnknownNameError(f"unknown method {name!r}; use one of {METHODS}")
    recipe = RECIPES[name]
    cls = ESTIMATORS[recipe.estimator]
    config = {**recipe.config, **options}
    n_ck = config.pop("n_checkpoints", recipe.n_checkpoints)
    takes = set(inspect.signature(cls.__init__).parameters) - {"self", "model", "checkpoints", "train"}
    bad = sorted(set(config) - takes)
    if bad:
        raise TypeError(f"method {name!r} ({cls.__name__}) takes no option(s) {bad}; it takes {sorted(takes)}"
                        + (" and n_checkpoints" if recipe.weights == "run" else ""))
    if "progress" in takes:
        config.setdefault("progress", False)
    # shard(): split over the ranks of a torchrun'd notebook (repro.distributed); else the estimator
    if recipe.weights == "none":
        return cls(model, **config).fit(train).scores(test).float()  # random scores: nothing to split
    if recipe.weights == "final":
        if n_ck is not None:
            raise TypeError(f"method {name!r} uses the last checkpoint only; it takes no n_checkpoints")
        return shard(cls(_final_model(model, checkpoints), **config)).fit(train).scores(test).float()
    if recipe.estimator == "tracincp" and checkpoints is None:
        raise ValueError(f"{name} needs checkpoints (a run folder or Checkpoint list)")
    if n_ck is not None:
        if checkpoints is None:
            raise ValueError(f"{name} with n_checkpoints={n_ck} needs checkpoints (a run folder)")
        checkpoints = select_checkpoints(checkpoints, n_ck)
    if config.get("params") == "middle" and "middle" not in model.group_prefixes():
        raise UnknownNameError(f"{type(model).__name__} has no 'middle' parameter group; pass "
                               f"{name}'s params=[parameter names]")
    return shard(cls(model, checkpoints, **config)).fit(train).scores(test).float()


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
DELETIONS = ("masked", "drop")


def make_retrain(init, config: TrainConfig, init_seed: int | None = None, deletion: str = "masked") -> Retrain:
    """The retraining for case deletion: ``retrain(train, seed, deleted_ids=()) -> trained model``.

    Every retraining of a seed starts from the **same initialization** and trains it with
    :class:`repro.train.Trainer` and ``config`` (its ``seed`` replaced by ``seed``, which fixes the
    shuffling order and dropout noise; no checkpoints are written):

    * ``init`` a model: a deep copy of its current weights (for the fine-tuned text classifier: the
      pretrained encoder and a head initialised once), whatever the seed;
    * ``init`` a callable ``seed -> fresh model``: the model built from ``init_seed`` when given
      (one shared initialization), else from ``seed`` (initialization varies with the seed, as
      "retraining from scratch over several seeds" does).

    ``deletion``: ``"masked"`` (default) keeps the deleted examples in the data with weight 0
    (:meth:`Trainer.fit` ``masked_ids``): the same mini-batch order as the full-data run of the seed,
    so the only difference between two retrainings is the deleted set (a paired design with a low
    noise floor); ``"drop"`` removes them (``train.exclude``), which reshuffles the remaining order.
    ``p_before`` comes from ``retrain(train, seed)`` with nothing deleted, so the delta isolates the
    deletion.
    """
    if deletion not in DELETIONS:
        raise UnknownNameError(f"deletion must be one of {DELETIONS}, got {deletion!r}")
    base_cfg = dataclasses.replace(config, progress=False)

    def build(seed: int):
        if isinstance(init, torch.nn.Module):
            return copy.deepcopy(init)
        return init(seed if init_seed is None else init_seed)

    def retrain(train, seed: int, deleted_ids=()):
        model = build(seed)
        trainer = Trainer(model, dataclasses.replace(base_cfg, seed=int(seed)))
        deleted = [int(i) for i in deleted_ids]
        if not deleted:
            trainer.fit(train)
        elif deletion == "masked":
            trainer.fit(train, masked_ids=deleted)
        else:
            trainer.fit(train.exclude(deleted))
        return model.eval()

    retrain.config = base_cfg  # type: ignore[attr-defined]
    retrain.deletion = deletion  # type: ignore[attr-defined]
    retrain.build = build  # type: ignore[attr-defined]  # seed -> the untrained start of that seed's runs
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


def random_sets(train_ids, k: int, n_sets: int, seed: int = 0) -> list[np.ndarray]:
    """``n_sets`` random deletion sets of ``k`` training ids (seeded; the same for every test example,
    so each costs one retraining per seed)."""
    rng = np.random.default_rng([int(seed), int(k)])
    ids = np.asarray(train_ids)
    return [np.sort(rng.choice(ids, size=int(k), replace=False)) for _ in range(int(n_sets))]


def logodds(p) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[1e-7, 1 - 1e-7]``."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def _label_probs(model, data) -> np.ndarray:
    """Predicted probability of each example's own label (eval mode), float64."""
    batch = as_batch(model, data)
    logits = predict(model, batch).double()
    return F.softmax(logits, 1).gather(1, batch.labels.view(-1, 1)).squeeze(1).numpy()


def _retrain_all(keys, retrain, train, test, workers: int, bar) -> dict:
    """``{(seed, deleted ids): label probabilities of test}`` for every key, in ``workers`` forked
    processes (1: here)."""
    keys = list(keys)

    def one(key):
        return _label_probs(retrain(train, key[0], key[1]), test)

    probs = fork_map(one, keys, workers, chunksize=max(1, min(8, len(keys) // (4 * max(1, int(workers))))),
                     on_result=lambda _: bar.update(1))
    return dict(zip(keys, probs))


def case_deletion(scores: dict[str, torch.Tensor], train, test, retrain: Retrain, ks: Sequence[int] = (10,),
                  seeds: Sequence[int] = (0,), directions: Sequence[str] = ("proponents", "opponents"),
                  test_positions: Sequence[int] | None = None, n_random_sets: int = 0, random_seed: int = 0,
                  workers: int = 1, progress: bool = True) -> pd.DataFrame:
    """Run case deletion for every (test example, method, k, direction, seed).

    Args:
        scores: ``{method: (n_test, n_train)}`` (from :func:`method_scores`), positive = proponent;
            rows follow ``test``, columns ``train``.
        train, test: Datasets or encoded Batches with stable ids (encode once and pass Batches when
            many retrainings share them).
        retrain: ``(train, seed, deleted_ids) -> trained model`` (e.g. :func:`make_retrain`).
        ks: numbers of examples to delete.
        seeds: retraining seeds; each seed also gets a full-data model for ``p_before``.
        directions: ``"proponents"`` and/or ``"opponents"``.
        test_positions: which test rows to run (default: all).
        n_random_sets: add method ``"random"`` with this many random deletion sets per (k, direction),
            shared by every test example (column ``rep`` numbers them; other methods have rep 0).
        random_seed: seed of the random sets.
        workers: retrain in this many forked worker processes (each single-threaded).
        progress: progress bar over retrainings.

    Returns a tidy table: ``test_id, method, direction, k, seed, rep, p_before, p_after, delta,
    logodds_before, logodds_after, dlogodds, deleted_ids`` (probabilities of the test example's
    label). Retrainings with the same (seed, deleted set) are done once and reused (e.g. when two
    methods pick the same examples).
    """
    n_test, n_train = len(test), len(train)
    for m, s in scores.items():
        if tuple(s.shape) != (n_test, n_train):
            raise ValueError(f"scores[{m!r}] has shape {tuple(s.shape)}, expected ({n_test}, {n_train})")
    if "random" in scores and n_random_sets:
        raise ValueError("give random deletion either as scores['random'] or as n_random_sets, not both")
    if max(ks) > n_train - 1:
        raise ValueError(f"k={max(ks)} would delete (almost) the whole training set of {n_train}")
    positions = list(range(n_test)) if test_positions is None else [int(p) for p in test_positions]
    if positions and (min(positions) < 0 or max(positions) >= n_test):
        raise IndexError(f"test_positions must lie in [0, {n_test}), got {min(positions)}..{max(positions)}")
    train_ids = np.asarray(train.ids)
    test_ids = np.asarray(test.ids)
    jobs = []  # (seed, test position, method, k, direction, rep, deleted ids)
    for seed in seeds:
        for pos in positions:
            for m, s in scores.items():
                for k in ks:
                    for d in directions:
                        jobs.append((seed, pos, m, int(k), d, 0, top_ids(s[pos], train_ids, k, d)))
        for k in ks:
            for di, d in enumerate(directions):
                for r, ids in enumerate(random_sets(train_ids, k, n_random_sets, random_seed + 7 * di)):
                    for pos in positions:
                        jobs.append((seed, pos, "random", int(k), d, r, ids))
    keys = [(int(seed), ()) for seed in seeds]
    keys += list(dict.fromkeys((int(j[0]), tuple(sorted(int(i) for i in j[6]))) for j in jobs))
    keys = list(dict.fromkeys(keys))
    bar = _progress(total=len(keys), desc="case-deletion retrains", disable=not progress)
    probs = _retrain_all(keys, retrain, train, test, workers, bar)
    bar.close()
    rows = []
    for seed, pos, m, k, d, rep, ids in jobs:
        p0 = float(probs[(int(seed), ())][pos])
        p1 = float(probs[(int(seed), tuple(sorted(int(i) for i in ids)))][pos])
        l0, l1 = float(logodds(p0)), float(logodds(p1))
        rows.append({"test_id": int(test_ids[pos]), "method": m, "direction": d, "k": k, "seed": int(seed),
                     "rep": int(rep), "p_before": p0, "p_after": p1, "delta": p1 - p0,
                     "logodds_before": l0, "logodds_after": l1, "dlogodds": l1 - l0,
                     "deleted_ids": tuple(int(i) for i in ids)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- paired statistics
def unit_values(frame: pd.DataFrame, value: str = "delta") -> pd.DataFrame:
    """One value per (method, k, direction, test example): ``value`` averaged over seeds and random
    repetitions (the test example is the unit of the bootstrap)."""
    if value not in frame:
        raise KeyError(f"no column {value!r} in the deletion table; use 'delta' or 'dlogodds'")
    return (frame.groupby(["method", "k", "direction", "test_id"], sort=False)[value].mean()
            .rename("value").reset_index())


def _boot(x, n_resamples, seed):
    from repro.claims import bootstrap_ci

    return bootstrap_ci(x, n_resamples=n_resamples, seed=seed)


def paired_stats(frame: pd.DataFrame, reference: str = "tracin_we", value: str = "delta",
                 random: str = "random", n_resamples: int = 5000, seed: int = 0) -> pd.DataFrame:
    """Per (method, k, direction), over test examples (the unit; seeds averaged first):

    * ``mean``, ``lo``, ``hi``: the mean effect (``value``: ``delta`` of p(label) or ``dlogodds``)
      with its 95% percentile-bootstrap CI;
    * ``excess``, ``excess_lo``, ``excess_hi``: the effect minus random deletion's effect on the same
      test example (proponents: more negative is better, so ``excess < 0`` = better than random;
      opponents: ``excess > 0`` = better);
    * ``ref_adv``, ``ref_adv_lo``, ``ref_adv_hi``: how much better the ``reference`` method does on
      the same test examples, oriented so that **positive = reference better**: for proponents
      ``value[method] - value[reference]`` (how much more the reference lowers it), for opponents
      ``value[reference] - value[method]``;
    * ``ratio``: reference mean / method mean (a descriptive ratio of means; unstable when the
      method's mean is near 0); ``n``: test examples.
    """
    u = unit_values(frame, value)
    wide = u.pivot_table(index=["k", "direction", "test_id"], columns="method", values="value", sort=False)
    has_ref = reference in wide.columns
    has_rnd = random in wide.columns
    rows = []
    methods = list(dict.fromkeys(u["method"]))
    for m in methods:
        for (k, d), g in wide.groupby(level=["k", "direction"], sort=False):
            x = g[m].dropna()
            if x.empty:
                continue
            mean, (lo, hi) = _boot(x.values, n_resamples, seed)
            row = {"method": m, "k": int(k), "direction": d, "value": value, "mean": mean, "lo": lo, "hi": hi,
                   "n": int(len(x))}
            if has_rnd and m != random:
                ex, (elo, ehi) = _boot((g[m] - g[random]).dropna().values, n_resamples, seed)
                row.update(excess=ex, excess_lo=elo, excess_hi=ehi)
            if has_ref and m != reference:
                sign = 1.0 if d == "proponents" else -1.0
                adv, (alo, ahi) = _boot((sign * (g[m] - g[reference])).dropna().values, n_resamples, seed)
                ref_mean = float(g[reference].mean())
                row.update(ref_adv=adv, ref_adv_lo=alo, ref_adv_hi=ahi,
                           ratio=ref_mean / mean if mean != 0 else float("nan"))
            rows.append(row)
    return pd.DataFrame(rows)


def pooled_advantage(frame: pd.DataFrame, reference: str, other: str, direction: str, value: str = "delta",
                     n_resamples: int = 5000, seed: int = 0) -> dict:
    """The reference method's advantage over ``other`` in one direction, pooled over k and seeds per
    test example (positive = reference better, see :func:`paired_stats`), with a 95% bootstrap CI
    over test examples, and the ratio of mean effects (reference / other) as a descriptive number."""
    f = frame[frame["direction"] == direction]
    per = f[f["method"].isin([reference, other])].groupby(["test_id", "method"])[value].mean().unstack()
    if reference not in per or other not in per:
        raise KeyError(f"the deletion table lacks {reference!r} or {other!r} for {direction!r}")
    per = per.dropna()
    sign = 1.0 if direction == "proponents" else -1.0
    adv, ci = _boot((sign * (per[other] - per[reference])).values, n_resamples, seed)
    ref_m, oth_m = float(per[reference].mean()), float(per[other].mean())
    return {"advantage": adv, "ci95": ci, "n": int(len(per)), "reference_mean": ref_m, "other_mean": oth_m,
            "ratio": ref_m / oth_m if oth_m != 0 else float("nan")}


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
