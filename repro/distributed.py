"""Influence sharded over the training set with ``torch.distributed`` (``torchrun``, gloo or NCCL).

Influence is embarrassingly parallel over training examples: the score of training example ``i``
for a test point depends on ``i``, the model, the checkpoints and (for influence functions) the
fitted Hessian, never on which other examples sit next to it in a chunk. :class:`Sharded` wraps any
estimator of :mod:`repro.influence` and, inside an initialised process group, gives every rank a
contiguous block of the training set (``torch.tensor_split``: sizes differ by at most one, so any
``n_train`` works), computes its columns there and gathers them, so every rank returns the full
result, equal to the single-process one up to float rounding (``tests/test_distributed.py``):

* **column-separable** estimators (TracInCP, TracIn-WE, turn-over influence, last-layer gradient
  cosine): each rank fits on its block only;
* **influence functions**: every rank fits the training objective on the whole set (the Hessian),
  the ``s_test`` solves are split over ranks by test point and gathered, and each rank then scores
  its own block of training gradients against all of them;
* the **last-layer influence function** and **representer points** need the whole set and are
  cheap: every rank computes them whole (nothing is split);
* **FastIF** has its own parallel mode (``FastIF.scores(test, distributed=True)``, LiSSA
  repetitions split over ranks); :class:`Sharded` calls it.

Outside a process group (or with one process) :class:`Sharded` is the wrapped estimator itself.
``top_k`` is taken from the gathered scores, so ties resolve exactly as in one process.

    # torchrun --nproc-per-node 2 my_script.py
    import torch.distributed as dist
    dist.init_process_group("gloo")            # "nccl" on GPUs (set the device per rank first)
    est = Sharded(TracInCP(model, "runs/vgg", params="all")).fit(train)
    scores = est.scores(test)                  # (n_test, n_train) on every rank
"""
from __future__ import annotations

import dataclasses

import torch

from repro.errors import ReproError

__all__ = ["Sharded", "active", "block", "free_port", "gather_columns", "gather_rows"]


def active() -> bool:
    """True inside an initialised ``torch.distributed`` process group of more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a single-node ``tcp://`` rendezvous of spawned processes)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def block(n: int, rank: int | None = None, world: int | None = None) -> torch.Tensor:
    """Positions ``0..n-1`` of rank ``rank``'s contiguous block (sizes differ by at most one)."""
    r, w = _rank_world()
    rank, world = (r if rank is None else rank), (w if world is None else world)
    return torch.tensor_split(torch.arange(n), world)[rank]


def _comm_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_columns(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's column block ``(rows, len(block(n)))`` into ``(rows, n)`` on every
    rank (blocks padded to the largest for ``all_gather`` and cut back)."""
    return gather_rows(local.T.contiguous(), n).T.contiguous()


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's row block ``(len(block(n)), ...)`` into ``(n, ...)`` on every rank."""
    import torch.distributed as dist

    if not active():
        return local
    rank, world = _rank_world()
    sizes = [len(block(n, r, world)) for r in range(world)]
    if local.shape[0] != sizes[rank]:
        raise ValueError(f"rank {rank} holds {local.shape[0]} rows, its block has {sizes[rank]}")
    dev = _comm_device()
    width = max(sizes)
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[: local.shape[0]] = local.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(local.device)


def _kind(est) -> str:
    from repro.influence import (FastIF, InfluenceFunction, LastLayerCosine, LastLayerInfluence,
                                 RepresenterPoints, TracInCP, TracInWE, TurnOverInfluence)

    if isinstance(est, FastIF):
        return "fastif"
    if isinstance(est, InfluenceFunction):
        return "ifunc"
    if isinstance(est, (TracInCP, TracInWE, TurnOverInfluence, LastLayerCosine)):
        return "separable"
    if isinstance(est, (LastLayerInfluence, RepresenterPoints)):
        return "whole"
    raise ReproError(f"Sharded does not know how to split {type(est).__name__}; it supports TracInCP, "
                     "TracInWE, TurnOverInfluence, LastLayerCosine, InfluenceFunction, FastIF, "
                     "LastLayerInfluence and RepresenterPoints")


class Sharded:
    """An estimator whose training set is split over the ranks of a ``torch.distributed`` process
    group (see the module doc); the protocol of :mod:`repro.influence.base` (``fit``, ``scores``,
    ``self_influence``, ``top_k``, ``train_ids``), every result whole on every rank.

    Args:
        estimator: a configured, not yet fitted estimator (constructed the same way on every rank).
    """

    def __init__(self, estimator):
        self.estimator = estimator
        self.kind = _kind(estimator)
        self._batch = None

    @property
    def model(self):
        return self.estimator.model

    def fit(self, train) -> "Sharded":
        """Fit on the whole set (rank-local blocks for column-separable estimators); returns self."""
        from repro.influence.grads import train_batch

        batch = train_batch(self.estimator.model, train, f"Sharded({type(self.estimator).__name__})")
        self._batch = batch
        if active() and self.kind == "separable":
            self.estimator.fit(batch[block(len(batch))])
        else:
            self.estimator.fit(batch)
        return self

    def _check(self):
        if self._batch is None:
            from repro.errors import NotFittedError
            raise NotFittedError("call Sharded.fit(train) before asking for scores")

    @property
    def train_ids(self) -> torch.Tensor:
        self._check()
        return self._batch.ids.clone()

    def scores(self, test) -> torch.Tensor:
        """``(n_test, n_train)`` on every rank, columns in the order of ``train_ids``."""
        self._check()
        est, n = self.estimator, len(self._batch)
        if not active() or self.kind == "whole":
            return est.scores(test)
        if self.kind == "separable":
            return gather_columns(est.scores(test), n)
        if self.kind == "fastif":
            return est.scores(test, distributed=True)  # dense: NaN off each test point's candidates
        from repro.influence.grads import as_batch

        batch = as_batch(est.model, test)
        mine = block(len(batch))
        obj = est._check_fitted()
        S_mine = est.s_test(batch[mine]) if len(mine) else torch.zeros(0, obj.dim, dtype=obj.dtype)
        S = gather_rows(S_mine.reshape(len(mine), obj.dim).to(obj.dtype), len(batch))
        local = est.scores_from_s_test(S, train=self._batch[block(n)])
        return gather_columns(local, n)

    def self_influence(self) -> torch.Tensor:
        """``(n_train,)`` on every rank."""
        self._check()
        est, n = self.estimator, len(self._batch)
        if not active() or self.kind in ("whole", "fastif"):
            return est.self_influence()
        if self.kind == "separable":
            return gather_rows(est.self_influence(), n)
        return gather_rows(est.self_influence(train=self._batch[block(n)]), n)

    def top_k(self, test, k: int = 5):
        """Proponents and opponents from the gathered scores (ties resolve as in one process)."""
        from repro.checks import check_k
        from repro.influence.base import proponents_opponents
        from repro.influence.grads import as_batch

        check_k(k)
        batch = as_batch(self.estimator.model, test)
        s = self.scores(batch)
        if self.kind != "fastif":
            return proponents_opponents(s, self.train_ids, batch.ids, k)
        # FastIF scores only its candidates (NaN elsewhere): rank among them, as FastIF.top_k does
        hi = proponents_opponents(s.nan_to_num(nan=float("-inf")), self.train_ids, batch.ids, k)
        lo = proponents_opponents(s.nan_to_num(nan=float("inf")), self.train_ids, batch.ids, k)
        return dataclasses.replace(hi, opponents=lo.opponents, opponent_scores=lo.opponent_scores)

    def __repr__(self) -> str:
        r, w = _rank_world()
        return f"Sharded({self.estimator!r}, rank {r} of {w})"
