#!/usr/bin/env python3
"""FastIF vs full influence functions, side by side in one run (a script, not a test).

The MiniLM classifier (``train_top_layers=2``, max length 48: the top 2 layers, pooler and head are
trained and differentiated, about 3.7M parameters) is trained briefly on a few hundred SNLI-2 pairs
(SGD with weight decay ``wd``, so the influence objective's ``(wd/2)||theta||^2`` term matches
training exactly). For a few test points (correct and incorrect predictions) it then times

* **full**: LiSSA ``s_test`` with mini-batch 8 (the paper's full runs used 128) and the gradient of
  every training example;
* **FastIF**: the kNN candidates (k at a few values, pooled-[CLS] features, exact L2) + ``s_test``
  with mini-batch 1 (same depth) + the candidates' gradients;
* **FastIF parallel**: the same with 2 gloo worker processes (one LiSSA repetition each, averaged,
  candidates split in two); the time includes starting the workers.

and prints the speed-ups, the Pearson / Spearman / Kendall correlation of FastIF with the full
scores on the candidates (mean over test points), and the kNN recall of the full top-10 helpful /
harmful points. The one-off costs (training, the kNN index over the training features) are printed
separately.

    python benchmarks/bench_fastif.py [--n-train 300] [--n-test 4] [--ks 10,30,100] [--depth 60]
                                      [--threads 1] [--out results/benchmarks/fastif.csv] [--quick]

About 4 minutes on an idle 2-core CPU with the defaults (6 minutes when the cores are shared).

On a shared 2-core machine keep ``--threads 1`` (contended OpenMP threads are far slower); each
parallel worker uses one thread.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import stats


def correlations(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean over rows of Pearson / Spearman / Kendall between two (m, k) score matrices."""
    rows = {"pearson": [], "spearman": [], "kendall": []}
    for x, y in zip(a.double().numpy(), b.double().numpy()):
        rows["pearson"].append(stats.pearsonr(x, y)[0])
        rows["spearman"].append(stats.spearmanr(x, y)[0])
        rows["kendall"].append(stats.kendalltau(x, y)[0])
    return {k: float(np.mean(v)) for k, v in rows.items()}


def pick_test_points(model, test, n: int):
    """Half correctly, half incorrectly predicted test points (as the paper's correlation check)."""
    from repro.train import predict

    batch = model.encode(test)
    pred = predict(model, batch).argmax(1)
    right = torch.nonzero(pred == batch.labels).squeeze(1)
    wrong = torch.nonzero(pred != batch.labels).squeeze(1)
    n_wrong = min(len(wrong), n // 2)
    idx = torch.cat([wrong[:n_wrong], right[:n - n_wrong]])
    return batch[idx], int(n_wrong)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--ks", default="10,30,100", help="kNN sizes, comma separated")
    ap.add_argument("--depth", type=int, default=60, help="LiSSA recursion depth J")
    ap.add_argument("--scale", type=float, default=100.0)
    ap.add_argument("--damp", type=float, default=0.05)
    ap.add_argument("--full-batch", type=int, default=8, help="LiSSA mini-batch of the full run")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--weight-decay", type=float, default=0.005)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel-k", type=int, default=None, help="k of the parallel run (default: middle k)")
    ap.add_argument("--out", default=None, help="CSV file for the table")
    ap.add_argument("--quick", action="store_true",
                    help="smaller run (N=150, 2 test points, J=20, k=10,30; about a minute)")
    args = ap.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.depth, args.ks, args.epochs = 150, 2, 20, "10,30", 2
    torch.set_num_threads(args.threads)

    from repro.data import load
    from repro.influence.fastif import FastIF, knn_recall
    from repro.influence.ifunc import InfluenceFunction
    from repro.models import text_classifier
    from repro.results import environment
    from repro.train import TrainConfig, Trainer, evaluate

    env = environment()
    print(f"device: {env['device']}; torch {env['versions']['torch']}, transformers "
          f"{env['versions'].get('transformers')}")
    ks = [int(k) for k in args.ks.split(",")]
    t0 = time.perf_counter()
    train = load("snli2", n=args.n_train, seed=0, stratify=True)
    test = load("snli2", "test", n=200, seed=0)
    model = text_classifier(num_classes=2, max_length=48, train_top_layers=2, seed=0)
    cfg = TrainConfig(epochs=args.epochs, batch_size=16, lr=0.02, momentum=0.9,
                      weight_decay=args.weight_decay, progress=False, seed=0)
    Trainer(model, cfg).fit(train)
    model.eval()
    ev = evaluate(model, test)
    print(f"trained MiniLM (top 2 layers) on {len(train)} SNLI-2 pairs in "
          f"{time.perf_counter() - t0:.1f}s: test accuracy {ev['accuracy']:.3f}, loss {ev['loss']:.3f}")
    train_b = model.encode(train)
    pts, n_wrong = pick_test_points(model, test, args.n_test)
    print(f"{len(pts)} test points ({n_wrong} misclassified); N = {len(train_b)}")
    common = dict(params="trainable", weight_decay=args.weight_decay, scale=args.scale,
                  damp=args.damp, depth=args.depth, progress=False, device="cpu")

    # ---------------------------------------------------------------- full influence
    full = InfluenceFunction(model, train_b, solver="lissa", batch_size=args.full_batch,
                             cache_train_grads=False, **common)
    print(f"d = {full.dim:,} parameters; lambda = scale*damp = {full.damping:g}")
    t = time.perf_counter()
    S_full = full.s_test(pts)
    t_full_s = time.perf_counter() - t
    t = time.perf_counter()
    full_scores = full.scores(None, s_test=S_full)
    t_full_g = time.perf_counter() - t
    t_full = t_full_s + t_full_g
    print(f"full: s_test (batch {args.full_batch}, J={args.depth}) {t_full_s:.1f}s + "
          f"{len(train_b)} train gradients {t_full_g:.1f}s = {t_full:.1f}s")

    # ---------------------------------------------------------------- FastIF (sequential)
    t = time.perf_counter()
    fif = FastIF(model, train_b, k=max(ks), batch_size=1, repetitions=1, **common)
    t_index = time.perf_counter() - t
    print(f"FastIF kNN index over {len(train_b)} pooled-[CLS] features: {t_index:.1f}s (one-off)")
    t = time.perf_counter()
    S_fast = fif.s_test(pts)
    t_fast_s = time.perf_counter() - t
    rows = [{"method": "full", "k": len(train_b), "workers": 1, "time_s": t_full, "s_test_s": t_full_s,
             "grads_s": t_full_g, "speedup": 1.0}]
    for k in ks:
        res = fif.candidates(pts, k=k, s_test=S_fast)
        total = res.timings["knn_s"] + t_fast_s + res.timings["candidate_grads_s"]
        ref = full_scores.gather(1, res.candidate_positions)
        row = {"method": "fastif", "k": k, "workers": 1, "time_s": total, "s_test_s": t_fast_s,
               "grads_s": res.timings["candidate_grads_s"], "speedup": t_full / total,
               **correlations(res.scores, ref)}
        for kind in ("helpful", "harmful", "abs"):
            row[f"recall10_{kind}"] = float(knn_recall(full_scores, res.candidate_positions, 10, kind).mean())
        rows.append(row)

    # ---------------------------------------------------------------- same quality, sequentially
    # the parallel run averages 2 repetitions (one per worker): time them sequentially too
    kp = args.parallel_k or ks[len(ks) // 2]
    t = time.perf_counter()
    S_two = fif.influence.solve(fif.influence.test_grads(pts), repetitions=[0, 1]) / 2
    t_two = time.perf_counter() - t
    res = fif.candidates(pts, k=kp, s_test=S_two)
    total = res.timings["knn_s"] + t_two + res.timings["candidate_grads_s"]
    rows.append({"method": "fastif-2reps", "k": kp, "workers": 1, "time_s": total, "s_test_s": t_two,
                 "grads_s": res.timings["candidate_grads_s"], "speedup": t_full / total,
                 **correlations(res.scores, full_scores.gather(1, res.candidate_positions))})

    # ---------------------------------------------------------------- FastIF (2 gloo workers)
    t = time.perf_counter()
    par = fif.candidates(pts, k=kp, workers=2)
    t_par = time.perf_counter() - t
    ref = full_scores.gather(1, par.candidate_positions)
    rows.append({"method": "fastif-parallel", "k": kp, "workers": 2, "time_s": t_par,
                 "s_test_s": par.timings["s_test_s"], "grads_s": par.timings["candidate_grads_s"],
                 "speedup": t_full / t_par, **correlations(par.scores, ref),
                 "worker_compute_s": par.timings["s_test_s"] + par.timings["candidate_grads_s"]})

    import pandas as pd

    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    print()
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\nrandom-baseline recall = k/N: {', '.join(f'{k / len(train_b):.3f}' for k in ks)}")
    print(f"parallel (2 workers, 1 repetition each = fastif-2reps): {t_par:.1f}s in total, of which "
          f"worker compute {rows[-1]['worker_compute_s']:.1f}s (the rest is starting 2 processes and "
          f"rebuilding the model); per rank (s_test, grads): "
          f"{[tuple(round(x, 1) for x in r) for r in par.timings['per_rank_s']]}")
    print(f"parallel speed-up over the same 2 repetitions run sequentially: {total / t_par:.2f}x "
          f"(worker compute only: {total / rows[-1]['worker_compute_s']:.2f}x)")
    print(f"total benchmark wall time {time.perf_counter() - t0:.1f}s")
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
