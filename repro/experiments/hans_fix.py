"""FastIF's error-correction experiment on HANS(-style) data (the paper's HANS fine-tuning protocol; see docs/methods.md).

Starting from a trained NLI model, for ``steps`` steps: sample ``anchors_per_step`` anchors of one
heuristic from the anchor part of the HANS-style set, score candidate training points by their
influence on the anchors' mean loss, take the ``per_step`` most helpful (or most harmful, or random)
ones, and apply one SGD step with learning rate ``lr`` (only trainable parameters) on them. After
every step, evaluate loss and accuracy on the held-out HANS-style test part, per heuristic.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from repro.data.core import TextDataset
from repro.train import predict

# (model, anchors, pool) -> (candidate positions into pool, scores with positive = helpful)
Scorer = Callable[[torch.nn.Module, TextDataset, TextDataset], tuple[np.ndarray, np.ndarray]]
MODES = ("helpful", "harmful", "random")


def split_anchor_test(hans: TextDataset, anchor_fraction: float = 0.5, seed: int = 0):
    """Split a HANS-style evaluation set into an anchor part and a test part (stratified by subcase)."""
    rng = np.random.default_rng(seed)
    sub = np.asarray(hans.extra["subcase"])
    anchor = np.zeros(len(hans), dtype=bool)
    for s in np.unique(sub):
        idx = np.flatnonzero(sub == s)
        anchor[rng.choice(idx, size=int(round(anchor_fraction * len(idx))), replace=False)] = True
    return hans.subset(anchor), hans.subset(~anchor)


def per_heuristic(model, data: TextDataset, batch_size: int = 128) -> pd.DataFrame:
    """Accuracy and mean loss per heuristic and gold label (entailment / non-entailment)."""
    logits = predict(model, data, batch_size=batch_size)
    labels = torch.from_numpy(data.labels)
    loss = F.cross_entropy(logits, labels, reduction="none").numpy()
    correct = (logits.argmax(1) == labels).numpy()
    frame = pd.DataFrame({"heuristic": data.extra["heuristic"], "label": np.asarray(data.classes)[data.labels],
                          "correct": correct, "loss": loss})
    return frame.groupby(["heuristic", "label"]).agg(accuracy=("correct", "mean"), loss=("loss", "mean"),
                                                     n=("correct", "size")).reset_index()


def _sgd_step(model, batch, lr: float, device) -> None:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    mb = batch.to(device)
    loss = F.cross_entropy(model(**mb.inputs), mb.labels)
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)
    model.eval()


def correction_run(model, pool: TextDataset, anchors: TextDataset, test: TextDataset, heuristic: str,
                   mode: str, scorer: Scorer, steps: int = 10, anchors_per_step: int = 10,
                   per_step: int = 10, lr: float = 1e-4, seed: int = 0, device="cpu") -> pd.DataFrame:
    """One replica of the error-correction loop for one heuristic and one selection mode.

    Returns one row per (step, heuristic of the test part): accuracy and loss on the non-entailed
    and entailed test examples of that heuristic, plus the overall accuracy. Step 0 is the start."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    model = copy.deepcopy(model).to(device).eval()
    rng = np.random.default_rng(seed)
    heur = np.asarray(anchors.extra["heuristic"])
    anchor_pos = np.flatnonzero(heur == heuristic)
    rows = []

    def record(step):
        ph = per_heuristic(model, test)
        for h, g in ph.groupby("heuristic"):
            r = {"step": step, "heuristic": h, "target": heuristic, "mode": mode, "seed": seed}
            for _, x in g.iterrows():
                key = "non_entailed" if x["label"] == "non-entailment" else "entailed"
                r[f"{key}_accuracy"], r[f"{key}_loss"] = x["accuracy"], x["loss"]
            r["accuracy"] = float((g.accuracy * g.n).sum() / g.n.sum())
            r["loss"] = float((g.loss * g.n).sum() / g.n.sum())
            rows.append(r)

    record(0)
    for step in range(1, steps + 1):
        chosen_anchors = anchors.subset(rng.choice(anchor_pos, size=min(anchors_per_step, len(anchor_pos)),
                                                   replace=False))
        if mode == "random":
            picks = rng.choice(len(pool), size=per_step, replace=False)
        else:
            cand, scores = scorer(model, chosen_anchors, pool)
            order = np.argsort(-scores if mode == "helpful" else scores, kind="stable")
            picks = np.asarray(cand)[order[:per_step]]
        _sgd_step(model, model.encode(pool.subset(picks)), lr, device)
        record(step)
    return pd.DataFrame(rows)


def correction_experiment(model, pool: TextDataset, anchors: TextDataset, test: TextDataset, scorer: Scorer,
                          heuristics: Sequence[str], modes: Sequence[str] = MODES, replicas: int = 3,
                          progress: bool = True, **kwargs) -> pd.DataFrame:
    """All (heuristic, mode, replica) runs of :func:`correction_run`, concatenated."""
    from repro.utils import progress as _progress

    jobs = [(h, m, r) for h in heuristics for m in modes for r in range(replicas)]
    frames = []
    for h, m, r in _progress(jobs, desc="HANS correction runs", disable=not progress):
        frames.append(correction_run(model, pool, anchors, test, h, m, scorer, seed=r, **kwargs))
    return pd.concat(frames, ignore_index=True)


def correction_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Start vs end (last step) on the targeted heuristic, mean and std over replicas, per mode."""
    own = runs[runs.heuristic == runs.target]
    last = own.step.max()
    start = own[own.step == 0].groupby(["target", "mode", "seed"])["accuracy"].first()
    end = own[own.step == last].groupby(["target", "mode", "seed"])[["accuracy", "loss", "non_entailed_accuracy"]].first()
    end = end.assign(start_accuracy=start, gain=end["accuracy"] - start).reset_index()
    return end.groupby(["target", "mode"]).agg(start=("start_accuracy", "mean"), end=("accuracy", "mean"),
                                               gain=("gain", "mean"), gain_std=("gain", "std"),
                                               non_entailed_end=("non_entailed_accuracy", "mean"),
                                               loss_end=("loss", "mean")).reset_index()
