#!/usr/bin/env python3
"""Cost of turn-over dropout influence next to training and next to TracIn, on the same model, in
one run (a script, not a test).

For a VGG with a turn-over layer (Fashion-MNIST, 28 px) and the MiniLM classifier with one
(SNLI pairs), it measures:
  * training throughput (examples/s, forward + backward + step),
  * turn-over influence: (target, training instance) pairs per second with the fast head path
    (one forward per target + a matrix product) and with the general path (two full forward passes
    per pair), and the forward passes per second of the general path,
  * TracInCP (last layer, fast path; and all parameters) on the same checkpoint: (target, training
    instance) pairs per second including the per-example gradients of both sides.

    python benchmarks/bench_turnover.py [--out results/benchmarks/turnover.csv]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import pandas as pd

from repro.data import load
from repro.influence import TracInCP
from repro.influence.turnover import TurnOverInfluence
from repro.models import text_classifier, vgg
from repro.results import environment
from repro.train import TrainConfig, Trainer, list_checkpoints


def clock(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench(name, model, train, targets, cfg, general_ids: int, tracin_all: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as run:
        _, t = clock(lambda: Trainer(model, cfg, run).fit(train))
        rows.append({"model": name, "what": "training (fwd+bwd+step)", "unit": "examples/s",
                     "rate": cfg.epochs * len(train) / t})
        est = TurnOverInfluence(model, method="head", progress=False)
        _, t = clock(lambda: est.scores(targets, train))
        rows.append({"model": name, "what": "turn-over influence, head path", "unit": "pairs/s",
                     "rate": len(targets) * len(train) / t})
        gen = TurnOverInfluence(model, method="forward", progress=False)
        few = train.subset(slice(0, general_ids))
        tg = targets.subset(slice(0, 4))
        _, t = clock(lambda: gen.scores(tg, few))
        rows.append({"model": name, "what": "turn-over influence, general path", "unit": "pairs/s",
                     "rate": len(tg) * len(few) / t})
        rows.append({"model": name, "what": "  (its forward passes)", "unit": "examples/s",
                     "rate": 2 * len(tg) * len(few) / t})
        cks = list_checkpoints(run)[-1:]
        tr = TracInCP(model, cks, params="last", progress=False)
        _, t = clock(lambda: tr.fit(train).scores(targets))
        rows.append({"model": name, "what": "TracInCP last layer (fast path), 1 ckpt", "unit": "pairs/s",
                     "rate": len(targets) * len(train) / t})
        if tracin_all:
            sub = train.subset(slice(0, min(len(train), 256)))
            tr_all = TracInCP(model, cks, params="all", progress=False)
            _, t = clock(lambda: tr_all.fit(sub).scores(targets))
            rows.append({"model": name, "what": "TracInCP all parameters, 1 ckpt", "unit": "pairs/s",
                         "rate": len(targets) * len(sub) / t})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    env = environment()
    print(f"device: {env['device']}")
    rows = []
    imgs = load("fashion_mnist", n=2000, seed=0)
    targets = load("fashion_mnist", "test", n=200, seed=0)
    m = vgg(num_classes=10, width=0.25, seed=0, turnover={"p": 0.5, "seed": 1})
    rows += bench("VGG-11 w0.25 + turn-over", m, imgs, targets,
                  TrainConfig(epochs=1, lr=0.05, batch_size=64, progress=False), general_ids=64, tracin_all=True)
    txt = load("snli", n=200, seed=0)
    ttargets = load("snli", "test", n=50, seed=0)
    tm = text_classifier(num_classes=3, max_length=64, seed=0, turnover={"p": 0.5, "seed": 2})
    rows += bench("MiniLM (len 64) + turn-over", tm, txt, ttargets,
                  TrainConfig(epochs=1, lr=5e-5, batch_size=16, optimizer="adamw", progress=False),
                  general_ids=16, tracin_all=False)
    df = pd.DataFrame(rows)
    train_rate = df[df.what.str.startswith("training")].set_index("model")["rate"]
    df["x_training_rate"] = df["rate"] / df["model"].map(train_rate)
    pd.set_option("display.width", 160)
    print(df.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    print("x_training_rate: rate divided by the training throughput (examples/s) of the same model")
    if args.out:
        df.assign(device=env["device"]).to_csv(args.out, index=False)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
