"""Influence estimators over one shared per-example gradient engine.

* :func:`per_example_grads` / :func:`batch_grad` (``repro.influence.grads``): flattened per-example
  gradients of any parameter subset (vmap or loop), optionally randomly projected.
* :class:`Projector` (``repro.influence.projection``): seeded, block-generated JL projections.
* :class:`GradientCache` (``repro.influence.cache``): stamped, resumable on-disk gradient rows.
* :class:`TracInCP` (``repro.influence.tracin``): TracIn over checkpoints, last-layer fast path,
  self-influence, proponents/opponents.
"""
from repro.influence.cache import GradientCache, file_fingerprint, ids_fingerprint
from repro.influence.grads import (Target, batch_grad, choose_method, flat_params, grad_dim,
                                   param_names, per_example_grads, resolve_target, unflatten)
from repro.influence.projection import Projector
from repro.influence.tracin import NotFittedError, TracInCP, resolve_checkpoints

__all__ = ["GradientCache", "NotFittedError", "Projector", "Target", "TracInCP", "batch_grad",
           "choose_method", "file_fingerprint", "flat_params", "grad_dim", "ids_fingerprint",
           "param_names", "per_example_grads", "resolve_checkpoints", "resolve_target", "unflatten"]
