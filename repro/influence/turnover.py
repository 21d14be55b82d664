"""Turn-over dropout influence (Kobayashi et al. 2020, "Efficient Estimation of Influence of a
Training Instance").

A model trained with :class:`repro.models.turnover.TurnOverDropout` layers trains on instance ``i``
only through its own sub-network ``m(i)``; the flipped mask ``1 - m(i)`` selects a sub-network that
never saw ``i``. The influence of training instance ``z_i`` on a target ``z = (x, y)`` is

    I(z_i -> z) = L(f_{1-m(i)}(x), y) - L(f_{m(i)}(x), y)

**Sign convention** (the package's): positive = ``z_i`` helped ``z`` (the model that learned ``z_i``
has the lower loss on ``z``), negative = harmful. No gradients, no Hessian: two forward passes per
(target, instance) pair, and when the turn-over layer sits directly before the classifier (our VGG
and text classifier), one forward pass per target plus a matrix product per instance chunk.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from repro.checks import check_k
from repro.data.core import Batch, Dataset
from repro.errors import ReproError
from repro.influence.base import Estimator, TopK, proponents_opponents
from repro.utils import progress as _progress
from repro.utils import resolve_device


def _ids_of(train) -> torch.Tensor:
    if isinstance(train, (Dataset, Batch)):
        ids = train.ids
    else:
        ids = train
    if isinstance(ids, torch.Tensor):
        return ids.to(torch.int64).cpu()
    return torch.as_tensor(np.asarray(ids, dtype=np.int64))


class TurnOverInfluence(Estimator):
    """Influence estimates of a model trained with turn-over dropout.

    Args:
        model: a model with turn-over dropout layers (e.g. ``vgg(..., turnover={"p": 0.5, "seed": 1})``
            or ``text_classifier(..., turnover={...})``) trained with ids (the Trainer passes them).
        method: ``"head"`` (fast: the layer sits right before the classifier; one forward per target),
            ``"forward"`` (general: two full forward passes per (target, instance) pair, any placement
            of any number of turn-over layers), or ``"auto"`` (head when possible).
        batch_size: targets per forward pass; ``id_chunk`` training ids per matrix product.
        device: ``"auto"`` = CUDA when available.
        progress: progress bars.

    The training examples are those the model was trained on (their ids select the sub-networks):
    :meth:`fit` takes them (Dataset, Batch or tensors with the training ids); every method also
    takes ``train_ids`` explicitly (ids, or a Dataset / Batch whose ids are used).

    Example::

        est = TurnOverInfluence(model).fit(train)
        s = est.scores(test)                # (n_test, n_train), positive = helpful
        flagged = est.self_influence().argsort(descending=True)
    """

    def __init__(self, model, method: str = "auto", batch_size: int = 128, id_chunk: int = 4096,
                 device="auto", progress: bool = True):
        from repro.models.turnover import turnover_layers

        self.model = model
        self.layers = turnover_layers(model)
        if not self.layers:
            raise ReproError("the model has no TurnOverDropout layer; build it with turnover={'p': 0.5, 'seed': ...} "
                             "and train it with ids")
        head = model.head_turnover() if hasattr(model, "head_turnover") else None
        if method == "auto":
            method = "head" if head is not None and len(self.layers) == 1 else "forward"
        if method == "head" and (head is None or len(self.layers) != 1):
            raise ReproError("method='head' needs exactly one turn-over layer directly before the classifier")
        if method not in ("head", "forward"):
            raise ValueError(f"method must be 'auto', 'head' or 'forward', got {method!r}")
        self.method = method
        self.batch_size = batch_size
        self.id_chunk = id_chunk
        self.device = resolve_device(device)
        self.progress = progress

    def fit(self, train) -> "TurnOverInfluence":
        """The training examples (the ones the model was trained on, with the ids it saw)."""
        batch = self._batch(train)
        from repro.checks import check_unique_ids
        check_unique_ids(batch.ids, "TurnOverInfluence training examples")
        self._train = batch
        return self

    def _train_ids(self, train_ids) -> torch.Tensor:
        if train_ids is None:
            self._check_fitted()
            return self._train.ids
        return _ids_of(train_ids)

    def _train_batch(self, train) -> Batch:
        if train is None:
            self._check_fitted()
            return self._train
        return self._batch(train)

    def _batch(self, data) -> Batch:
        from repro.influence.grads import as_batch
        return as_batch(self.model, data)

    # ------------------------------------------------------------------ fast path
    @torch.no_grad()
    def _head_losses(self, h: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor):
        """Losses under own / flipped masks for all (target, id) pairs: two (n_t, n_i) tensors.

        logits_own[t, i, c] = sum_d h[t, d] W[c, d] m_i[d] / keep + b[c]; the flipped logits use
        1 - m_i and 1 / (1 - keep). Computed as one matrix product ``(h * W) @ M^T``."""
        layer, lin = self.layers[0], self.model.last_layer
        W, b = lin.weight.float(), lin.bias.float() if lin.bias is not None else None
        hw = h.float()[:, None, :] * W[None]  # (n_t, C, d)
        n_t, C, d = hw.shape
        M = layer.mask(ids.to(h.device)).float()  # (n_i, d)
        dots = (hw.reshape(n_t * C, d) @ M.T).reshape(n_t, C, -1)  # (n_t, C, n_i)
        total = hw.sum(-1, keepdim=True)  # (n_t, C, 1)
        own = dots / layer.keep
        flip = (total - dots) / (1.0 - layer.keep)
        if b is not None:
            own = own + b[None, :, None]
            flip = flip + b[None, :, None]
        idx = labels.to(h.device)[:, None, None].expand(n_t, 1, own.shape[-1])

        def ce(logits):  # (n_t, C, n_i) -> (n_t, n_i)
            return torch.logsumexp(logits, dim=1) - logits.gather(1, idx).squeeze(1)

        return ce(own), ce(flip)

    @torch.no_grad()
    def _features(self, batch: Batch) -> torch.Tensor:
        out = []
        for mb in batch.batches(self.batch_size):
            mb = mb.to(self.device)
            out.append(self.model.features(**mb.inputs))  # ids=None: the layer is the identity
        return torch.cat(out)

    # ------------------------------------------------------------------ general path
    @torch.no_grad()
    def _forward_losses(self, batch: Batch, ids: torch.Tensor):
        n_t, n_i = len(batch), len(ids)
        own = torch.empty(n_t, n_i)
        flip = torch.empty(n_t, n_i)
        per = max(1, self.batch_size // 2)
        bar = _progress(range(n_t), desc="turn-over (forward)", disable=not self.progress)
        for t in bar:
            one = batch[[t]].to(self.device)
            for s in range(0, n_i, per):
                chunk = ids[s:s + per].to(self.device)
                k = len(chunk)
                inputs = {key: v.expand(2 * k, *v.shape[1:]) for key, v in one.inputs.items()}
                flips = torch.cat([torch.zeros(k, dtype=torch.bool), torch.ones(k, dtype=torch.bool)]).to(self.device)
                logits = self.model(**inputs, ids=torch.cat([chunk, chunk]), flip=flips).float()
                loss = F.cross_entropy(logits, one.labels.expand(2 * k), reduction="none").cpu()
                own[t, s:s + k], flip[t, s:s + k] = loss[:k], loss[k:]
        return own, flip

    # ------------------------------------------------------------------ public API
    def losses(self, targets, train_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(own, flipped)`` losses of every target under every instance's masks, each (n_t, n_i)."""
        batch = self._batch(targets)
        ids = self._train_ids(train_ids)
        was_training = self.model.training
        self.model.to(self.device).eval()
        try:
            if self.method == "forward":
                return self._forward_losses(batch, ids)
            h = self._features(batch)
            own_parts, flip_parts = [], []
            chunks = range(0, len(ids), self.id_chunk)
            for s in _progress(chunks, desc="turn-over (head)", disable=not self.progress or len(chunks) < 4):
                o, f = self._head_losses(h, batch.labels, ids[s:s + self.id_chunk])
                own_parts.append(o.cpu())
                flip_parts.append(f.cpu())
            return torch.cat(own_parts, 1), torch.cat(flip_parts, 1)
        finally:
            self.model.train(was_training)

    def scores(self, targets, train_ids=None) -> torch.Tensor:
        """Influence matrix (n_targets, n_train): loss(flipped) - loss(own); positive = helpful.

        ``train_ids``: ids of training instances (an array, or a Dataset/Batch whose ids are used);
        default: the fitted training examples."""
        own, flip = self.losses(targets, train_ids)
        return flip - own

    def summed(self, targets, train_ids=None) -> torch.Tensor:
        """Influence of each training instance summed over all targets (e.g. a validation set):
        the quantity data cleansing ranks by (most negative = most harmful)."""
        train_ids = self._train_ids(train_ids)
        total = torch.zeros(len(train_ids))
        batch = self._batch(targets)
        for start in range(0, len(batch), self.batch_size):
            total += self.scores(batch[torch.arange(start, min(len(batch), start + self.batch_size))],
                                 train_ids).sum(0)
        return total

    @torch.no_grad()
    def self_influence(self, train=None) -> torch.Tensor:
        """I(z_i -> z_i) for every training instance (large for atypical or mislabelled ones);
        default: the fitted training examples."""
        batch = self._train_batch(train)
        out = torch.empty(len(batch))
        was_training = self.model.training
        self.model.to(self.device).eval()
        try:
            for start in range(0, len(batch), self.batch_size):
                idx = torch.arange(start, min(len(batch), start + self.batch_size))
                mb = batch[idx]
                if self.method == "head":
                    h = self._features(mb)
                    layer, lin = self.layers[0], self.model.last_layer
                    m = layer.mask(mb.ids.to(self.device)).to(h.dtype)
                    own = lin(h * m / layer.keep)
                    flip = lin(h * (1 - m) / (1 - layer.keep))
                    labels = mb.labels.to(self.device)
                    out[idx] = (F.cross_entropy(flip.float(), labels, reduction="none")
                                - F.cross_entropy(own.float(), labels, reduction="none")).cpu()
                else:
                    for i in idx.tolist():
                        one = batch[[i]]
                        out[i] = self.scores(one, one.ids)[0, 0]
        finally:
            self.model.train(was_training)
        return out.detach()

    def top_k(self, targets, k: int = 5, train_ids=None) -> TopK:
        """Most helpful (proponents) and most harmful (opponents) training ids per target (see
        :class:`repro.influence.base.TopK`)."""
        check_k(k)
        batch = self._batch(targets)
        ids = self._train_ids(train_ids)
        return proponents_opponents(self.scores(batch, ids), ids, batch.ids, k)
