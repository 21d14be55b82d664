#!/usr/bin/env python3
"""TracInCP: ours vs captum and dattri on the same VGG checkpoints and data, plus the physical floor.

One VGG-11 (width ``--width``, Fashion-MNIST 28 px) is trained for ``--epochs`` epochs on the
largest training subset (one checkpoint per epoch, SGD, learning rate saved with each checkpoint).
Then, for the same checkpoints, the same ``--n-test`` test images and training subsets of growing
size, every implementation computes the full (n_test x n_train) TracInCP score matrix, weighted by
the learning rate of each checkpoint:

* **all parameters** (``--sizes-all``): ours (``TracInCP(params="all")``, per-example gradients,
  ``auto`` method), captum ``TracInCP`` (default: one backward per example) and captum ``TracInCP``
  with ``sample_wise_grads_per_batch=True`` (its hook-based batched gradients; captum supports only
  Conv2d and Linear there, so that row and our row next to it use the conv + linear layers only,
  i.e. everything but the BatchNorm affine parameters), and dattri ``TracInAttributor`` (vmap
  gradients; its default random projection to 512 dimensions switched off so the scores are exact);
* **last layer** (``--sizes-last``): ours (``params=["classifier.weight"]``: the factorised fast
  path), captum ``TracInCPFast`` (the same factorisation; weight only, so ours uses the weight
  only too) and dattri (vmap gradients of the same weight; ``layer_name`` plus the other parameters
  frozen in dattri's copy of the model: with ``layer_name`` alone dattri still differentiates and
  re-flattens all parameters, about 6 minutes per checkpoint at 2,000 examples here).

Each row gives the wall time, ``x_ours`` (the peer's time over ours, > 1: ours is faster) and the
agreement with our scores (max |a - b| / max |b|, Spearman, top-10 overlap). The **floor** table
divides our TracInCP time by the cost a per-example gradient can never beat: checkpoints x (one
batched forward + backward epoch over the same train + test examples) for all parameters, and
checkpoints x (one batched forward epoch) for the last layer.

    python benchmarks/bench_tracin_peers.py [--out results/benchmarks/tracin_peers.csv]
        [--sizes-all 64,128,256] [--sizes-last 500,2000,8000] [--n-test 16] [--threads 1]

About 5 minutes on 2 CPU cores with the defaults. Needs the peers: ``pip install -e ".[bench]"``.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("TQDM_DISABLE", "1")  # the peers' progress bars (tqdm >= 4.66 reads this)

from common import (PeerCheckpoints, agreement, dattri_tracin, finish, image_tensors, loader,
                    peer_copy, require_peer, run_environment, timed)
from repro.data import load
from repro.influence import TracInCP
from repro.influence.grads import choose_method, param_names
from repro.models import vgg
from repro.train import TrainConfig, Trainer, list_checkpoints
from repro.utils import resolve_device


def _patch_captum_view():
    """captum 0.9.0 bug: ``_tensor_batch_dot`` calls ``.view`` on the per-sample gradients that its
    batched hooks produce; for a conv layer whose input is 1 x 1 pixels (our VGG's 7th conv) that
    tensor is not contiguous and ``.view`` raises. Replaced by the same product with ``.reshape``
    (copies only when needed), so the comparison can run; nothing else of captum is touched."""
    from captum.influence._utils import common as cc

    def batch_dot(t1, t2):
        return torch.mm(t1.reshape(t1.shape[0], -1), t2.reshape(t2.shape[0], -1).T)
    cc._tensor_batch_dot = batch_dot


class Peers:
    """The captum / dattri set-up for one model and checkpoint list (their own conventions: a
    checkpoint-loading function, data as (x, y) tuples)."""

    def __init__(self, model, checkpoints, device):
        self.model, self.cks, self.device = model, list(checkpoints), device
        self.loader = PeerCheckpoints(self.cks)

    def captum_tracincp(self, x, y, xt, yt, layers=None, batched=False, batch_size=64):
        from captum.influence import TracInCP as CaptumTracInCP

        if batched:
            _patch_captum_view()
        loss = torch.nn.CrossEntropyLoss(reduction="sum" if batched else "none")
        t = CaptumTracInCP(peer_copy(self.model, self.device), torch.utils.data.TensorDataset(x, y),
                           self.loader.paths, checkpoints_load_func=self.loader.captum_load,
                           layers=layers, loss_fn=loss, batch_size=batch_size,
                           sample_wise_grads_per_batch=batched)
        return t.influence((xt, yt))

    def captum_fast(self, x, y, xt, yt, batch_size=512):
        from captum.influence import TracInCPFast

        t = TracInCPFast(peer_copy(self.model, self.device), "classifier",
                         torch.utils.data.TensorDataset(x, y), self.loader.paths,
                         checkpoints_load_func=self.loader.captum_load,
                         loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"), batch_size=batch_size)
        return t.influence((xt, yt))

    def dattri_tracin(self, x, y, xt, yt, layer_name=None, batch_size=64):
        from dattri.task import AttributionTask

        model = peer_copy(self.model, self.device, keep=layer_name)

        def loss_func(params, data):  # one example (dattri vmaps over the batch)
            image, label = data
            out = torch.func.functional_call(model, params, (image.unsqueeze(0),))
            return F.cross_entropy(out, label.unsqueeze(0))

        task = AttributionTask(loss_func=loss_func, model=model, checkpoints=self.cks,
                               checkpoints_load_func=PeerCheckpoints.dattri_load)
        return dattri_tracin(task, [c.lr for c in self.cks], layer_name, self.device,
                             loader(x, y, batch_size=batch_size), loader(xt, yt, batch_size=batch_size))


def epoch_time(model, x, y, backward: bool, batch_size: int) -> float:
    """Seconds of one batched pass over (x, y) in eval mode: forward only, or forward + backward
    of the mean loss w.r.t. all parameters (the work one training epoch does, without the step)."""
    model = model.eval()

    def run():
        for lo in range(0, len(x), batch_size):
            xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
            if backward:
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(xb), yb).backward()
            else:
                with torch.no_grad():
                    model(xb)
    _, secs = timed(run, repeat=2)  # best of 2: the first pays one-off kernel set-up
    return secs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sizes-all", default="64,128,256")
    ap.add_argument("--sizes-last", default="500,2000,8000")
    ap.add_argument("--n-test", type=int, default=16)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=1, help="best of this many timed runs")
    ap.add_argument("--dattri-max-all", type=int, default=128,
                    help="largest n_train for dattri's all-parameter rows (40x slower than ours)")
    ap.add_argument("--skip", default="", help="comma-separated: captum,dattri,captum_batched")
    args = ap.parse_args(argv)
    require_peer("captum")
    require_peer("dattri")
    skip = set(filter(None, args.skip.split(",")))
    device = resolve_device(args.device)
    env = run_environment(args.threads, benchmark="tracin_peers", args=vars(args) | {"out": str(args.out)})
    t_start = time.perf_counter()
    sizes_all = [int(s) for s in args.sizes_all.split(",") if s]
    sizes_last = [int(s) for s in args.sizes_last.split(",") if s]
    n_max = max(sizes_all + sizes_last)

    model = vgg(num_classes=10, width=args.width, seed=0)
    train = load("fashion_mnist", n=n_max, seed=0)
    test = load("fashion_mnist", split="test", n=args.n_test, seed=0)
    rows, floor = [], []
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05, progress=False,
                          device=str(device), seed=0)
        res = Trainer(model, cfg, run_dir).fit(train)
        cks = list_checkpoints(run_dir)
        print(f"trained VGG-11 w{args.width} on {n_max} images, {len(cks)} checkpoints, "
              f"{res.wall_time_s:.1f} s; lr per checkpoint {[c.lr for c in cks]}", flush=True)
        cks[-1].load_into(model)
        model = model.to(device).eval()
        X, Y = image_tensors(model, train, device)
        Xt, Yt = image_tensors(model, test, device)
        peers = Peers(model, cks, device)
        conv_linear = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        cl_params = [n for n in param_names(model, "all") if n.rsplit(".", 1)[0] in conv_linear]

        def compare(kind, params, n, ours_fn, peers_fns, floor_secs):
            scores, t_ours = timed(ours_fn, args.repeat)
            method = choose_method(model, device, "auto", param_names(model, params)) \
                if kind != "last layer" else "factorised"
            base = {"params": kind, "n_train": n, "n_test": args.n_test, "checkpoints": len(cks)}
            rows.append(base | {"impl": f"ours ({method})", "seconds": round(t_ours, 3), "x_ours": 1.0})
            print("  ", rows[-1], flush=True)
            for name, fn in peers_fns.items():
                ref, t = timed(fn, args.repeat)
                rows.append(base | {"impl": name, "seconds": round(t, 3), "x_ours": round(t / t_ours, 2)}
                            | agreement(scores, ref))
                print("  ", rows[-1], flush=True)
            floor.append(base | {"impl": f"ours ({method})", "seconds": round(t_ours, 3),
                                 "floor_seconds": round(floor_secs, 3),
                                 "x_floor": round(t_ours / floor_secs, 2),
                                 "floor": "ckpts x fwd+bwd epoch" if kind != "last layer"
                                 else "ckpts x forward epoch"})

        train_b, test_b = model.encode(train), model.encode(test)  # encoded once, like the peers' tensors

        def ours(params, x_n):
            def run():
                t = TracInCP(model, cks, params=params, device=device, progress=False)
                return t.fit(train_b[torch.arange(x_n)]).scores(test_b)
            return run

        for n in sizes_all:
            x, y = X[:n], Y[:n]
            fb = epoch_time(copy.deepcopy(model), torch.cat([x, Xt]), torch.cat([y, Yt]), True, 64)
            peer_fns = {}
            if "captum" not in skip:
                peer_fns["captum TracInCP (loop)"] = lambda: peers.captum_tracincp(x, y, Xt, Yt)
            if "dattri" not in skip and n <= args.dattri_max_all:
                peer_fns["dattri TracIn (vmap)"] = lambda: peers.dattri_tracin(x, y, Xt, Yt)
            print(f"all parameters, n_train={n}", flush=True)
            compare("all", "all", n, ours("all", n), peer_fns, len(cks) * fb)
            if "captum_batched" not in skip:
                print(f"conv+linear parameters, n_train={n}", flush=True)
                compare("conv+linear", cl_params, n, ours(cl_params, n),
                        {"captum TracInCP (batched hooks)":
                         lambda: peers.captum_tracincp(x, y, Xt, Yt, layers=conv_linear, batched=True)},
                        len(cks) * fb)
        for n in sizes_last:
            x, y = X[:n], Y[:n]
            fwd = epoch_time(copy.deepcopy(model), torch.cat([x, Xt]), torch.cat([y, Yt]), False, 256)
            peer_fns = {}
            if "captum" not in skip:
                peer_fns["captum TracInCPFast"] = lambda: peers.captum_fast(x, y, Xt, Yt)
            if "dattri" not in skip:
                peer_fns["dattri TracIn (vmap)"] = lambda: peers.dattri_tracin(
                    x, y, Xt, Yt, layer_name=["classifier.weight"], batch_size=256)
            print(f"last layer, n_train={n}", flush=True)
            compare("last layer", ["classifier.weight"], n, ours(["classifier.weight"], n), peer_fns,
                    len(cks) * fwd)
    finish(rows, env, args.out, t_start, title="TracInCP: time and agreement with ours")
    finish(floor, env, args.out.with_name(args.out.stem + "_floor" + args.out.suffix) if args.out else None,
           t_start, title="TracInCP cost relative to the physical floor")
    return rows


if __name__ == "__main__":
    main()
