"""Throughput of the per-example gradient engine and of TracInCP, next to training throughput.

For the VGG (width 0.25, 28-pixel Fashion-MNIST) and the MiniLM text classifier (max_length 64,
SNLI), measured side by side in one process:

* training: examples/s of forward + backward + optimizer step with :class:`repro.train.Trainer`
  (2 epochs, the run's checkpoints feed TracInCP below);
* per-example gradients (``repro.influence.per_example_grads``): examples/s for the last layer,
  the word embeddings (text only) and all parameters, with ``hooks`` (where it applies), ``vmap``
  and the ``loop``;
* TracInCP: train examples x checkpoints per second of ``fit`` and test examples x checkpoints
  per second of ``scores``, for the last-layer fast path and for all parameters.

``vs_train`` is the row's throughput divided by the training throughput of the same model (how
many examples per example-of-training-time). Numbers are wall-clock on whatever CPU/GPU runs this;
a shared machine makes them noisy (the load average is printed). On a 2-core machine shared with
other processes, torch's 2-thread kernels spin-wait and can run 10-100x slower; ``--threads 1``
gives stable numbers there. Each row is the best of ``--repeat`` runs (training: one run after an
untimed warm-up epoch). Sizes are small so that the whole script takes a few minutes on 2 CPU
cores; ``--scale`` multiplies them.

    python benchmarks/bench_influence.py [--out bench.csv|bench.json] [--threads N] [--scale 1.0]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import format_table, timed
from repro.data import load
from repro.influence import TracInCP, per_example_grads
from repro.influence.grads import choose_method
from repro.models import text_classifier, vgg
from repro.train import TrainConfig, Trainer, list_checkpoints
from repro.utils import resolve_device


REPEAT = 2


def _timed(fn, repeat=None):
    """Result and the best wall time of ``repeat`` (default ``--repeat``) runs (the first run pays
    one-off costs: oneDNN primitive creation per shape, lazy imports, allocator growth)."""
    return timed(fn, repeat or REPEAT)


def _row(model, task, params, method, n, seconds, unit, train_tput=None):
    tput = n / seconds
    return {"model": model, "task": task, "params": params, "method": method, "n": n,
            "seconds": round(seconds, 3), "throughput": round(tput, 2), "unit": unit,
            "vs_train": None if train_tput is None else round(tput / train_tput, 4)}


def bench_model(name, model, train_ds, test_ds, cfg, grad_sizes, tracin_sizes, device, log):
    rows = []
    with tempfile.TemporaryDirectory() as run_dir:
        # ---- training throughput (same model, same run), after an untimed warm-up epoch
        import copy
        import dataclasses

        Trainer(copy.deepcopy(model), dataclasses.replace(cfg, epochs=1)).fit(train_ds)
        res, secs = _timed(lambda: Trainer(model, cfg, run_dir).fit(train_ds), repeat=1)
        n_seen = len(train_ds) * cfg.epochs
        train_tput = n_seen / secs
        rows.append(_row(name, "train (fwd+bwd+step)", "trainable", cfg.optimizer, n_seen, secs,
                         "examples/s"))
        rows[-1]["vs_train"] = 1.0
        log(rows[-1])
        cks = list_checkpoints(run_dir)
        cks[-1].load_into(model)
        model.eval()
        batch = model.encode(train_ds)
        test = model.encode(test_ds)

        # ---- per-example gradients
        for params, n in grad_sizes.items():
            auto = choose_method(model, device, "auto", model.param_group(params))
            for method in ("hooks", "vmap", "loop"):
                try:
                    choose_method(model, device, method, model.param_group(params))
                except ValueError:  # hooks: no closed form for these parameters
                    continue
                sub = batch[torch.arange(min(n, len(batch)))]
                _, secs = _timed(lambda: per_example_grads(model, sub, params, method=method, device=device))
                r = _row(name, "per-example grads", params, method + (" (auto)" if method == auto else ""),
                         len(sub), secs, "examples/s", train_tput)
                rows.append(r)
                log(r)

        # ---- TracInCP (all checkpoints of the run)
        for params, (n_train, n_test) in tracin_sizes.items():
            tr = batch[torch.arange(min(n_train, len(batch)))]
            te = test[torch.arange(min(n_test, len(test)))]
            t = TracInCP(model, cks, params=params, device=device, progress=False)
            label = "fast last layer" if t.fast else f"grads ({choose_method(model, device, 'auto', t.names)})"
            _, secs = _timed(lambda: t.fit(tr))
            r = _row(name, "TracInCP fit", params, label, len(tr) * len(cks), secs,
                     "train ex x ckpt/s", train_tput)
            rows.append(r)
            log(r)
            _, secs = _timed(lambda: t.scores(te))
            r = _row(name, f"TracInCP scores (vs {len(tr)} train)", params, label, len(te) * len(cks),
                     secs, "test ex x ckpt/s", train_tput)
            rows.append(r)
            log(r)
            del t
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="write the table as .csv or .json")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the example counts")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", choices=["vgg", "text"], default=None)
    ap.add_argument("--repeat", type=int, default=2, help="best of this many timed runs")
    args = ap.parse_args(argv)
    global REPEAT
    REPEAT = max(1, args.repeat)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    s = lambda n: max(2, int(round(n * args.scale)))  # noqa: E731
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
           "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    print("environment:", json.dumps(env), flush=True)
    log = lambda r: print("  ", {k: r[k] for k in ("model", "task", "params", "method", "throughput")},  # noqa: E731
                          flush=True)
    rows = []
    t_start = time.perf_counter()
    if args.only in (None, "vgg"):
        print("VGG-11 width 0.25, Fashion-MNIST 28px", flush=True)
        model = vgg(num_classes=10, width=0.25, seed=0)
        cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, progress=False, device=str(device), seed=0)
        rows += bench_model("vgg-w0.25", model, load("fashion_mnist", n=s(256), seed=0),
                            load("fashion_mnist", split="test", n=s(64), seed=0), cfg,
                            grad_sizes={"last": s(256), "all": s(128)},
                            tracin_sizes={"last": (s(256), s(64)), "all": (s(128), s(32))},
                            device=device, log=log)
    if args.only in (None, "text"):
        print("MiniLM-L6 text classifier, SNLI, max_length 64", flush=True)
        model = text_classifier(num_classes=3, max_length=64, seed=0)
        cfg = TrainConfig(epochs=2, batch_size=16, lr=5e-5, optimizer="adamw", progress=False,
                          device=str(device), seed=0)
        rows += bench_model("minilm-L64", model, load("snli", n=s(64), seed=0),
                            load("snli", split="test", n=s(16), seed=0), cfg,
                            grad_sizes={"last": s(64), "embeddings": s(12), "all": s(12)},
                            tracin_sizes={"last": (s(64), s(16)), "all": (s(6), s(4))},
                            device=device, log=log)
    env["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["total_seconds"] = round(time.perf_counter() - t_start, 1)
    print()
    print(format_table(rows, ["model", "task", "params", "method", "n", "seconds", "throughput", "unit",
                              "vs_train"]))
    print(f"\n(total {env['total_seconds']} s; load average start {env['loadavg_start']}, "
          f"end {env['loadavg_end']})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".json":
            args.out.write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
        else:
            import csv

            with open(args.out, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
