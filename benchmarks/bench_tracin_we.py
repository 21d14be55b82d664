"""TracIn-WE: the sparse shared-token route vs the dense embedding-gradient route vs TracIn-last.

Same model (MiniLM classifier, one checkpoint), same inputs, one process, measured side by side:

* ``we_sparse``: :class:`repro.influence.tracin_we.TracInWE` (one backward per chunk for the
  position gradients, token rows summed per example, pairwise scoring grouped by token);
* ``we_dense``: what a general per-example-gradient library does: the full gradient of the
  ``word_embeddings.weight`` matrix (30522 x 384 floats = 47 MB per example) for every example
  (``per_example_grads(params="embeddings")``), then dense dot products. Affordable only for a few
  examples, so it runs on the first ``--dense-n`` train / ``--dense-test`` test examples, its
  scores are checked against ``we_sparse`` on those pairs, and its cost is extrapolated linearly to
  the full sizes (``*_est`` columns);
* ``tracin_last``: :class:`repro.influence.TracInCP` with ``params="last"`` (factorised fast path).

Time is wall-clock (fit = train rows, score = test rows + pairwise scores). Memory is the peak
resident-set growth during the step, sampled from ``/proc/self/statm`` every 2 ms, after giving
freed heap memory back to the OS with glibc's ``malloc_trim`` (CPU), or
``torch.cuda.max_memory_allocated`` growth (CUDA); ``stored_MB`` is the size of the kept train rows.
A shared machine makes the numbers noisy (the load average is printed).

    python benchmarks/bench_tracin_we.py [--n-train 64] [--n-test 8] [--dense-n 4] [--threads 2] [--out f.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import tempfile
import threading
import time

import torch

from repro.data import load
from repro.influence import TracInCP, per_example_grads
from repro.influence.tracin_we import TracInWE
from repro.models import text_classifier
from repro.train import TrainConfig, Trainer, list_checkpoints
from repro.utils import resolve_device

MB = 2 ** 20


def _release_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so that the resident set before
    a step does not already hold what an earlier step freed (which would hide the step's growth)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measurements of later steps may read low
        pass


class Peak:
    """Peak memory growth of the enclosed block: CUDA allocator peak on CUDA, else RSS sampled from
    /proc/self/statm (falls back to the ru_maxrss delta where /proc is missing)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.peak_bytes = 0
        _release_freed_memory()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.proc = os.path.exists("/proc/self/statm")
        if not self.proc:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            return self
        self.base = self._rss()
        self.max = self.base
        self.stop = threading.Event()

        def sample():
            while not self.stop.is_set():
                self.max = max(self.max, self._rss())
                time.sleep(0.002)
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self.base
        elif not self.proc:
            self.peak_bytes = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base)
        else:
            self.stop.set()
            self.thread.join()
            self.peak_bytes = max(self.max, self._rss()) - self.base
        return False


def timed(device, fn):
    with Peak(device) as p:
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return out, dt, p.peak_bytes / MB


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-test", type=int, default=8)
    ap.add_argument("--dense-n", type=int, default=4, help="train examples for the dense route")
    ap.add_argument("--dense-test", type=int, default=2, help="test examples for the dense route")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--dataset", default="snli")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = resolve_device(args.device)

    train_ds = load(args.dataset, n=args.n_train, seed=0)
    test_ds = load(args.dataset, split="test", n=args.n_test, seed=0)
    model = text_classifier(num_classes=train_ds.num_classes, max_length=args.max_length, seed=0)
    with tempfile.TemporaryDirectory() as run_dir:
        # one short fine-tuning epoch gives a real checkpoint for all three routes
        Trainer(model, TrainConfig(epochs=1, batch_size=16, lr=1e-4, optimizer="adamw", progress=False,
                                   device=str(device)), run_dir).fit(train_ds.subset(range(min(16, args.n_train))))
        ck = list_checkpoints(run_dir)[-1]
        ck.load_into(model)
        model.eval()
        train, test = model.encode(train_ds), model.encode(test_ds)
        n_tr, n_te = len(train), len(test)
        rows = []

        # warm-up (lazy initialisation, allocator caches, thread pools) outside the measurements
        warm = train[torch.arange(min(2, n_tr))]
        TracInWE(model, ck, device=device, progress=False).fit(warm).scores(warm)
        TracInCP(model, ck, params="last", device=device, progress=False).fit(warm).scores(warm)
        per_example_grads(model, warm[torch.arange(1)], "embeddings", method="loop", device=device)

        # ---------------- TracIn-WE, sparse
        we = TracInWE(model, ck, lr_weighting=False, exclude_special=False, device=device, progress=False)
        _, fit_s, fit_mb = timed(device, lambda: we.fit(train))
        s_sparse, sc_s, sc_mb = timed(device, lambda: we.scores(test))
        stored = sum(r.rows.numel() * 4 + r.ex.numel() * 16 for r in we._rows) / MB
        rows.append(dict(route="we_sparse", n_train=n_tr, n_test=n_te, fit_s=fit_s, score_s=sc_s,
                         total_s=fit_s + sc_s, peak_MB=max(fit_mb, sc_mb), stored_MB=stored,
                         rows_per_example=len(we._rows[0]) / n_tr))
        # Top-10 variant
        we10 = TracInWE(model, ck, lr_weighting=False, top_k_tokens=10, device=device, progress=False)
        _, fit10, mb10 = timed(device, lambda: we10.fit(train))
        _, sc10, mb10b = timed(device, lambda: we10.scores(test))
        rows.append(dict(route="we_sparse_top10", n_train=n_tr, n_test=n_te, fit_s=fit10, score_s=sc10,
                         total_s=fit10 + sc10, peak_MB=max(mb10, mb10b),
                         stored_MB=sum(r.rows.numel() * 4 + r.ex.numel() * 16 for r in we10._rows) / MB,
                         rows_per_example=len(we10._rows[0]) / n_tr))

        # ---------------- TracIn on the last layer (fast path)
        last = TracInCP(model, ck, params="last", lr_weighting=False, device=device, progress=False)
        _, lfit, lmb = timed(device, lambda: last.fit(train))
        _, lsc, lmb2 = timed(device, lambda: last.scores(test))
        rows.append(dict(route="tracin_last", n_train=n_tr, n_test=n_te, fit_s=lfit, score_s=lsc,
                         total_s=lfit + lsc, peak_MB=max(lmb, lmb2),
                         stored_MB=sum(v.numel() * 4 for v in last._rows[0].values()) / MB))

        # ---------------- dense embedding-gradient route on a few examples
        dn, dt_ = min(args.dense_n, n_tr), min(args.dense_test, n_te)
        tr_small, te_small = train[torch.arange(dn)], test[torch.arange(dt_)]
        G_tr, dfit, dmb = timed(device, lambda: per_example_grads(model, tr_small, "embeddings", method="loop",
                                                                  chunk_size=1, device=device))

        def dense_scores():
            g_te = per_example_grads(model, te_small, "embeddings", method="loop", chunk_size=1, device=device)
            return g_te @ G_tr.T
        s_dense, dsc, dmb2 = timed(device, dense_scores)
        ref = s_sparse[:dt_, :dn]
        rel_err = float((s_dense - ref).abs().max() / ref.abs().max())
        per_fit, per_test = dfit / dn, dsc / dt_
        mb_per_row = G_tr.numel() * 4 / dn / MB
        rows.append(dict(route="we_dense", n_train=dn, n_test=dt_, fit_s=dfit, score_s=dsc, total_s=dfit + dsc,
                         peak_MB=max(dmb, dmb2), stored_MB=G_tr.numel() * 4 / MB,
                         max_rel_diff_vs_sparse=rel_err))
        rows.append(dict(route="we_dense_est", n_train=n_tr, n_test=n_te, fit_s=per_fit * n_tr,
                         score_s=per_test * n_te, total_s=per_fit * n_tr + per_test * n_te,
                         peak_MB=None, stored_MB=mb_per_row * n_tr))

    sparse = rows[0]
    load_avg = f" | load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(f"# {platform.platform()} | torch {torch.__version__} | device {device} | threads "
          f"{torch.get_num_threads()}{load_avg}")
    cols = ["route", "n_train", "n_test", "fit_s", "score_s", "total_s", "peak_MB", "stored_MB"]
    print(" ".join(f"{c:>16}" for c in cols))
    for r in rows:
        print(" ".join(f"{r.get(c):>16.3f}" if isinstance(r.get(c), float) else f"{str(r.get(c)):>16}" for c in cols))
    dense_est = rows[-1]
    print(f"\nsparse rows per train example: {sparse['rows_per_example']:.1f} (of {args.max_length} positions)")
    print(f"dense vs sparse scores on {dn}x{dt_} shared pairs: max rel diff {rows[-2]['max_rel_diff_vs_sparse']:.2e}")
    print(f"dense/sparse (estimated at n_train={n_tr}, n_test={n_te}): "
          f"time x{dense_est['total_s'] / sparse['total_s']:.1f}, "
          f"stored train rows x{dense_est['stored_MB'] / max(sparse['stored_MB'], 1e-9):.0f}")
    print(f"dense per example: {per_fit:.3f} s and {mb_per_row:.1f} MB; sparse per train example: "
          f"{sparse['fit_s'] / n_tr:.4f} s and {sparse['stored_MB'] / n_tr * 1024:.1f} KB")
    print(f"sparse/tracin_last: time x{sparse['total_s'] / rows[2]['total_s']:.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
