#!/usr/bin/env python3
"""Training and inference throughput of the two models on this machine (a script, not a test).

Prints examples/s for a training epoch (forward + backward + optimizer step through the Trainer) and
for inference, for the VGG at several widths (Fashion-MNIST, 28 px) and the MiniLM classifier at
sequence lengths 64 and 128 (SNLI pairs), all measured in this one run.

    python benchmarks/bench_train.py [--out results/benchmarks/train_throughput.csv] [--quick]
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from repro.data import load
from repro.models import text_classifier, vgg
from repro.results import environment
from repro.train import TrainConfig, Trainer, predict


def measure(model, train, cfg, repeats: int = 1) -> tuple[float, float]:
    Trainer(model, TrainConfig(**{**cfg.__dict__, "epochs": 1}), None).fit(train.subset(slice(0, cfg.batch_size)))
    t0 = time.perf_counter()
    for _ in range(repeats):
        Trainer(model, cfg, None).fit(train)
    train_rate = repeats * cfg.epochs * len(train) / (time.perf_counter() - t0)
    batch = model.encode(train)
    t0 = time.perf_counter()
    predict(model, batch, batch_size=128)
    infer_rate = len(train) / (time.perf_counter() - t0)
    return train_rate, infer_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="CSV file for the table")
    ap.add_argument("--quick", action="store_true", help="smaller inputs (about 1 minute)")
    args = ap.parse_args()
    env = environment()
    print(f"device: {env['device']}; torch {env['versions']['torch']}")
    rows = []
    n_img = 256 if args.quick else 1024
    images = load("fashion_mnist", n=n_img, seed=0)
    for width in (0.25, 0.5, 1.0):
        model = vgg(num_classes=10, width=width, seed=0)
        cfg = TrainConfig(epochs=1, batch_size=64, lr=0.01, progress=False)
        tr, inf = measure(model, images, cfg)
        rows.append({"model": f"VGG-11 width {width}", "input": "28x28x1", "n": n_img,
                     "params": sum(p.numel() for p in model.parameters()),
                     "train_ex_per_s": tr, "infer_ex_per_s": inf})
    n_txt = 32 if args.quick else 96
    pairs = load("snli", n=n_txt, seed=0)
    for length in (64, 128):
        model = text_classifier(num_classes=3, max_length=length, seed=0)
        cfg = TrainConfig(epochs=1, batch_size=16, lr=5e-5, optimizer="adamw", progress=False)
        tr, inf = measure(model, pairs, cfg)
        rows.append({"model": "MiniLM-L6 classifier", "input": f"SNLI pairs, max_length {length}", "n": n_txt,
                     "params": sum(p.numel() for p in model.parameters()),
                     "train_ex_per_s": tr, "infer_ex_per_s": inf})
    df = pd.DataFrame(rows)
    df["infer_over_train"] = df["infer_ex_per_s"] / df["train_ex_per_s"]
    pd.set_option("display.width", 160)
    print(df.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    if args.out:
        df.assign(device=env["device"]).to_csv(args.out, index=False)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
