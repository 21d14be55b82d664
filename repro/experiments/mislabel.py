"""Mislabel detection protocol (TracIn paper, section on self-influence): rank training points by a
score, inspect them in that order, and count the injected label flips found."""
from __future__ import annotations

import numpy as np
import pandas as pd


def detection_curve(scores, is_flipped) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of training data inspected (x) vs fraction of flipped labels found (y), inspecting
    in order of decreasing score (ties broken by position, so the curve is deterministic)."""
    scores = np.asarray(scores, dtype=float)
    is_flipped = np.asarray(is_flipped, dtype=bool)
    if is_flipped.sum() == 0:
        raise ValueError("no flipped labels to find")
    order = np.argsort(-scores, kind="stable")
    found = np.concatenate([[0], np.cumsum(is_flipped[order])]) / is_flipped.sum()
    inspected = np.arange(len(scores) + 1) / len(scores)
    return inspected, found


def curve_summary(scores, is_flipped, at=(0.1, 0.2, 0.3)) -> dict:
    """Fraction found after inspecting each fraction in ``at``, and the area under the curve
    (random inspection: found = inspected, area 0.5; perfect: area 1 - p/2 for flip rate p)."""
    x, y = detection_curve(scores, is_flipped)
    out = {f"found@{int(round(100 * a))}%": float(np.interp(a, x, y)) for a in at}
    out["auc"] = float(np.trapezoid(y, x))
    return out


def detection_table(method_scores: dict[str, np.ndarray], is_flipped, at=(0.1, 0.2, 0.3)) -> pd.DataFrame:
    """One row per method, sorted by area under the curve."""
    rows = [{"method": m, **curve_summary(s, is_flipped, at)} for m, s in method_scores.items()]
    return pd.DataFrame(rows).sort_values("auc", ascending=False).reset_index(drop=True)


def detection_curves_frame(method_scores: dict[str, np.ndarray], is_flipped, points: int = 101) -> pd.DataFrame:
    """Long table (method, inspected, found) for plotting, resampled to ``points`` x values."""
    grid = np.linspace(0, 1, points)
    frames = []
    for m, s in method_scores.items():
        x, y = detection_curve(s, is_flipped)
        frames.append(pd.DataFrame({"method": m, "inspected": grid, "found": np.interp(grid, x, y)}))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# One detection run (train a model on noisy labels, score every method) and summaries over seeds
# ---------------------------------------------------------------------------------------------

def checkpoint_schedule(epochs: int, every: int) -> list[int]:
    """Epochs after which a checkpoint is kept: epoch 1, then every ``every`` epochs after it, and
    always the final epoch (e.g. ``epochs=40, every=3`` -> 1, 4, 7, ..., 40)."""
    if epochs < 1 or every < 1:
        raise ValueError(f"epochs and every must be >= 1, got epochs={epochs}, every={every}")
    return sorted(set(range(1, epochs + 1, every)) | {epochs})


def evenly_spaced(n: int, m: int) -> list[int]:
    """Indices of ``m`` of ``n`` checkpoints, evenly spaced over training and always including the
    final one (``m=1``: the final checkpoint only; ``m >= n``: all)."""
    if n < 1 or m < 1:
        raise ValueError(f"need n >= 1 and m >= 1, got n={n}, m={m}")
    if m >= n:
        return list(range(n))
    if m == 1:
        return [n - 1]
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, m)})


def checkpoint_subsets(n: int) -> dict[str, list[int]]:
    """The named checkpoint subsets of the detection table: all, early half, late half, final only."""
    half = max(1, n // 2)
    return {"all checkpoints": list(range(n)), "early half": list(range(half)),
            "late half": list(range(half, n)) if n > 1 else [0], "final only": [n - 1]}


TRACIN_LAST = "TracInCP last layer, all checkpoints"


def mislabel_run(model, cfg, train, test, is_flipped, run_dir, *, more_layers=("fc", "classifier"),
                 all_params_checkpoints: int | None = 4, if_damping: float = 1e-3,
                 representer_lambda: float = 1e-3, seed: int = 0, progress: bool = True) -> dict:
    """Train ``model`` on ``train`` (noisy labels) with ``cfg`` into ``run_dir`` and score every
    training example with every detection method, on the same run.

    Methods (higher score = inspect first): TracInCP self-influence on the last layer over all
    checkpoints, the early half, the late half and the final checkpoint only; TracInCP on
    ``more_layers`` (all checkpoints); TracInCP on all parameters over ``all_params_checkpoints``
    evenly spaced checkpoints (None: all; 0: skipped); the last-layer influence function (exact damped
    Hessian); representer points; the final-checkpoint loss; the loss summed over the same
    checkpoints (a baseline of ours, not the paper's); random.

    Returns a dict: ``scores`` (method -> array), ``self_influence_per_checkpoint`` (last layer,
    ``(n_ckpt, n)``), ``loss_per_checkpoint`` (``(n_ckpt, n)``), ``fit`` (share of flipped / clean
    training labels the final model predicts, test accuracy), ``checkpoints`` (epochs),
    ``timings`` (seconds per method), ``tracin`` (the fitted last-layer TracInCP, for proponents)."""
    import copy
    import time

    from repro.distributed import shard
    from repro.influence import TracInCP
    from repro.influence.lastlayer import LastLayerInfluence, RepresenterPoints, loss_per_example
    from repro.train import Trainer, list_checkpoints, load_run, predict

    is_flipped = np.asarray(is_flipped, dtype=bool)
    if len(is_flipped) != len(train):
        raise ValueError(f"is_flipped has {len(is_flipped)} entries for {len(train)} training examples")
    t0 = time.perf_counter()
    res = Trainer(model, cfg, run_dir).fit(train, eval=test, resume=False)
    timings = {"training": time.perf_counter() - t0}
    cks = list_checkpoints(run_dir)
    final, _ = load_run(run_dir)
    pred = predict(final, train).argmax(1).numpy()
    labels = np.asarray(train.labels)
    fit = {"fit_flipped": float((pred[is_flipped] == labels[is_flipped]).mean()),
           "fit_clean": float((pred[~is_flipped] == labels[~is_flipped]).mean()),
           "test_accuracy": float(res.final["eval_accuracy"]), "n_checkpoints": len(cks)}

    def timed(name, fn):
        t = time.perf_counter()
        value = fn()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t
        return value

    # shard(): split over the ranks of a torchrun'd notebook (repro.distributed); else the estimator
    tracin = timed(TRACIN_LAST, lambda: shard(TracInCP(model, cks, params="last", progress=progress)).fit(train))
    per_ck = tracin.self_influence(per_checkpoint=True).numpy()
    scores = {f"TracInCP last layer, {name}": per_ck[idx].sum(0)
              for name, idx in checkpoint_subsets(len(cks)).items()}
    if more_layers:
        scores[f"TracInCP {'+'.join(more_layers) if not isinstance(more_layers, str) else more_layers}, "
               "all checkpoints"] = timed("more layers", lambda: shard(TracInCP(
                   model, cks, params=list(more_layers) if not isinstance(more_layers, str) else more_layers,
                   progress=progress)).fit(train).self_influence().numpy())
    if all_params_checkpoints != 0:
        sel = evenly_spaced(len(cks), all_params_checkpoints or len(cks))
        scores[f"TracInCP all parameters, {len(sel)} checkpoints"] = timed("all parameters", lambda: shard(TracInCP(
            model, [cks[i] for i in sel], params="all", progress=progress)).fit(train).self_influence().numpy())
    scores["influence function (last layer)"] = timed(
        "influence function", lambda: LastLayerInfluence(final, train, damping=if_damping).self_influence().numpy())
    scores["representer points"] = timed(
        "representer points", lambda: RepresenterPoints(final, train, lam=representer_lambda).self_importance().numpy())
    work = copy.deepcopy(final)

    def losses():
        out = []
        for ck in cks:
            ck.load_into(work)
            out.append(loss_per_example(work, train))
        return np.stack(out)
    loss_ck = timed("loss per checkpoint", losses)
    scores["loss (final checkpoint)"] = loss_ck[-1]
    scores["loss summed over checkpoints (ours, not in the paper)"] = loss_ck.sum(0)
    scores["random"] = np.random.default_rng(seed).random(len(train))
    return {"scores": {k: np.asarray(v, dtype=float) for k, v in scores.items()},
            "self_influence_per_checkpoint": per_ck, "loss_per_checkpoint": loss_ck, "fit": fit,
            "checkpoints": [c.epoch for c in cks], "timings": timings, "tracin": tracin, "history": res.history}


def checkpoint_count_table(per_checkpoint: np.ndarray, is_flipped, counts=(1, 2, 4, 8, None)) -> pd.DataFrame:
    """Detection AUC of summed per-checkpoint scores when ``m`` evenly spaced checkpoints are used
    (``None`` = all); one row per distinct count."""
    n = per_checkpoint.shape[0]
    rows, seen = [], set()
    for m in counts:
        idx = evenly_spaced(n, m or n)
        if len(idx) in seen:
            continue
        seen.add(len(idx))
        rows.append({"checkpoints": len(idx), "all": len(idx) == n,
                     **curve_summary(per_checkpoint[idx].sum(0), is_flipped)})
    return pd.DataFrame(rows)


def summarize_over_seeds(frame: pd.DataFrame, by: list[str], values: list[str]) -> pd.DataFrame:
    """Mean and 95% t interval over seeds of each ``values`` column, per group of ``by``:
    columns ``<v>``, ``<v>_lo``, ``<v>_hi`` and ``n_seeds``."""
    from repro.claims import mean_ci

    rows = []
    for key, g in frame.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key), n_seeds=len(g))
        for v in values:
            m, (lo, hi) = mean_ci(g[v].to_numpy())
            row.update({v: m, f"{v}_lo": lo, f"{v}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)
