"""Hessian-vector products of the training objective and inverse-HVP solvers (LiSSA, exact, CG).

The **training objective** over the chosen parameters ``theta`` (default: the trainable ones) is

    L(theta) = (1/n) sum_i loss(z_i; theta)  +  (wd / 2) * sum_{p in decayed} theta_p^2

with ``loss`` the per-example cross-entropy (or another target) and ``wd`` the weight decay the
model was trained with. Its Hessian is ``H = (1/n) sum_i H_i + wd * D`` (``D`` = 0/1 diagonal of the
decayed coordinates). Weight-decay conventions, made explicit by :class:`WeightDecay`:

* ``torch.optim.SGD(weight_decay=wd)`` (what :class:`repro.train.Trainer` uses with
  ``TrainConfig(optimizer="sgd", weight_decay=wd)``) adds ``wd * theta`` to the gradient, i.e. the
  gradient of ``(wd/2) ||theta||^2``: pass ``WeightDecay(wd)`` (= ``weight_decay=wd``). The Trainer
  decays *every* trainable parameter, so ``exclude="none"`` (the default) matches it.
* FastIF adds ``c * sum theta^2`` with ``c = 0.005`` to the loss by hand, over trainable parameters
  except biases and LayerNorm weights: that is ``WeightDecay(2 * c, exclude="bias_norm")``
  (``WeightDecay.from_l2_coef(0.005, exclude="bias_norm")``).
* ``AdamW`` decay is decoupled (not the gradient of any loss term); ``(wd/2)||theta||^2`` is only the
  usual approximation of it.

Hessian-vector products use double backprop on a mini-batch, in eval mode (dropout off, BatchNorm
running statistics, no turn-over ids), with only the chosen parameters differentiated. The
weight-decay term is added analytically (``wd * D v``). Text models need
``attn_implementation="eager"`` (the default of :class:`repro.models.text.TextClassifier`), since
SDPA kernels have no double backward.

Solvers of ``(H + lambda I) s = v`` (rows of ``v`` are independent right-hand sides):

* :func:`lissa`: the stochastic recursion of Agarwal et al. as used by Koh & Liang and FastIF:
  ``h_0 = v``, ``h_j = v + (1 - damp) h_{j-1} - H_j h_{j-1} / scale`` with ``H_j`` the Hessian on a
  fresh random training mini-batch, ``s = h_J / scale``; the fixed point is
  ``(H + scale * damp * I)^-1 v``, so the effective damping is ``lambda = scale * damp``. It
  converges when ``scale`` exceeds the largest eigenvalue of every ``H_j`` (+ lambda).
* :func:`exact_ihvp`: the explicit Hessian over the full training set, ``torch.linalg.solve`` in
  float64 (small parameter sets only).
* :func:`conjugate_gradient`: CG with full-training-set HVPs.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from repro.data.core import Batch
from repro.checks import as_finite_float
from repro.errors import ConvergenceError, InvalidParameterError, ReproError, UnknownNameError
from repro.influence.grads import EvalState, as_batch, param_names, resolve_target
from repro.utils import progress as _progress

__all__ = ["WeightDecay", "TrainingObjective", "LissaConfig", "CGConfig", "LissaDivergedError", "lissa",
           "exact_ihvp", "conjugate_gradient", "stream_seed"]

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


class LissaDivergedError(ConvergenceError, FloatingPointError):
    """The LiSSA recursion blew up: ``scale`` is below the largest Hessian eigenvalue."""


# ---------------------------------------------------------------------------- weight decay
@dataclass(frozen=True)
class WeightDecay:
    """The L2 term of the training objective: ``(coef / 2) * sum of theta^2`` over decayed params.

    Args:
        coef: the optimizer's ``weight_decay`` (``wd``); the loss term is ``(wd/2)||theta||^2`` and
            its Hessian ``wd * I`` on the decayed coordinates.
        exclude: which chosen parameters are *not* decayed: ``"none"`` (all decayed, as torch
            optimizers and our Trainer do), ``"bias_norm"`` (FastIF / BERT fine-tuning: biases and
            LayerNorm / BatchNorm / GroupNorm weights excluded), a list of names / name prefixes, or
            a callable ``f(name, module) -> bool`` (True = excluded).
    """

    coef: float = 0.0
    exclude: str | Sequence[str] | Callable = "none"

    @classmethod
    def from_l2_coef(cls, c: float, exclude="none") -> "WeightDecay":
        """For a loss term ``c * sum theta^2`` (FastIF writes ``c = 0.005``): ``coef = 2c``."""
        return cls(2.0 * float(c), exclude)

    @classmethod
    def resolve(cls, wd) -> "WeightDecay":
        if wd is None:
            return cls(0.0)
        if isinstance(wd, WeightDecay):
            return wd
        if isinstance(wd, (int, float)):
            if wd < 0:
                raise ValueError(f"weight_decay must be >= 0, got {wd}")
            return cls(float(wd))
        raise TypeError(f"weight_decay must be a float or a WeightDecay, got {type(wd).__name__}")

    def is_decayed(self, model: nn.Module, name: str) -> bool:
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        ex = self.exclude
        if ex == "none" or ex is None:
            return True
        if ex == "bias_norm":
            return not (leaf == "bias" or isinstance(owner, _NORM_TYPES)
                        or "layernorm" in name.lower() or "layer_norm" in name.lower())
        if isinstance(ex, str):
            raise UnknownNameError(f"WeightDecay.exclude must be 'none', 'bias_norm', names or a "
                                   f"callable, got {ex!r}")
        if callable(ex):
            return not ex(name, owner)
        return not any(name == w or name.startswith(w.rstrip(".") + ".") for w in ex)

    def mask(self, model: nn.Module, names: Sequence[str]) -> torch.Tensor:
        """Flat 0/1 float mask (d,) over the chosen parameters: 1 where decayed."""
        params = dict(model.named_parameters())
        parts = [torch.full((params[n].numel(),), 1.0 if self.is_decayed(model, n) else 0.0)
                 for n in names]
        return torch.cat(parts)


# ---------------------------------------------------------------------------- objective
def stream_seed(seed: int, repetition: int) -> int:
    """Seed of the mini-batch stream of LiSSA repetition ``repetition`` (independent of how many
    repetitions run and on which worker, so parallel and sequential runs draw the same batches)."""
    return int(np.random.SeedSequence([int(seed), int(repetition)]).generate_state(1)[0])


class TrainingObjective:
    """The training objective (mean loss + L2 term) of ``model`` on ``train`` over ``params``.

    Args:
        model: a :class:`repro.models.ReproModel` (or any module with ``forward(**inputs)``).
        train: the training data (a Batch or a Dataset, encoded with ``model.encode``).
        params: parameter group or names (``"trainable"``, ``"last"``, ``"all"``, names...).
        weight_decay: a float ``wd`` (loss term ``(wd/2)||theta||^2`` over all chosen parameters) or
            a :class:`WeightDecay`.
        target: the per-example training loss (see :func:`repro.influence.grads.resolve_target`);
            default cross-entropy.
        device: where to compute (default: the model's device).

    The model is used as it is (not copied); its mode and ``requires_grad`` flags are restored
    after every call.
    """

    def __init__(self, model: nn.Module, train, params="trainable", weight_decay=0.0, target=None,
                 device=None):
        self.model = model
        self.train = as_batch(model, train)
        if len(self.train) == 0:
            from repro.errors import EmptyDatasetError
            raise EmptyDatasetError("the training objective needs at least one example")
        self.names = param_names(model, params)
        self.weight_decay = WeightDecay.resolve(weight_decay)
        self.target = resolve_target(target)  # None / "loss": cross-entropy, float64 kept
        if device is not None:
            model.to(device)
        p = dict(model.named_parameters())
        self.chosen = [p[n] for n in self.names]
        self.device = self.chosen[0].device
        self.dtype = self.chosen[0].dtype
        self.dim = sum(t.numel() for t in self.chosen)
        self.decay = (self.weight_decay.mask(model, self.names).to(self.device, self.dtype)
                      * self.weight_decay.coef)
        self._hessian: dict = {}

    @property
    def n(self) -> int:
        return len(self.train)

    def differentiable(self) -> EvalState:
        """Context: eval mode, exactly the chosen parameters require grad (restored on exit)."""
        return EvalState(self.model, self.names, set_requires_grad=True)

    def _flat(self, gs) -> torch.Tensor:
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for g, p in zip(gs, self.chosen)])

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        out, s = [], 0
        for p in self.chosen:
            out.append(v[s:s + p.numel()].view_as(p))
            s += p.numel()
        return out

    def _data_grad_graph(self, mb: Batch):
        """Gradient of the mean loss on ``mb`` with its graph kept (for double backprop)."""
        mb = mb.to(self.device)
        logits = self.model(**mb.inputs)
        loss = self.target(logits, mb.labels).mean()
        return torch.autograd.grad(loss, self.chosen, create_graph=True, allow_unused=True), loss

    def _hvp_rows(self, gs, vecs: torch.Tensor, keep_graph: bool = False) -> torch.Tensor:
        """``H_mb @ v`` for each row of ``vecs`` (k, d), given the graph of the gradient ``gs``
        (the mean-loss part only). ``keep_graph`` keeps the graph after the last row."""
        live = [(g, i) for i, g in enumerate(gs) if g is not None and g.requires_grad]
        out = torch.zeros_like(vecs)
        if not live:  # the loss is linear (or constant) in the chosen parameters
            return out
        k = vecs.shape[0]
        for r in range(k):
            parts = self._split(vecs[r])
            hv = torch.autograd.grad([g for g, _ in live], self.chosen,
                                     grad_outputs=[parts[i] for _, i in live],
                                     retain_graph=keep_graph or r < k - 1, allow_unused=True)
            self._write_flat(out[r], hv)
        return out

    def _write_flat(self, row: torch.Tensor, gs) -> None:
        """Copy per-parameter tensors into a preallocated flat row (no concatenation)."""
        s = 0
        for g, p in zip(gs, self.chosen):
            if g is not None:
                row[s:s + p.numel()].copy_(g.reshape(-1))
            s += p.numel()

    def _as_rows(self, v: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if v.dim() not in (1, 2) or v.shape[-1] != self.dim:
            raise ValueError(f"vector(s) must have shape (d,) or (k, d) with d={self.dim}, got {tuple(v.shape)}")
        single = v.dim() == 1
        return v.reshape(-1, self.dim).to(self.device, self.dtype), single

    def hvp(self, v: torch.Tensor, batch: Batch | None = None) -> torch.Tensor:
        """``H_b v`` for the objective on mini-batch ``batch`` (default: the whole training set in
        one pass): mean-loss Hessian on the batch plus the weight-decay term. ``v`` is ``(d,)`` or
        ``(k, d)``; the result has the same shape."""
        rows, single = self._as_rows(v)
        mb = self.train if batch is None else batch
        with self.differentiable(), torch.enable_grad():
            gs, _ = self._data_grad_graph(mb)
            out = self._hvp_rows(gs, rows)
        out = out + self.decay * rows
        return out[0] if single else out

    def full_hvp(self, v: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """``H v`` of the objective on the whole training set, accumulated over mini-batches of
        ``batch_size`` (each weighted by its share of the examples)."""
        rows, single = self._as_rows(v)
        out = torch.zeros_like(rows)
        with self.differentiable(), torch.enable_grad():
            for mb in self.train.batches(batch_size):
                gs, _ = self._data_grad_graph(mb)
                out.add_(self._hvp_rows(gs, rows), alpha=len(mb) / self.n)
        out = out + self.decay * rows
        return out[0] if single else out

    def gradient(self, batch: Batch | None = None, batch_size: int = 64) -> torch.Tensor:
        """Gradient of the objective (mean loss + L2) on ``batch`` (default: the training set)."""
        mb = self.train if batch is None else batch
        out = torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        with self.differentiable(), torch.enable_grad():
            for b in mb.batches(batch_size):
                b = b.to(self.device)
                loss = self.target(self.model(**b.inputs), b.labels).sum() / len(mb)
                out.add_(self._flat(torch.autograd.grad(loss, self.chosen, allow_unused=True)))
        theta = torch.cat([p.detach().reshape(-1) for p in self.chosen]).to(self.dtype)
        return out + self.decay * theta

    def hessian(self, batch_size: int = 256, chunk: int = 256, progress: bool = False,
                max_dim: int = 20_000) -> torch.Tensor:
        """The explicit Hessian ``(d, d)`` (float64) of the objective over the whole training set.
        Costs ``d`` backward passes per mini-batch and ``8 d^2`` bytes: small parameter sets only."""
        if self.dim > max_dim:
            raise ReproError(f"explicit Hessian of {self.dim} parameters is too large (max_dim="
                             f"{max_dim}); use solver='lissa' or 'cg', or fewer parameters")
        H = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device)
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        batches = list(self.train.batches(batch_size))
        with self.differentiable(), torch.enable_grad():
            for mb in _progress(batches, desc="explicit Hessian", disable=not progress, leave=False):
                gs, _ = self._data_grad_graph(mb)
                for s in range(0, self.dim, chunk):
                    rows = eye[s:s + chunk]
                    hr = self._hvp_rows(gs, rows, keep_graph=True)
                    H[s:s + chunk].add_(hr.double(), alpha=len(mb) / self.n)
        H = 0.5 * (H + H.T)  # remove float asymmetry
        H.diagonal().add_(self.decay.double())
        return H

    def cached_hessian(self, **kwargs) -> torch.Tensor:
        if "H" not in self._hessian:
            self._hessian["H"] = self.hessian(**kwargs)
        return self._hessian["H"]

    def sample_stream(self, batch_size: int, seed: int, repetition: int):
        """Endless mini-batches for one LiSSA repetition: consecutive slices of seeded random
        permutations of the training set (without replacement within a pass, like a shuffled
        DataLoader); the stream depends only on ``(seed, repetition)``."""
        g = torch.Generator().manual_seed(stream_seed(seed, repetition))
        n = self.n
        bs = min(int(batch_size), n)
        while True:
            perm = torch.randperm(n, generator=g)
            for s in range(0, n - bs + 1, bs):
                yield self.train[perm[s:s + bs]]


# ---------------------------------------------------------------------------- LiSSA
@dataclass(frozen=True)
class LissaConfig:
    """Settings of the LiSSA recursion (see module doc). Effective damping ``lambda = scale*damp``.

    Args:
        damp: ``damp`` of the recursion (FastIF uses 5e-3).
        scale: must exceed the largest eigenvalue of the mini-batch Hessians (FastIF: 1e4 / 1e6).
        depth: recursion steps ``J`` per repetition (FastIF: 1000-2000).
        batch_size: training examples per step (FastIF's fast setting: 1).
        repetitions: independent recursions (own mini-batch streams) averaged.
        tol: stop a repetition early when ``max_k ||h_j - h_{j-1}|| / ||h_j|| < tol`` (checked
            every step after ``min_depth``); None runs all ``depth`` steps. With small batches the
            relative change has a noise floor, so ``tol`` mostly helps with larger batches.
        min_depth: steps before the ``tol`` check applies.
        seed: seed of the mini-batch streams (repetition ``r`` uses ``stream_seed(seed, r)``).
        diverge_factor: raise :class:`LissaDivergedError` when ``||h_j|| > diverge_factor * ||v|| *
            max(1, 1/damp)`` or h is not finite.
    """

    damp: float = 5e-3
    scale: float = 1e4
    depth: int = 1000
    batch_size: int = 8
    repetitions: int = 1
    tol: float | None = None
    min_depth: int = 10
    seed: int = 0
    diverge_factor: float = 1e4

    def __post_init__(self):
        for name in ("damp", "scale", "diverge_factor"):
            as_finite_float(name, getattr(self, name))
        if not 0 <= self.damp < 1:
            raise ValueError(f"damp must be in [0, 1), got {self.damp}")
        if self.scale <= 0 or self.depth < 1 or self.batch_size < 1 or self.repetitions < 1:
            raise ValueError("scale, depth, batch_size and repetitions must be positive")

    @property
    def damping(self) -> float:
        """The effective damping ``lambda = scale * damp``."""
        return self.scale * self.damp

    @classmethod
    def make(cls, config: "LissaConfig | None" = None, **kwargs) -> "LissaConfig":
        """A config from an optional base config and keyword overrides. ``damping=lambda`` sets
        ``damp = lambda / scale``. Unknown keywords raise TypeError."""
        base = config or cls()
        known = {f for f in cls.__dataclass_fields__}
        bad = sorted(set(kwargs) - known - {"damping"})
        if bad:
            raise TypeError(f"unknown LiSSA option(s) {bad}; known: {sorted(known | {'damping'})}")
        damping = kwargs.pop("damping", None)
        cfg = replace(base, **kwargs)
        if damping is not None:
            if "damp" in kwargs and not math.isclose(cfg.damping, damping, rel_tol=1e-9):
                raise ValueError(f"damping={damping} contradicts scale*damp={cfg.damping}")
            cfg = replace(cfg, damp=float(damping) / cfg.scale)
        return cfg


@dataclass
class LissaInfo:
    """What happened in a LiSSA run: steps done and the last relative change per repetition, and
    whether each repetition converged: ``True`` (reached ``tol``), ``False`` (``tol`` given and not
    reached in ``depth`` steps: the estimate is flagged and a RuntimeWarning is issued) or ``None``
    (no ``tol``: a fixed number of steps, convergence not checked)."""

    steps: list[int] = field(default_factory=list)
    last_rel_change: list[float] = field(default_factory=list)
    converged_per_repetition: list = field(default_factory=list)

    @property
    def converged(self) -> bool | None:
        """``False`` if any repetition missed its ``tol``, ``True`` if all reached it, else None."""
        flags = self.converged_per_repetition
        if any(f is False for f in flags):
            return False
        if flags and all(f is True for f in flags):
            return True
        return None


def lissa_sum(objective: TrainingObjective, v: torch.Tensor, config: LissaConfig,
              repetitions: Sequence[int], progress: bool = False, info: LissaInfo | None = None
              ) -> torch.Tensor:
    """The **sum** over the given repetition indices of LiSSA estimates of ``(H + lambda I)^-1 v``
    (``v``: (k, d)). Building block of :func:`lissa` and of the parallel FastIF (each worker sums
    its own repetitions; an all-reduce and a division by the total count give the average)."""
    rows, _ = objective._as_rows(v)
    total = torch.zeros_like(rows)
    cfg = config
    vnorm = rows.norm(dim=1).clamp_min(1e-30)
    limit = cfg.diverge_factor * max(1.0, 1.0 / max(cfg.damp, 1e-12))
    steps = len(repetitions) * cfg.depth
    with _progress(total=steps, desc="LiSSA s_test", disable=not progress, leave=False) as bar, \
            objective.differentiable(), torch.enable_grad():
        for r in repetitions:
            h = rows.clone()
            stream = objective.sample_stream(cfg.batch_size, cfg.seed, r)
            rel = float("nan")
            j = 0
            for j in range(1, cfg.depth + 1):
                mb = next(stream)
                gs, _ = objective._data_grad_graph(mb)
                hv = objective._hvp_rows(gs, h).addcmul_(objective.decay, h)  # H_j h (+ wd term)
                del gs
                # h_j = v + (1 - damp) h_{j-1} - H_j h_{j-1} / scale   (in place on hv)
                new = hv.mul_(-1.0 / cfg.scale).add_(h, alpha=1.0 - cfg.damp).add_(rows)
                hn = new.norm(dim=1)
                if not torch.isfinite(hn).all() or bool((hn > limit * vnorm).any()):
                    raise LissaDivergedError(
                        f"LiSSA diverged at step {j} of repetition {r} (|h|/|v| = "
                        f"{float((hn / vnorm).max()):.3g}); scale={cfg.scale:g} must exceed the largest "
                        f"eigenvalue of the mini-batch Hessian: raise scale (and lower damp to keep "
                        f"lambda = scale*damp = {cfg.damping:g})")
                rel = float(((new - h).norm(dim=1) / hn.clamp_min(1e-30)).max())
                h = new
                bar.update(1)
                if cfg.tol is not None and j >= cfg.min_depth and rel < cfg.tol:
                    bar.update(cfg.depth - j)
                    break
            converged = None if cfg.tol is None else bool(rel < cfg.tol)
            if converged is False:
                warnings.warn(f"LiSSA repetition {r} did not reach tol={cfg.tol:g} in depth={cfg.depth} "
                              f"steps (last relative change {rel:.3g}); the estimate is not converged: "
                              "raise depth or batch_size, or loosen tol", RuntimeWarning, stacklevel=3)
            if info is not None:
                info.steps.append(j)
                info.last_rel_change.append(rel)
                info.converged_per_repetition.append(converged)
            total += h / cfg.scale
    return total


def lissa(objective: TrainingObjective, v: torch.Tensor, config: LissaConfig | None = None,
          progress: bool = False, return_info: bool = False, **kwargs):
    """LiSSA estimate of ``(H + scale*damp*I)^-1 v``, averaged over ``config.repetitions``.

    ``v``: ``(d,)`` or ``(k, d)`` (k right-hand sides share the mini-batches, so the forward pass
    and first backward are paid once per step). Keyword arguments override fields of ``config``
    (``damp``, ``scale``, ``depth``, ``batch_size``, ``repetitions``, ``tol``, ``seed``, or
    ``damping`` = lambda). Returns the estimate in the shape of ``v`` (and a :class:`LissaInfo`
    with ``return_info``)."""
    cfg = LissaConfig.make(config, **kwargs)
    rows, single = objective._as_rows(v)
    info = LissaInfo()
    s = lissa_sum(objective, rows, cfg, range(cfg.repetitions), progress, info) / cfg.repetitions
    s = s[0] if single else s
    return (s, info) if return_info else s


# ---------------------------------------------------------------------------- exact and CG
def exact_ihvp(objective: TrainingObjective, v: torch.Tensor, damping: float = 0.0,
               progress: bool = False, **hessian_kwargs) -> torch.Tensor:
    """``(H + damping I)^-1 v`` with the explicit full-training-set Hessian (cached on the
    objective), solved in float64. Warns when ``H + damping I`` is not positive definite; raises
    :class:`repro.errors.ConvergenceError` when it is singular (e.g. ``damping=0`` on a model with
    redundant parameters) and :class:`repro.errors.InvalidParameterError` for a negative or
    non-finite ``damping``."""
    damping = as_finite_float("damping", damping, minimum=0.0)
    rows, single = objective._as_rows(v)
    H = objective.cached_hessian(progress=progress, **hessian_kwargs)
    key = ("factor", float(damping))
    if key not in objective._hessian:
        A = H.clone()
        A.diagonal().add_(float(damping))
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            objective._hessian[key] = ("chol", L)
        else:
            warnings.warn(f"H + {damping:g} I is not positive definite (the model is not at a "
                          "minimum of the objective, or lambda is too small); solving with LU, "
                          "influence estimates may be unreliable", RuntimeWarning, stacklevel=2)
            LU, piv, lu_info = torch.linalg.lu_factor_ex(A)
            diag = LU.diagonal().abs()
            if int(lu_info) != 0 or float(diag.min()) <= 1e-12 * max(float(diag.max()), 1e-300):
                raise ConvergenceError(
                    f"H + {damping:g} I is singular ({A.shape[0]} parameters; the Hessian has a zero "
                    "eigenvalue, e.g. softmax's all-ones direction or an unused parameter), so the "
                    "inverse-HVP does not exist; use damping > 0 (e.g. 1e-3) or fewer parameters")
            objective._hessian[key] = ("lu", (LU, piv))
    kind, fac = objective._hessian[key]
    b = rows.double().T
    if kind == "chol":
        x = torch.cholesky_solve(b, fac)
    else:
        x = torch.linalg.lu_solve(*fac, b)
    if not bool(torch.isfinite(x).all()):
        raise ConvergenceError(f"the exact solve of (H + {damping:g} I) s = v gave non-finite values; the "
                               "system is (nearly) singular: use damping > 0")
    out = x.T.to(objective.dtype)
    return out[0] if single else out


@dataclass(frozen=True)
class CGConfig:
    """Stopping rule of the conjugate-gradient solver (:func:`conjugate_gradient`).

    Args:
        tol: stop when ``||r|| <= tol ||v||`` for every right-hand side.
        maxiter: iterations before :class:`repro.errors.ConvergenceError` is raised.
    """

    tol: float = 1e-6
    maxiter: int = 200

    def __post_init__(self):
        if not as_finite_float("tol", self.tol) > 0 or int(self.maxiter) < 1:
            raise InvalidParameterError(f"CGConfig needs tol > 0 and maxiter >= 1, got tol={self.tol}, "
                                        f"maxiter={self.maxiter}")


def conjugate_gradient(objective: TrainingObjective, v: torch.Tensor, damping: float = 0.0,
                       tol: float = 1e-6, maxiter: int = 200, batch_size: int = 64,
                       progress: bool = False) -> torch.Tensor:
    """``(H + damping I)^-1 v`` by conjugate gradients with full-training-set HVPs (each row of
    ``v`` solved independently). Stops when ``||r|| <= tol ||v||`` for every row.

    Raises :class:`repro.errors.ConvergenceError` when it meets non-positive curvature (``H +
    damping I`` is not positive definite, so CG's answer would be meaningless) or when ``maxiter``
    iterations do not reach ``tol``; :class:`repro.errors.InvalidParameterError` for a negative or
    non-finite ``damping``."""
    damping = as_finite_float("damping", damping, minimum=0.0)
    rows, single = objective._as_rows(v)
    x = torch.zeros_like(rows)
    r = rows.clone()
    p = r.clone()
    rs = (r * r).sum(1)
    bnorm = rows.norm(dim=1).clamp_min(1e-30)
    for _ in _progress(range(maxiter), desc="CG", disable=not progress, leave=False):
        if bool((rs.sqrt() <= tol * bnorm).all()):
            break
        Ap = objective.full_hvp(p, batch_size) + damping * p
        pAp = (p * Ap).sum(1)
        still = rs.sqrt() > tol * bnorm
        if bool(((pAp <= 0) & still).any()):
            raise ConvergenceError(
                f"CG met non-positive curvature (p.(H + {damping:g} I)p = {float(pAp.min()):.3g}): H + "
                "damping I is not positive definite (the model is not at a minimum, or damping is 0 "
                "on a singular Hessian); raise damping, or use solver='exact' / 'lissa'")
        active = (rs.sqrt() > tol * bnorm).to(rows.dtype)
        alpha = active * rs / pAp.where(pAp.abs() > 0, torch.ones_like(pAp))
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rs_new = (r * r).sum(1)
        beta = rs_new / rs.clamp_min(1e-300)
        p = r + beta[:, None] * p
        rs = rs_new
    else:
        if bool((rs.sqrt() > tol * bnorm).any()):
            worst = float((rs.sqrt() / bnorm).max())
            raise ConvergenceError(f"CG did not reach tol={tol:g} in maxiter={maxiter} iterations (relative "
                                   f"residual {worst:.3g}); raise CGConfig.maxiter, loosen CGConfig.tol or raise damping")
    return x[0] if single else x
