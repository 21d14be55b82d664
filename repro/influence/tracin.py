"""TracInCP (Pruthi et al., NeurIPS 2020): influence by tracing gradient descent over checkpoints.

    TracInCP(z, z') = sum_i  eta_i * grad l(w_i, z) . grad l(w_i, z')

over the saved checkpoints ``w_i`` with the learning rate ``eta_i`` in effect there. **Sign
convention**: positive = *proponent* (a gradient step on the training example ``z`` lowers the test
loss at ``z'``), negative = *opponent*. Self-influence ``sum_i eta_i |grad l(w_i, z)|^2 >= 0`` is high
for memorised, rare or mislabelled examples.

Train gradients are computed once per checkpoint in :meth:`TracInCP.fit` (optionally projected and
cached on disk) and reused for every test point; test gradients are computed once per
:meth:`TracInCP.scores` call and checkpoint.

Last-layer fast path: for the classifier layer ``logits = W a + b`` under softmax cross-entropy, the
per-example gradients are ``dW = e a^T`` and ``db = e`` with ``e = softmax(logits) - onehot(y)``, so
``grad . grad' = (e . e') (a . a' + 1)``. Only ``e`` and ``a`` are stored; ``dW`` never exists.
"""
from __future__ import annotations

import copy
import hashlib
import warnings
from pathlib import Path

import torch

from repro.data.core import Batch
from repro.errors import CheckpointError, InvalidParameterError, ReproError, UnknownNameError
from repro.checks import as_finite_float, batch_fingerprint
from repro.influence.base import Estimator
from repro.influence.cache import GradientCache, cached_rows, file_fingerprint, ids_fingerprint
from repro.influence.lastlayer import softmax_errors
from repro.influence.grads import as_batch, grad_dim, param_names, per_example_grads, resolve_target, train_batch
from repro.models.foreign import as_model
from repro.train import Checkpoint, StateCheckpoint, list_checkpoints
from repro.utils import progress as _progress
from repro.utils import resolve_device

__all__ = ["TracInCP", "NotFittedError", "resolve_checkpoints", "STORES"]

STORES = ("auto", "rows", "stream")


from repro.errors import NotFittedError  # noqa: E402,F401  (re-exported: estimators import it from here)


def resolve_checkpoints(checkpoints) -> list[Checkpoint]:
    """A run folder (str/Path, read with :func:`repro.train.list_checkpoints`), one Checkpoint, or
    a list of them, as a non-empty list in the given order.

    A list must hold checkpoints of **one run in training order**: the same file twice, two
    checkpoints of one optimizer step, steps out of order, or checkpoints from different run
    folders raise :class:`repro.errors.CheckpointError` (TracInCP sums over one trajectory; a mixed
    list gives a number that means nothing). Learning rates must be finite numbers >= 0."""
    if isinstance(checkpoints, (str, Path)):
        cks = _dedupe_steps(list_checkpoints(checkpoints))
    elif isinstance(checkpoints, Checkpoint):
        cks = [checkpoints]
    else:
        cks = list(checkpoints)
    if not cks:
        raise CheckpointError("TracInCP needs at least one checkpoint")
    if any(isinstance(c, (tuple, list)) for c in cks):
        cks = _state_checkpoints(cks)
    bad = [type(c).__name__ for c in cks if not isinstance(c, Checkpoint)]
    if bad:
        raise TypeError(f"checkpoints must be a run folder, repro.train.Checkpoint objects or "
                        f"(state_dict or weights path, lr) pairs; got {bad[:3]}")
    if not any(isinstance(c, StateCheckpoint) for c in cks):
        _check_one_run(cks)
    for c in cks:
        for key in ("lr", "lr_mean"):
            as_finite_float(f"{key} of checkpoint", getattr(c, key), minimum=0.0, where=str(c.path))
    return cks


class _FastPathError(ReproError):
    """The last-layer factorisation does not reproduce the model's logits."""


def _state_checkpoints(items) -> list[StateCheckpoint]:
    """``[(state_dict or path, lr), ...]`` (training order) as StateCheckpoints; the same state dict
    object or file listed twice raises CheckpointError."""
    out, seen = [], {}
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"checkpoint {i} must be a (state_dict or path, lr) pair, got {type(item).__name__}")
        state, lr = item
        lr = as_finite_float(f"lr of checkpoint {i}", lr, minimum=0.0)
        if isinstance(state, (str, Path)):
            key, path, state = str(Path(state).resolve()), Path(state), None
        elif isinstance(state, dict):
            key, path = id(state), Path(f"state-{i}")
        else:
            raise TypeError(f"checkpoint {i}: expected a state dict or a weights path, got {type(state).__name__}")
        if key in seen:
            raise CheckpointError(f"checkpoints {seen[key]} and {i} are the same weights; each checkpoint counts once")
        seen[key] = i
        out.append(StateCheckpoint(path=path, epoch=i, step=i, lr=lr, lr_mean=lr, state=state))
    return out


def checkpoint_fingerprint(ck: Checkpoint) -> dict:
    """What identifies a checkpoint's weights in a cache stamp: the file's name, size and sha256, or
    for an in-memory state dict the sha256 of its tensors."""
    if isinstance(ck, StateCheckpoint) and ck.state is not None:
        h = hashlib.sha256()
        for k in sorted(ck.state):
            v = ck.state[k]
            h.update(k.encode())
            if isinstance(v, torch.Tensor):
                t = v.detach().cpu().contiguous()
                h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
                h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
        return {"file": ck.path.name, "sha256": h.hexdigest()}
    return file_fingerprint(ck.path)


def _check_one_run(cks: list[Checkpoint]) -> None:
    paths = [Path(c.path).resolve() for c in cks]
    seen: dict[Path, int] = {}
    for i, p in enumerate(paths):
        if p in seen:
            raise CheckpointError(f"checkpoint {cks[i].path} is listed twice (positions {seen[p]} and {i}); "
                                  "each checkpoint counts once")
        seen[p] = i
    runs = sorted({str(p.parent.parent) for p in paths})
    if len(runs) > 1:
        raise CheckpointError(f"checkpoints come from {len(runs)} different run folders ({', '.join(runs[:3])}); "
                              "TracInCP sums over the checkpoints of one training run")
    for a, b in zip(cks, cks[1:]):
        if b.step <= a.step:
            what = "share optimizer step" if b.step == a.step else "are out of training order"
            raise CheckpointError(f"checkpoints {a.path.name} (step {a.step}) and {b.path.name} (step {b.step}) "
                                  f"{what}; pass the checkpoints of one run in training order, each step once "
                                  "(list_checkpoints(run_dir) gives them so)")


def _dedupe_steps(cks: list[Checkpoint]) -> list[Checkpoint]:
    """One checkpoint per optimizer step. A run saved with ``checkpoint_every_steps`` also keeps an
    epoch checkpoint at the same step when the two coincide (same weights); counting both would
    double that checkpoint's term. The epoch checkpoint is kept, with a warning."""
    by_step: dict[int, Checkpoint] = {}
    for c in cks:
        if c.step not in by_step or c.path.stem.startswith("epoch-"):
            by_step[c.step] = c
    if len(by_step) < len(cks):
        warnings.warn(f"{len(cks) - len(by_step)} checkpoint(s) share an optimizer step with another "
                      "one (same weights); each step is counted once", RuntimeWarning, stacklevel=3)
    return sorted(by_step.values(), key=lambda c: c.step)


def _matmul_t(a: torch.Tensor, b: torch.Tensor, device: torch.device, block: int = 8192) -> torch.Tensor:
    """``a @ b.T`` on ``device`` (b in row blocks), result on the CPU."""
    if device.type == "cpu":
        return a.float() @ b.float().T
    a_d = a.to(device, torch.float32)
    out = [(a_d @ b[s:s + block].to(device, torch.float32).T).cpu() for s in range(0, len(b), block)]
    return torch.cat(out, 1)


class TracInCP(Estimator):
    """TracInCP over saved checkpoints, for any parameter subset, with a last-layer fast path.

    Args:
        model: a :class:`repro.models.ReproModel`, or any classifier ``nn.Module`` (plain PyTorch,
            Hugging Face, torchvision; see :func:`repro.models.foreign.as_model`), with the
            checkpoints' architecture. It is copied; the caller's model is never changed.
        checkpoints: a run folder (every kept checkpoint, in training order), Checkpoint(s), or
            ``[(state_dict or weights file, lr), ...]`` in training order.
        params: parameter group or names (``"last"`` = classifier weight + bias, ``"embeddings"``,
            ``"all"``, ``"trainable"``, a list of names/prefixes).
        lr_weighting: ``True`` (or ``"lr"``): weight checkpoint ``i`` by ``Checkpoint.lr``, the
            learning rate in effect when it was saved; ``"mean"``: by ``Checkpoint.lr_mean`` (mean
            over the epoch that ended there); ``False``: weight 1 (as the official code does).
        projector: optional :class:`repro.influence.projection.Projector` (``dim_in`` = gradient
            dimension) applied to train and test gradients (TracInRP-style).
        cache_dir: optional folder; train rows of checkpoint ``c`` go to ``cache_dir/<c.path.stem>``
            (see :mod:`repro.influence.cache`): reused across runs, resumable, stamped.
        fast_last_layer: ``"auto"`` (use the factorised form when ``params`` lies within the last
            layer, the test target is the loss and there is no projector), ``True`` (require it) or
            ``False`` (brute-force gradients).
        batch_size: examples per gradient chunk (default: from a memory budget).
        device: where gradients are computed (``"auto"``: CUDA when available).
        method: per-example gradient method (``"auto"``, ``"vmap"``, ``"loop"``).
        test_target: what is differentiated at the test point: ``"loss"`` (default) or another
            target of :func:`repro.influence.grads.resolve_target` (``"logit"``, ``"prob"``, ...).
            For targets where higher is better the score is negated, so that a positive score
            still means "this training example moves the target the good way".
        cache_chunk: rows per cache chunk / per progress step.
        store: what :meth:`fit` keeps of the training examples (see "Memory" below): ``"rows"``
            (their gradient rows at every checkpoint: ``n_train x d x checkpoints`` floats, or on disk
            with ``cache_dir``; fastest when many test sets are scored), ``"stream"`` (nothing: every
            :meth:`scores` / :meth:`self_influence` call recomputes the training gradients chunk by
            chunk and contracts them with the test gradients right away) or ``"auto"`` (default:
            rows for the last-layer fast path (a few numbers per example), a projector or a
            ``cache_dir``; else stream, which computes every gradient once per call, as rows do
            once per :meth:`fit`: the same work for one test set, in memory bounded by a chunk,
            and with factored products faster (VGG-11, all parameters, n = 500: 5x faster, 25x
            less memory). Choose ``"rows"`` to score many test sets against the same fit.
        progress: show progress bars.

    Memory. With ``store="rows"`` the stored rows grow as ``n_train x d x checkpoints``. With
    ``store="stream"`` the peak is bounded independently of ``n_train``: the test examples'
    gradient information at one checkpoint (for each layer either its per-example gradients,
    ``n_test x d_layer``, or its factors, see :mod:`repro.influence.ghost`) plus one training
    chunk's (``batch_size`` examples), plus the ``n_test x n_train`` result. Layers whose
    per-example gradients are larger than their factors (``T^2 (d_in + d_out) < d_in d_out``:
    fully connected layers, late convolutions) are contracted in factored ("ghost") form, never
    materialised; the others per example. Self-influence streams the same way.

    Example::

        tracin = TracInCP(model, "runs/vgg", params="last").fit(train)
        s = tracin.scores(test)                   # (n_test, n_train)
        top = tracin.top_k(test, k=5)             # proponent / opponent ids and scores
        flagged = tracin.self_influence().argsort(descending=True)
    """

    def __init__(self, model, checkpoints, params="last", lr_weighting=True, projector=None,
                 cache_dir=None, fast_last_layer="auto", batch_size: int | None = None,
                 device="auto", method: str = "auto", test_target="loss", cache_chunk: int = 1024,
                 store: str = "auto", progress: bool = True):
        if store not in STORES:
            raise UnknownNameError(f"unknown store {store!r}; use one of {STORES}")
        if store == "stream" and cache_dir is not None:
            raise InvalidParameterError("cache_dir keeps training rows on disk; store='stream' keeps none: "
                                        "use store='rows' (or 'auto') with a cache_dir")
        self.store = store
        self.checkpoints = resolve_checkpoints(checkpoints)
        self.device = resolve_device(device)
        self.model = copy.deepcopy(as_model(model)).to(self.device).eval()
        self.params = params
        self.names = param_names(self.model, params)
        self.projector = projector
        if projector is not None and projector.dim_in != grad_dim(self.model, self.names):
            raise ValueError(f"projector.dim_in={projector.dim_in} but the gradients of {params!r} have "
                             f"{grad_dim(self.model, self.names)} entries")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self.method = method
        self.target = resolve_target(test_target)
        self.cache_chunk = int(cache_chunk)
        self.progress = progress
        if lr_weighting is True or lr_weighting == "lr":
            self.weights = [float(c.lr) for c in self.checkpoints]
        elif lr_weighting == "mean":
            self.weights = [float(c.lr_mean) for c in self.checkpoints]
        elif lr_weighting is False or lr_weighting is None:
            self.weights = [1.0] * len(self.checkpoints)
        else:
            raise ValueError(f"lr_weighting must be True, 'lr', 'mean' or False, got {lr_weighting!r}")
        self.lr_weighting = lr_weighting
        self.fast = self._use_fast(fast_last_layer)
        self._train: Batch | None = None
        self._rows: list[dict[str, torch.Tensor]] | None = []
        self._plan = None     # per-layer factored/rows choice of the streaming path
        self._owners = False  # hook modules of the streaming path (False: not looked up yet)

    # ------------------------------------------------------------------ configuration
    def _use_fast(self, fast) -> bool:
        last = self.model.last_layer_name
        within_last = last is not None and all(n.startswith(last + ".") for n in self.names)
        reasons = []
        if not within_last:
            reasons.append(f"params {self.params!r} are not (only) the last layer")
        if self.target.name != "loss":
            reasons.append(f"the test target is {self.target.name!r}, not the loss")
        if self.projector is not None:
            reasons.append("a projector is set (the fast path needs none)")
        self._fast_setting = fast
        if fast == "auto":
            return not reasons
        if fast is True:
            if reasons:
                raise ValueError("fast_last_layer=True is not applicable: " + "; ".join(reasons))
            return True
        if fast is False:
            return False
        raise ValueError(f"fast_last_layer must be 'auto', True or False, got {fast!r}")

    @property
    def use_weight(self) -> bool:
        return f"{self.model.last_layer_name}.weight" in self.names

    @property
    def use_bias(self) -> bool:
        return f"{self.model.last_layer_name}.bias" in self.names

    def _stamp(self, ck: Checkpoint, train: Batch) -> dict:
        return {
            "format": "repro.tracin.train_rows/1",
            "kind": "last_layer_factors" if self.fast else "grads",
            "model_spec": self.model.spec,
            "checkpoint": {"epoch": ck.epoch, "step": ck.step, **checkpoint_fingerprint(ck)},
            "params": self.names,
            "projection": self.projector.spec() if self.projector is not None else None,
            "target": "loss",
            "n": len(train),
            "ids": ids_fingerprint(train.ids),
            # content, not just ids: flipped labels or changed inputs with the same ids change rows
            "labels": self._data_fp(train)["labels"],
            "inputs": self._data_fp(train)["inputs"],
            "dtype": str(next(self.model.parameters()).dtype),
            "chunk_rows": self.cache_chunk,
        }

    def _data_fp(self, train: Batch) -> dict:
        """Content fingerprint of the training batch (computed once per batch object)."""
        if getattr(self, "_fp_of", None) is not train:
            self._fp_of, self._fp = train, batch_fingerprint(train)
        return self._fp

    # ------------------------------------------------------------------ per-example rows
    @torch.no_grad()
    def _factors(self, chunk: Batch, check: bool = False) -> dict[str, torch.Tensor]:
        """``e = softmax - onehot`` and ``a = features`` of a chunk (at the loaded checkpoint)."""
        es, as_ = [], []
        bs = self.batch_size or 256
        for mb in chunk.batches(bs):
            mb = mb.to(self.device)
            a = self.model.features(**mb.inputs).float()
            logits = self.model.last_layer(a)
            if check and not es:  # once per fit: is the last layer really the model's output?
                direct = self.model(**{k: v[:2] for k, v in mb.inputs.items()}).float()
                if not torch.allclose(direct, logits[:2], rtol=1e-4, atol=1e-5):
                    raise _FastPathError(
                        f"{type(self.model).__name__}: last_layer(features(x)) differs from the "
                        "logits, so the last-layer fast path does not apply; use fast_last_layer=False")
            e = softmax_errors(logits, mb.labels)
            es.append(e.cpu())
            as_.append(a.cpu())
        return {"e": torch.cat(es), "a": torch.cat(as_)}

    def _grads(self, chunk: Batch, target) -> dict[str, torch.Tensor]:
        g = per_example_grads(self.model, chunk, self.names, target=target, method=self.method,
                              chunk_size=self.batch_size, projector=self.projector,
                              device=self.device, progress=False)
        return {"g": g}

    def _rows_for(self, batch: Batch, ck: Checkpoint, target=None, check: bool = False, cache=None,
                  bar=None) -> dict[str, torch.Tensor]:
        """Rows of ``batch`` at checkpoint ``ck`` (loaded into the working copy only when a chunk
        has to be computed)."""
        loaded = []

        def compute(lo, hi):
            if not loaded:
                ck.load_into(self.model)
                loaded.append(True)
            chunk = batch[torch.arange(lo, hi)]
            if self.fast:
                return self._factors(chunk, check=check and lo == 0)
            return self._grads(chunk, target)
        return cached_rows(len(batch), batch.ids, compute, self.cache_chunk, cache=cache, bar=bar)

    def _dot(self, test: dict, train: dict) -> torch.Tensor:
        """Per-checkpoint gradient dot products ``(n_test, n_train)``."""
        if not self.fast:
            return _matmul_t(test["g"], train["g"], self.device)
        ee = _matmul_t(test["e"], train["e"], self.device)
        if not self.use_weight:
            return ee
        aa = _matmul_t(test["a"], train["a"], self.device)
        return ee * (aa + 1.0) if self.use_bias else ee * aa

    def _sq_norms(self, rows: dict) -> torch.Tensor:
        if not self.fast:
            g = rows["g"]  # squared in column blocks: no n x d temporary, and sum()'s accurate reduction
            return sum(g[:, s:s + 65536].pow(2).sum(1) for s in range(0, g.shape[1], 65536))
        ee = rows["e"].pow(2).sum(1)
        if not self.use_weight:
            return ee
        aa = rows["a"].pow(2).sum(1)
        return ee * (aa + 1.0) if self.use_bias else ee * aa

    # ------------------------------------------------------------------ public interface
    def fit(self, train) -> "TracInCP":
        """Compute (or load from the cache) the train rows at every checkpoint; returns ``self``."""
        batch = train_batch(self.model, train, "TracInCP")
        if self.fast and self._fast_setting == "auto":
            self._probe_fast_path(batch)
        self.stored = self._choose_store(len(batch))
        if self.stored == "stream":
            self._train, self._rows = batch, None
            return self
        rows = []
        total = len(batch) * len(self.checkpoints)
        with _progress(total=total, desc="TracInCP train rows", disable=not self.progress,
                       leave=False) as bar:
            for ck in self.checkpoints:
                cache = None
                if self.cache_dir is not None:
                    cache = GradientCache(self.cache_dir / ck.path.stem, self._stamp(ck, batch))
                rows.append(self._rows_for(batch, ck, target=None, check=True, cache=cache, bar=bar))
        self._train, self._rows = batch, rows
        return self

    def _choose_store(self, n: int) -> str:
        if self.store != "auto":
            return self.store
        return "rows" if self.fast or self.projector is not None or self.cache_dir is not None else "stream"

    # ------------------------------------------------------------------ streaming path
    def _stream_chunk(self, chunk: Batch, target, lazy: bool = False):
        """Gradient information of one chunk at the loaded checkpoint, for pairing: last-layer
        factors (fast path), projected rows (projector) or :class:`repro.influence.ghost.Factors`
        (``lazy``: each layer's per-example gradients formed only while it is paired, for a chunk
        that is paired once)."""
        from repro.influence import ghost
        from repro.influence.grads import EvalState, _HookFallback, _without_hooks, choose_method, hook_modules

        if self.fast:
            return self._factors(chunk)
        if self.projector is not None:
            return self._grads(chunk, target)
        if self._owners is False:
            use = choose_method(self.model, self.device, self.method, self.names)
            self._owners = hook_modules(self.model, self.names) if use == "hooks" else None
            self._fallback = None if use == "hooks" else use
        chunk = chunk.to(self.device)
        tgt = target if target is not None else resolve_target("loss")
        with EvalState(self.model, self.names, set_requires_grad=True):
            try:
                f = ghost.factors(self.model, chunk, self.names, tgt, self._owners, plan=self._plan,
                                  fallback=self._fallback, lazy=lazy)
            except _HookFallback as e:
                warnings.warn(f"factored gradients do not apply to {type(self.model).__name__} ({e}); "
                              "using per-example gradients", RuntimeWarning, stacklevel=3)
                self._owners, self._plan = None, None
                self._fallback = _without_hooks(self.model, self.device, self.names)
                f = ghost.factors(self.model, chunk, self.names, tgt, None, fallback=self._fallback)
        if self._plan is None:
            self._plan = f.plan
        return f

    def _stream_pair(self, x, y) -> torch.Tensor:
        from repro.influence import ghost

        if isinstance(x, ghost.Factors):
            return ghost.pair_products(x, y).float().cpu()
        return self._dot(x, y)

    def _stream_self(self, x) -> torch.Tensor:
        from repro.influence import ghost

        if isinstance(x, ghost.Factors):
            return ghost.self_products(x).float().cpu()
        return self._sq_norms(x)

    def _train_step(self) -> int:
        """Training examples per streamed chunk."""
        if self.fast:
            return self.batch_size or 256
        from repro.influence.grads import choose_method, default_chunk_size
        method = choose_method(self.model, self.device, self.method, self.names)
        return self.batch_size or default_chunk_size(grad_dim(self.model, self.names), method)

    def _stream_scores(self, batch: Batch, sign: float) -> torch.Tensor:
        n, m = len(batch), len(self._train)
        out = torch.zeros(n, m, dtype=torch.float32)
        step = self._train_step()
        with _progress(total=m * len(self.checkpoints), desc="TracInCP scores (streaming)",
                       disable=not self.progress, leave=False) as bar:
            for ck, w in zip(self.checkpoints, self.weights):
                ck.load_into(self.model)
                tests = [(lo, min(n, lo + step), self._stream_chunk(batch[torch.arange(lo, min(n, lo + step))],
                                                                     self.target))
                         for lo in range(0, n, step)]
                for a in range(0, m, step):
                    b = min(m, a + step)
                    # one test chunk (the usual case): each layer of the training chunk is formed,
                    # paired and dropped in turn; several: formed once and kept for all of them
                    tr = self._stream_chunk(self._train[torch.arange(a, b)], None, lazy=len(tests) == 1)
                    for lo, hi, te in tests:
                        out[lo:hi, a:b].add_(self._stream_pair(te, tr), alpha=sign * w)
                    bar.update(b - a)
        return out

    def _probe_fast_path(self, batch: Batch) -> None:
        """With ``fast_last_layer="auto"``: does ``last_layer(features(x))`` give the model's logits
        at the first checkpoint? If not (the model transforms the last layer's output), fall back
        to brute-force gradients with a warning."""
        self.checkpoints[0].load_into(self.model)
        try:
            self._factors(batch[torch.arange(min(2, len(batch)))], check=True)
        except _FastPathError as e:
            warnings.warn(f"{e}; using per-example gradients instead", RuntimeWarning, stacklevel=3)
            self.fast = False

    def scores(self, test) -> torch.Tensor:
        """TracInCP scores ``(n_test, n_train)``; positive = proponent, negative = opponent."""
        self._check_fitted()
        batch = as_batch(self.model, test, "TracInCP test examples")
        sign = -1.0 if self.target.higher_is_better else 1.0
        if self._rows is None:
            return self._stream_scores(batch, sign)
        out = torch.zeros(len(batch), len(self._train), dtype=torch.float32)
        n = len(batch)
        with _progress(total=n * len(self.checkpoints), desc="TracInCP scores",
                       disable=not self.progress, leave=False) as bar:
            for ck, w, train_rows in zip(self.checkpoints, self.weights, self._rows):
                ck.load_into(self.model)
                # test rows are computed once per checkpoint, a chunk at a time, and dotted with
                # all stored train rows right away (memory: one chunk of test rows)
                for lo in range(0, n, self.cache_chunk):
                    hi = min(n, lo + self.cache_chunk)
                    chunk = batch[torch.arange(lo, hi)]
                    rows = self._factors(chunk) if self.fast else self._grads(chunk, self.target)
                    out[lo:hi].add_(self._dot(rows, train_rows), alpha=sign * w)
                    bar.update(hi - lo)
        return out

    def self_influence(self, train=None, per_checkpoint: bool = False) -> torch.Tensor:
        """``sum_i eta_i |grad l(w_i, z)|^2`` for every training example ``(n_train,)``, >= 0.

        Args:
            train: ``None`` (default): the examples given to :meth:`fit`, from their stored rows.
                Data: computed *streaming* from that data without :meth:`fit` (nothing is stored;
                memory is one chunk of per-example gradients, however many parameters or
                checkpoints), exactly the same numbers. Use it for self-influence over many
                parameters, where storing ``n x d`` rows per checkpoint does not fit in memory.
            per_checkpoint: return ``(n_checkpoints, n_train)``, row ``i`` = ``eta_i |grad l(w_i, z)|^2``
                (so any subset of checkpoints is a sum of rows; ``.sum(0)`` is the default result).
        """
        if train is None:
            self._check_fitted()
            if self._rows is None:
                per = self._stream_sq_norms(self._train)
            else:
                per = [self._sq_norms(rows) * w for w, rows in zip(self.weights, self._rows)]
        else:
            per = self._stream_sq_norms(train_batch(self.model, train, "TracInCP.self_influence"))
        per = torch.stack(per) if per else torch.zeros(0)
        return per if per_checkpoint else per.sum(0)

    def _stream_sq_norms(self, batch: Batch) -> list[torch.Tensor]:
        n = len(batch)
        step = self._train_step()
        per = []
        with _progress(total=n * len(self.checkpoints), desc="TracInCP self-influence",
                       disable=not self.progress, leave=False) as bar:
            for first, (ck, w) in enumerate(zip(self.checkpoints, self.weights)):
                ck.load_into(self.model)
                out = torch.empty(n, dtype=torch.float32)
                for lo in range(0, n, step):
                    hi = min(n, lo + step)
                    chunk = batch[torch.arange(lo, hi)]
                    if self.fast:
                        rows = self._factors(chunk, check=first == 0 and lo == 0)
                    else:
                        rows = self._stream_chunk(chunk, None, lazy=True)
                    out[lo:hi] = self._stream_self(rows) * w
                    bar.update(hi - lo)
                per.append(out)
        return per

    def __repr__(self) -> str:
        return (f"TracInCP(params={self.params!r}, checkpoints={len(self.checkpoints)}, "
                f"fast_last_layer={self.fast}, projector={self.projector!r}, store={self.store!r}, "
                f"lr_weighting={self.lr_weighting!r})")
