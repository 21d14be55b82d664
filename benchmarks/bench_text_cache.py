#!/usr/bin/env python3
"""Cheaper NLI training on the CPU, side by side in one run (a script, not a test).

The MiniLM classifier with its top 2 layers trained (``train_top_layers=2``, ``frozen_in_eval=True``:
the frozen part runs without dropout in every variant, so all of them train the same model) is
trained for a few epochs on a few hundred SNLI pairs with the Trainer, and the training throughput
(pairs per second, wall clock) is printed for

* **plain**: token ids, the plain seeded shuffle (each mini-batch padded to its longest pair);
* **group_by_length**: token ids, length-bucketed mini-batches (``TrainConfig(group_by_length=True)``);
* **cached**: the output of the frozen embeddings + bottom 4 layers computed once
  (``model.cache_frozen``), then only the top 2 layers, pooler and head run per step; the one-off
  caching time is printed separately and also counted in an amortised rate;
* **cached + group_by_length**: both.

    python benchmarks/bench_text_cache.py [--n 300] [--epochs 2] [--batch-size 16] [--max-length 128]
                                          [--threads 1]

It prints the torch thread count it used. About 3 minutes of one CPU core with the defaults; use
e.g. ``--n 96 --epochs 1`` for a quick check.
"""
from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="SNLI training pairs")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--top-layers", type=int, default=2)
    ap.add_argument("--group-batches", type=int, default=50, help="mini-batches per length-sorted mega-batch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    from repro.data import load
    from repro.models import text_classifier
    from repro.train import TrainConfig, Trainer

    ds = load("snli", n=args.n, seed=args.seed)

    def fresh():
        return text_classifier(num_classes=3, max_length=args.max_length, train_top_layers=args.top_layers,
                               frozen_in_eval=True, seed=args.seed)

    def config(grouped: bool) -> TrainConfig:
        return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-4, optimizer="adamw",
                           seed=args.seed, progress=False, group_by_length=grouped,
                           length_group_batches=args.group_batches)

    probe = fresh()
    tokens = probe.encode(ds)
    lengths = tokens.inputs["attention_mask"].sum(1).float()
    print(f"torch threads: {torch.get_num_threads()} (--threads {args.threads}); {len(ds)} SNLI pairs, "
          f"{args.epochs} epoch(s), batch {args.batch_size}, max_length {args.max_length}, top "
          f"{args.top_layers} of {len(probe.encoder.encoder.layer)} layers trained; pair length mean "
          f"{lengths.mean():.1f}, max {int(lengths.max())} tokens")

    rows = []
    pairs = len(ds) * args.epochs
    for name, grouped, cached in [("plain", False, False), ("group_by_length", True, False),
                                  ("cached", False, True), ("cached + group_by_length", True, True)]:
        model = fresh()
        t0 = time.perf_counter()
        data = model.cache_frozen(ds, batch_size=32) if cached else model.encode(ds)
        cache_s = time.perf_counter() - t0 if cached else 0.0
        t1 = time.perf_counter()
        res = Trainer(model, config(grouped)).fit(data)
        train_s = time.perf_counter() - t1
        rows.append((name, pairs / train_s, pairs / (train_s + cache_s), train_s, cache_s,
                     res.final["train_loss"]))

    base = rows[0][1]
    print(f"\n{'variant':<26}{'pairs/s':>9}{'amortised':>11}{'speed-up':>10}{'train s':>9}{'cache s':>9}"
          f"{'loss':>8}")
    for name, rate, amortised, train_s, cache_s, loss in rows:
        print(f"{name:<26}{rate:>9.1f}{amortised:>11.1f}{rate / base:>9.2f}x{train_s:>9.1f}{cache_s:>9.1f}"
              f"{loss:>8.3f}")
    print("\namortised: pairs/s counting the one-off caching in this run (it is paid once for all epochs "
          "and reused by influence computations)")


if __name__ == "__main__":
    main()
