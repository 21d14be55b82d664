"""Train many copies of one model at once, each with its own per-example weights (masked deletion).

Case deletion retrains a model once per deleted set. With **masked deletion** every retraining
starts from the same initialization and visits the training examples in the same order as the
reference run; the deleted examples only get weight 0 in the loss. Mini-batch ``b`` of model ``m``
then minimises ``sum_i w_mi l_i / sum_i w_mi`` over the examples of the batch, which is exactly the
mean loss over the batch with the deleted examples dropped, so masked training equals training on
the reduced set with the reference order "re-derived" by striking the deleted examples out of each
mini-batch (a batch left empty makes no step: no momentum step, no schedule step).

Because all copies see the same token inputs, ``M`` copies are trained together: the parameters are
stacked along a leading model axis and the model's own ``forward`` runs under ``torch.func.vmap``
(``functional_call``), so one forward/backward serves all ``M`` models; their losses are summed, and
since the copies share no parameter, each slice of the stacked gradient is that copy's own gradient.
SGD with momentum and AdamW (decoupled weight decay, per-copy step counts for the bias corrections)
are elementwise, so every copy follows exactly the trajectory it would follow alone (up to
floating-point summation order). :func:`masked_fit` is checked against
:meth:`repro.train.Trainer.fit` with ``masked_ids`` (and against dropping the examples) in the tests.

Like the Trainer, the training forward passes get the mini-batch's example ``ids`` when the model's
``forward`` accepts them, so turn-over dropout layers apply each example's own mask (the masks are
a pure function of the ids, shared by all copies); prediction (:func:`stacked_predict`) passes no
ids, so turn-over layers are the identity there, as in :func:`repro.train.predict`.

Restrictions (named errors otherwise): ``optimizer="sgd"`` or ``"adamw"``, no ``max_grad_norm``, no AMP, a
model without randomness in training mode (no active dropout), and no BatchNorm running statistics
(they are buffers shared by the copies).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from repro.data.core import Batch
from repro.errors import ReproError
from repro.train import TrainConfig, lr_factor
from repro.utils import progress as _progress

__all__ = ["weight_matrix", "masked_fit", "unstack", "stacked_predict"]


def weight_matrix(train_ids, masked_sets: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(M, n)`` float32 weights: 0 for the ids of ``masked_sets[m]``, 1 elsewhere (columns follow
    ``train_ids``). Ids not in the training set raise ``KeyError``."""
    train_ids = np.asarray(train_ids, dtype=np.int64)
    pos = {int(i): j for j, i in enumerate(train_ids)}
    w = torch.ones(len(masked_sets), len(train_ids), dtype=torch.float32)
    for m, ids in enumerate(masked_sets):
        missing = [int(i) for i in ids if int(i) not in pos]
        if missing:
            raise KeyError(f"{len(missing)} masked id(s) not in the training set: {missing[:10]}")
        if ids is not None and len(ids):
            w[m, [pos[int(i)] for i in ids]] = 0.0
    return w


def _takes_ids(model: nn.Module) -> bool:
    """Whether ``model.forward`` accepts ``ids`` (repro models do; turn-over dropout needs them)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "ids" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


# torch.optim.AdamW's defaults, as used by repro.train.Trainer
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def _check(model: nn.Module, cfg: TrainConfig):
    if cfg.optimizer not in ("sgd", "adamw"):
        raise ReproError(f"masked_fit supports optimizer='sgd' or 'adamw' (got {cfg.optimizer!r}); train one "
                         "model at a time with Trainer.fit(masked_ids=...) for other optimizers")
    if cfg.max_grad_norm:
        raise ReproError("masked_fit does not clip gradients (max_grad_norm); use Trainer.fit per model")
    if cfg.amp:
        raise ReproError("masked_fit runs in float32; set amp=False")
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            raise ReproError(f"masked_fit cannot update the BatchNorm running statistics of {name!r} for several "
                             "copies at once; train one model at a time with Trainer.fit(masked_ids=...)")
        if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.p > 0:
            raise ReproError(f"masked_fit needs a model without randomness in training mode; {name!r} is "
                             f"dropout with p={mod.p}")


def masked_fit(model: nn.Module, config: TrainConfig, train: Batch, weights: torch.Tensor,
               progress: bool = False) -> dict[str, torch.Tensor]:
    """Train ``M = len(weights)`` copies of ``model`` (each starting from its current weights) with
    the per-example weights ``weights (M, n)`` (columns follow ``train``'s rows; 0 = deleted), in the
    mini-batch order of :class:`repro.train.Trainer` with ``config`` (its seed). Returns the stacked
    trained parameters ``{name: (M, ...)}``; load copy ``m`` with :func:`unstack`.

    The copies are independent: copy ``m`` ends where ``Trainer(model, config).fit(train,
    masked_ids=<ids with weight 0 in row m>)`` ends (see module doc)."""
    cfg = config
    _check(model, cfg)
    if not isinstance(train, Batch):
        raise TypeError(f"masked_fit takes an encoded Batch (model.encode(dataset)), got {type(train).__name__}")
    weights = torch.as_tensor(weights, dtype=torch.float32)
    if weights.dim() != 2 or weights.shape[1] != len(train):
        raise ValueError(f"weights must be (M, {len(train)}), got {tuple(weights.shape)}")
    M = weights.shape[0]
    device = next(model.parameters()).device
    model.train()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach().unsqueeze(0).repeat(M, *[1] * p.dim()).clone().requires_grad_(True)
              for n, p in model.named_parameters() if n in names}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in names}
    buffers = {n: b for n, b in model.named_buffers()}
    bufs = {n: torch.zeros_like(p) for n, p in params.items()}  # SGD momentum / Adam first moment
    sq = {n: torch.zeros_like(p) for n, p in params.items()} if cfg.optimizer == "adamw" else {}
    started = torch.zeros(M, dtype=torch.bool, device=device)
    steps = torch.zeros(M, dtype=torch.float64, device=device)  # optimizer steps taken per copy

    takes_ids = _takes_ids(model)

    def one(p, inputs, ids):
        kwargs = {**inputs, "ids": ids} if takes_ids else inputs
        return functional_call(model, ({**p, **frozen}, buffers), args=(), kwargs=kwargs)

    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    step = 0
    total = cfg.epochs * steps_per_epoch
    bar = _progress(total=total, desc=f"masked training x{M}", disable=not progress, leave=False)
    for epoch in range(1, cfg.epochs + 1):
        g = torch.Generator().manual_seed(int(cfg.seed * 7919 + epoch))
        order = torch.randperm(len(train), generator=g)
        for start in range(0, len(train), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            mb = train[idx].to(device)
            w = weights[:, idx].to(device)  # (M, b)
            active = w.sum(1) > 0
            lr = cfg.lr * lr_factor(cfg, step, steps_per_epoch)
            step += 1
            bar.update(1)
            if not bool(active.any()):
                continue
            logits = vmap(one, in_dims=(0, None, None))(params, mb.inputs, mb.ids)  # (M, b, C)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), mb.labels.repeat(M),
                                 reduction="none", label_smoothing=cfg.label_smoothing).view(M, -1)
            loss = ((ce * w).sum(1) / w.sum(1).clamp_min(1e-12)).sum()
            if not torch.isfinite(loss):
                raise ReproError(f"non-finite loss at epoch {epoch}; lower the learning rate ({cfg.lr:g})")
            grads = torch.autograd.grad(loss, list(params.values()))
            if cfg.optimizer == "adamw":
                steps += active.to(steps.dtype)
                _adamw_step(params, grads, bufs, sq, steps, active, lr, cfg.weight_decay)
                started |= active
                continue
            with torch.no_grad():
                for (n, p), gr in zip(params.items(), grads):
                    shape = (M,) + (1,) * (p.dim() - 1)
                    act = active.view(shape)
                    if cfg.weight_decay:
                        gr = gr + cfg.weight_decay * p
                    if cfg.momentum:
                        # torch.optim.SGD: buf = g at a parameter's first step, then mu * buf + g
                        new = torch.where(started.view(shape), cfg.momentum * bufs[n] + gr, gr)
                        bufs[n] = torch.where(act, new, bufs[n])
                        upd = bufs[n]
                    else:
                        upd = gr
                    p.sub_(torch.where(act, lr * upd, torch.zeros_like(upd)))
                started |= active
    bar.close()
    model.eval()
    return {n: p.detach() for n, p in params.items()}


@torch.no_grad()
def _adamw_step(params, grads, exp_avg, exp_avg_sq, steps, active, lr: float, weight_decay: float):
    """One torch.optim.AdamW step (default betas, eps; no amsgrad) for every active copy: decoupled
    weight decay ``p *= 1 - lr wd``, moments, bias corrections from each copy's own step count (a
    copy whose whole mini-batch is deleted takes no step, as in Trainer.fit)."""
    b1, b2 = ADAM_BETAS
    t = steps.clamp_min(1)
    bc1 = (1 - b1 ** t).float()
    bc2_sqrt = (1 - b2 ** t).sqrt().float()
    for (n, p), g in zip(params.items(), grads):
        shape = (-1,) + (1,) * (p.dim() - 1)
        act = active.view(shape)
        m = torch.where(act, exp_avg[n].lerp(g, 1 - b1), exp_avg[n])
        v = torch.where(act, exp_avg_sq[n] * b2 + (1 - b2) * g * g, exp_avg_sq[n])
        exp_avg[n], exp_avg_sq[n] = m, v
        new = p * (1 - lr * weight_decay) if weight_decay else p.clone()
        denom = v.sqrt() / bc2_sqrt.view(shape) + ADAM_EPS
        new = new - (lr / bc1.view(shape)) * m / denom
        p.copy_(torch.where(act, new, p))


def unstack(model: nn.Module, stacked: dict[str, torch.Tensor], m: int) -> nn.Module:
    """Load copy ``m`` of stacked parameters into ``model`` (in place; returns it, in eval mode)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in stacked:
                p.copy_(stacked[n][m])
    return model.eval()


@torch.no_grad()
def stacked_predict(model: nn.Module, stacked: dict[str, torch.Tensor], data: Batch,
                    batch_size: int = 256) -> torch.Tensor:
    """Logits ``(M, n, C)`` of every stacked copy on ``data`` (eval mode)."""
    model.eval()
    device = next(iter(stacked.values())).device
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in stacked}
    buffers = {n: b for n, b in model.named_buffers()}

    def one(p, inputs):
        return functional_call(model, ({**p, **frozen}, buffers), args=(), kwargs=inputs)

    out = []
    for mb in data.batches(batch_size):
        out.append(vmap(one, in_dims=(0, None))(stacked, mb.to(device).inputs).float().cpu())
    return torch.cat(out, 1)
