"""Helpers shared by the peer-comparison benchmarks (timing, agreement, tables, output files).

Not part of the library: benchmarks are scripts, run with ``make bench`` (see
results/benchmarks/README.md).
"""
from __future__ import annotations

import copy
import csv
import ctypes
import gc
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from repro.results import environment, git_commit


def peer_version(name: str) -> str | None:
    """Installed version of a peer library, or None when it is not installed (``pip install -e
    ".[bench]"`` installs captum and dattri)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def require_peer(name: str):
    """Import a peer library or exit with an actionable message."""
    try:
        return __import__(name)
    except ImportError:
        raise SystemExit(f"{name} is not installed: run `make bench` or "
                         f"`.venv/bin/pip install -e '.[bench]'` first") from None


def image_tensors(model, ds, device):
    """``(x, y)`` tensors of an image dataset, the positional form the peers take."""
    b = model.encode(ds)
    return b.inputs["pixel_values"].to(device), b.labels.to(device)


class PeerCheckpoints:
    """Our checkpoints in the peers' conventions: captum takes file paths and a loading function
    that returns the learning rate; dattri takes any checkpoint objects and a loading function that
    returns the model. ``lr``: the learning rate captum gets (default: each checkpoint's own)."""

    def __init__(self, checkpoints, lr: float | None = None):
        self.checkpoints = list(checkpoints)
        self.lr = lr
        self.by_path = {str(c.path): c for c in self.checkpoints}
        self.paths = list(self.by_path)

    def captum_load(self, model, path):
        """captum's ``checkpoints_load_func``: load the weights (eval mode), return the lr."""
        ck = self.by_path[str(path)]
        ck.load_into(model)
        model.eval()
        return ck.lr if self.lr is None else self.lr

    @staticmethod
    def dattri_load(model, ck):
        """dattri's ``checkpoints_load_func``: load the weights, return the model in eval mode."""
        ck.load_into(model)
        return model.eval()


def peer_copy(model, device, keep=None):
    """A copy of ``model`` for a peer, in eval mode; with ``keep`` (parameter names) every other
    parameter is frozen. dattri's ``layer_name`` alone still differentiates (and re-flattens) every
    parameter of the model; dattri keeps only parameters that require grad, so freezing the others
    gives the same scores (checked by the agreement columns) at a fraction of the cost."""
    model = copy.deepcopy(model).to(device).eval()
    if keep is not None:
        for n, p in model.named_parameters():
            p.requires_grad_(n in keep)
    return model


def dattri_tracin(task, weights, layer_name, device, train_loader, test_loader) -> torch.Tensor:
    """dattri's exact TracIn scores ``(n_test, n_train)``: its default random projection to 512
    dimensions is switched off, and its ``(n_train, n_test)`` result transposed."""
    from dattri.algorithm.tracin import TracInAttributor

    att = TracInAttributor(task, weight_list=torch.tensor(weights), normalized_grad=False,
                           layer_name=layer_name, device=str(device))
    att.projector_kwargs = None
    return att.attribute(train_loader, test_loader).T


def loader(*tensors, batch_size: int | None = None):
    """An unshuffled DataLoader over tensors (default: everything in one batch)."""
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tensors),
                                       batch_size=batch_size or len(tensors[0]), shuffle=False)


def timed(fn, repeat: int = 1):
    """``(result, best wall seconds of repeat runs)``."""
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def _trim_heap():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed_peak(fn, device=None):
    """``(result, wall seconds, peak memory growth in MB)`` of one call. CPU: resident-set growth
    sampled every 2 ms from ``/proc/self/statm`` after returning freed heap memory to the OS; CUDA:
    ``torch.cuda.max_memory_allocated`` growth."""
    gc.collect()
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _trim_heap()
        base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    sampler = None if cuda else threading.Thread(target=sample, daemon=True)
    if sampler:
        sampler.start()
    t0 = time.perf_counter()
    try:
        out = fn()
        if cuda:
            torch.cuda.synchronize()
    finally:
        secs = time.perf_counter() - t0
        stop.set()
        if sampler:
            sampler.join()
    if cuda:
        peak[0] = torch.cuda.max_memory_allocated()
    else:
        peak[0] = max(peak[0], _rss_bytes())
    return out, secs, (peak[0] - base) / 2**20


def agreement(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    """How far two score matrices of the same shape are apart: ``max_rel_diff`` = max |a - b| /
    max |b| (0 = identical, relative to the scale of the reference), Spearman of all entries, and
    the mean over rows (test points) of the top-10 overlap of the largest scores."""
    a = ours.detach().double().reshape(len(ours), -1).cpu()
    b = ref.detach().double().reshape(len(ref), -1).cpu()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
    rho = float(stats.spearmanr(a.reshape(-1).numpy(), b.reshape(-1).numpy()).statistic)
    k = min(10, a.shape[1])
    top = np.mean([len(set(a[i].topk(k).indices.tolist()) & set(b[i].topk(k).indices.tolist())) / k
                   for i in range(len(a))])
    return {"max_rel_diff": rel, "spearman": rho, "top10_overlap": float(top)}


def fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1000 or abs(x) < 1e-3:
            return f"{x:.2e}"
        return f"{x:.4g}"
    return str(x)


def format_table(rows: list[dict], cols: list[str] | None = None) -> str:
    """Rows as an aligned text table (columns: the union of the rows' keys, in first-seen order)."""
    if cols is None:
        cols = []
        for r in rows:
            cols += [c for c in r if c not in cols]
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(x.ljust(w) for x, w in zip(cell, widths)) for cell in cells]
    return "\n".join(out)


def run_environment(threads: int | None = None, **extra) -> dict:
    """Provenance of a benchmark run: device, library versions (ours and the peers'), threads and
    load average."""
    if threads:
        torch.set_num_threads(threads)
    env = environment()
    env["versions"].update({p: peer_version(p) for p in ("captum", "dattri")})
    env["torch_threads"] = torch.get_num_threads()
    env["git_commit"] = git_commit(Path(__file__).resolve().parents[1])
    env["loadavg_start"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env.update(extra)
    return env


def finish(rows: list[dict], env: dict, out: Path | None, t_start: float, cols=None, title: str = ""):
    """Print the table and write it (``.csv``: the rows; ``.json``: rows and environment)."""
    env["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["total_seconds"] = round(time.perf_counter() - t_start, 1)
    print()
    if title:
        print(title)
    print(format_table(rows, cols))
    print(f"\n(total {env['total_seconds']} s on {env['device']}; load average start "
          f"{env['loadavg_start']}, end {env['loadavg_end']})", flush=True)
    if out is None:
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps({"environment": env, "rows": rows}, indent=2, default=str) + "\n")
    else:
        keys = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        out.with_suffix(".env.json").write_text(json.dumps(env, indent=2, default=str) + "\n")
    print(f"wrote {out}")
