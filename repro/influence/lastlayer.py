"""Last-layer baselines in closed form: influence functions with the exact Hessian, representer points.

Both work on the penultimate features ``a = model.features(x)`` of a fixed (trained) model and its
linear classifier ``logits = W a + b`` under softmax cross-entropy.

* :class:`LastLayerInfluence` -- Koh & Liang influence functions restricted to ``(W, b)``. The Hessian
  of the mean training loss is exact and closed-form: ``H = 1/n sum_i (diag(p_i) - p_i p_i^T) ⊗
  (ã_i ã_i^T) + lambda I`` with ``ã = [a; 1]``. Scores use the package convention, **positive =
  helpful**: ``score(z, z_test) = grad L(z_test)^T H^-1 grad L(z)`` (up-weighting z lowers the test
  loss), i.e. the negative of Koh & Liang's ``I_up,loss``.
* :class:`RepresenterPoints` -- Yeh et al. 2018: refit the last layer (no bias) with L2 penalty
  ``lambda ||W||^2`` on the fixed features to its optimum; the representer theorem then writes every
  logit as ``sum_i alpha_i (f_i . f_test)`` with ``alpha_i = -(1 / (2 lambda n)) dL_i/dlogits_i``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from repro.checks import as_finite_float
from repro.data.core import Batch
from repro.errors import ConvergenceError, InvalidParameterError
from repro.influence.base import Estimator
from repro.influence.grads import as_batch
from repro.models.foreign import as_model
from repro.utils import resolve_device


@torch.no_grad()
def features_and_logits(model, data, batch_size: int = 256, device="auto") -> tuple[torch.Tensor, torch.Tensor, Batch]:
    """Penultimate features and logits of every example (eval mode), on the CPU, float64. ``model``
    may be any classifier ``nn.Module`` and ``data`` ``(inputs, labels)`` tensors (the features are
    then the input of its last linear layer, see :mod:`repro.models.foreign`)."""
    device = resolve_device(device)
    model = as_model(model)
    batch = as_batch(model, data)
    was = model.training
    model.to(device).eval()
    feats, logits = [], []
    for mb in batch.batches(batch_size):
        mb = mb.to(device)
        a = model.features(**mb.inputs)
        feats.append(a.double().cpu())
        logits.append(model.last_layer(a).double().cpu())
    model.train(was)
    return torch.cat(feats), torch.cat(logits), batch


def softmax_errors(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """dL/dlogits = softmax - onehot, per example."""
    return logits.softmax(1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)


def _grads(feats: torch.Tensor, errs: torch.Tensor, bias: bool) -> torch.Tensor:
    """Flattened per-example gradients of (W, b): vec(e a^T) followed by e, shape (n, C*(H+1))."""
    a = torch.cat([feats, torch.ones(len(feats), 1, dtype=feats.dtype)], 1) if bias else feats
    return (errs[:, :, None] * a[:, None, :]).reshape(len(feats), -1)


class LastLayerInfluence(Estimator):
    """Influence functions on the last layer with the exact (damped) Hessian.

    Args:
        model: trained classifier: a repro model or any ``nn.Module`` (its last ``nn.Linear`` is the
            last layer, see :func:`repro.models.foreign.as_model`).
        train: training data (Dataset, Batch, or (inputs, labels) tensors); fitted right away when
            given (else call :meth:`fit`).
        damping: ``lambda`` added to the Hessian diagonal (e.g. the weight decay used in training).
        batch_size, device: for the feature pass.
    """

    def __init__(self, model, train=None, damping: float = 1e-3, batch_size: int = 256, device="auto"):
        self.model = model = as_model(model)
        self.damping = as_finite_float("damping", damping, minimum=0.0)
        self.batch_size, self.device = batch_size, device
        self.bias = model.last_layer.bias is not None
        if train is not None:
            self.fit(train)

    def fit(self, train) -> "LastLayerInfluence":
        """Features, exact last-layer Hessian (+ damping) and gradients of ``train``; returns self."""
        model, damping = self.model, self.damping
        self.feats, logits, self.train = features_and_logits(model, train, self.batch_size, self.device)
        self.labels = self.train.labels
        # recompute logits from features in float64 to keep H and the gradients consistent
        self.W = model.last_layer.weight.detach().double().cpu()
        self.b = model.last_layer.bias.detach().double().cpu() if self.bias else None
        self.logits = self._logits(self.feats)
        p = self.logits.softmax(1)
        a = torch.cat([self.feats, torch.ones(len(self.feats), 1, dtype=torch.float64)], 1) if self.bias else self.feats
        n, C = p.shape
        S = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (n, C, C)
        # H[(c,j),(c',j')] = 1/n sum_i S_i[c,c'] a_i[j] a_i[j']
        H = torch.einsum("icd,ij,ik->cjdk", S, a, a).reshape(C * a.shape[1], C * a.shape[1]) / n
        self.hessian = H
        eye = torch.eye(H.shape[0], dtype=H.dtype)
        L, info = torch.linalg.cholesky_ex(H + damping * eye)
        if int(info) != 0:
            raise ConvergenceError(f"the last-layer Hessian + damping={damping:g} I is singular or not positive "
                                   "definite (softmax Hessians are singular along the all-ones direction); "
                                   "use damping > 0, e.g. 1e-3")
        self._chol = L
        self.train_grads = _grads(self.feats, softmax_errors(self.logits, self.labels), self.bias)
        self._train = self.train
        return self

    def _logits(self, feats):
        out = feats @ self.W.T
        return out + self.b if self.b is not None else out

    def inverse_hvp(self, v: torch.Tensor) -> torch.Tensor:
        """(H + lambda I)^-1 v for rows of v."""
        return torch.cholesky_solve(v.T.double(), self._chol).T

    def test_grads(self, test) -> torch.Tensor:
        self._check_fitted()
        feats, _, batch = features_and_logits(self.model, test)
        return _grads(feats, softmax_errors(self._logits(feats), batch.labels), self.bias)

    def scores(self, test) -> torch.Tensor:
        """(n_test, n_train); positive = helpful (the negative of Koh & Liang's I_up,loss)."""
        s_test = self.inverse_hvp(self.test_grads(test))
        return (s_test @ self.train_grads.T).float()

    def self_influence(self) -> torch.Tensor:
        """grad_i^T (H + lambda I)^-1 grad_i for every training example (>= 0)."""
        self._check_fitted()
        s = self.inverse_hvp(self.train_grads)
        return (s * self.train_grads).sum(1).float()


class RepresenterPoints(Estimator):
    """Representer point selection (Yeh et al. 2018) on the last layer.

    Args:
        model: trained classifier: a repro model or any ``nn.Module`` (its last ``nn.Linear`` is the
            last layer, see :func:`repro.models.foreign.as_model`).
        train: training data; fitted right away when given (else call :meth:`fit`).
        lam: L2 strength of the refit ``min_W 1/n sum_i CE(W f_i, y_i) + lam ||W||^2``.
        max_iter: L-BFGS iterations of the refit (it starts from the trained weights).
        stationarity_tol: the refit counts as converged (``converged``; else a RuntimeWarning) when
            ``max |sum_i alpha_i f_i - W| <= stationarity_tol * max(1, max |W|)``.
    """

    def __init__(self, model, train=None, lam: float = 1e-3, max_iter: int = 500, batch_size: int = 256,
                 device="auto", stationarity_tol: float = 1e-4):
        self.model = as_model(model)
        lam = as_finite_float("lam", lam)
        if lam <= 0:
            raise InvalidParameterError(f"RepresenterPoints needs lam > 0 (the alphas divide by it), got {lam}")
        self.lam, self.max_iter, self.stationarity_tol = lam, max_iter, stationarity_tol
        self.batch_size, self.device = batch_size, device
        if train is not None:
            self.fit(train)

    def fit(self, train) -> "RepresenterPoints":
        """Refit the last layer with L2 on ``train``'s features and compute the alphas; returns self."""
        model, lam, max_iter, stationarity_tol = self.model, self.lam, self.max_iter, self.stationarity_tol
        self.feats, logits, self.train = features_and_logits(model, train, self.batch_size, self.device)
        self.labels = self.train.labels
        W = model.last_layer.weight.detach().double().cpu().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([W], lr=1, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                                history_size=50, line_search_fn="strong_wolfe")
        f, y = self.feats, self.labels

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(f @ W.T, y) + lam * (W ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.W = W.detach()
        n = len(f)
        self.alpha = -softmax_errors(f @ self.W.T, y) / (2 * lam * n)  # (n, C)
        self.stationarity = float((self.alpha.T @ f - self.W).abs().max())  # 0 at the optimum
        # the representer decomposition holds at a stationary point of the refit only
        scale = max(1.0, float(self.W.abs().max()))
        self.converged = bool(self.stationarity <= stationarity_tol * scale)
        if not self.converged:
            warnings.warn(f"RepresenterPoints: the L-BFGS refit did not reach a stationary point "
                          f"(max |sum_i alpha_i f_i - W| = {self.stationarity:.3g}) in max_iter={max_iter} "
                          "iterations; representer values are approximate: raise max_iter or lam",
                          RuntimeWarning, stacklevel=2)
        self._train = self.train
        return self

    def scores(self, test, classes=None) -> torch.Tensor:
        """Representer values (n_test, n_train) for the test label (or ``classes``): alpha_i,c (f_i . f_t).
        Positive = the training point pushes the test point towards that class (proponent)."""
        self._check_fitted()
        feats, _, batch = features_and_logits(self.model, test, self.batch_size, self.device)
        c = batch.labels if classes is None else torch.as_tensor(classes)
        return ((feats @ self.feats.T) * self.alpha[:, c].T).float()

    def self_influence(self) -> torch.Tensor:
        """|alpha_{i, y_i}|: large for training points the refit struggles with (mislabel ranking);
        representer points' self-importance, the protocol's self-influence."""
        self._check_fitted()
        return self.alpha.gather(1, self.labels[:, None]).squeeze(1).abs().float()

    self_importance = self_influence


class LastLayerCosine(Estimator):
    """Cosine similarity of last-layer loss gradients (a baseline of Yeh et al. 2022): for
    ``logits = W a + b`` the gradient of the loss is ``g = (e a^T, e)`` with ``e = softmax - onehot``,
    so ``g . g' = (e . e') (a . a' + 1)`` and ``|g|^2 = |e|^2 (|a|^2 + 1)`` (``+ 1`` only with a
    bias); no ``dW`` is formed. Positive = the gradients point the same way (proponent).

    Args:
        model: trained classifier (a repro model or any ``nn.Module``; its last ``nn.Linear``).
        batch_size, device: for the feature pass.
    """

    def __init__(self, model, batch_size: int = 256, device="auto"):
        self.model = as_model(model)
        self.batch_size, self.device = batch_size, device
        self.bias = self.model.last_layer.bias is not None

    def _factors(self, data):
        a, logits, batch = features_and_logits(self.model, data, self.batch_size, self.device)
        e = softmax_errors(logits, batch.labels)
        if self.bias:
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
        return e, a, batch

    def fit(self, train) -> "LastLayerCosine":
        """Gradient factors (``e``, ``a``) of the training examples; returns self."""
        self.e, self.a, self._train = self._factors(train)
        return self

    def scores(self, test) -> torch.Tensor:
        """Cosine of the last-layer loss gradients, ``(n_test, n_train)``, float32."""
        self._check_fitted()
        e_te, a_te, _ = self._factors(test)
        dots = (e_te @ self.e.T) * (a_te @ self.a.T)
        n_te = e_te.norm(dim=1) * a_te.norm(dim=1)
        n_tr = self.e.norm(dim=1) * self.a.norm(dim=1)
        return (dots / (n_te[:, None] * n_tr[None, :]).clamp_min(1e-30)).float()


def loss_per_example(model, data, batch_size: int = 256, device="auto") -> np.ndarray:
    """Cross-entropy of every example under ``model`` (the loss baseline of mislabel detection)."""
    _, logits, batch = features_and_logits(model, data, batch_size, device)
    return F.cross_entropy(logits, batch.labels, reduction="none").numpy()
