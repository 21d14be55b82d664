"""Validation of values where they enter the package: each check raises a named error from
:mod:`repro.errors` that says which parameter, example id or file is wrong and what to do.

Used by the datasets, the trainer, the estimators and the command line, so that a bad value fails
at once with a clear message instead of turning into a NaN score, a silently truncated sample or a
raw tensor error deep inside torch.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import weakref

import numpy as np
import torch

from repro.errors import (DuplicateIdError, InvalidParameterError, LabelRangeError,
                          NonFiniteInputError)

__all__ = ["as_int", "as_positive_int", "as_finite_float", "check_unique_ids", "check_finite_inputs",
           "check_label_range", "check_batch", "batch_fingerprint", "check_k"]


def as_int(name: str, value, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as an int: ints, numpy ints and integral floats (``3.0``) are accepted; bools,
    strings and fractional numbers raise :class:`InvalidParameterError` naming ``name``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, numbers.Real) and not isinstance(value, bool):
        ok = math.isfinite(float(value)) and float(value).is_integer()
    if not ok:
        raise InvalidParameterError(f"{name} must be an integer{' or None' if allow_none else ''}, "
                                    f"got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InvalidParameterError(f"{name} must be >= {minimum}, got {value}")
    return value


def as_positive_int(name: str, value, allow_none: bool = False) -> int | None:
    """``as_int(name, value, minimum=1)``."""
    return as_int(name, value, minimum=1, allow_none=allow_none)


def as_finite_float(name: str, value, minimum: float | None = None, where: str = "") -> float:
    """``value`` as a finite float. Strings, bools, None, NaN and infinities raise
    :class:`NonFiniteInputError` (non-finite) or :class:`InvalidParameterError` (wrong type or
    below ``minimum``); ``where`` (e.g. a file name) is added to the message."""
    at = f" in {where}" if where else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterError(f"{name}{at} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise NonFiniteInputError(f"{name}{at} is {value}; it must be a finite number")
    if minimum is not None and value < minimum:
        raise InvalidParameterError(f"{name}{at} must be >= {minimum}, got {value}")
    return value


def check_k(k, name: str = "k") -> int:
    """A number of results to return (top-k): a positive integer."""
    return as_int(name, k, minimum=1)


def _ids(ids) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    return np.asarray(ids).reshape(-1)


def check_unique_ids(ids, what: str = "examples") -> None:
    """Raise :class:`DuplicateIdError` naming the repeated ids."""
    arr = _ids(ids)
    if len(arr) < 2:
        return
    uniq, counts = np.unique(arr, return_counts=True)
    if len(uniq) != len(arr):
        dup = uniq[counts > 1]
        raise DuplicateIdError(f"{what} have {len(arr) - len(uniq)} repeated id(s), e.g. {dup[:10].tolist()}; "
                               "ids must be unique: every example needs its own stable id (deduplicate, "
                               "or renumber with dataclasses.replace(ds, ids=...))")


# tensors already found finite, by id: (weak reference, version counter at the check). An entry
# leaves with its tensor, and an in-place change bumps the version, so a hit is always the same
# unchanged tensor (a large cached pool handed to an estimator at every step is scanned once).
_KNOWN_FINITE: dict[int, tuple] = {}
_MEMO_MIN_NUMEL = 1 << 16


def _known_finite(v: torch.Tensor) -> bool:
    entry = _KNOWN_FINITE.get(id(v))
    return entry is not None and entry[0]() is v and entry[1] == v._version


def _remember_finite(v: torch.Tensor) -> None:
    key = id(v)
    try:
        ref = weakref.ref(v, lambda _r, key=key: _KNOWN_FINITE.pop(key, None))
    except TypeError:  # not weak-referenceable: just do not remember
        return
    _KNOWN_FINITE[key] = (ref, v._version)


def check_finite_inputs(inputs: dict, ids, what: str = "inputs") -> None:
    """Raise :class:`NonFiniteInputError` naming the ids of examples whose floating-point inputs
    hold NaN or inf (integer inputs such as token ids are always finite). A large tensor found
    finite once is not scanned again while it is alive and unchanged."""
    bad = None
    for key, v in inputs.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.numel() == 0:
            continue
        if _known_finite(v):
            continue
        finite = torch.isfinite(v.reshape(v.shape[0], -1)).all(1) if v.dim() else torch.isfinite(v).reshape(1)
        if not bool(finite.all()):
            rows = (~finite).nonzero().reshape(-1).cpu()
            bad = (key, rows)
            break
        if v.numel() >= _MEMO_MIN_NUMEL:
            _remember_finite(v)
    if bad is not None:
        key, rows = bad
        id_arr = _ids(ids)
        named = id_arr[rows.numpy()] if len(id_arr) else rows.numpy()
        raise NonFiniteInputError(f"{what}: {len(rows)} example(s) have NaN or infinite values in "
                                  f"{key!r}, ids {named[:10].tolist()}; fix or drop them (e.g. "
                                  "ds.exclude(ids)) before training or scoring")


def check_label_range(labels, num_classes: int, ids=None, what: str = "examples") -> None:
    """Raise :class:`LabelRangeError` naming example ids whose labels are not in ``[0, num_classes)``."""
    lab = _ids(labels)
    if len(lab) == 0:
        return
    bad = (lab < 0) | (lab >= int(num_classes))
    if bad.any():
        id_arr = _ids(ids) if ids is not None else np.arange(len(lab))
        raise LabelRangeError(f"{what}: {int(bad.sum())} label(s) outside the model's classes "
                              f"[0, {int(num_classes) - 1}], e.g. ids {id_arr[bad][:10].tolist()} with labels "
                              f"{lab[bad][:10].tolist()}; use labels of the model's task or build the "
                              f"model with num_classes={int(lab.max()) + 1}")


def check_batch(model, batch, what: str = "examples", unique: bool = False) -> None:
    """Finite inputs, labels within ``model.num_classes`` (when the model says), and (``unique``)
    unique ids; each failure raises its named error."""
    check_finite_inputs(batch.inputs, batch.ids, what)
    k = getattr(model, "num_classes", None)
    if isinstance(k, int):
        check_label_range(batch.labels, k, batch.ids, what)
    if unique:
        check_unique_ids(batch.ids, what)


def batch_fingerprint(batch) -> dict:
    """Content fingerprints of a :class:`repro.data.core.Batch`: ``{"labels": ..., "inputs": ...}``
    (sha256 prefixes over ids + labels, and over every input tensor's name, dtype, shape and bytes).
    Any change of a label or an input value changes them (a cache keyed on ids alone would not
    notice ``flip_labels``)."""
    def digest(parts) -> str:
        h = hashlib.sha256()
        for p in parts:
            h.update(p)
        return h.hexdigest()[:16]

    def raw(t: torch.Tensor) -> bytes:
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy().tobytes()

    ids = raw(batch.ids.to(torch.int64))
    labels = digest([ids, raw(batch.labels.to(torch.int64))])
    parts = [ids]
    for key in sorted(batch.inputs):
        v = batch.inputs[key]
        parts += [key.encode(), str(v.dtype).encode(), str(tuple(v.shape)).encode(), raw(v)]
    return {"labels": labels, "inputs": digest(parts)}
