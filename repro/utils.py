"""Small shared helpers: atomic file writes, devices, progress bars, forked workers."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def set_default_mode(path: str | Path) -> None:
    """Give a file (0666) or folder (0777) the permissions the process umask allows, as ``open``
    and ``mkdir`` would: temp files and folders are created 0600 / 0700, which would otherwise
    stay on the final results and checkpoints."""
    path = Path(path)
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~_UMASK)


def fsync_file(path: str | Path) -> None:
    """Flush a written file to disk (best effort: some file systems do not support it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_with(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Write ``path`` by calling ``writer(tmp_path)`` on a temp file in the same folder, then
    renaming it into place: readers never see a half-written file, and a failed write leaves
    nothing behind. The file gets the umask's permissions (not the temp file's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        set_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return atomic_write_with(path, w)


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from repro.errors import InvalidParameterError
        raise InvalidParameterError(f"device={device!r} but CUDA is not available here; use device='auto' "
                                    "(CUDA when available, else CPU) or 'cpu'")
    return dev


def progress_mode() -> str:
    """How progress bars render: ``$REPRO_PROGRESS`` (``widget``, ``text``, ``log`` or ``off``) if set,
    else ``widget`` in an interactive Jupyter front end (JupyterLab, Notebook), ``log`` in a kernel
    that nobody watches (papermill, nbmake, nbconvert: their execute requests do not allow stdin),
    and ``text`` in a terminal or script."""
    import os

    mode = os.environ.get("REPRO_PROGRESS", "").strip().lower()
    if mode in ("widget", "text", "log", "off"):
        return mode
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
    except ImportError:
        kernel = None
    if kernel is None:
        return "text"
    return "widget" if getattr(kernel, "_allow_stdin", False) else "log"


def progress(iterable=None, **kwargs):
    """A tqdm progress bar: a widget in JupyterLab, a text bar in a terminal, and in a notebook
    executed headless (papermill, nbmake) a quiet text bar: shown only for loops longer than 5 s,
    refreshed at most every 30 s, so the saved notebook holds a few lines, not one per update
    (``repro run`` also merges them). ``REPRO_PROGRESS=off`` hides every bar (see
    :func:`progress_mode`)."""
    mode = progress_mode()
    if mode == "off":
        kwargs["disable"] = True
    if mode == "widget":
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm
        except ImportError:
            from tqdm import tqdm
            mode = "log"
    else:
        from tqdm import tqdm
    if mode == "log":
        import sys

        class _Quiet(tqdm):  # postfix / description changes wait for the next timed refresh
            def set_postfix(self, ordered_dict=None, refresh=True, **kw):
                super().set_postfix(ordered_dict, refresh=False, **kw)

            def set_description(self, desc=None, refresh=True):
                super().set_description(desc, refresh=False)

        tqdm = _Quiet
        kwargs.setdefault("file", sys.stderr)
        kwargs.setdefault("mininterval", 30.0)
        kwargs.setdefault("maxinterval", 120.0)
        kwargs.setdefault("delay", 5.0)
        kwargs.setdefault("ncols", 100)
    elif mode == "text":
        kwargs.setdefault("dynamic_ncols", True)
        kwargs.setdefault("mininterval", 1.0)
    return tqdm(iterable, **kwargs)


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in blocks (constant memory)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


_FORK_FN: dict = {}  # what forked workers inherit: the function (and the data it closes over)


def _fork_init() -> None:
    torch.set_num_threads(1)


def _fork_call(item):
    return _FORK_FN["fn"](item)


def fork_map(fn: Callable[[Any], Any], items: Iterable, workers: int = 1, chunksize: int = 1,
             on_result: Callable[[Any], None] | None = None) -> list:
    """``[fn(item) for item in items]``, in ``workers`` forked processes (each single-threaded)
    when ``workers > 1`` and the platform can fork, else here. Workers inherit ``fn`` and whatever
    it closes over (models, large cached tensors: shared copy-on-write, never pickled); only the
    items and the results cross between processes. Results come back in item order;
    ``on_result(result)`` is called as each arrives (e.g. to advance a progress bar)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    items = list(items)
    out = []
    if int(workers) <= 1 or len(items) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        for item in items:
            out.append(fn(item))
            if on_result is not None:
                on_result(out[-1])
        return out
    _FORK_FN["fn"] = fn
    try:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(int(workers), len(items)), mp_context=ctx, initializer=_fork_init) as ex:
            for result in ex.map(_fork_call, items, chunksize=max(1, int(chunksize))):
                out.append(result)
                if on_result is not None:
                    on_result(result)
    finally:
        _FORK_FN.clear()
    return out
