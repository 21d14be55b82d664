#!/usr/bin/env python3
"""TracInCP sharded over processes (repro.distributed.Sharded): 1 vs G processes, same result.

A VGG-11 (width ``--width``, Fashion-MNIST) is trained for ``--epochs`` epochs on ``--n-train``
images (one checkpoint per epoch); then TracInCP over all parameters (streaming, factored products)
scores ``--n-test`` test images and computes self-influence, once per world size in ``--nproc``
(spawned gloo processes, one torch thread each). Printed per world size: wall time of fit + scores
+ self-influence on rank 0, the speed-up over 1 process, and the agreement with 1 process
(max |a - b| / max |b|). On a dev machine the speed-up is bounded by its cores: G processes need G
free cores (the machine load at the start is printed and saved).

    python benchmarks/bench_distributed.py [--nproc 1,2] [--n-train 2000] [--out results/benchmarks/distributed.csv]

On a GPU node, the same script under torchrun (NCCL, one GPU per process) measures one world size:

    torchrun --nproc-per-node 8 benchmarks/bench_distributed.py --n-train 12000 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def _setup(args, root: Path):
    from repro.data import load
    from repro.models import vgg
    from repro.train import TrainConfig, Trainer

    train = load("fashion_mnist", n=args.n_train, seed=0, stratify=True)
    test = load("fashion_mnist", "test", n=args.n_test, seed=0)
    model = vgg(num_classes=10, depth=11, in_channels=1, image_size=28, width=args.width, seed=0)
    run = root / "run"
    if not (run / "run.json").exists():
        Trainer(model, TrainConfig(epochs=args.epochs, lr=0.05, batch_size=64, seed=0, progress=False,
                                   device="cpu"), run).fit(train)
    return model, run, train, test


def _measure(args, root: Path, device: str) -> dict:
    from repro.distributed import Sharded
    from repro.influence import TracInCP

    model, run, train, test = _setup(args, root)
    t0 = time.perf_counter()
    est = Sharded(TracInCP(model, run, params="all", device=device, progress=False)).fit(train)
    scores = est.scores(test)
    self_inf = est.self_influence()
    return {"seconds": time.perf_counter() - t0, "scores": scores.cpu(), "self": self_inf.cpu()}


def _worker(rank: int, world: int, port: int, args, root: str, out: str):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        res = _measure(args, Path(root), "cpu")
        dist.barrier()
        if rank == 0:
            torch.save(res, out)
    finally:
        dist.destroy_process_group()



def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", default="1,2", help="world sizes to compare (spawned gloo processes)")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--device", default="cpu", help="cpu (spawned gloo) or cuda (under torchrun, NCCL)")
    ap.add_argument("--out", type=Path, default=None, help="CSV of the comparison (and a .env.json next to it)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun: one world size
        import torch.distributed as dist

        backend = "nccl" if args.device == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
        root = Path(tempfile.gettempdir()) / "repro_bench_distributed"
        if dist.get_rank() == 0:
            _setup(args, root)  # train once
        dist.barrier()
        res = _measure(args, root, args.device)
        if dist.get_rank() == 0:
            print(f"world {dist.get_world_size()} ({backend}): {res['seconds']:.1f} s for fit + scores "
                  f"({args.n_test} x {args.n_train}) + self-influence")
        dist.destroy_process_group()
        return

    import pandas as pd
    import torch.multiprocessing as mp

    from repro.distributed import free_port

    load = os.getloadavg()[0]
    worlds = [int(x) for x in args.nproc.split(",")]
    rows, ref = [], None
    with tempfile.TemporaryDirectory() as tmp:
        _setup(args, Path(tmp))  # train once, outside the timing
        for world in worlds:
            out = os.path.join(tmp, f"res{world}.pt")
            mp.spawn(_worker, args=(world, free_port(), args, tmp, out), nprocs=world, join=True)
            res = torch.load(out, weights_only=True)
            if ref is None:
                ref = res
            rel = lambda a, b: float((a - b).abs().max() / b.abs().max())
            rows.append({"world": world, "seconds": round(res["seconds"], 2),
                         "speedup_vs_first": round(ref["seconds"] / res["seconds"], 2),
                         "scores_rel_diff": rel(res["scores"], ref["scores"]),
                         "self_rel_diff": rel(res["self"], ref["self"])})
    table = pd.DataFrame(rows)
    env = {"n_train": args.n_train, "n_test": args.n_test, "epochs (checkpoints)": args.epochs, "width": args.width,
           "params": "all (streaming, factored products)", "threads_per_process": 1, "cpu_count": os.cpu_count(),
           "load_average_at_start": round(load, 2), "torch": torch.__version__}
    print(json.dumps(env))
    print(table.to_string(index=False))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        args.out.with_suffix(".env.json").write_text(json.dumps(env, indent=1) + "\n")


if __name__ == "__main__":
    main()
