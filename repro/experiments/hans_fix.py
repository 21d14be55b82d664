"""FastIF's error-correction experiment on HANS(-style) data.

Protocol (Guo et al. 2021, "hans-augmentation"): starting from the NLI model, repeat ``steps`` times:
sample ``anchors_per_step`` anchors of one heuristic (optionally of one gold label) from the anchor
part of the HANS-style set; score candidate training points by their influence on the anchors' mean
loss; take the ``per_step`` most helpful (or most harmful, or random) ones and apply one plain SGD
step with learning rate ``lr`` to the trainable parameters on them. The control mode ``"anchors"``
takes the step on the anchors themselves. After every step the held-out test part is evaluated:
loss and accuracy per heuristic, on each gold label and over both.

Replicas are paired: replica ``r`` draws the same anchors at every step in every mode (anchors come
from one generator, random picks from another), so mode differences are within-replica contrasts.
The step runs with dropout off (eval mode), so it applies exactly the gradient the scorer assessed.

Data may be given as :class:`~repro.data.core.TextDataset` (encoded by the model) or as a
:class:`HansSplit`: model-ready inputs (token ids or a text model's cached frozen layers, see
:meth:`repro.models.text.TextClassifier.cache_frozen`) with their heuristic and label.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from repro.data.core import Batch, TextDataset
from repro.errors import InvalidParameterError, UnknownNameError
from repro.experiments.masked import encode
from repro.train import predict

# (model, anchors) -> (candidate positions into the pool, scores with positive = helpful)
Scorer = Callable[[torch.nn.Module, Batch], tuple[np.ndarray, np.ndarray]]
MODES = ("helpful", "harmful", "random", "anchors")
LABEL_NAMES = ("entailed", "non_entailed")  # column prefixes for gold label 0 / 1


@dataclass
class HansSplit:
    """HANS-style examples ready for the model, with their heuristic, subcase and gold label
    (0 = entailment, 1 = non-entailment), all in the same order."""

    batch: Batch
    heuristic: np.ndarray
    subcase: np.ndarray

    def __post_init__(self):
        self.heuristic = np.asarray(self.heuristic).astype(str)
        self.subcase = np.asarray(self.subcase).astype(str)
        if not len(self.batch) == len(self.heuristic) == len(self.subcase):
            raise InvalidParameterError(f"HansSplit parts differ in length: batch {len(self.batch)}, "
                                        f"heuristic {len(self.heuristic)}, subcase {len(self.subcase)}")

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def labels(self) -> np.ndarray:
        return self.batch.labels.numpy()

    @classmethod
    def from_dataset(cls, model, data: TextDataset, cache: bool = False, sort: bool = True,
                     batch_size: int = 64) -> "HansSplit":
        """Encode a HANS-style dataset (``extra`` holds ``heuristic`` and ``subcase``) with
        ``model``; ``cache=True`` stores the model's frozen layers' output instead of token ids
        (much cheaper to evaluate repeatedly); ``sort`` orders the examples by token length
        (mini-batches then carry little padding)."""
        if not isinstance(data, TextDataset) or "heuristic" not in data.extra or "subcase" not in data.extra:
            raise InvalidParameterError("HansSplit.from_dataset needs a HANS-style TextDataset with "
                                        "extra['heuristic'] and extra['subcase'] (repro.data.registry.hans_dataset)")
        batch = model.encode(data)
        order = torch.argsort(batch.lengths(), stable=True) if sort else torch.arange(len(batch))
        batch = batch[order]
        if cache:
            batch = model.cache_frozen(batch, batch_size=batch_size)
        idx = order.numpy()
        return cls(batch, np.asarray(data.extra["heuristic"])[idx], np.asarray(data.extra["subcase"])[idx])

    def subset(self, index) -> "HansSplit":
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=np.int64)
        return HansSplit(self.batch[torch.from_numpy(index)], self.heuristic[index], self.subcase[index])


def _as_split(model, data) -> HansSplit:
    if isinstance(data, HansSplit):
        return data
    if isinstance(data, TextDataset):
        return HansSplit.from_dataset(model, data)
    raise TypeError(f"expected a HANS-style TextDataset or a HansSplit, got {type(data).__name__}")


def split_anchor_test(hans, anchor_fraction: float = 0.5, seed: int = 0):
    """Split a HANS-style evaluation set (TextDataset or :class:`HansSplit`) into an anchor part and
    a held-out test part, stratified by subcase (as FastIF splits HANS into validation and test)."""
    if not 0 < anchor_fraction < 1:
        raise InvalidParameterError(f"anchor_fraction must lie in (0, 1), got {anchor_fraction}")
    rng = np.random.default_rng(seed)
    sub = np.asarray(hans.extra["subcase"] if isinstance(hans, TextDataset) else hans.subcase)
    anchor = np.zeros(len(hans), dtype=bool)
    for s in np.unique(sub):
        idx = np.flatnonzero(sub == s)
        anchor[rng.choice(idx, size=int(round(anchor_fraction * len(idx))), replace=False)] = True
    return hans.subset(anchor), hans.subset(~anchor)


def _table(logits: torch.Tensor, labels: np.ndarray, heuristic: np.ndarray) -> pd.DataFrame:
    lab = torch.as_tensor(labels)
    loss = F.cross_entropy(logits, lab, reduction="none").numpy()
    correct = (logits.argmax(1) == lab).numpy()
    frame = pd.DataFrame({"heuristic": heuristic, "label": np.asarray(["entailment", "non-entailment"])[labels],
                          "correct": correct, "loss": loss})
    return frame.groupby(["heuristic", "label"]).agg(accuracy=("correct", "mean"), loss=("loss", "mean"),
                                                     n=("correct", "size")).reset_index()


def per_heuristic(model, data, batch_size: int = 128) -> pd.DataFrame:
    """Accuracy and mean loss per heuristic and gold label (entailment / non-entailment); ``data``
    is a HANS-style TextDataset or a :class:`HansSplit`."""
    split = _as_split(model, data)
    return _table(predict(model, split.batch, batch_size=batch_size), split.labels, split.heuristic)


def _sgd_step(model, batch: Batch, lr: float, device) -> None:
    """One plain SGD step on the mean cross-entropy of ``batch`` (trainable parameters only),
    dropout off."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    mb = batch.to(device)
    loss = F.cross_entropy(model(**mb.inputs), mb.labels)
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)


def _record(model, test: HansSplit, step: int, base: dict, batch_size: int) -> list[dict]:
    table = _table(predict(model, test.batch, batch_size=batch_size), test.labels, test.heuristic)
    rows = []
    for h, g in table.groupby("heuristic"):
        r = {**base, "step": step, "heuristic": h}
        for _, x in g.iterrows():
            key = LABEL_NAMES[0] if x["label"] == "entailment" else LABEL_NAMES[1]
            r[f"{key}_accuracy"], r[f"{key}_loss"] = float(x["accuracy"]), float(x["loss"])
        r["accuracy"] = float((g.accuracy * g.n).sum() / g.n.sum())
        r["loss"] = float((g.loss * g.n).sum() / g.n.sum())
        rows.append(r)
    return rows


def correction_run(model, pool, anchors, test, heuristic: str, mode: str, scorer: Scorer | None,
                   steps: int = 10, anchors_per_step: int = 10, per_step: int = 10, lr: float = 1e-4,
                   seed: int = 0, anchor_label: int | None = None, device="cpu",
                   eval_batch_size: int = 128) -> pd.DataFrame:
    """One replica of the error-correction loop for one heuristic and one selection mode.

    Args:
        model: the starting NLI model (copied; the original is untouched).
        pool: candidate training points (TextDataset or model-ready Batch, e.g. cached states).
        anchors, test: the anchor and held-out parts (TextDataset or :class:`HansSplit`).
        heuristic: anchors come from this heuristic.
        mode: ``"helpful"`` / ``"harmful"`` (the ``per_step`` highest / lowest scores among the
            scorer's candidates), ``"random"`` (``per_step`` points of the whole pool) or
            ``"anchors"`` (the control: the step is taken on the anchors themselves).
        scorer: ``(model, anchor batch) -> (candidate positions, scores)``, positive = helpful
            (needed for helpful / harmful), e.g. :func:`fastif_scorer`.
        anchor_label: sample anchors of this gold label only (0 entailment, 1 non-entailment);
            ``None``: both labels, as in the paper.
        seed: the replica; anchors depend only on (seed, heuristic, anchor_label), so replica ``r``
            of every mode sees the same anchors.

    Returns one row per (step, test heuristic): ``accuracy`` / ``loss`` over both labels and
    ``entailed_*`` / ``non_entailed_*`` per label. Step 0 is the starting model."""
    if mode not in MODES:
        raise UnknownNameError(f"mode must be one of {MODES}, got {mode!r}")
    if mode in ("helpful", "harmful") and scorer is None:
        raise InvalidParameterError(f"mode {mode!r} needs a scorer")
    model = copy.deepcopy(model).to(device).eval()
    pool = encode(model, pool)
    anchors, test = _as_split(model, anchors), _as_split(model, test)
    ok = anchors.heuristic == heuristic
    if anchor_label is not None:
        ok &= anchors.labels == int(anchor_label)
    anchor_pos = np.flatnonzero(ok)
    if len(anchor_pos) == 0:
        raise InvalidParameterError(f"no anchors of heuristic {heuristic!r}"
                                    + ("" if anchor_label is None else f" and label {anchor_label}"))
    anchor_rng = np.random.default_rng([seed, 0])
    pick_rng = np.random.default_rng([seed, 1])
    base = {"target": heuristic, "mode": mode, "seed": seed,
            "anchor_label": "both" if anchor_label is None else LABEL_NAMES[int(anchor_label)]}
    rows = _record(model, test, 0, base, eval_batch_size)
    for step in range(1, steps + 1):
        chosen = anchor_rng.choice(anchor_pos, size=min(anchors_per_step, len(anchor_pos)), replace=False)
        anchor_batch = anchors.batch[torch.from_numpy(chosen)]
        if mode == "anchors":
            step_batch = anchor_batch
        else:
            if mode == "random":
                picks = pick_rng.choice(len(pool), size=min(per_step, len(pool)), replace=False)
            else:
                cand, scores = scorer(model, anchor_batch)
                order = np.argsort(-np.asarray(scores) if mode == "helpful" else np.asarray(scores), kind="stable")
                picks = np.asarray(cand)[order[:per_step]]
            step_batch = pool[torch.from_numpy(np.asarray(picks, dtype=np.int64))]
        _sgd_step(model, step_batch, lr, device)
        rows += _record(model, test, step, base, eval_batch_size)
    return pd.DataFrame(rows)


def correction_experiment(model, pool, anchors, test, scorer: Scorer | None, heuristics: Sequence[str],
                          modes: Sequence[str] = MODES, replicas: int = 3,
                          anchor_label: int | None | Mapping[str, int | None] = None,
                          workers: int = 1, progress: bool = True, **kwargs) -> pd.DataFrame:
    """All (heuristic, mode, replica) runs of :func:`correction_run`, concatenated in that order.
    ``anchor_label`` may be one value or a mapping heuristic -> label (``None`` = both labels).
    ``workers > 1`` runs the (independent) runs in that many forked single-threaded processes
    (:func:`repro.utils.fork_map`; the pool is shared, not copied); the rows are the same as with
    one worker."""
    from repro.utils import fork_map
    from repro.utils import progress as _progress

    model = copy.deepcopy(model).eval()
    pool = encode(model, pool)
    anchors, test = _as_split(model, anchors), _as_split(model, test)
    jobs = [(h, m, r) for h in heuristics for m in modes for r in range(replicas)]

    def one(job):
        h, m, r = job
        label = anchor_label.get(h) if isinstance(anchor_label, Mapping) else anchor_label
        return correction_run(model, pool, anchors, test, h, m, scorer, seed=r, anchor_label=label, **kwargs)

    with _progress(total=len(jobs), desc="HANS correction runs", disable=not progress) as bar:
        frames = fork_map(one, jobs, workers, on_result=lambda _: bar.update(1))
    return pd.concat(frames, ignore_index=True)


METRICS = ("accuracy", "entailed_accuracy", "non_entailed_accuracy", "loss")


def correction_gains(runs: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Per replica: change from step 0 to the last step on the targeted heuristic, for every metric
    in :data:`METRICS` (columns ``gain_<metric>``), with ``by`` columns (e.g. pool, lr) kept."""
    own = runs[runs.heuristic == runs.target]
    keys = [*by, "target", "mode", "seed"]
    first = own[own.step == 0].set_index(keys)[list(METRICS)]
    last = own[own.step == own.step.max()].set_index(keys)[list(METRICS)]
    out = (last - first).add_prefix("gain_")
    return pd.concat([first.add_prefix("start_"), last.add_prefix("end_"), out], axis=1).reset_index()


def paired_contrast(gains: pd.DataFrame, a: str = "helpful", b: str = "random", metric: str = "accuracy",
                    by: Sequence[str] = ()) -> pd.DataFrame:
    """Mode ``a`` minus mode ``b`` in ``gain_<metric>``, paired by replica and heuristic, one row
    per (``by``, target, seed)."""
    keys = [*by, "target", "seed"]
    col = f"gain_{metric}"
    wide = gains.pivot_table(index=keys, columns="mode", values=col)
    if a not in wide or b not in wide:
        raise InvalidParameterError(f"modes {a!r} and {b!r} must both be in the runs; found {list(wide.columns)}")
    return (wide[a] - wide[b]).rename("diff").reset_index().assign(a=a, b=b, metric=metric)


def correction_summary(runs: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Start, end and gain on the targeted heuristic per (``by``, target, mode): mean and standard
    deviation over replicas, for accuracy over both labels and on each label."""
    g = correction_gains(runs, by)
    agg = {}
    for m in ("accuracy", "entailed_accuracy", "non_entailed_accuracy", "loss"):
        agg[f"start_{m}"] = (f"start_{m}", "mean")
        agg[f"end_{m}"] = (f"end_{m}", "mean")
        agg[f"gain_{m}"] = (f"gain_{m}", "mean")
    agg["gain_accuracy_sd"] = ("gain_accuracy", "std")
    agg["replicas"] = ("seed", "nunique")
    return g.groupby([*by, "target", "mode"], sort=False).agg(**agg).reset_index()


def fastif_scorer(pool, index, k: int, **fastif_kwargs) -> Scorer:
    """A :data:`Scorer` that runs FastIF with the current model at every step: the ``k`` nearest
    pool points of the anchors' mean feature in a fixed ``index`` (a
    :class:`repro.influence.fastif.KNNIndex` over ``pool``, typically the starting model's), scored
    by influence on the anchors' mean loss (LiSSA; Hessian samples from ``pool``)."""
    from repro.influence.fastif import FastIF

    fastif_kwargs.setdefault("progress", False)

    def scorer(model, anchor_batch):
        est = FastIF(model, k=min(k, len(pool)), **fastif_kwargs).fit(pool, index=index)
        r = est.candidates(anchor_batch, aggregate="mean")
        return r.candidate_positions[0].numpy(), r.scores[0].numpy()
    return scorer
