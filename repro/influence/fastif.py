"""FastIF (Guo et al., EMNLP 2021): influence functions restricted to nearest neighbours, with
small-batch LiSSA and a data-parallel variant.

Three speed-ups over scoring every training example with a carefully estimated ``s_test``:

1. **kNN candidates**: only the ``k`` training examples nearest to the test point in a feature
   space of the model (``model.features``: the pooled [CLS] output for the text classifier, the
   penultimate activations for the VGG) are scored. The search is exact L2 (chunked matrix
   products in torch by default; ``KNNConfig(backend="faiss")`` uses ``faiss.IndexFlatL2`` when faiss is
   installed). Several test points can be one query through their **mean** feature.
2. **Small-batch LiSSA**: ``s_test`` with mini-batch size 1 and more repetitions (the paper found
   the error depends on the depth, hardly on the batch size).
3. **Parallel** (``workers=G`` or ``WorkerConfig``): G processes (``torch.distributed``: gloo on CPU, NCCL on GPU,
   started with ``torch.multiprocessing.spawn``, or the caller's process group under ``torchrun``
   with ``distributed=True``). Worker ``w`` runs the LiSSA repetitions ``r`` with ``r % G == w``
   (each repetition has its own seeded mini-batch stream, :func:`repro.influence.hessian.stream_seed`),
   the estimates are all-reduce averaged, and each worker scores an even share of the candidates;
   the shares are gathered. Because a repetition's stream depends only on ``(seed, r)``, the
   parallel average over ``max(repetitions, G)`` repetitions equals the sequential average of the
   same repetitions (up to float rounding). Deviation from the paper's code: its workers draw
   disjoint random samples without replacement; ours draw independent seeded streams.

Scores follow the package convention of :class:`repro.influence.ifunc.InfluenceFunction`:
POSITIVE = HELPFUL (``paper_influence = -scores`` is FastIF's own sign, negative = helpful).
"""
from __future__ import annotations

import os

import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from repro.checks import check_k
from repro.data.core import Batch
from repro.errors import InvalidParameterError, ReproError, UnknownNameError
from repro.influence.grads import as_batch
from repro.influence.base import Estimator, TopK
from repro.influence.hessian import LissaConfig
from repro.influence.ifunc import InfluenceFunction, NotFittedError

__all__ = ["FastIF", "FastIFResult", "KNNConfig", "WorkerConfig", "KNNIndex", "compute_features", "knn_recall",
           "faiss_available", "KNN_BACKENDS"]

KNN_BACKENDS = ("torch", "faiss", "auto")


# ---------------------------------------------------------------------------- features and kNN
def faiss_available() -> bool:
    """Whether ``import faiss`` works (faiss is an optional dependency: ``pip install faiss-cpu``)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def compute_features(model, data, batch_size: int = 256, device=None,
                     feature_fn: Callable | None = None) -> torch.Tensor:
    """Feature rows ``(n, f)`` (float32, CPU) in eval mode: ``feature_fn(model, inputs)`` or
    ``model.features(**inputs)`` (the input of the last layer; the pooled [CLS] output for the text
    classifier). The model's mode is restored afterwards."""
    batch = as_batch(model, data)
    if feature_fn is None and not hasattr(model, "features"):
        raise ReproError(f"{type(model).__name__} has no features(); pass features=callable(model, "
                         "inputs) -> (b, f)")
    dev = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = []
        for mb in batch.batches(batch_size):
            mb = mb.to(dev)
            f = feature_fn(model, mb.inputs) if feature_fn is not None else model.features(**mb.inputs)
            out.append(f.detach().float().reshape(len(mb), -1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


class KNNIndex:
    """Exact L2 nearest neighbours over fixed feature rows.

    Args:
        features: ``(N, f)`` rows (e.g. :func:`compute_features` of the training set).
        backend: ``"torch"`` (default: chunked ``||q||^2 - 2 q.x + ||x||^2`` and top-k merging),
            ``"faiss"`` (``faiss.IndexFlatL2``; an error when faiss is not installed) or ``"auto"``
            (faiss when importable, else torch).
        chunk_size: database rows per chunk of the torch search.
        device: where the torch search runs (default CPU).

    ``search(queries, k)`` returns squared distances and row positions ``(q, k)``, nearest first.
    """

    def __init__(self, features: torch.Tensor, backend: str = "torch", chunk_size: int = 65536,
                 device=None):
        if backend not in KNN_BACKENDS:
            raise UnknownNameError(f"unknown kNN backend {backend!r}; use one of {KNN_BACKENDS}")
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
        if backend == "faiss" and not faiss_available():
            raise ReproError("backend='faiss' needs faiss (`pip install faiss-cpu`); "
                             "the default 'torch' backend needs nothing")
        feats = torch.as_tensor(features).float()
        if feats.dim() != 2 or len(feats) == 0:
            raise ValueError(f"features must be a non-empty (N, f) matrix, got {tuple(feats.shape)}")
        self.backend = backend
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.features = feats.contiguous()
        self._sq = self.features.pow(2).sum(1)
        self._faiss = None
        if backend == "faiss":
            import faiss

            self._faiss = faiss.IndexFlatL2(self.features.shape[1])
            self._faiss.add(self.features.numpy().astype(np.float32))

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.as_tensor(queries).float().reshape(-1, self.dim)
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self))
        if self._faiss is not None:
            d, i = self._faiss.search(q.numpy().astype(np.float32), k)
            return torch.from_numpy(d).float(), torch.from_numpy(i).long()
        qd = q.to(self.device)
        qsq = qd.pow(2).sum(1, keepdim=True)
        best_d = torch.empty(len(q), 0, device=self.device)
        best_i = torch.empty(len(q), 0, dtype=torch.long, device=self.device)
        for s in range(0, len(self), self.chunk_size):
            x = self.features[s:s + self.chunk_size].to(self.device)
            d = (qsq - 2.0 * qd @ x.T + self._sq[s:s + self.chunk_size].to(self.device)).clamp_min_(0)
            idx = torch.arange(s, s + len(x), device=self.device).expand(len(q), -1)
            cat_d, cat_i = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
            top = cat_d.topk(min(k, cat_d.shape[1]), dim=1, largest=False, sorted=True)
            best_d, best_i = top.values, cat_i.gather(1, top.indices)
        return best_d.cpu(), best_i.cpu()


def knn_recall(full_scores: torch.Tensor, candidate_positions: torch.Tensor, top: int,
               kind: str = "helpful") -> torch.Tensor:
    """Per test row: the fraction of the ``top`` most influential training examples (by the full
    scores ``(m, N)``, package sign) that are among the kNN candidates ``(m, k)``. ``kind``:
    ``"helpful"`` (largest scores), ``"harmful"`` (most negative) or ``"abs"`` (largest |score|).
    The random baseline is ``k / N``."""
    if kind == "helpful":
        key = full_scores
    elif kind == "harmful":
        key = -full_scores
    elif kind == "abs":
        key = full_scores.abs()
    else:
        raise UnknownNameError(f"kind must be 'helpful', 'harmful' or 'abs', got {kind!r}")
    top = min(int(top), full_scores.shape[1])
    best = key.topk(top, dim=1).indices
    out = torch.empty(len(full_scores))
    for r in range(len(full_scores)):
        out[r] = torch.isin(best[r], candidate_positions[r].to(best.device)).float().mean()
    return out


# ---------------------------------------------------------------------------- results
@dataclass
class FastIFResult:
    """Scores of the kNN candidates of each query row.

    Attributes:
        test_ids: ids of the test points (all anchors; with ``aggregate="mean"`` they form the one
            query row).
        aggregate: ``"none"`` (one row per test point) or ``"mean"``.
        candidate_ids / candidate_positions / distances: ``(m, k)`` ids, positions in the fitted
            training set and squared feature distances of the candidates, nearest first.
        scores: ``(m, k)``, package convention (positive = helpful).
        train_ids: ids of the fitted training set (for :meth:`dense`).
        timings: seconds spent on the kNN search, s_test, candidate gradients, in total.
        s_test: the ``s_test`` rows used ``(m, d)`` (kept when asked for).
        lissa_converged: whether LiSSA reached its ``tol`` (see
            :class:`repro.influence.hessian.LissaInfo`): ``True``, ``False`` (the scores are not
            converged estimates; a RuntimeWarning was issued) or ``None`` (no ``tol`` set, precomputed
            ``s_test``, or computed in worker processes).
    """

    test_ids: torch.Tensor
    aggregate: str
    candidate_ids: torch.Tensor
    candidate_positions: torch.Tensor
    distances: torch.Tensor
    scores: torch.Tensor
    train_ids: torch.Tensor
    timings: dict = field(default_factory=dict)
    s_test: torch.Tensor | None = None
    lissa_converged: bool | None = None

    @property
    def paper_influence(self) -> torch.Tensor:
        """FastIF's own sign (negative = helpful): ``-scores``."""
        return -self.scores

    def dense(self, fill=float("nan")) -> torch.Tensor:
        """``(m, N)`` scores over the whole fitted training set, ``fill`` (NaN) off the candidates."""
        out = torch.full((self.scores.shape[0], len(self.train_ids)), fill, dtype=self.scores.dtype)
        out.scatter_(1, self.candidate_positions, self.scores)
        return out

    def top(self, n: int = 10, kind: str = "helpful") -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and scores ``(m, n)`` of the ``n`` most helpful (largest) or harmful (most
        negative) candidates of every row."""
        if kind not in ("helpful", "harmful"):
            raise UnknownNameError(f"kind must be 'helpful' or 'harmful', got {kind!r}")
        n = min(check_k(n, "n"), self.scores.shape[1])
        t = self.scores.topk(n, dim=1, largest=(kind == "helpful"))
        return self.candidate_ids.gather(1, t.indices), t.values


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class KNNConfig:
    """How FastIF finds its candidates.

    Args:
        features: ``callable(model, inputs) -> (b, f)`` defining the kNN space (default: the
            input of the model's last linear layer, ``model.features``).
        backend: ``"torch"`` (default), ``"faiss"`` or ``"auto"`` (see :class:`KNNIndex`).
        chunk_size: database rows per chunk of the torch search.
        feature_batch_size: examples per forward pass when computing features.
    """

    features: Callable | None = None
    backend: str = "torch"
    chunk_size: int = 65536
    feature_batch_size: int = 256

    def __post_init__(self):
        if self.backend not in KNN_BACKENDS:
            raise UnknownNameError(f"unknown kNN backend {self.backend!r}; use one of {KNN_BACKENDS}")
        if self.features is not None and not callable(self.features):
            raise TypeError(f"features must be callable(model, inputs), got {type(self.features).__name__}")
        for name in ("chunk_size", "feature_batch_size"):
            if int(getattr(self, name)) < 1:
                raise InvalidParameterError(f"KNNConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class WorkerConfig:
    """Parallel FastIF: ``n`` spawned processes in a ``torch.distributed`` group.

    Args:
        n: processes (1 = sequential, in the caller's process).
        backend: ``"gloo"`` / ``"nccl"`` (default: NCCL when the estimator runs on CUDA, else gloo).
        threads: torch threads per spawned worker (1: ``n`` workers use ``n`` cores).
    """

    n: int = 1
    backend: str | None = None
    threads: int = 1

    def __post_init__(self):
        if int(self.n) < 1 or int(self.threads) < 1:
            raise InvalidParameterError(f"WorkerConfig needs n >= 1 and threads >= 1, got n={self.n}, "
                                        f"threads={self.threads}")
        if self.backend not in (None, "gloo", "nccl"):
            raise UnknownNameError(f"unknown process-group backend {self.backend!r}; use 'gloo' or 'nccl'")

    @classmethod
    def make(cls, workers) -> "WorkerConfig":
        """A config from an int (the number of processes) or a config."""
        if isinstance(workers, cls):
            return workers
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)):
            raise TypeError(f"workers must be an int or a WorkerConfig, got {type(workers).__name__}")
        return cls(n=int(workers))


# flat keywords of earlier versions and where they live now (named in the TypeError)
_MOVED = {"knn_backend": "knn=KNNConfig(backend=...)", "knn_chunk": "knn=KNNConfig(chunk_size=...)",
          "feature_batch_size": "knn=KNNConfig(feature_batch_size=...)",
          "features": "knn=KNNConfig(features=...)", "dist_backend": "workers=WorkerConfig(backend=...)",
          "worker_threads": "workers=WorkerConfig(threads=...)"}


# ---------------------------------------------------------------------------- FastIF
class FastIF(Estimator):
    """Influence functions restricted to the ``k`` nearest training examples (FastIF).

    Args:
        model: a :class:`repro.models.ReproModel` or any classifier ``nn.Module`` (copied; see
            :func:`repro.models.foreign.as_model`). The parallel mode ships the model itself to
            each worker (pickled), so any module works there too.
        train: training data (Dataset, Batch, or (inputs, labels) tensors); fitted right away when given.
        k: candidates per query (FastIF: 1,000 of 390k; also 10,000).
        params, weight_decay, test_target, train_loss, grad_chunk, method, device: as for
            :class:`repro.influence.ifunc.InfluenceFunction`.
        lissa: a :class:`LissaConfig` (default FastIF's fast setting: batch size 1, damp 5e-3,
            scale 1e4, depth 1000, one repetition).
        **lissa_options: shorthand for single LiSSA fields overriding ``lissa`` (``damp``,
            ``scale``, ``depth``, ``batch_size``, ``repetitions``, ``tol``, ``min_depth``,
            ``seed``, ``damping``; ``damping`` sets ``damp = damping / scale``); anything else is
            a TypeError naming the known options.
        knn: a :class:`KNNConfig` (feature function, search backend, chunk sizes).
        workers: processes for :meth:`scores`: an int ``G`` (1 = sequential) or a
            :class:`WorkerConfig` (also the process-group backend and threads per worker). With
            ``G > 1`` workers, ``max(repetitions, G)`` LiSSA repetitions are averaged.
        progress: progress bars.

    Example::

        fif = FastIF(model, train, k=100, weight_decay=0.01, scale=1e4, depth=300,
                     knn=KNNConfig(backend="auto"))
        res = fif.scores(test)                     # FastIFResult
        ids, vals = res.top(10, "helpful")         # most helpful candidate ids per test point
        full = res.dense()                         # (n_test, n_train), NaN off the candidates
        res2 = fif.scores(test, workers=2)         # 2 spawned gloo processes (NCCL on GPUs)

    Under ``torchrun --nproc-per-node G script.py`` each process builds the same estimator, calls
    ``torch.distributed.init_process_group(...)`` and then ``fif.scores(test, distributed=True)``;
    every rank gets the whole result.
    """

    def __init__(self, model, train=None, k: int = 1000, params="trainable", weight_decay=0.0, *,
                 lissa: LissaConfig | None = None, knn: KNNConfig | None = None,
                 workers: "int | WorkerConfig" = 1, test_target="loss", train_loss=None,
                 grad_chunk: int | None = None, device="auto", method: str = "auto",
                 progress: bool = True, **lissa_options):
        k = check_k(k)
        moved = sorted(set(lissa_options) & set(_MOVED))
        if moved:
            raise TypeError("FastIF groups these settings now: " + "; ".join(
                f"{name}= -> {_MOVED[name]}" for name in moved))
        base = lissa or LissaConfig(batch_size=1)  # FastIF's fast setting
        cfg = LissaConfig.make(base, **lissa_options)
        if knn is not None and not isinstance(knn, KNNConfig):
            raise TypeError(f"knn must be a KNNConfig, got {type(knn).__name__}")
        self.k = int(k)
        self.knn = knn or KNNConfig()
        self.worker_config = WorkerConfig.make(workers)
        self.progress = progress
        self.influence = InfluenceFunction(
            model, None, params=params, weight_decay=weight_decay, solver="lissa", lissa=cfg,
            test_target=test_target, train_loss=train_loss, grad_chunk=grad_chunk,
            cache_train_grads=False, device=device, method=method, progress=progress)
        self.model = self.influence.model
        self.index: KNNIndex | None = None
        # what a worker needs to rebuild this estimator (no model, no feature function)
        self._worker_kwargs = dict(k=self.k, params=list(self.influence.names),
                                   weight_decay=self.influence.weight_decay, lissa=cfg,
                                   test_target=test_target, train_loss=train_loss,
                                   grad_chunk=grad_chunk, method=method)
        if train is not None:
            self.fit(train)

    @property
    def workers(self) -> int:
        """Processes :meth:`candidates` uses by default (``self.worker_config.n``)."""
        return self.worker_config.n

    @property
    def lissa(self) -> LissaConfig:
        return self.influence.lissa

    @property
    def damping(self) -> float:
        return self.influence.damping

    @property
    def train(self) -> Batch:
        return self.influence.train

    @property
    def train_ids(self) -> torch.Tensor:
        return self.influence.train_ids

    # ------------------------------------------------------------------ setup
    def fit(self, train, build_index: bool = True, index: "KNNIndex | None" = None) -> "FastIF":
        """Set the training set (Hessian samples, candidates) and build the kNN index over its
        features; returns ``self``.

        Args:
            train: the training data.
            build_index: compute the features of ``train`` and build the index (else the caller
                sets ``index`` later).
            index: a prebuilt :class:`KNNIndex` over ``train``'s rows, reused as is (e.g. the
                starting model's index while the model is fine-tuned step by step, as FastIF's
                HANS correction does); its length must equal ``len(train)``.
        """
        self.influence.fit(train)
        if index is not None:
            if not isinstance(index, KNNIndex):
                raise TypeError(f"index must be a KNNIndex, got {type(index).__name__}")
            if len(index) != len(self.train):
                raise ValueError(f"the index holds {len(index)} rows but the training set has "
                                 f"{len(self.train)} examples")
            self.index = index
        elif build_index:
            self.index = KNNIndex(self.features(self.train), self.knn.backend, self.knn.chunk_size)
        return self

    def features(self, data) -> torch.Tensor:
        """Feature rows of ``data`` in the kNN space."""
        return compute_features(self.model, data, self.knn.feature_batch_size,
                                feature_fn=self.knn.features)

    def _check_index(self) -> KNNIndex:
        if self.index is None:
            raise NotFittedError("call FastIF.fit(train) first")
        return self.index

    def neighbours(self, test, k: int | None = None, aggregate: str = "none"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared distances and positions ``(m, k)`` of the nearest training examples to each test
        point, or (``aggregate="mean"``) to the mean feature of all test points (one row)."""
        index = self._check_index()
        if aggregate not in ("none", "mean"):
            raise UnknownNameError(f"aggregate must be 'none' or 'mean', got {aggregate!r}")
        q = self.features(test)
        if aggregate == "mean":
            q = q.mean(0, keepdim=True)
        return index.search(q, self.k if k is None else k)

    def s_test(self, test, aggregate: str = "none") -> torch.Tensor:
        """LiSSA ``s_test`` rows (mean over ``repetitions``), as used by :meth:`scores`."""
        return self.influence.s_test(test, aggregate)

    # ------------------------------------------------------------------ scores
    def scores(self, test, k: int | None = None, aggregate: str = "none", **options) -> torch.Tensor:
        """The protocol's dense score matrix ``(n_test, n_train)`` (one row with
        ``aggregate="mean"``): influence on the kNN candidates, **NaN** for every other training
        example (FastIF never scores them). Options as for :meth:`candidates`, which returns the
        candidates' view (ids, distances, timings) instead."""
        return self.candidates(test, k=k, aggregate=aggregate, **options).dense()

    def top_k(self, test, k: int = 5, aggregate: str = "none", candidates: int | None = None) -> TopK:
        """The ``k`` most helpful and most harmful training examples of every test point, among its
        ``candidates`` nearest neighbours (default ``self.k``)."""
        k = check_k(k)
        r = self.candidates(test, k=candidates, aggregate=aggregate)
        n = min(k, r.scores.shape[1])
        hi = r.scores.topk(n, dim=1, largest=True)
        lo = r.scores.topk(n, dim=1, largest=False)
        test_ids = r.test_ids if aggregate == "none" else r.test_ids[:1]
        return TopK(test_ids=test_ids.clone(), proponents=r.candidate_ids.gather(1, hi.indices),
                    proponent_scores=hi.values, opponents=r.candidate_ids.gather(1, lo.indices),
                    opponent_scores=lo.values)

    def _check_fitted(self):
        self.influence._check_fitted()

    def candidates(self, test, k: int | None = None, aggregate: str = "none",
                   s_test: torch.Tensor | None = None, workers: int | None = None,
                   distributed: bool = False, keep_s_test: bool = False) -> FastIFResult:
        """Influence of the kNN candidates of each test point (package sign: positive = helpful).

        Args:
            test: test points (Dataset, Batch, or (inputs, labels) tensors).
            k: candidates per query (default: ``self.k``).
            aggregate: ``"mean"``: one query from the mean feature and the mean test gradient.
            s_test: precomputed ``s_test`` rows (skips LiSSA; sequential only).
            workers: override ``self.workers`` (G > 1: spawn G processes).
            distributed: run inside the caller's initialised ``torch.distributed`` process group
                (e.g. under ``torchrun``); every rank gets the result.
            keep_s_test: keep the ``s_test`` rows in the result.
        """
        t0 = time.perf_counter()
        batch = as_batch(self.model, test)
        dists, pos = self.neighbours(batch, k, aggregate)
        t_knn = time.perf_counter() - t0
        workers = self.workers if workers is None else int(workers)
        if distributed:
            import torch.distributed as dist

            if not dist.is_initialized():
                raise ReproError("distributed=True needs an initialised torch.distributed process "
                                 "group (e.g. under torchrun); or use workers=G to spawn G processes")
            if s_test is not None:
                raise ValueError("s_test= is not supported with distributed=True")
            cand, S, timings = self._distributed_part(batch, pos, aggregate, dist.get_rank(),
                                                      dist.get_world_size())
        elif workers > 1:
            if s_test is not None:
                raise ValueError("s_test= is not supported with workers > 1")
            cand, S, timings = self._spawn(batch, pos, aggregate, workers, keep_s_test)
        else:
            self.influence.last_lissa_info = None
            cand, S, timings = self._sequential_part(batch, pos, aggregate, s_test)
            info = self.influence.last_lissa_info
            converged = info.converged if info is not None else None
        timings = {"knn_s": t_knn, **timings, "total_s": time.perf_counter() - t0}
        ids = self.train.ids
        return FastIFResult(batch.ids.clone(), aggregate, ids[pos], pos, dists, cand, ids.clone(),
                            timings, S if keep_s_test else None,
                            lissa_converged=converged if not (distributed or workers > 1) else None)

    @staticmethod
    def _gather_rows(union_scores: torch.Tensor, union: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Per-row candidate scores ``(m, k)`` from scores of the union of candidates ``(m, u)``."""
        inverse = torch.searchsorted(union, pos)
        return union_scores.gather(1, inverse)

    def _sequential_part(self, batch, pos, aggregate, s_test):
        t0 = time.perf_counter()
        S = self.s_test(batch, aggregate) if s_test is None else s_test.reshape(len(pos), -1)
        t1 = time.perf_counter()
        union = torch.unique(pos)
        union_scores = self.influence.scores_from_s_test(S, self.train[union])
        t2 = time.perf_counter()
        return self._gather_rows(union_scores, union, pos), S, {"s_test_s": t1 - t0,
                                                               "candidate_grads_s": t2 - t1}

    def _distributed_part(self, batch, pos, aggregate, rank: int, world: int):
        """Run on every rank of an initialised process group: an independent share of the LiSSA
        repetitions, all-reduce average, an even share of the candidates, all-gather."""
        import torch.distributed as dist

        t0 = time.perf_counter()
        cfg = self.lissa
        total = max(cfg.repetitions, world)
        mine = [r for r in range(total) if r % world == rank]
        V = self.influence.test_grads(batch, aggregate)
        S = self.influence.solve(V, repetitions=mine) if mine else torch.zeros_like(V)
        comm_dev = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
        S = S.to(comm_dev)
        dist.all_reduce(S, op=dist.ReduceOp.SUM)
        S = (S / total).cpu()
        t1 = time.perf_counter()
        union = torch.unique(pos)
        share = torch.tensor_split(union, world)[rank]
        part = (self.influence.scores_from_s_test(S, self.train[share]) if len(share)
                else torch.zeros(len(S), 0, dtype=S.dtype))
        gathered = [None] * world
        dist.all_gather_object(gathered, (share, part.cpu()))
        union_scores = torch.cat([p for _, p in gathered], 1)
        order = torch.cat([s for s, _ in gathered])
        if not torch.equal(order, union):  # tensor_split keeps order; a sanity check
            union_scores = union_scores[:, torch.argsort(order)]
        t2 = time.perf_counter()
        per_rank = [None] * world
        dist.all_gather_object(per_rank, (t1 - t0, t2 - t1))
        return self._gather_rows(union_scores, union, pos), S, {
            "s_test_s": t1 - t0, "candidate_grads_s": t2 - t1, "workers": world,
            "repetitions": total, "per_rank_s": per_rank}

    def _payload(self) -> dict:
        """What a spawned worker needs: the model (a CPU copy), the training batch and the
        estimator settings."""
        import copy
        # the model itself (any module, repro's or not), never rebuilt from a spec
        return {"model": copy.deepcopy(self.model).cpu(), "train": self.train.to("cpu"),
                "kwargs": self._worker_kwargs}

    def _spawn(self, batch, pos, aggregate, workers, keep_s_test):
        import torch.multiprocessing as mp

        backend = self.worker_config.backend or ("nccl" if self.influence.device.type == "cuda" else "gloo")
        if backend == "nccl" and torch.cuda.device_count() < workers:
            raise ReproError(f"{workers} NCCL workers need {workers} GPUs, found "
                             f"{torch.cuda.device_count()}; use WorkerConfig(backend='gloo')")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="fastif-") as tmp:
            out = os.path.join(tmp, "result.pt")
            payload = self._payload()
            from repro.distributed import free_port

            mp.spawn(_fastif_worker, args=(workers, free_port(), backend, payload, batch.to("cpu"),
                                           pos, aggregate, out, keep_s_test, self.worker_config.threads),
                     nprocs=workers, join=True)
            cand, S, timings = torch.load(out, weights_only=False)
        timings = {**timings, "spawn_total_s": time.perf_counter() - t0}
        return cand, S, timings

    def __repr__(self) -> str:
        return (f"FastIF(k={self.k}, params={self.influence.params!r}, lissa={self.lissa}, "
                f"knn={self.knn}, workers={self.worker_config})")


# ---------------------------------------------------------------------------- workers
def _fastif_worker(rank: int, world: int, port: int, backend: str, payload: dict, batch: Batch,
                   pos: torch.Tensor, aggregate: str, out_path: str, keep_s_test: bool,
                   threads: int = 1) -> None:
    """Entry point of a spawned FastIF worker (module level, so it pickles)."""
    import torch.distributed as dist

    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    else:
        device = "cpu"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        model = payload["model"]
        kw = payload["kwargs"]
        fif = FastIF(model, None, k=kw["k"], params=kw["params"], weight_decay=kw["weight_decay"],
                     lissa=kw["lissa"], test_target=kw["test_target"], train_loss=kw["train_loss"],
                     grad_chunk=kw["grad_chunk"], method=kw["method"], device=device,
                     progress=False)
        fif.fit(payload["train"], build_index=False)
        cand, S, timings = fif._distributed_part(batch, pos, aggregate, rank, world)
        if rank == 0:
            torch.save((cand, S if keep_s_test else None, timings), out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()
