"""Influence estimators over one shared per-example gradient engine.

* :func:`per_example_grads` / :func:`batch_grad` (``repro.influence.grads``): flattened per-example
  gradients of any parameter subset (vmap or loop), optionally randomly projected.
* :class:`Projector` (``repro.influence.projection``): seeded, block-generated JL projections.
* :class:`GradientCache` (``repro.influence.cache``): stamped, resumable on-disk gradient rows.
* :class:`TracInCP` (``repro.influence.tracin``): TracIn over checkpoints, last-layer fast path,
  self-influence, proponents/opponents.
* :class:`InfluenceFunction` (``repro.influence.ifunc``) over ``repro.influence.hessian`` (HVPs of the
  training objective with weight decay; LiSSA, exact and CG inverse-HVP solvers).
* :class:`FastIF` (``repro.influence.fastif``): kNN candidates + small-batch LiSSA + parallel s_test.
* :class:`TracInWE` (``repro.influence.tracin_we``): TracIn on word-embedding rows of shared tokens
  (sparse), top-k variant, word-level attributions; ``cancellation_ratio``.
* :class:`TurnOverInfluence` (``repro.influence.turnover``): turn-over dropout influence.
* Last-layer baselines (``repro.influence.lastlayer``): exact-Hessian influence, representer points,
  gradient cosine; :class:`RandomInfluence` (``repro.influence.base``): seeded random scores.

Sign convention everywhere: **positive = helpful / proponent** (training on the example lowers the
test loss). ``InfluenceFunction.paper_influence`` gives Koh & Liang's / FastIF's sign (negative =
helpful).

Every estimator follows one protocol (:mod:`repro.influence.base`: ``fit`` / ``scores`` /
``self_influence`` / ``top_k`` / ``train_ids``; FastIF's dense ``scores`` are NaN off its candidates) and takes any classifier ``nn.Module``
(:func:`repro.models.foreign.as_model`). :data:`ESTIMATORS` names them; :func:`estimator` builds one
by name.
"""
from repro.influence.cache import GradientCache, file_fingerprint, ids_fingerprint
from repro.influence.grads import (Target, batch_grad, choose_method, flat_params, grad_dim,
                                   param_names, per_example_grads, resolve_target, unflatten)
from repro.influence.projection import Projector
from repro.influence.tracin import NotFittedError, TracInCP, resolve_checkpoints
from repro.influence.hessian import (CGConfig, LissaConfig, LissaDivergedError, TrainingObjective, WeightDecay,
                                     conjugate_gradient, exact_ihvp, lissa)
from repro.influence.ifunc import SOLVERS, InfluenceFunction
from repro.influence.fastif import (FastIF, FastIFResult, KNNConfig, KNNIndex, WorkerConfig, compute_features,
                                   faiss_available, knn_recall)
from repro.influence.lastlayer import LastLayerCosine, LastLayerInfluence, RepresenterPoints
from repro.influence.turnover import TurnOverInfluence
from repro.influence.tracin_we import (TokenGrads, TracInWE, cancellation_ratio, cancellation_ratio_from_grads,
                                       position_grads, sparse_dot, token_grads, word_embedding_module)
from repro.influence.base import Estimator, RandomInfluence, TopK

#: The estimators by name (configuration in their constructors, data in ``fit``).
ESTIMATORS = {
    "tracincp": TracInCP,
    "tracin_we": TracInWE,
    "influence_function": InfluenceFunction,
    "fastif": FastIF,
    "last_layer_influence": LastLayerInfluence,
    "representer_points": RepresenterPoints,
    "turnover": TurnOverInfluence,
    "last_layer_cosine": LastLayerCosine,
    "random": RandomInfluence,
}


def estimator(name: str, *args, **config):
    """``ESTIMATORS[name](*args, **config)``: e.g. ``estimator("tracincp", model, ckpts, params="last")``.
    An unknown name raises :class:`repro.errors.UnknownNameError` listing the known ones."""
    from repro.errors import UnknownNameError

    if name not in ESTIMATORS:
        raise UnknownNameError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name](*args, **config)


__all__ = ["ESTIMATORS", "Estimator", "LastLayerCosine", "RandomInfluence", "TopK", "estimator", "TokenGrads", "TracInWE", "cancellation_ratio", "cancellation_ratio_from_grads", "position_grads",
           "sparse_dot", "token_grads", "word_embedding_module", "FastIF", "FastIFResult", "InfluenceFunction", "KNNConfig", "KNNIndex", "WorkerConfig", "CGConfig", "LastLayerInfluence", "LissaConfig",
           "LissaDivergedError", "RepresenterPoints", "SOLVERS", "TrainingObjective", "TurnOverInfluence",
           "WeightDecay", "compute_features", "conjugate_gradient", "exact_ihvp", "faiss_available",
           "knn_recall", "lissa", "GradientCache", "NotFittedError", "Projector", "Target", "TracInCP", "batch_grad",
           "choose_method", "file_fingerprint", "flat_params", "grad_dim", "ids_fingerprint",
           "param_names", "per_example_grads", "resolve_checkpoints", "resolve_target", "unflatten"]
