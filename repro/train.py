"""One trainer for the text classifier and the VGG: checkpoints with learning rates, resumable.

A run folder looks like::

    run_dir/
      run.json                      model spec, train config, data fingerprint, excluded ids
      checkpoints/epoch-0003.safetensors + epoch-0003.json   (epoch, step, lr in effect, metrics)
      state/step-000000057/ weights.safetensors + optim.pt + manifest.json   (resume point)
      state/LATEST.json                                     names the committed resume point

The resume point is committed atomically after every epoch: its files are written into a hidden
temporary folder, the folder is renamed into place, and only then ``LATEST.json`` (itself written
atomically) is switched to it. A kill at any moment leaves either the previous or the new resume
point, complete; ``manifest.json`` holds the sha256 of each file and is verified on load, so a
damaged resume point raises :class:`repro.errors.CheckpointError` naming the file instead of
resuming from mixed state. Checkpoints written after the committed resume point (by an interrupted
epoch) are removed on resume and written again.

``list_checkpoints(run_dir)`` returns the checkpoints with their learning rates (what TracInCP
needs); ``load_run(run_dir)`` rebuilds the model. Training is deterministic given the seed: the
shuffling order and dropout noise of epoch ``e`` depend only on ``(seed, e)``, so a run resumed from
its last epoch ends with exactly the weights of an uninterrupted run (on the same device, with the
same number of torch threads: float reductions sum in another order on other devices or thread
counts, so those runs agree only statistically).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from repro.data.core import Batch, Dataset
from repro.errors import (CheckpointError, ConfigMismatchError, EmptyDatasetError,
                          NonFiniteLossError, UnknownNameError)
from repro.checks import (as_finite_float, as_int, as_positive_int, check_finite_inputs, check_label_range,
                          check_unique_ids)
from repro.errors import InvalidParameterError, UnsafePathError
from repro.models import ReproModel, build_model
from repro.utils import (atomic_write_json, atomic_write_with, fsync_file, progress, resolve_device, sha256_file,
                         set_default_mode)

SCHEDULES = ("constant", "linear", "cosine", "step")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    """Training hyperparameters.

    ``checkpoint_epochs``: epochs after which a checkpoint is kept for influence estimation: a list of
    epoch numbers (1-based), ``"all"``, or ``"final"``; the final epoch is always kept.
    ``checkpoint_every_steps``: additionally keep a checkpoint every k optimizer steps.
    ``schedule``: ``constant``, ``linear`` (warm-up then linear decay to 0), ``cosine`` (warm-up then
    cosine to 0) or ``step`` (multiply by ``gamma`` at each epoch in ``milestones``).
    ``amp``: bf16 autocast; ``None`` means on for CUDA, off on CPU.
    ``group_by_length``: text only: mini-batches of examples of similar length (like the Hugging
    Face Trainer's option), which trim to less padding and so cost less; each epoch's seeded
    permutation is cut into mega-batches of ``length_group_batches * batch_size`` examples, each
    sorted by length and cut into mini-batches, which are then seeded-shuffled (see
    :meth:`repro.data.core.Batch.length_grouped_order`). Still deterministic given the seed, every
    example once per epoch, resumable. Off by default (the plain permutation; a run record written
    without the option stays identical). Inputs without an ``attention_mask`` raise
    :class:`repro.errors.InvalidParameterError`.
    """

    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    label_smoothing: float = 0.0
    seed: int = 0
    checkpoint_epochs: Sequence[int] | str = "all"
    checkpoint_every_steps: int | None = None
    eval_batch_size: int = 256
    device: str = "auto"
    amp: bool | None = None
    max_grad_norm: float | None = None
    progress: bool = True
    group_by_length: bool = False
    length_group_batches: int = 50

    def __post_init__(self):
        if not isinstance(self.group_by_length, bool):
            raise InvalidParameterError(f"TrainConfig.group_by_length must be True or False, got "
                                        f"{self.group_by_length!r}")
        self.length_group_batches = as_positive_int("TrainConfig.length_group_batches", self.length_group_batches)
        if self.optimizer not in OPTIMIZERS:
            raise UnknownNameError(f"unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise UnknownNameError(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
        self.epochs = as_positive_int("TrainConfig.epochs", self.epochs)
        self.batch_size = as_positive_int("TrainConfig.batch_size", self.batch_size)
        self.eval_batch_size = as_positive_int("TrainConfig.eval_batch_size", self.eval_batch_size)
        self.warmup_steps = as_int("TrainConfig.warmup_steps", self.warmup_steps, minimum=0)
        self.seed = as_int("TrainConfig.seed", self.seed)
        self.checkpoint_every_steps = as_positive_int("TrainConfig.checkpoint_every_steps",
                                                      self.checkpoint_every_steps, allow_none=True)
        self.lr = as_finite_float("TrainConfig.lr", self.lr)
        if self.lr <= 0:
            raise InvalidParameterError(f"TrainConfig.lr must be positive, got {self.lr}")
        for name in ("momentum", "weight_decay", "label_smoothing", "gamma"):
            setattr(self, name, as_finite_float(f"TrainConfig.{name}", getattr(self, name), minimum=0.0))
        ce = self.checkpoint_epochs
        if isinstance(ce, str):
            if ce not in ("all", "final"):
                raise UnknownNameError(f"checkpoint_epochs must be a list of epochs, 'all' or 'final', got {ce!r}")
        else:
            epochs = [as_int("TrainConfig.checkpoint_epochs[]", e) for e in ce]
            outside = [e for e in epochs if not 1 <= e <= self.epochs]
            if outside:
                raise InvalidParameterError(f"checkpoint_epochs {outside} are not epochs of this run (1..{self.epochs}); "
                                            "such checkpoints would silently never be kept")
        self.milestones = [as_int("TrainConfig.milestones[]", m) for m in self.milestones]

    def to_dict(self) -> dict:
        """The config as JSON-able values (the run record's ``config``). Without ``group_by_length``
        its two keys are left out, so records of runs made before the option existed still match."""
        d = dataclasses.asdict(self)
        if not self.group_by_length:
            d.pop("group_by_length")
            d.pop("length_group_batches")
        d["milestones"] = list(self.milestones)
        if not isinstance(self.checkpoint_epochs, str):
            d["checkpoint_epochs"] = list(self.checkpoint_epochs)
        return d


@dataclass
class Checkpoint:
    """A saved checkpoint: weights file plus what TracInCP needs (learning rate in effect)."""

    path: Path
    epoch: int
    step: int
    lr: float
    lr_mean: float
    metrics: dict = field(default_factory=dict)

    def load_into(self, model: ReproModel) -> ReproModel:
        """Load the weights into ``model`` (which must have the checkpoint's spec)."""
        meta = _read_sidecar(self.path.with_suffix(".json"))
        if meta.get("model_spec") != _jsonable(model.spec):
            raise CheckpointError(f"checkpoint {self.path} belongs to another model: "
                                  f"{meta.get('model_spec')} != {model.spec}")
        state = _load_weights(self.path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {self.path} does not fit the model: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        return model


@dataclass
class StateCheckpoint(Checkpoint):
    """A checkpoint of a model repro did not train: a state dict (in memory) or a weights file
    (``.safetensors``, or ``.pt`` / ``.pth`` read with ``torch.load(weights_only=True)``) with the
    learning rate in effect, and no JSON sidecar. Built by :func:`repro.influence.tracin.resolve_checkpoints`
    from ``[(state_dict or path, lr), ...]``; ``step`` is the position in that list."""

    state: dict | None = None

    def weights(self) -> dict:
        if self.state is not None:
            return self.state
        return load_weights_file(self.path)

    def load_into(self, model):
        """Load the weights into ``model`` (keys in the module's own spelling; a wrapped model's
        :meth:`~repro.models.foreign.ForeignModel.load_state` adds the prefix)."""
        state = self.weights()
        if self.state is not None:  # files are checked when read (load_weights_file)
            _check_finite_state(state, f"checkpoint {self.path}")
        if callable(getattr(model, "load_state", None)):
            model.load_state(state)
            return model
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {self.path} does not fit the model: missing {list(missing)[:5]}, "
                                  f"unexpected {list(unexpected)[:5]}")
        return model


def load_weights_file(path) -> dict:
    """A state dict from ``.safetensors`` (:func:`safetensors.torch.load_file`) or a torch file
    read with ``weights_only=True`` (never an arbitrary pickle); damaged files raise CheckpointError."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_weights(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path} is missing") from None
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"weights file {path} cannot be read safely ({type(e).__name__}: {str(e)[:200]}); "
                              "save state dicts with torch.save(model.state_dict(), path) or safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights file {path} does not hold a state dict of tensors")
    _check_finite_state(state, f"weights file {path}")
    return state


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    checkpoints: list[Checkpoint]
    wall_time_s: float
    resumed_from_epoch: int = 0

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def _jsonable(obj):
    return json.loads(json.dumps(obj))


def _read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; a missing, unreadable or garbage file raises CheckpointError
    naming it."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{what} {path} cannot be read ({type(e).__name__}: {e}); the file is "
                              "damaged or was not written by repro") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} does not hold a JSON object")
    return obj


def _read_sidecar(path: Path) -> dict:
    """A checkpoint's JSON sidecar, with ``epoch``, ``step`` (non-negative integers) and ``lr``,
    ``lr_mean`` (finite numbers >= 0; a string, NaN or inf is refused, never converted) checked."""
    meta = _read_json(path, "checkpoint sidecar")
    for key in ("epoch", "step"):
        v = meta.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CheckpointError(f"checkpoint sidecar {path}: {key} must be a non-negative integer, "
                                  f"got {v!r}; the file is damaged or was edited by hand")
    for key in ("lr", "lr_mean"):
        v = meta.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise CheckpointError(f"checkpoint sidecar {path}: {key} must be a finite number >= 0, got "
                                  f"{v!r} ({type(v).__name__}); TracInCP weights every checkpoint by "
                                  "it, so a bad value would corrupt every score. Fix or re-save the file")
    return meta


def _check_finite_state(state: dict, what: str) -> None:
    """CheckpointError naming the tensors of ``state`` that hold NaN or inf."""
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{what} holds NaN or infinite values in {bad[:5]}; the run diverged or the "
                              "file is damaged: use an earlier checkpoint or retrain")


def _load_weights(path: Path) -> dict:
    """A safetensors state dict; a truncated or garbage file, or weights holding NaN or inf, raise
    CheckpointError naming it."""
    try:
        state = load_file(str(path))
        _check_finite_state(state, f"weights file {path}")
        return state
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path} is missing") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"weights file {path} is damaged or not a safetensors file "
                              f"({type(e).__name__}: {e}); re-create it (retrain, or resume=False)") from None


def _load_optim(path: Path, device) -> dict:
    """The optimizer + scheduler state saved with the resume point (``weights_only`` unpickling);
    garbage raises CheckpointError naming the file."""
    try:
        st = torch.load(path, weights_only=True, map_location=device)
    except FileNotFoundError:
        raise CheckpointError(f"optimizer state {path} is missing; use resume=False to start over") from None
    except Exception as e:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError, ...
        raise CheckpointError(f"optimizer state {path} is damaged ({type(e).__name__}: {e}); use "
                              "resume=False to start over") from None
    if not isinstance(st, dict) or "optimizer" not in st or "scheduler" not in st:
        raise CheckpointError(f"optimizer state {path} does not hold 'optimizer' and 'scheduler'; "
                              "use resume=False to start over")
    return st


_STATE_FILES = ("weights.safetensors", "optim.pt")


def _write_state_files(folder: Path, weights: dict, optim_state: dict) -> None:
    """The files of one resume point, written into ``folder`` (a fresh temporary folder)."""
    save_file(weights, str(folder / "weights.safetensors"))
    torch.save(optim_state, folder / "optim.pt")


def commit_resume_point(state_dir: Path, weights: dict, optim_state: dict, meta: dict) -> Path:
    """Write a resume point as one atomic commit (see module doc): files into a temporary folder,
    ``manifest.json`` (meta + sha256 of every file) last, fsync, rename the folder into place,
    then switch ``LATEST.json``. Returns the committed folder."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{int(meta['step']):09d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=state_dir))
    try:
        _write_state_files(tmp, weights, optim_state)
        manifest = {**meta, "files": {f: sha256_file(tmp / f) for f in _STATE_FILES}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        for f in (*_STATE_FILES, "manifest.json"):
            fsync_file(tmp / f)
            set_default_mode(tmp / f)
        set_default_mode(tmp)
        final = state_dir / name
        if final.exists():  # left by an interrupted run, never the committed point (that is older)
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(state_dir / "LATEST.json", {"folder": name, "epoch": meta.get("epoch"),
                                                  "step": meta.get("step")})  # the commit
    for p in state_dir.iterdir():  # older points, legacy files, temp folders of killed runs
        if p.name in (name, "LATEST.json"):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return final


def read_resume_point(state_dir: Path) -> tuple[dict, Path, Path] | None:
    """``(meta, weights_path, optim_path)`` of the committed resume point, verified against its
    manifest, or None when there is none. A damaged point raises CheckpointError naming the file.
    Run folders of older repro versions (``state/last.*``) are read as they are."""
    state_dir = Path(state_dir)
    latest = state_dir / "LATEST.json"
    if not latest.exists():
        legacy = state_dir / "last.json"
        if legacy.exists():
            meta = _read_json(legacy, "resume point")
            return meta, state_dir / "last.safetensors", state_dir / "last-optim.pt"
        return None
    pointer = _read_json(latest, "resume pointer")
    folder = state_dir / str(pointer.get("folder", ""))
    if not pointer.get("folder") or folder.parent != state_dir or not folder.is_dir():
        raise CheckpointError(f"{latest} names a resume point {folder} that does not exist; use "
                              "resume=False to start over")
    meta = _read_json(folder / "manifest.json", "resume point manifest")
    files = meta.get("files") or {}
    for f in _STATE_FILES:
        path = folder / f
        if not path.is_file() or path.is_symlink():
            raise CheckpointError(f"resume point file {path} is missing; use resume=False to start over")
        if files.get(f) != sha256_file(path):
            raise CheckpointError(f"resume point file {path} does not match its manifest (damaged or "
                                  "replaced); use resume=False to start over")
    return meta, folder / "weights.safetensors", folder / "optim.pt"


def _drop_checkpoints_after(run_dir: Path, epoch: int, step: int) -> None:
    """Remove checkpoints written after the resume point (by an epoch that was interrupted,
    including weights whose sidecar was never written): the resumed run writes them again."""
    ck_dir = Path(run_dir) / "checkpoints"
    if not ck_dir.is_dir():
        return
    for path in ck_dir.glob("*.safetensors"):
        meta_path = path.with_suffix(".json")
        kind, _, number = path.stem.partition("-")
        stale = False
        if number.isdigit():  # epoch-0003 / step-0000123: known without the sidecar
            stale = int(number) > (epoch if kind == "epoch" else step)
        if meta_path.exists() and not stale:
            try:
                stale = int(json.loads(meta_path.read_text()).get("step", -1)) > step
            except (ValueError, TypeError, AttributeError, json.JSONDecodeError):
                stale = False  # a damaged sidecar of a kept checkpoint: list_checkpoints names it
        if stale:
            path.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)


def fingerprint_ids(ids) -> str:
    ids = np.asarray(ids, dtype=np.int64)
    return hashlib.sha256(ids.tobytes()).hexdigest()[:16]


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch + 1  # 1-based epoch of this step
        return cfg.gamma ** sum(epoch > m for m in cfg.milestones)
    progress_ = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    if cfg.schedule == "linear":
        return max(0.0, 1.0 - progress_)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))


class Trainer:
    """Train a :class:`ReproModel` with cross-entropy, saving checkpoints into ``run_dir``.

    Example::

        model = repro.models.vgg(num_classes=10, width=0.25, seed=0)
        res = Trainer(model, TrainConfig(epochs=3, lr=0.05), "runs/vgg").fit(train, eval=test)
        for ck in list_checkpoints("runs/vgg"): print(ck.epoch, ck.lr)
    """

    def __init__(self, model: ReproModel, config: TrainConfig | None = None, run_dir: str | Path | None = None):
        from repro.models.foreign import as_model
        self.model = as_model(model)  # a plain nn.Module is wrapped (see repro.models.foreign)
        self.config = config or TrainConfig()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = resolve_device(self.config.device)

    # ------------------------------------------------------------------ helpers
    def _encode(self, data) -> Batch:
        if isinstance(data, Batch):
            if len(data) == 0:
                raise EmptyDatasetError("empty training batch")
            batch = data
        elif isinstance(data, Dataset):
            batch = self.model.encode(data)
        else:
            from repro.data.core import batch_from
            batch = batch_from(data, getattr(self.model, "input_name", "x"))
        what = "examples given to Trainer.fit"
        check_unique_ids(batch.ids, what)  # ids address examples (removal, turn-over dropout)
        check_finite_inputs(batch.inputs, batch.ids, what)
        if self.model.num_classes is not None:  # None: a wrapped module without a linear head
            check_label_range(batch.labels, self.model.num_classes, batch.ids, what)
        return batch

    def _optimizer(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)

    def _epoch_batches(self, train: Batch, epoch: int):
        """The mini-batches of ``epoch``: a function of ``(seed, epoch)`` only (resume is exact)."""
        cfg = self.config
        seed = cfg.seed * 7919 + epoch
        if cfg.group_by_length:
            return train.batches(cfg.batch_size, shuffle_seed=seed, group_by_length=True,
                                 group_batches=cfg.length_group_batches)
        return train.batches(cfg.batch_size, shuffle_seed=seed)

    def _keep_epoch(self, epoch: int) -> bool:
        ce = self.config.checkpoint_epochs
        if epoch == self.config.epochs or ce == "all":
            return True
        if ce == "final":
            return False
        if isinstance(ce, str):
            raise UnknownNameError(f"checkpoint_epochs must be a list, 'all' or 'final', got {ce!r}")
        return epoch in set(ce)

    def _run_record(self, train: Batch, exclude_ids) -> dict:
        return {"model_spec": _jsonable(self.model.spec), "config": self.config.to_dict(),
                "train_ids": fingerprint_ids(train.ids.numpy()), "n_train": len(train),
                "excluded_ids": sorted(int(i) for i in exclude_ids) if exclude_ids is not None else []}

    def _save_weights(self, path: Path, meta: dict) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        atomic_write_with(path, lambda tmp: save_file(state, tmp))
        atomic_write_json(path.with_suffix(".json"), meta)

    # ------------------------------------------------------------------ main loop
    def fit(self, train, eval=None, exclude_ids=None, resume: bool = True,
            until_epoch: int | None = None, masked_ids=None) -> TrainResult:
        """Train; returns the per-epoch history and the kept checkpoints.

        Args:
            train: a Dataset (encoded with ``model.encode``) or an encoded Batch.
            eval: optional held-out data, evaluated after every epoch.
            exclude_ids: train on everything except these example ids (removal experiments); ids not
                in the training set raise KeyError.
            resume: continue from ``run_dir/state`` if it holds an earlier, identical run (a run with
                another configuration raises ConfigMismatchError); ``False``: start over, deleting
                what the folder held.
            until_epoch: stop after this epoch (as if interrupted); a later ``fit`` resumes.
            masked_ids: **masked deletion**: keep these examples in the data (same shuffling order,
                same mini-batch composition as the full run) but give them weight 0, so each
                mini-batch minimises the mean loss of its other examples: the same as dropping them
                from every mini-batch of the full run's order. A mini-batch left empty makes no
                optimizer step (the learning-rate schedule still counts it, as in the full run).
                Ids not in the training set raise KeyError.
        """
        t0 = time.perf_counter()
        cfg = self.config
        train, eval_batch, masked = self._prepare_data(train, eval, exclude_ids, masked_ids)
        model = self.model.to(self.device)
        opt = self._optimizer()
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, steps_per_epoch))
        record = self._run_record(train, exclude_ids)
        if masked is not None:
            record["masked_ids"] = sorted(int(i) for i in masked)
        history: list[dict] = []
        start_epoch = 0
        if self.run_dir is not None:
            start_epoch, history = self._prepare_run_dir(record, opt, sched, resume)
        last_epoch = cfg.epochs if until_epoch is None else min(until_epoch, cfg.epochs)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for epoch in range(start_epoch + 1, last_epoch + 1):
                row = self._train_epoch(train, epoch, steps_per_epoch, opt, sched, masked)
                if eval_batch is not None:
                    ev = evaluate(model, eval_batch, cfg.eval_batch_size, self.device)
                    row.update({"eval_loss": ev["loss"], "eval_accuracy": ev["accuracy"]})
                history.append(row)
                if self.run_dir is not None:
                    if self._keep_epoch(epoch):
                        self._checkpoint(f"epoch-{epoch:04d}", epoch, row["step"], row["lr"], row["lr_mean"], row)
                    self._save_state(epoch, row["step"], history, opt, sched)
        model.eval()
        return TrainResult(self.run_dir, history, list_checkpoints(self.run_dir) if self.run_dir else [],
                           time.perf_counter() - t0, resumed_from_epoch=start_epoch)

    def _prepare_data(self, train, eval, exclude_ids, masked_ids):
        """Apply ``exclude_ids``, encode train and eval data, check labels against the head and turn
        ``masked_ids`` into a tensor (named errors for ids not in the data, or nothing left)."""
        if exclude_ids is not None and len(exclude_ids):
            if not isinstance(train, Dataset):
                missing = np.setdiff1d(np.asarray(exclude_ids), train.ids.numpy())
                if len(missing):
                    raise KeyError(f"{len(missing)} excluded id(s) not in the training set: {missing[:10].tolist()}")
            train = train.exclude(exclude_ids)
        train = self._encode(train)
        if self.config.group_by_length:
            train.lengths()  # non-text inputs: a named error now, not at the first epoch
        masked = None
        if masked_ids is not None and len(masked_ids):
            masked = torch.as_tensor(np.asarray(list(masked_ids), dtype=np.int64))
            missing = masked[~torch.isin(masked, train.ids)]
            if len(missing):
                raise KeyError(f"{len(missing)} masked id(s) not in the training set: {missing[:10].tolist()}")
            if bool(torch.isin(train.ids, masked).all()):
                raise EmptyDatasetError("masked_ids covers the whole training set: nothing left to train on")
        eval_batch = self._encode(eval) if eval is not None else None
        k = self.model.num_classes
        if int(train.labels.min()) < 0 or (k is not None and int(train.labels.max()) >= k):
            from repro.errors import LabelRangeError
            raise LabelRangeError(f"training labels exceed the head's {self.model.num_classes} classes")
        return train, eval_batch, masked

    def _train_epoch(self, train: Batch, epoch: int, steps_per_epoch: int, opt, sched, masked) -> dict:
        """One epoch of mini-batch steps (seeded by ``seed`` and ``epoch``, so a resumed run takes the
        same steps); step checkpoints on the way. Returns the epoch's history row."""
        cfg, model = self.config, self.model
        amp = cfg.amp if cfg.amp is not None else self.device.type == "cuda"
        step = (epoch - 1) * steps_per_epoch
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        model.train()
        tot_loss, tot_correct, seen, lrs = 0.0, 0, 0, []
        bar = progress(self._epoch_batches(train, epoch), total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}",
                       disable=not cfg.progress, leave=False)
        for mb in bar:
            mb = mb.to(self.device)
            w = None
            if masked is not None:
                w = (~torch.isin(mb.ids, masked.to(mb.ids.device))).float()
                if not bool(w.any()):  # every example of this mini-batch is deleted: no step
                    lrs.append(opt.param_groups[0]["lr"])
                    with warnings.catch_warnings():  # "scheduler step before optimizer step"
                        warnings.simplefilter("ignore", UserWarning)
                        sched.step()
                    step += 1
                    continue
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(**mb.inputs, ids=mb.ids)
                if w is None:
                    loss = F.cross_entropy(logits.float(), mb.labels, label_smoothing=cfg.label_smoothing)
                else:
                    ce = F.cross_entropy(logits.float(), mb.labels, reduction="none",
                                         label_smoothing=cfg.label_smoothing)
                    loss = (ce * w).sum() / w.sum()
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss became {loss.item()} at epoch {epoch}, step {step}; lower the learning "
                    f"rate (now {opt.param_groups[0]['lr']:.3g}) or check the inputs")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            step += 1
            n = len(mb) if w is None else int(w.sum())
            tot_loss += loss.item() * n
            hit = logits.argmax(1) == mb.labels
            tot_correct += int(hit.sum() if w is None else (hit.float() * w).sum())
            seen += n
            bar.set_postfix(loss=f"{tot_loss / seen:.3f}")
            end_of_kept_epoch = step == epoch * steps_per_epoch and self._keep_epoch(epoch)
            if (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 and self.run_dir
                    and not end_of_kept_epoch):  # never save the same weights twice
                self._checkpoint(f"step-{step:07d}", epoch, step, lrs[-1], float(np.mean(lrs)), {})
        return {"epoch": epoch, "step": step, "lr": lrs[-1], "lr_mean": float(np.mean(lrs)),
                "train_loss": tot_loss / seen, "train_accuracy": tot_correct / seen}

    def _checkpoint(self, name, epoch, step, lr, lr_mean, metrics) -> None:
        meta = {"epoch": epoch, "step": step, "lr": lr, "lr_mean": lr_mean, "metrics": metrics,
                "model_spec": _jsonable(self.model.spec)}
        self._save_weights(self.run_dir / "checkpoints" / f"{name}.safetensors", meta)

    def _save_state(self, epoch, step, history, opt, sched) -> None:
        """Commit the resume point (weights, optimizer + scheduler state, history) atomically."""
        weights = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        commit_resume_point(self.run_dir / "state", weights,
                            {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
                            {"epoch": epoch, "step": step, "history": history,
                             "model_spec": _jsonable(self.model.spec)})

    def _prepare_run_dir(self, record: dict, opt, sched, resume: bool) -> tuple[int, list]:
        run_json = self.run_dir / "run.json"
        if run_json.exists() and not resume:  # start over: forget the earlier run in this folder
            for p in list((self.run_dir / "checkpoints").glob("*")) + list((self.run_dir / "state").glob("*")):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            run_json.unlink()
        if run_json.exists():
            old = _read_json(run_json, "run record")
            if old != record:
                diff = sorted(k for k in record if old.get(k) != record[k])
                raise ConfigMismatchError(
                    f"{self.run_dir} holds a run with another {', '.join(diff)}; use a new run_dir "
                    "or delete the old one")
            point = read_resume_point(self.run_dir / "state")
            if point is not None:
                meta, weights_path, optim_path = point
                try:
                    self.model.load_state_dict(_load_weights(weights_path))
                except RuntimeError as e:
                    raise CheckpointError(f"resume point {weights_path} does not fit the model: {e}; "
                                          "use resume=False to start over") from None
                st = _load_optim(optim_path, self.device)
                try:
                    opt.load_state_dict(st["optimizer"])
                    sched.load_state_dict(st["scheduler"])
                except (KeyError, ValueError, TypeError) as e:
                    raise CheckpointError(f"optimizer state {optim_path} does not fit this optimizer "
                                          f"({type(e).__name__}: {e}); use resume=False to start over") from None
                _drop_checkpoints_after(self.run_dir, int(meta["epoch"]), int(meta["step"]))
                return int(meta["epoch"]), list(meta["history"])
            _drop_checkpoints_after(self.run_dir, 0, 0)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_json, record)
        return 0, []


# ---------------------------------------------------------------------------- inference helpers
@torch.no_grad()
def predict(model: ReproModel, data, batch_size: int = 256, device=None) -> torch.Tensor:
    """Logits for every example (eval mode, no turn-over masks), on the CPU. ``model`` may be any
    classifier ``nn.Module`` and ``data`` ``(inputs, labels)`` tensors (see :func:`as_batch`)."""
    from repro.influence.grads import as_batch
    from repro.models.foreign import as_model
    device = resolve_device(device or "auto") if device is None or isinstance(device, str) else device
    model = as_model(model)
    batch = as_batch(model, data)
    model = model.to(device).eval()
    out = [model(**mb.to(device).inputs).float().cpu() for mb in batch.batches(batch_size)]
    return torch.cat(out)


def evaluate(model: ReproModel, data, batch_size: int = 256, device=None) -> dict:
    """Mean cross-entropy loss and accuracy."""
    from repro.influence.grads import as_batch
    from repro.models.foreign import as_model
    model = as_model(model)
    batch = as_batch(model, data)
    logits = predict(model, batch, batch_size, device)
    loss = F.cross_entropy(logits, batch.labels).item()
    acc = (logits.argmax(1) == batch.labels).float().mean().item()
    return {"loss": loss, "accuracy": acc}


# ---------------------------------------------------------------------------- run folders
def list_checkpoints(run_dir: str | Path) -> list[Checkpoint]:
    """The kept checkpoints of a run, in training order, with their learning rates."""
    run_dir = Path(run_dir)
    ck_dir = run_dir / "checkpoints"
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    if not ck_dir.is_dir() or not any(ck_dir.glob("*.safetensors")):
        raise CheckpointError(f"run folder {run_dir} has no checkpoints (was it trained with a run_dir?)")
    out = []
    for path in ck_dir.glob("*.safetensors"):
        meta_path = path.with_suffix(".json")
        for p in (path, meta_path):
            _check_inside(p, run_dir)
        if not meta_path.exists():
            raise CheckpointError(f"checkpoint {path} has no JSON sidecar: the run was interrupted while "
                                  "saving it; run the training again (it resumes and rewrites it)")
        m = _read_sidecar(meta_path)
        out.append(Checkpoint(path, m["epoch"], m["step"], m["lr"], m["lr_mean"], m.get("metrics", {})))
    return sorted(out, key=lambda c: c.step)


def _check_inside(path: Path, folder: Path) -> None:
    """A file of a run folder must be a plain file inside it: a symlink (which could point at any
    file, or change under the run) raises UnsafePathError naming it."""
    if path.is_symlink():
        raise UnsafePathError(f"{path} is a symlink (to {os.readlink(path)}); a run folder must hold its "
                              "own files: copy the target into place instead of linking it")
    if path.exists() and folder.resolve() not in path.resolve().parents:
        raise UnsafePathError(f"{path} resolves outside its run folder {folder}")


def _is_local_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def load_run(run_dir: str | Path, checkpoint: Checkpoint | int | None = -1,
             allow_external_model: bool = False) -> tuple[ReproModel, list[Checkpoint]]:
    """Rebuild a run's model (weights of ``checkpoint``: an index into the list, or None for none).

    ``run.json`` names the model; when that name is a local folder outside the run folder (a run
    folder from elsewhere could point anywhere), :class:`repro.errors.UnsafePathError` is raised
    unless ``allow_external_model=True``. Hub names and the bundled ``"minilm"`` are fine."""
    run_dir = Path(run_dir)
    run_json = run_dir / "run.json"
    if not run_json.exists():
        raise CheckpointError(f"{run_dir} is not a repro run folder (no run.json)")
    _check_inside(run_json, run_dir)
    record = _read_json(run_json, "run record")
    spec = record.get("model_spec")
    if not isinstance(spec, dict):
        raise CheckpointError(f"{run_json} has no model_spec")
    name = spec.get("model_name")
    if isinstance(name, str) and name != "minilm" and _is_local_path(name) and not allow_external_model:
        target = Path(name).expanduser()
        target = target if target.is_absolute() else (run_dir / target)
        if run_dir.resolve() not in target.resolve().parents:
            raise UnsafePathError(f"{run_json} names the model folder {name!r}, outside the run folder; "
                                  "check it is the model you expect, then pass allow_external_model=True")
    cks = list_checkpoints(run_dir)
    model = build_model(spec)
    if checkpoint is not None:
        (cks[checkpoint] if isinstance(checkpoint, int) else checkpoint).load_into(model)
    return model.eval(), cks
