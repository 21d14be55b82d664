#!/usr/bin/env python3
"""Cost of a linear datamodeling score (LDS) and a first look at it, for the turn-over MLP (a script,
not a test; one seed, numbers are a first look, not results).

Trains the reference MLP (784-256-256-10, turn-over dropout after the top ``--layers`` hidden
layers) on ``--n`` Fashion-MNIST images, then ``--subsets`` masked copies on random 50% subsets
(fixed order, :mod:`repro.experiments.lds`), and scores on the same runs: turn-over influence,
TracInCP (last layer over every epoch's checkpoint; and the top two layers over three checkpoints),
the last-layer influence function, a same-label baseline and random scores. Prints the wall time of
each step and the LDS table.

    OMP_NUM_THREADS=1 python benchmarks/bench_lds.py [--n 1000 --targets 50 --subsets 50 --layers 1]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from repro.data import load
from repro.experiments import lds as D
from repro.influence import TracInCP
from repro.influence.lastlayer import LastLayerInfluence
from repro.influence.turnover import TurnOverInfluence
from repro.models import mlp
from repro.train import TrainConfig, Trainer, list_checkpoints


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--targets", type=int, default=50)
    ap.add_argument("--subsets", type=int, default=50)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--chunk", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--measure", default="loss")
    ap.add_argument("--loo", type=int, default=0, help="also: fixed-order LOO of this many random removals, "
                    "each method's agreement with it, and its noise ceiling (1e-6 perturbation, seed 1)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    train = load("fashion_mnist", n=a.n, seed=0, stratify=True)
    targets = load("fashion_mnist", "test", n=a.targets, seed=0)
    cfg = TrainConfig(epochs=a.epochs, lr=a.lr, batch_size=32, momentum=a.momentum, device="cpu", progress=False)

    def make(seed):
        return mlp(num_classes=10, hidden=[256, 256], turnover={"p": 0.5, "seed": 11, "layers": a.layers}, seed=seed)

    times = {}
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        model = make(0)
        Trainer(model, cfg, run).fit(train)
        times["reference training (Trainer)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        runs = D.subset_runs(make, train, targets, cfg, n_subsets=a.subsets, seed=0, chunk=a.chunk,
                             measure=a.measure, progress=True)
        times[f"{a.subsets} subset retrainings (batched x{a.chunk})"] = time.perf_counter() - t0
        methods = {}
        t0 = time.perf_counter()
        methods[f"turn-over ({a.layers} layer{'s' if a.layers > 1 else ''})"] = \
            TurnOverInfluence(model, progress=False).scores(targets, train)
        times["turn-over scores"] = time.perf_counter() - t0
        cks = list_checkpoints(run)
        t0 = time.perf_counter()
        methods["TracInCP last layer"] = TracInCP(model, cks, params="last", progress=False).fit(train).scores(targets)
        times["TracInCP last layer"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        few = [cks[len(cks) // 3 - 1], cks[2 * len(cks) // 3 - 1], cks[-1]]
        methods["TracInCP top 2 layers (3 ckpts)"] = TracInCP(
            model, few, params=["hidden_layers.1", "classifier"], progress=False).fit(train).scores(targets)
        times["TracInCP top 2 layers"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        methods["last-layer IF"] = LastLayerInfluence(model, train, damping=1e-3, device="cpu").scores(targets)
        times["last-layer IF"] = time.perf_counter() - t0
    methods["same label"] = D.same_label_scores(train.labels, targets.labels)
    methods["random"] = D.random_scores(len(targets), len(train))
    for k, v in times.items():
        print(f"{k:45s} {v:8.1f} s")
    table = D.lds_table(methods, runs)
    print(table.to_string(index=False, float_format=lambda x: f"{x:+.3f}"))
    res = {k: D.lds(v, runs) for k, v in methods.items()}
    first = next(iter(res))
    for k in list(res)[1:]:
        m, ci = D.lds_difference(res[first], res[k])
        print(f"{first} - {k}: {m:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]")
    if a.loo:
        loo_look(a, make, train, targets, cfg, methods)
    print("measured benefit spread over subsets (sd of -loss, mean over targets):",
          f"{np.mean(runs.benefit.std(0)):.3f}")


def loo_look(a, make, train, targets, cfg, methods):
    from repro.experiments import loo as L

    removed = L.random_removals(train, a.loo, seed=0)
    t0 = time.perf_counter()
    truth = L.fixed_order_loo(make, train, targets, cfg, removed, seed=0, chunk=a.chunk)
    print(f"fixed-order LOO, {a.loo} removals: {time.perf_counter() - t0:.1f} s")
    for name, sc in methods.items():
        m, ci = L.agreement(sc, truth, train_ids=train.ids).value("spearman")
        print(f"LOO agreement {name:35s} spearman {m:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]")
    for label, kw in (("1e-6 perturbation", {"perturb": 1e-6, "perturb_seed": 1}), ("seed 1", {"seed": 1})):
        other = L.fixed_order_loo(make, train, targets, cfg, removed, chunk=a.chunk, **{"seed": 0, **kw})
        m, ci = L.noise_ceiling(truth, other).value("spearman")
        print(f"LOO noise ceiling ({label}): spearman {m:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]")


if __name__ == "__main__":
    main()
