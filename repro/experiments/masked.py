"""Many retrainings of one reference run that differ only in which training examples get weight 0.

The ground truths of :mod:`repro.experiments.loo` (leave-one-out) and :mod:`repro.experiments.lds`
(random subsets) both retrain a model with some examples **masked**: same initialisation, same
mini-batch order as the reference run, the masked examples weighted 0 in the loss of their
mini-batch (see :mod:`repro.multitrain`). This module runs such a set of retrainings and measures
every retrained model on a set of targets:

* with SGD (momentum, weight decay) or AdamW and a model without random dropout (turn-over dropout is
  deterministic per example id, so it qualifies), the copies are trained many at once with
  :func:`repro.multitrain.masked_fit`;
* otherwise (gradient clipping, AMP, random dropout, BatchNorm) each copy is trained on its own with
  :meth:`repro.train.Trainer.fit` (``masked_ids``), which is the same computation, only slower.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from repro.data.core import Batch, Dataset
from repro.errors import EmptyDatasetError, InvalidParameterError, ReproError
from repro.train import TrainConfig, Trainer, predict
from repro.utils import progress as _progress
from repro.utils import resolve_device

__all__ = ["MEASURES", "masked_outputs", "perturb_parameters", "target_outputs", "encode"]

ModelFactory = Callable[[int], torch.nn.Module]  # seed -> freshly initialised model
MEASURES = ("loss", "margin")


def encode(model, data) -> Batch:
    """A Dataset encoded by ``model`` (a Batch is returned as it is)."""
    if isinstance(data, Batch):
        return data
    if isinstance(data, Dataset):
        return model.encode(data)
    raise TypeError(f"expected a repro Dataset or Batch, got {type(data).__name__}")


@torch.no_grad()
def perturb_parameters(model: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """Add ``scale * N(0, 1)`` noise (own generator seeded by ``seed``) to every floating parameter,
    in place. Used to re-measure a ground truth from an initialisation that differs only in the
    last digits (its noise ceiling)."""
    if scale < 0 or not np.isfinite(scale):
        raise InvalidParameterError(f"perturbation scale must be a finite number >= 0, got {scale}")
    if scale == 0:
        return model
    g = torch.Generator().manual_seed(int(seed))
    for p in model.parameters():
        if p.is_floating_point():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.device, p.dtype))
    return model


def target_outputs(logits: torch.Tensor, labels: torch.Tensor, measure: str = "loss") -> torch.Tensor:
    """Per-target measurement from logits ``(..., n_t, C)``: ``"loss"`` = cross-entropy of the
    label; ``"margin"`` = label logit minus the largest other logit."""
    if measure not in MEASURES:
        raise InvalidParameterError(f"measure must be one of {MEASURES}, got {measure!r}")
    logits = logits.float()
    lab = labels.to(logits.device).expand(logits.shape[:-1])
    if measure == "loss":
        return torch.logsumexp(logits, -1) - logits.gather(-1, lab.unsqueeze(-1)).squeeze(-1)
    own = logits.gather(-1, lab.unsqueeze(-1)).squeeze(-1)
    others = logits.masked_fill(F.one_hot(lab, logits.shape[-1]).bool(), float("-inf"))
    return own - others.max(-1).values


def _batchable(model, cfg: TrainConfig) -> bool:
    from repro.multitrain import _check

    try:
        _check(model, cfg)
    except ReproError:
        return False
    return True


def _fresh(make_model: ModelFactory, seed: int, perturb: float, perturb_seed: int):
    return perturb_parameters(make_model(seed), perturb, perturb_seed)


def masked_outputs(make_model: ModelFactory, train, targets, config: TrainConfig, weights,
                   seed: int = 0, perturb: float = 0.0, perturb_seed: int = 0, measure: str = "loss",
                   chunk: int = 16, with_reference: bool = False, batched: bool | None = None,
                   progress: bool = True):
    """Train one masked copy per row of ``weights`` and measure each on the targets.

    Args:
        make_model: ``seed -> model`` (a fresh, identically initialised model for the same seed).
        train, targets: Datasets (or Batches encoded by the model).
        config: training configuration; its ``seed`` is replaced by ``seed`` (mini-batch order).
        weights: ``(M, n_train)`` 0/1 weights, columns in ``train``'s row order (0 = masked).
        seed: initialisation and mini-batch order of the reference run.
        perturb, perturb_seed: add ``perturb * N(0,1)`` to the initial weights (noise ceilings).
        measure: ``"loss"`` or ``"margin"`` (see :func:`target_outputs`).
        chunk: copies trained at once (memory grows with it).
        with_reference: also return the unmasked reference run's outputs, computed alongside every
            chunk (so a difference ``row - reference`` is free of arithmetic-order noise).
        batched: ``None`` = batched whenever :mod:`repro.multitrain` supports the model and config;
            ``False`` forces one Trainer run per copy; ``True`` raises when batching is impossible.

    Returns:
        ``outputs (M, n_targets)`` as float64 numpy, plus ``reference (M, n_targets)`` (the reference
        run as measured with row ``m``'s chunk) when ``with_reference``.
    """
    if measure not in MEASURES:
        raise InvalidParameterError(f"measure must be one of {MEASURES}, got {measure!r}")
    if int(chunk) < 1:
        raise InvalidParameterError(f"chunk must be a positive integer, got {chunk}")
    cfg = TrainConfig(**{**config.__dict__, "seed": int(seed), "progress": False})
    probe = _fresh(make_model, seed, perturb, perturb_seed)
    train_b, target_b = encode(probe, train), encode(probe, targets)
    W = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    if W.dim() != 2 or W.shape[1] != len(train_b):
        raise InvalidParameterError(f"weights must be (M, {len(train_b)}) (one column per training example), "
                                    f"got {tuple(W.shape)}")
    if not bool(((W == 0) | (W == 1)).all()):
        raise InvalidParameterError("weights must be 0 (masked) or 1 (kept)")
    empty = torch.nonzero(W.sum(1) == 0).flatten().tolist()
    if empty:
        raise EmptyDatasetError(f"rows {empty[:10]} of weights mask every training example: nothing to train on")
    can = _batchable(probe, cfg)
    if batched is None:
        batched = can
    elif batched and not can:
        from repro.multitrain import _check

        _check(probe, cfg)  # raises the named reason
    M = W.shape[0]
    out = np.empty((M, len(target_b)))
    ref = np.empty((M, len(target_b))) if with_reference else None
    labels = target_b.labels
    if batched:
        from repro.multitrain import masked_fit, stacked_predict

        bar = _progress(total=M, desc=f"masked retrains ({'batched' if batched else 'one by one'})",
                        disable=not progress)
        for s in range(0, M, int(chunk)):
            w = W[s:s + int(chunk)]
            if with_reference:
                w = torch.cat([torch.ones(1, W.shape[1]), w])
            model = _fresh(make_model, seed, perturb, perturb_seed).to(resolve_device(cfg.device))
            stacked = masked_fit(model, cfg, train_b, w)
            vals = target_outputs(stacked_predict(model, stacked, target_b), labels, measure).double().numpy()
            if with_reference:
                ref[s:s + len(w) - 1] = vals[0]
                vals = vals[1:]
            out[s:s + len(vals)] = vals
            bar.update(len(vals))
        bar.close()
    else:
        ids = train_b.ids.numpy()

        def run(masked):
            model = _fresh(make_model, seed, perturb, perturb_seed)
            Trainer(model, cfg).fit(train_b, masked_ids=masked if len(masked) else None)
            return target_outputs(predict(model, target_b, device=cfg.device), labels, measure).double().numpy()

        if with_reference:
            ref[:] = run([])
        for m in _progress(range(M), desc="masked retrains (one by one)", disable=not progress):
            out[m] = run(ids[W[m].numpy() == 0].tolist())
    return (out, ref) if with_reference else out
