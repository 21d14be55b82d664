"""On-disk cache of per-example gradient rows (or other per-example tensors), resumable.

A cache folder holds ``stamp.json`` (everything the rows depend on: model spec, checkpoint file and
its fingerprint, parameter names, projection, target, number of rows, a fingerprint of their ids
and content fingerprints of the labels and the inputs, rows per chunk) and chunk files ``chunk-000000.safetensors`` ... with the tensors of rows
``[i * chunk_rows, (i + 1) * chunk_rows)`` and their ``ids``. Every file is written atomically
(temp file + rename), so an interrupted computation leaves only complete chunks; running it again
reuses them and computes the missing ones. Opening a folder whose stamp differs raises
:class:`repro.errors.ConfigMismatchError` naming the fields that differ: gradients of different
configurations are never mixed.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from repro.errors import ConfigMismatchError
from repro.utils import atomic_write_json, atomic_write_with

__all__ = ["GradientCache", "file_fingerprint", "ids_fingerprint", "cached_rows"]

_FP_MEMO: dict[tuple, str] = {}


def file_fingerprint(path: str | Path) -> dict:
    """``{"file", "size", "sha256"}`` of a file (sha256 memoised per path, size and mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FP_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FP_MEMO[key] = h.hexdigest()
    return {"file": path.name, "size": st.st_size, "sha256": _FP_MEMO[key]}


def ids_fingerprint(ids) -> str:
    """sha256 prefix of the int64 ids in order."""
    if isinstance(ids, torch.Tensor):
        ids = ids.cpu().numpy()
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


class GradientCache:
    """A stamped folder of row chunks.

    Args:
        folder: the cache folder (created if missing).
        stamp: JSON-able dict of everything the rows depend on. It must contain ``n`` (rows) and
            ``chunk_rows``; an existing folder must carry an equal stamp.
    """

    def __init__(self, folder: str | Path, stamp: dict):
        self.folder = Path(folder)
        self.stamp = _jsonable(stamp)
        for key in ("n", "chunk_rows"):
            if key not in self.stamp:
                raise ValueError(f"a cache stamp needs {key!r}")
        self.n = int(self.stamp["n"])
        self.chunk_rows = int(self.stamp["chunk_rows"])
        if self.chunk_rows <= 0:
            raise ValueError("chunk_rows must be positive")
        path = self.folder / "stamp.json"
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ConfigMismatchError(f"cache stamp {path} cannot be read ({type(e).__name__}: {e}); the "
                                          "folder's rows cannot be trusted: delete the folder or use another "
                                          "cache_dir") from None
            if not isinstance(old, dict):
                raise ConfigMismatchError(f"cache stamp {path} does not hold a JSON object; delete the folder")
            if old != self.stamp:
                keys = sorted(set(old) | set(self.stamp))
                diff = [k for k in keys if old.get(k) != self.stamp.get(k)]
                detail = "; ".join(f"{k}: cached {_short(old.get(k))} != now {_short(self.stamp.get(k))}"
                                   for k in diff)
                hint = ""
                if {"labels", "inputs"} & set(diff) and "labels" not in old:
                    hint = (" The cache was written by an older repro whose stamps held only ids, so it "
                            "cannot be trusted to match this data.")
                elif {"labels", "inputs"} & set(diff):
                    hint = (" The training data changed under the same ids (e.g. labels flipped by "
                            "flip_labels, or other inputs): its cached gradients would give the old "
                            "data's scores.")
                raise ConfigMismatchError(
                    f"cache folder {self.folder} holds rows for another configuration ({detail}).{hint} "
                    "Use another cache_dir (one per dataset version) or delete this folder")
        else:
            atomic_write_json(path, self.stamp)

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n / self.chunk_rows)

    def rows(self, i: int) -> tuple[int, int]:
        return i * self.chunk_rows, min(self.n, (i + 1) * self.chunk_rows)

    def chunk_path(self, i: int) -> Path:
        return self.folder / f"chunk-{i:06d}.safetensors"

    def load(self, i: int, ids: torch.Tensor | None = None) -> dict[str, torch.Tensor] | None:
        """Tensors of chunk ``i`` (without ``ids``), or None when the chunk is missing, unreadable
        or holds other ids than ``ids``."""
        path = self.chunk_path(i)
        if not path.exists():
            return None
        try:
            data = load_file(str(path))
        except Exception:  # a damaged file: recompute it
            return None
        stored = data.pop("ids", None)
        lo, hi = self.rows(i)
        if stored is None or len(stored) != hi - lo:
            return None
        if ids is not None and not torch.equal(stored, ids.to(stored.dtype).cpu()):
            return None
        return data

    def save(self, i: int, tensors: dict[str, torch.Tensor], ids: torch.Tensor) -> None:
        lo, hi = self.rows(i)
        if len(ids) != hi - lo:
            raise ValueError(f"chunk {i} must hold {hi - lo} rows, got {len(ids)}")
        state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        state["ids"] = torch.as_tensor(ids, dtype=torch.int64).contiguous().cpu()
        atomic_write_with(self.chunk_path(i), lambda tmp: save_file(state, tmp))


def _short(v, limit: int = 80) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= limit else s[:limit] + "..."


def cached_rows(n: int, ids: torch.Tensor, compute: Callable[[int, int], dict[str, torch.Tensor]],
                chunk_rows: int, cache: GradientCache | None = None, bar=None) -> dict[str, torch.Tensor]:
    """Rows ``0..n`` of one or more per-example tensors, computed chunk by chunk with
    ``compute(lo, hi) -> {name: (hi - lo, ...)}``; with a cache, complete chunks are loaded and the
    others computed and saved (so an interrupted run resumes). ``bar`` is advanced by the rows done.
    """
    if cache is not None:
        if cache.n != n or cache.chunk_rows != chunk_rows:
            raise ValueError("cache does not match n / chunk_rows")
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(math.ceil(n / chunk_rows)):
        lo, hi = i * chunk_rows, min(n, (i + 1) * chunk_rows)
        got = cache.load(i, ids[lo:hi]) if cache is not None else None
        if got is None:
            got = {k: v.detach().cpu() for k, v in compute(lo, hi).items()}
            if cache is not None:
                cache.save(i, got, ids[lo:hi])
        for k, v in got.items():
            parts.setdefault(k, []).append(v)
        if bar is not None:
            bar.update(hi - lo)
    return {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in parts.items()}
