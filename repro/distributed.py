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

**Notebooks under torchrun.** ``torchrun --nproc-per-node G --no-python repro run <notebook>
--profile gpu`` runs the notebook once, on rank 0 (its kernel inherits rank 0's place in the process
group: :func:`connect`, called by the notebook's ``start``), while ranks 1..G-1 :func:`serve`. The
notebook's influence sections build their estimators through :func:`shard`: in the kernel that
sends the estimator (pickled, moved to each rank's device) and then every ``fit`` / ``scores`` /
``self_influence`` / ``top_k`` call to the serving ranks, which run the same :class:`Sharded` call in
step, so the work is split as above and the kernel gets the whole result. Everything else in the
notebook (training, plots, claims) runs once, on rank 0. Outside torchrun :func:`shard` returns the
estimator itself, so one process computes exactly what it did before.

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

__all__ = ["Sharded", "active", "block", "connect", "free_port", "gather_columns", "gather_rows", "launch_role",
           "serve", "shard"]


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

    def self_influence(self, **options) -> torch.Tensor:
        """``(n_train,)`` on every rank; ``options`` go to the estimator's ``self_influence`` (e.g.
        TracInCP's ``per_checkpoint=True``: ``(n_checkpoints, n_train)``, gathered by column)."""
        self._check()
        est, n = self.estimator, len(self._batch)
        if not active() or self.kind in ("whole", "fastif"):
            return est.self_influence(**options)
        local = est.self_influence(**options) if self.kind == "separable" else \
            est.self_influence(train=self._batch[block(n)], **options)
        return gather_columns(local, n) if local.dim() == 2 else gather_rows(local, n)

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


# ---------------------------------------------------------------------------- notebooks under torchrun
#: set by ``repro run`` on rank 0 for the notebook's kernel: the kernel joins the group as rank 0
DRIVER_ENV = "REPRO_DISTRIBUTED"
_TIMEOUT_H = 24  # a serving rank waits this long for the notebook's next influence call


class _Driver:
    """The kernel's side of a ``repro run`` under torchrun: its control group and estimator ids."""

    def __init__(self, control):
        import os

        self.pid = os.getpid()  # a forked child of the kernel is not the driver
        self.control = control
        self.next_id = 0
        self.freed: list[int] = []  # estimators garbage-collected in the kernel, told at the next send

    def send(self, message) -> None:
        import torch.distributed as dist

        while self.freed:
            dist.broadcast_object_list([("del", self.freed.pop())], src=0, group=self.control)
        dist.broadcast_object_list([message], src=0, group=self.control)


_driver: "_Driver | None" = None


def launch_role() -> str:
    """What this process is under torchrun: ``"single"`` (no torchrun, or one process),
    ``"driver"`` (rank 0: it runs the notebook) or ``"worker"`` (ranks 1..G-1: :func:`serve`)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return "single"
    return "driver" if int(os.environ.get("RANK", "0")) == 0 else "worker"


def _init_from_env():
    """Join torchrun's process group (NCCL with one GPU per local rank when CUDA is there, else
    gloo) and make a gloo group for the control messages; returns it."""
    import datetime
    import os

    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, init_method="env://",
                                timeout=datetime.timedelta(hours=_TIMEOUT_H))
    if dist.get_backend() == "gloo":
        return None  # the default group
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=_TIMEOUT_H))


def connect() -> bool:
    """In a notebook kernel started by ``repro run`` on rank 0 under torchrun, join the process
    group as rank 0 (once; the serving ranks are waiting) and return True; anywhere else do nothing
    and return False. The notebooks' ``start`` calls it. The serving ranks are released when the
    kernel exits."""
    import atexit
    import os

    global _driver
    if _driver is not None:
        return True
    if os.environ.get(DRIVER_ENV) != "driver" or launch_role() != "driver":
        return False
    _driver = _Driver(_init_from_env())
    atexit.register(_release)
    return True


def _release() -> None:
    global _driver
    if _driver is None:
        return
    import torch.distributed as dist

    try:
        _driver.send(("stop",))
        dist.destroy_process_group()
    finally:
        _driver = None


def _to_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _from_bytes(data: bytes, device: torch.device):
    """Unpickle what the kernel sent (trusted: our own rank 0), CUDA tensors onto this rank's GPU."""
    import io

    def where(storage, location):
        return storage.cuda(device.index or 0) if location.startswith("cuda") and device.type == "cuda" \
            else storage.cpu() if location.startswith("cuda") else storage

    return torch.load(io.BytesIO(data), map_location=where, weights_only=False)


class _Driven(Sharded):
    """:class:`Sharded` in the kernel of a torchrun'd notebook: every call is first sent to the
    serving ranks, which make the same call on their copy."""

    def __init__(self, estimator):
        super().__init__(estimator)
        import weakref

        self.id = _driver.next_id
        _driver.next_id += 1
        _driver.send(("new", self.id, _to_bytes(estimator)))
        # the serving ranks drop their copy once this one is gone (told with the next message, never
        # from inside the garbage collector)
        weakref.finalize(self, _driver.freed.append, self.id)

    _depth = 0  # > 0 while a call is running: its inner calls (top_k -> scores) are not sent again

    def _call(self, name, *args, **kwargs):
        if self._depth == 0:
            _driver.send(("call", self.id, name, _to_bytes((args, kwargs))))
        self._depth += 1
        try:
            return getattr(Sharded, name)(self, *args, **kwargs)
        finally:
            self._depth -= 1

    def fit(self, train) -> "_Driven":
        self._call("fit", train)
        return self

    def scores(self, test) -> torch.Tensor:
        return self._call("scores", test)

    def self_influence(self, **options) -> torch.Tensor:
        return self._call("self_influence", **options)

    def top_k(self, test, k: int = 5):
        return self._call("top_k", test, k)


def shard(estimator):
    """The estimator, split over the training set when there are processes to split it over: in a
    notebook run under torchrun (see the module doc) a :class:`Sharded` whose calls the serving
    ranks follow; in an SPMD script under an initialised process group a :class:`Sharded`;
    otherwise ``estimator`` itself (one process computes exactly what it did before)."""
    import os

    if _driver is not None and _driver.pid == os.getpid():
        return _Driven(estimator)
    if active():
        return Sharded(estimator)
    return estimator


def serve() -> int:
    """Ranks 1..G-1 of a ``repro run`` under torchrun: join the group and follow the notebook's
    influence calls (:func:`shard`) until its kernel exits; returns 0."""
    import torch.distributed as dist

    control = _init_from_env()
    device = _comm_device()  # this rank's GPU under NCCL (set by _init_from_env), else the CPU
    live: dict[int, Sharded] = {}
    try:
        while True:
            box = [None]
            dist.broadcast_object_list(box, src=0, group=control)
            message = box[0]
            if message[0] == "stop":
                return 0
            if message[0] == "new":
                live[message[1]] = Sharded(_from_bytes(message[2], device))
            elif message[0] == "del":
                live.pop(message[1], None)
            else:
                _, key, name, payload = message
                args, kwargs = _from_bytes(payload, device)
                getattr(live[key], name)(*args, **kwargs)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
