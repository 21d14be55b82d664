"""Influence functions (Koh & Liang 2017) with LiSSA, exact or CG inverse-Hessian-vector products.

For a training example ``z`` and a test example ``z'``, with ``H`` the Hessian of the training
objective ``L(theta) = (1/n) sum_i loss(z_i) + (wd/2)||theta||^2`` (see
:mod:`repro.influence.hessian`) and ``s_test = (H + lambda I)^-1 grad loss(z')``:

    score(z, z') = + grad loss(z) . s_test          (this package: POSITIVE = HELPFUL)
    I_up,loss(z, z') = - grad loss(z) . s_test      (the papers' influence: NEGATIVE = helpful)

Up-weighting ``z`` by ``eps`` in the objective moves the optimum by ``-eps H^-1 grad loss(z)`` and
the test loss by ``eps * I_up,loss = -eps * score``: a positive score means up-weighting ``z``
*lowers* the test loss (``z`` is a proponent / helpful), a negative one that it raises it (harmful).
``paper_influence = -score`` (Koh & Liang's ``I_up,loss``; FastIF's sign, whose "helpful" lists are
its most negative values). Conversion happens only at this edge: every other method returns the
package convention.

Removing ``z`` and retraining is up-weighting by ``eps = -1/n``, so the predicted change of the
test loss is ``+score / n`` (:meth:`InfluenceFunction.predict_removal`; positive: the loss rises
because a helpful example went away). Exactly: retraining on ``(1/n) sum_{i != z} loss_i +
(wd/2)||theta||^2``; retraining on the mean over the ``n-1`` remaining examples also rescales the
L2 term by ``n/(n-1)``, which adds the same ``O(1/n)`` offset to every example's change (it moves
no rank or correlation).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch

from repro.data.core import Batch
from repro.errors import EmptyDatasetError, UnknownNameError
from repro.checks import as_finite_float, check_k
from repro.influence.grads import as_batch, param_names, train_batch, per_example_grads, resolve_target
from repro.influence.hessian import (CGConfig, LissaConfig, LissaInfo, TrainingObjective, WeightDecay,
                                     conjugate_gradient, exact_ihvp, lissa_sum)
from repro.errors import NotFittedError
from repro.influence.base import Estimator, TopK, proponents_opponents
from repro.models.foreign import as_model
from repro.utils import progress as _progress
from repro.utils import resolve_device

__all__ = ["InfluenceFunction", "SOLVERS", "NotFittedError"]

SOLVERS = ("lissa", "exact", "cg")
_ROW_BYTES = 256 * 2**20  # memory budget for one chunk of streamed training-gradient rows
AGGREGATES = ("none", "mean")

class InfluenceFunction(Estimator):
    """Influence functions over any parameter subset, with LiSSA / exact / CG ``s_test``.

    **Sign convention**: :meth:`scores` is positive for *helpful* training examples (up-weighting
    them lowers the test loss) and negative for harmful ones, like TracIn's proponents.
    :meth:`paper_influence` returns Koh & Liang's / FastIF's ``I_up,loss = -scores`` (negative =
    helpful). Removal of ``z`` changes the test loss by about ``+scores/n``
    (:meth:`predict_removal`).

    Args:
        model: a :class:`repro.models.ReproModel` or any classifier ``nn.Module`` (see
            :func:`repro.models.foreign.as_model`). It is copied; the caller's model is left alone.
        train: training data (Dataset, Batch, or ``(inputs, labels)`` tensors / a DataLoader) that
            defines the Hessian and the default columns; fitted right away when given (else call
            :meth:`fit`).
        params: parameters of the influence (``"trainable"`` default, ``"last"``, ``"all"``, a
            group or names/prefixes).
        weight_decay: the L2 term of the training objective: a float ``wd`` (the optimizer's
            ``weight_decay``; term ``(wd/2)||theta||^2`` over all chosen parameters, as
            ``TrainConfig(optimizer="sgd", weight_decay=wd)`` trains) or a
            :class:`repro.influence.hessian.WeightDecay` (e.g. FastIF's
            ``WeightDecay.from_l2_coef(0.005, exclude="bias_norm")``).
        solver: ``"lissa"`` (default), ``"exact"`` (explicit Hessian, small ``d``), ``"cg"``.
        damping: ``lambda`` in ``(H + lambda I)^-1``. LiSSA: default ``scale * damp``; giving
            ``damping`` sets ``damp = damping / scale``. Exact/CG: default 0.
        lissa: a :class:`LissaConfig`; keyword arguments ``damp``, ``scale``, ``depth``,
            ``batch_size``, ``repetitions``, ``tol``, ``min_depth``, ``seed`` override it. They are
            an error with another solver.
        test_target: what is differentiated at the test point (``"loss"`` default, or ``"logit"``,
            ``"prob"``, ``"margin"``...); for higher-is-better targets the score is negated so that
            positive still means "moves the target the good way".
        train_loss: the per-example training loss of the objective (default cross-entropy): used for
            the Hessian and for the training-example gradients.
        grad_chunk: examples per per-example-gradient chunk (default: the engine's budget).
        hvp_batch_size: mini-batch size of full-training-set passes (exact Hessian, CG).
        cg: a :class:`repro.influence.hessian.CGConfig` (CG's tolerance and iteration limit);
            only with ``solver="cg"``.
        cache_train_grads: keep the training gradients in memory after the first :meth:`scores`
            call when they fit in ``cache_mb`` MiB (``"auto"``), always (True) or never (False;
            they are then streamed chunk by chunk each call).
        test_chunk: test points solved together (LiSSA shares mini-batches among them); default
            from a 1 GiB budget for the ``s_test`` rows.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ...
        method: per-example gradient method (``"auto"``, ``"vmap"``, ``"loop"``).
        progress: progress bars.

    Example::

        inf = InfluenceFunction(model, train, params="trainable", weight_decay=0.01,
                                solver="lissa", scale=1e4, damp=5e-3, depth=1000, batch_size=8)
        s = inf.scores(test)              # (n_test, n_train), positive = helpful
        top = inf.top_k(test, k=10)       # proponent (helpful) / opponent (harmful) ids
    """

    def __init__(self, model, train=None, params="trainable", weight_decay=0.0, solver: str = "lissa",
                 damping: float | None = None, lissa: LissaConfig | None = None, *,
                 test_target="loss", train_loss=None, grad_chunk: int | None = None,
                 hvp_batch_size: int = 64, cg: CGConfig | None = None,
                 cache_train_grads="auto", cache_mb: float = 1024, test_chunk: int | None = None,
                 device="auto", method: str = "auto", progress: bool = True, **lissa_kwargs):
        if solver not in SOLVERS:
            raise UnknownNameError(f"unknown solver {solver!r}; use one of {SOLVERS}")
        self.solver = solver
        if solver == "lissa":
            self.lissa = LissaConfig.make(lissa, **({"damping": damping} if damping is not None else {}),
                                          **lissa_kwargs)
            self.damping = self.lissa.damping
        else:
            if lissa is not None or lissa_kwargs:
                raise TypeError(f"LiSSA options {sorted(lissa_kwargs) or ['lissa']} given with "
                                f"solver={solver!r}; they only apply to solver='lissa'")
            self.lissa = None
            self.damping = as_finite_float("damping", 0.0 if damping is None else damping, minimum=0.0)
        if cg is not None and (solver != "cg" or not isinstance(cg, CGConfig)):
            raise TypeError(f"cg= takes a CGConfig and applies to solver='cg' only (solver={solver!r}, "
                            f"cg={type(cg).__name__})")
        self.cg = cg or CGConfig()
        if cache_train_grads not in ("auto", True, False):
            raise ValueError(f"cache_train_grads must be 'auto', True or False, got {cache_train_grads!r}")
        self.device = resolve_device(device)
        self.model = copy.deepcopy(as_model(model)).to(self.device).eval()
        self.params = params
        self.names = param_names(self.model, params)
        self.weight_decay = WeightDecay.resolve(weight_decay)
        self.target = resolve_target(test_target)
        self.train_loss = train_loss
        self.grad_chunk = grad_chunk
        self.hvp_batch_size = int(hvp_batch_size)
        self.cache_train_grads = cache_train_grads
        self.cache_mb = float(cache_mb)
        self.test_chunk = test_chunk
        self.method = method
        self.progress = progress
        self.objective: TrainingObjective | None = None
        self._train_grads: torch.Tensor | None = None
        self.last_lissa_info: LissaInfo | None = None
        if train is not None:
            self.fit(train)

    # ------------------------------------------------------------------ setup
    def fit(self, train) -> "InfluenceFunction":
        """Use ``train`` as the training set (Hessian, default columns); returns ``self``."""
        batch = train_batch(self.model, train, "InfluenceFunction")
        self.objective = TrainingObjective(self.model, batch, self.names, self.weight_decay,
                                           target=self.train_loss)
        self._train_grads = None
        return self

    def _check_fitted(self) -> TrainingObjective:
        if self.objective is None:
            raise NotFittedError("call InfluenceFunction.fit(train) (or pass train=) first")
        return self.objective

    @property
    def train(self) -> Batch:
        return self._check_fitted().train

    @property
    def train_ids(self) -> torch.Tensor:
        """Stable ids of the fitted training examples (the column order of :meth:`scores`)."""
        return self.train.ids.clone()

    @property
    def dim(self) -> int:
        return self._check_fitted().dim

    @property
    def sign(self) -> float:
        """+1 for loss-like test targets, -1 for higher-is-better ones (see class doc)."""
        return -1.0 if self.target.higher_is_better else 1.0

    # ------------------------------------------------------------------ gradients
    def _grads(self, batch: Batch, target=None) -> torch.Tensor:
        return per_example_grads(self.model, batch, self.names, target=target, method=self.method,
                                 chunk_size=self.grad_chunk, device=self.device, progress=False)

    def test_grads(self, test, aggregate: str = "none") -> torch.Tensor:
        """Gradients of the test target, ``(n_test, d)``, or ``(1, d)`` (their mean) with
        ``aggregate="mean"`` (several anchors as one query, as FastIF's HANS experiment)."""
        if aggregate not in AGGREGATES:
            raise UnknownNameError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        batch = as_batch(self.model, test, "test examples")
        if len(batch) == 0:
            raise EmptyDatasetError("no test examples")
        g = self._grads(batch, self.target)
        return g.mean(0, keepdim=True) if aggregate == "mean" else g

    def _train_grad_matrix(self) -> torch.Tensor | None:
        """The cached training gradients (computed once), or None when they are streamed."""
        obj = self._check_fitted()
        if self._train_grads is not None:
            return self._train_grads
        size_mb = obj.n * obj.dim * 4 / 2**20
        if self.cache_train_grads is True or (self.cache_train_grads == "auto" and size_mb <= self.cache_mb):
            self._train_grads = self._grads(obj.train, self.train_loss)
        return self._train_grads

    # ------------------------------------------------------------------ s_test
    def solve(self, v: torch.Tensor, repetitions: Sequence[int] | None = None) -> torch.Tensor:
        """``(H + lambda I)^-1 v`` for rows ``v`` (k, d) with the configured solver. With LiSSA,
        ``repetitions`` picks which repetition streams to run and returns their **sum** (used by
        the parallel FastIF); by default the mean over ``range(lissa.repetitions)``."""
        obj = self._check_fitted()
        v = v.reshape(-1, obj.dim)
        if self.solver == "lissa":
            info = LissaInfo()
            if repetitions is None:
                s = lissa_sum(obj, v, self.lissa, range(self.lissa.repetitions), self.progress, info)
                s = s / self.lissa.repetitions
            else:
                s = lissa_sum(obj, v, self.lissa, list(repetitions), self.progress, info)
            self.last_lissa_info = info
            return s
        if repetitions is not None:
            raise ValueError("repetitions only apply to solver='lissa'")
        if self.solver == "exact":
            return exact_ihvp(obj, v, self.damping, progress=self.progress,
                              batch_size=self.hvp_batch_size)
        return conjugate_gradient(obj, v, self.damping, tol=self.cg.tol, maxiter=self.cg.maxiter,
                                  batch_size=self.hvp_batch_size, progress=self.progress)

    def s_test(self, test, aggregate: str = "none") -> torch.Tensor:
        """``s_test = (H + lambda I)^-1 grad target(z')`` for each test point ``(n_test, d)`` (or
        ``(1, d)`` for the mean test gradient with ``aggregate="mean"``)."""
        return self.solve(self.test_grads(test, aggregate))

    # ------------------------------------------------------------------ scores
    def _chunk_size_for(self, k: int) -> int:
        if self.test_chunk:
            return int(self.test_chunk)
        return max(1, min(k, int(2**30 // max(1, 4 * self.dim))))

    def scores_from_s_test(self, s_test: torch.Tensor, train=None) -> torch.Tensor:
        """``sign * grad loss(z) . s_test`` for every row of ``s_test`` (m, d) and every training
        example of ``train`` (default: the fitted set, whose gradients are computed once and
        cached). Returns ``(m, n_train)``, positive = helpful."""
        obj = self._check_fitted()
        S = s_test.reshape(-1, obj.dim).to(obj.dtype).cpu()
        if train is None:
            G = self._train_grad_matrix()
            batch = obj.train
        else:
            G, batch = None, as_batch(self.model, train)
        if G is not None:
            return self.sign * (G.to(S.dtype) @ S.T).T
        out = torch.empty(S.shape[0], len(batch), dtype=S.dtype)
        step = self.grad_chunk or max(1, min(256, _ROW_BYTES // (4 * obj.dim)))
        for s in _progress(range(0, len(batch), step), total=math.ceil(len(batch) / step),
                           desc="influence: train grads", disable=not self.progress, leave=False):
            g = self._grads(batch[torch.arange(s, min(len(batch), s + step))], self.train_loss)
            out[:, s:s + len(g)] = (g.to(S.dtype) @ S.T).T
        return self.sign * out

    def scores(self, test, train=None, aggregate: str = "none", s_test: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Influence scores ``(n_test, n_train)`` in the package convention (positive = helpful).

        Args:
            test: test points (Dataset, Batch, or (inputs, labels) tensors).
            train: the training examples to score (default: the fitted set; any other pool, e.g.
                kNN candidates, is scored against the fitted Hessian).
            aggregate: ``"mean"`` scores the mean test gradient (one row).
            s_test: precomputed ``s_test`` rows (then ``test`` is ignored; pass None).
        """
        if s_test is not None:
            return self.scores_from_s_test(s_test, train)
        V = self.test_grads(test, aggregate)
        rows = []
        step = self._chunk_size_for(len(V))
        for s in range(0, len(V), step):
            rows.append(self.scores_from_s_test(self.solve(V[s:s + step]), train))
        return torch.cat(rows)

    def paper_influence(self, test, train=None, aggregate: str = "none",
                        s_test: torch.Tensor | None = None) -> torch.Tensor:
        """Koh & Liang's ``I_up,loss = -grad loss(z) . s_test`` (FastIF's sign: NEGATIVE =
        helpful), i.e. ``-scores(...)``."""
        return -self.scores(test, train, aggregate, s_test)

    def predict_removal(self, test, train=None, aggregate: str = "none") -> torch.Tensor:
        """Predicted change of the test loss when each training example is removed and the model
        retrained: ``+scores / n`` (``n`` = size of the fitted training set); positive = the test
        loss goes up (a helpful example was removed)."""
        return self.scores(test, train, aggregate) / self._check_fitted().n

    def self_influence(self, train=None) -> torch.Tensor:
        """``grad loss(z) . (H + lambda I)^-1 grad loss(z)`` for every training example ``(n,)``;
        >= 0 when ``H + lambda I`` is positive definite. Needs one inverse-HVP per example (with
        LiSSA: ``n * depth`` HVP columns), so it is costly for large sets."""
        obj = self._check_fitted()
        batch = obj.train if train is None else as_batch(self.model, train)
        G = self._train_grad_matrix() if train is None else None
        out = torch.empty(len(batch), dtype=obj.dtype)
        step = self._chunk_size_for(len(batch))
        for s in _progress(range(0, len(batch), step), total=math.ceil(len(batch) / step),
                           desc="self-influence", disable=not self.progress, leave=False):
            idx = torch.arange(s, min(len(batch), s + step))
            g = (G[idx] if G is not None else self._grads(batch[idx], self.train_loss)).to(obj.dtype)
            out[s:s + len(g)] = (g * self.solve(g).cpu()).sum(1)
        return out

    def top_k(self, test, k: int = 5, aggregate: str = "none") -> TopK:
        """The ``k`` most helpful (``proponents``, largest positive scores, descending) and most
        harmful (``opponents``, most negative first) training ids of every test point (of the
        test set's mean loss with ``aggregate="mean"``: one row, the first test id)."""
        check_k(k)
        batch = as_batch(self.model, test)
        s = self.scores(batch, aggregate=aggregate)
        test_ids = batch.ids if aggregate == "none" else batch.ids[:1]
        return proponents_opponents(s, self.train.ids, test_ids, k)

    def __repr__(self) -> str:
        extra = f", lissa={self.lissa}" if self.lissa is not None else ""
        return (f"InfluenceFunction(params={self.params!r}, solver={self.solver!r}, "
                f"damping={self.damping:g}, weight_decay={self.weight_decay}{extra})")
