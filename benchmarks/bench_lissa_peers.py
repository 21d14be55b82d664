#!/usr/bin/env python3
"""LiSSA influence functions: ours vs dattri's IFAttributorLiSSA, same checkpoint, data and settings.

Side by side in one run, with a deterministic reference solution (exact or CG) as ground truth.

One VGG-11 (width 0.25, Fashion-MNIST 28 px, no weight decay) is trained for 2 epochs on
``--n-train`` images; its last checkpoint is loaded and put in eval mode. For ``--n-test`` test
images, every implementation computes the full (n_test x n_train) influence-score matrix
``grad loss(z_train) . (H + lambda I)^-1 grad loss(z_test)``, ``H`` the Hessian of the mean training
cross-entropy over a parameter subset:

* **last layer** (``classifier.weight``, ``classifier.bias``: 5,130 parameters): the reference is
  the explicit Hessian, solved by Cholesky in float64 (``solver="exact"``);
* **head** (``fc.*`` + ``classifier.*``: 71,178 parameters; ``--sets last`` drops it): no explicit
  Hessian (71k x 71k); the reference is our conjugate gradients with full-training-set HVPs down
  to a relative residual of 1e-6 (``solver="cg"``; on the last layer CG agrees with Cholesky to
  ~2e-6).

**The same recursion, the same settings.** Both run LiSSA (Agarwal et al.; Koh & Liang):
``h_0 = v``, ``h_j = v + (1 - damp) h_{j-1} - H_j h_{j-1} / scale``, result ``h_J / scale``, with
``H_j`` the Hessian of the mean loss on a random mini-batch: ours in
``repro.influence.hessian.lissa_sum``, dattri in ``dattri.func.hessian.ihvp_lissa``
(``curr = v + (1 - damping) * curr - hvp / scaling``; ``curr / scaling``). So ``damp -> damping``,
``scale -> scaling``, ``depth -> recursion_depth``, ``batch_size -> batch_size``, ``repetitions ->
num_repeat``; both estimate ``(H + lambda I)^-1 v`` with ``lambda = scale * damp``, which is the
``damping`` of the reference solve. LiSSA is stochastic and the two draw different mini-batches
(ours: seeded permutations, one stream shared by all test vectors; dattri: ``torch.randperm`` per
step under ``vmap(randomness="different")``, i.e. an independent stream per test vector, seeded
here with ``torch.manual_seed``), so ours vs dattri is not 1; both should be close to the
reference.

**Sign.** Ours, :meth:`InfluenceFunction.scores`: positive = helpful (= ``-I_up,loss``). dattri's
``attribute`` returns ``train_rep @ transform_test_rep(test_rep).T = grad_train . (H + lambda I)^-1
grad_test`` (n_train, n_test): the same sign (its Spearman with ours and with the reference is
positive), so it is only transposed, never negated.

**Defaults and how they were chosen** (N = 600, T = 8). ``scale`` must exceed the top eigenvalue
of the mini-batch Hessians: power iteration gives ~4.8 for the full last-layer Hessian and <= ~9
for its mini-batches of 16 (up to ~11 with 8), ~6.8 / <= ~13 for the head; ``scale = 20`` covers
both (the script prints this check for every set before the runs). Last layer: cross-entropy is
convex there, so ``H`` is PSD, but ~3,300 of its 5,130 eigenvalues are ~0 (rank ~9 x the span of
the hidden features). Along small-curvature directions the LiSSA error shrinks like
``(1 - damp)^depth``, so ``damp * depth`` must be >= ~4: ``damp = 0.01`` (``lambda = 0.2``, 4 % of
the top eigenvalue) with ``depth = 400`` leaves ``0.99^400 = 1.8 %``, and ``batch_size = 16``
halves the mini-batch noise of 8. Our s_test is then within ~2-5 % of exact (measured: depth 250:
~6-11 %; damp 0.005 at depth 400: ~9 %). Head: through the ReLU of ``fc`` the Hessian is
indefinite (smallest eigenvalue ~ -1.0 by shifted power iteration, mini-batches down to ~ -2),
so ``H + lambda I`` needs ``lambda > 1``; with ``lambda = 0.2`` both LiSSAs blow up (ours raises
``LissaDivergedError`` at step ~320; dattri has no check and after 400 steps silently returns
finite vectors with ``|s| / |v|`` ~ 2e5-8e5, where ``<= 1/lambda`` is expected). Hence
``--head-damp 0.1`` (``lambda = 2``), which converges much faster: ``--head-depth 200``
(``0.9^200 ~ 1e-9``). The price: the recursion forgets after ~``1/damp`` = 10 steps, so its
result reflects only ~160 sampled examples' Hessians, and both LiSSAs stay ~5-10 % (median) from
CG on the head; ``--repetitions`` (or a larger ``scale`` with a smaller ``damp``, same ``lambda``,
and a larger depth) lowers that noise.

**Rows** of the main table (per parameter set): ``seconds`` = wall time of the whole pipeline
(set-up, training gradients, test gradients, the inverse-HVP solve, scores; the reference rows
include building the explicit Hessian / the CG iterations); ``ihvp_s`` = the inverse-HVP part
alone (ours: ``solve``; dattri: its ``transform_test_rep``); ``ms_per_step`` = ``ihvp_s / depth``
(all test vectors together); ``x_ours`` = the row's ``seconds`` (or ``projected_s``) / our LiSSA
``seconds`` (> 1: ours is faster), ``x_step`` the same ratio per LiSSA step; ``ref_*`` =
:func:`common.agreement` with the reference scores (max |a - b| / max |b|, Spearman of all
entries, top-10 overlap per test point); ``ours_*`` = the same with our LiSSA scores.

* ``ours LiSSA``: ``InfluenceFunction(solver="lissa", params=names, weight_decay=0, damp, scale,
  depth, batch_size, repetitions, seed)``.
* ``dattri LiSSA (layer_name, rest frozen)``: ``IFAttributorLiSSA`` with ``layer_name`` = the same
  list of names and ``requires_grad=False`` on every other parameter of dattri's copy of the model
  (a user-level setting, nothing of dattri changed; the same numbers as the next row, see the
  s_test table).
* ``dattri LiSSA (layer_name) [probe: P train x K steps]``: dattri exactly as documented (only
  ``layer_name``). It costs ~0.17 s per training gradient and ~1.0-1.7 s per LiSSA step here (10+
  minutes per set at full size, ~8 GB of memory for 600 gradients), so by default it scores only
  the first ``--probe-train`` training examples (the Hessian still samples all of them) with
  ``--probe-depth`` steps; ``seconds`` is that measured run, ``projected_s`` = its gradient part
  scaled to ``n_train + n_test`` examples + ``ms_per_step x depth`` (both linear: gradients are
  per example, steps are identical), and ``x_ours`` uses ``projected_s``. With ``--probe-depth
  >= depth`` and ``--probe-train >= --n-train`` it is the full run, with agreement columns.
* ``ours exact (Cholesky)`` / ``ours CG (tol 1e-06)``: the reference.

The **s_test table** compares the inverse-HVP vectors themselves: per test point
``||s - s_ref|| / ||s_ref||`` (median and max over the test points), against the reference and
between the two LiSSAs; its last row per set checks that dattri with only ``layer_name`` and dattri
with the rest frozen give the same vectors for the same seed and depth (0: bit-identical).

**Why dattri is slower** (dattri 0.3.0 source, ``torch.profiler``):

1. ``layer_name`` does not shrink what is differentiated. ``AttributionTask`` wraps the loss with
   ``partial_param``, which writes slices of the small parameter vector into the dict of *all*
   parameters, concatenates all ~650k parameters into one flat vector and splits it again for
   ``functional_call``. Every parameter of the network then depends on the differentiated input,
   so each per-example gradient and each HVP backpropagates through the whole convolutional stack
   and through ~36 ``SliceBackward`` nodes, each materialising a zero-filled 650k-vector (per vmap
   lane) that is then summed (``aten::add`` + ``fill_``: ~70 % of a LiSSA step). Freezing the
   other parameters removes them from dattri's parameter dict (it keeps only ``requires_grad``
   ones): ~7-13x faster per LiSSA step and ~250x faster training gradients (0.4 s vs ~100 s
   for 600 examples).
2. The HVP also differentiates with respect to the input images: ``hvp`` (rev-rev) takes
   ``vjp(grad(loss), params, data)`` over *all* arguments and keeps only the parameter part, so
   even with frozen features every double backward runs back through the convolutional stack to
   the pixels (convolution, batch-norm, ReLU and max-pool backward: ~35 % of a frozen step).
   Ours differentiates only the chosen parameters (plain autograd double backprop), so the second
   backward stops at the chosen layers.
3. One mini-batch per test vector: ``ihvp_lissa`` runs the whole recursion under ``vmap`` over the
   test vectors with ``randomness="different"``, so ``torch.randperm`` draws a different mini-batch for
   each of them, and forward, first backward and double backward run on ``n_test`` batches
   (``n_test`` x the work, plus an ``index_select``/``gather`` of the batch per lane). Ours draws
   one mini-batch per step for all test vectors: one forward + one backward with ``create_graph``,
   then one double backward per vector through the chosen layers only.

**dattri usage pitfalls met here** (worked around on our side, dattri untouched): ``layer_name``
must be a list (a string is iterated character by character); ``IFAttributorLiSSA.
lissa_collate_fn`` casts every data tensor to float, labels included, so the loss must cast the
label back (``label.long()``, else ``F.cross_entropy`` raises "expected target dtype to be Long");
the loss sees one example with its own batch dimension of 1 for gradients (``vmap`` over dim 1 of
the ``unsqueeze(0)``-ed batch) and (batch_size, ...) mini-batches for the Hessian, so it must not
add a batch dimension; ``transform_test_rep`` runs one full LiSSA per batch of the cached
full-training loader and *sums* the results, and ``attribute`` calls it again for every (train
batch, test batch) pair, so the full loader, the train loader and the test loader each hold
everything in ONE batch here (else the IHVP would be a sum over batches, recomputed per training
batch). dattri has no divergence check (see the head's damping above); ours raises.

    python benchmarks/bench_lissa_peers.py [--out results/benchmarks/lissa_peers.csv]
        [--n-train 600] [--n-test 8] [--depth 400] [--damp 0.01] [--head-depth 200]
        [--head-damp 0.1] [--scale 20] [--batch-size 16] [--probe-depth 5] [--probe-train 32]
        [--sets last,head] [--threads 1]

About 2.5 minutes on one CPU thread with the defaults. Needs dattri: ``pip install -e ".[bench]"``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # dattri's per-batch progress bars

import torch
import torch.nn.functional as F

from common import (PeerCheckpoints, agreement, finish, image_tensors, loader, peer_copy, require_peer,
                    run_environment, timed)
from repro.data import load
from repro.influence import InfluenceFunction
from repro.influence.hessian import CGConfig, TrainingObjective
from repro.models import vgg
from repro.train import TrainConfig, Trainer, list_checkpoints
from repro.utils import resolve_device

SETS = {
    "last": ("last layer", ["classifier.weight", "classifier.bias"]),
    "head": ("head (fc+classifier)", ["fc.weight", "fc.bias", "classifier.weight", "classifier.bias"]),
}
EXACT_MAX_DIM = 20_000  # explicit Hessian (d^2 float64) up to this size, else CG
CG_TOL = 1e-6  # CG stops at ||r|| <= CG_TOL ||v|| for every test vector


def top_eigenvalue(matvec, dim, iters=30, seed=0, dtype=torch.float32, device="cpu") -> float:
    """Largest eigenvalue (by magnitude) of a symmetric operator, by power iteration."""
    v = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        hv = matvec(v)
        lam = float(v @ hv)
        v = hv / hv.norm().clamp_min(1e-30)
    return lam


def scale_check(model, train, names, batch_size, n_batches=10, H=None) -> dict:
    """Top eigenvalue of the full-training-set Hessian and the largest top eigenvalue of
    ``n_batches`` random mini-batch Hessians (what ``scale`` must exceed)."""
    obj = TrainingObjective(model, train, names)
    if H is not None:
        full = top_eigenvalue(lambda v: H @ v, obj.dim, dtype=torch.float64, device=H.device)
    else:
        full = top_eigenvalue(lambda v: obj.full_hvp(v, 256), obj.dim, iters=20, device=obj.device)
    perm = torch.randperm(obj.n, generator=torch.Generator().manual_seed(1))
    mb = [obj.train[perm[s:s + batch_size]] for s in range(0, min(obj.n, n_batches * batch_size), batch_size)]
    mini = max(top_eigenvalue(lambda v: obj.hvp(v, b), obj.dim, device=obj.device) for b in mb)
    return {"top_eig_full": full, "top_eig_minibatch_max": mini, "minibatches": len(mb)}


def s_test_err(s, ref) -> dict:
    e = (s.double().cpu() - ref.double().cpu()).norm(dim=1) / ref.double().cpu().norm(dim=1).clamp_min(1e-30)
    return {"rel_err_median": float(e.median()), "rel_err_max": float(e.max())}


class Dattri:
    """dattri's LiSSA attributor on a copy of the model and our checkpoint (its own conventions:
    a torch.func-style loss, a checkpoint-loading function, data as (x, y) loaders)."""

    def __init__(self, model, checkpoint, device):
        self.model, self.ck, self.device = model, checkpoint, device

    def run(self, names, x, y, xt, yt, *, freeze_rest, depth, batch_size, damp, scale, repetitions, seed,
            n_attr=None):
        """``(scores (n_test, n_attr), s_test (n_test, d), seconds of transform_test_rep)``: the
        Hessian over all of (x, y), scores for its first ``n_attr`` examples (default all)."""
        from dattri.algorithm.influence_function import IFAttributorLiSSA
        from dattri.task import AttributionTask

        class KeepIHVP(IFAttributorLiSSA):
            """Records the inverse-HVP vectors and the time of the solve (nothing else changed)."""
            calls, ihvp_seconds, s_test = 0, 0.0, None

            def transform_test_rep(self, ckpt_idx, test_rep):
                t0 = time.perf_counter()
                out = super().transform_test_rep(ckpt_idx, test_rep)
                self.ihvp_seconds += time.perf_counter() - t0
                self.calls += 1
                self.s_test = out
                return out

        model = peer_copy(self.model, self.device, keep=list(names) if freeze_rest else None)

        def loss_func(params, data):
            # gradients: one example with its own batch dim of 1; Hessian: a (batch_size, ...)
            # mini-batch. lissa_collate_fn casts labels to float: cast back.
            image, label = data
            out = torch.func.functional_call(model, params, (image,))
            return F.cross_entropy(out, label.long())

        torch.manual_seed(seed)
        task = AttributionTask(loss_func=loss_func, model=model, checkpoints=[self.ck],
                               checkpoints_load_func=PeerCheckpoints.dattri_load)
        att = KeepIHVP(task, layer_name=list(names), device=str(self.device), batch_size=batch_size,
                       num_repeat=repetitions, recursion_depth=depth, damping=damp, scaling=scale)
        att.cache(loader(x, y))  # everything in ONE batch (see the module doc)
        n_attr = len(x) if n_attr is None else n_attr
        scores = att.attribute(loader(x[:n_attr], y[:n_attr]), loader(xt, yt))
        if att.calls != 1:
            raise RuntimeError(f"dattri ran LiSSA {att.calls} times (expected once)")
        return scores.T.detach().cpu(), att.s_test.detach().cpu(), att.ihvp_seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=8)
    ap.add_argument("--depth", type=int, default=400, help="LiSSA depth, last layer")
    ap.add_argument("--damp", type=float, default=0.01, help="LiSSA damp, last layer")
    ap.add_argument("--head-depth", type=int, default=200, help="LiSSA depth, head")
    ap.add_argument("--head-damp", type=float, default=0.1, help="LiSSA damp, head")
    ap.add_argument("--scale", type=float, default=20.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repetitions", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe-depth", type=int, default=5,
                    help="LiSSA steps of the slow dattri-as-documented run (0 skips it)")
    ap.add_argument("--probe-train", type=int, default=32,
                    help="training examples that run scores (with --probe-depth >= the depth and "
                         "--probe-train >= --n-train it is the full run: 10+ minutes per set)")
    ap.add_argument("--sets", default="last,head", help=f"comma-separated of {sorted(SETS)}")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    require_peer("dattri")
    sets = [s for s in args.sets.split(",") if s]
    unknown = set(sets) - set(SETS)
    if unknown:
        ap.error(f"unknown --sets {sorted(unknown)}; use {sorted(SETS)}")
    device = resolve_device(args.device)
    env = run_environment(args.threads, benchmark="lissa_peers", args=vars(args) | {"out": str(args.out)})
    t_start = time.perf_counter()
    settings = {"last": (args.damp, args.depth), "head": (args.head_damp, args.head_depth)}
    probe_n = min(args.probe_train, args.n_train)

    model = vgg(num_classes=10, width=0.25, seed=0)
    train = load("fashion_mnist", n=args.n_train, seed=0)
    test = load("fashion_mnist", split="test", n=args.n_test, seed=0)
    rows, srows = [], []
    env["scale_check"] = {}
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, progress=False, seed=0, weight_decay=0,
                          device=str(device))
        res = Trainer(model, cfg, run_dir).fit(train)
        ck = list_checkpoints(run_dir)[-1]
        ck.load_into(model)
        model = model.to(device).eval()
        print(f"trained VGG-11 w0.25 on {args.n_train} images in {res.wall_time_s:.1f} s", flush=True)
        X, Y = image_tensors(model, train, device)
        Xt, Yt = image_tensors(model, test, device)
        peer = Dattri(model, ck, device)

        for key in sets:
            label, names = SETS[key]
            damp, depth = settings[key]
            lam = args.scale * damp
            probe = min(args.probe_depth, depth)
            lissa_kw = dict(damp=damp, scale=args.scale, depth=depth, batch_size=args.batch_size,
                            repetitions=args.repetitions, seed=args.seed)

            def ours_lissa():
                inf = InfluenceFunction(model, train, params=names, weight_decay=0, solver="lissa",
                                        device=device, progress=False, **lissa_kw)
                G = inf.test_grads(test)
                t0 = time.perf_counter()
                S = inf.solve(G)
                t_ihvp = time.perf_counter() - t0
                return inf.scores_from_s_test(S), S, t_ihvp, inf

            print(f"{label}: LiSSA damp={damp:g} scale={args.scale:g} (lambda={lam:g}) depth={depth} "
                  f"batch_size={args.batch_size} repetitions={args.repetitions}; "
                  f"(1-damp)^depth = {(1 - damp) ** depth:.3g}", flush=True)
            (sc_o, s_o, ih_o, inf), t_o = timed(ours_lissa)
            d = inf.dim
            base = {"params": label, "d": d, "n_train": args.n_train, "n_test": args.n_test,
                    "damp": damp, "lambda": lam}
            step_o = ih_o / depth

            # the deterministic reference: explicit Hessian + Cholesky when it fits, else CG
            solver = "exact" if d <= EXACT_MAX_DIM else "cg"
            ref_name = "ours exact (Cholesky)" if solver == "exact" else f"ours CG (tol {CG_TOL:g})"

            def ours_ref():
                ex = InfluenceFunction(model, train, params=names, weight_decay=0, solver=solver,
                                       damping=lam, hvp_batch_size=256, cg=CGConfig(tol=CG_TOL, maxiter=500),
                                       device=device, progress=False)
                G = ex.test_grads(test)
                t0 = time.perf_counter()
                S = ex.solve(G)  # exact: builds (and caches) the explicit Hessian
                t_ihvp = time.perf_counter() - t0
                return ex.scores_from_s_test(S), S, t_ihvp, ex
            (sc_x, s_x, ih_x, ex), t_x = timed(ours_ref)
            H = ex.objective.cached_hessian() if solver == "exact" else None
            chk = scale_check(inf.model, train, names, args.batch_size, H=H)
            env["scale_check"][label] = chk
            print(f"  scale check ({d} parameters): top eigenvalue of H {chk['top_eig_full']:.3g}, max over "
                  f"{chk['minibatches']} mini-batch Hessians of {args.batch_size} "
                  f"{chk['top_eig_minibatch_max']:.3g}; scale {args.scale:g}"
                  + ("" if chk["top_eig_minibatch_max"] < args.scale else "  ** scale too small **"),
                  flush=True)

            def vs(prefix, scores, ref):
                return {f"{prefix}_{k}": v for k, v in agreement(scores, ref).items()}

            def add(impl, steps, secs, ihvp_s, scores, projected=None):
                step = ihvp_s / steps if steps else None
                row = base | {"impl": impl, "depth": steps, "seconds": round(secs, 3),
                              "projected_s": None if projected is None else round(projected, 1),
                              "ihvp_s": round(ihvp_s, 3),
                              "ms_per_step": round(1000 * step, 2) if step else None,
                              "x_ours": round((projected or secs) / t_o, 2),
                              "x_step": round(step / step_o, 2) if step else None}
                if scores is not None:
                    row |= vs("ref", scores, sc_x) | vs("ours", scores, sc_o)
                rows.append(row)
                print("  ", {k: v for k, v in row.items() if k not in base}, flush=True)

            add("ours LiSSA", depth, t_o, ih_o, sc_o)
            srows.append(base | {"impl": "ours LiSSA", "depth": depth, "vs": ref_name}
                         | s_test_err(s_o, s_x))

            dkw = dict(depth=depth, batch_size=args.batch_size, damp=damp, scale=args.scale,
                       repetitions=args.repetitions, seed=args.seed)
            (sc_f, s_f, ih_f), t_f = timed(lambda: peer.run(inf.names, X, Y, Xt, Yt, freeze_rest=True, **dkw))
            add("dattri LiSSA (layer_name, rest frozen)", depth, t_f, ih_f, sc_f)
            srows.append(base | {"impl": "dattri LiSSA (rest frozen)", "depth": depth,
                                 "vs": ref_name} | s_test_err(s_f, s_x))
            srows.append(base | {"impl": "dattri LiSSA (rest frozen)", "depth": depth,
                                 "vs": "ours LiSSA"} | s_test_err(s_f, s_o))

            if probe > 0:
                pkw = dkw | {"depth": probe}
                (sc_p, s_p, ih_p), t_p = timed(lambda: peer.run(inf.names, X, Y, Xt, Yt, freeze_rest=False,
                                                                n_attr=probe_n, **pkw))
                if probe == depth and probe_n == args.n_train:
                    add("dattri LiSSA (layer_name)", probe, t_p, ih_p, sc_p)
                else:
                    # gradients scale with the examples, the solve with the steps
                    proj = ((t_p - ih_p) * (args.n_train + args.n_test) / (probe_n + args.n_test)
                            + ih_p / probe * depth)
                    add(f"dattri LiSSA (layer_name) [probe: {probe_n} train x {probe} steps]", probe,
                        t_p, ih_p, None, projected=proj)
                # same seed and depth with the rest frozen: must give the same vectors
                s_fp = s_f if probe == depth else peer.run(inf.names, X, Y, Xt, Yt, freeze_rest=True,
                                                           n_attr=1, **pkw)[1]
                srows.append(base | {"impl": "dattri LiSSA (layer_name)", "depth": probe,
                                     "vs": "dattri rest frozen, same seed+depth"} | s_test_err(s_p, s_fp))
            add(ref_name, None, t_x, ih_x, sc_x)

    finish(rows, env, args.out, t_start, title="LiSSA influence: time and agreement (ref_*: with the "
           "reference (exact / CG) scores; ours_*: with our LiSSA scores)")
    s_out = args.out.with_name(args.out.stem + "_s_test" + args.out.suffix) if args.out else None
    finish(srows, env, s_out, t_start,
           title="s_test (inverse-HVP vectors): relative error ||s - s_ref|| / ||s_ref|| per test point")
    return rows, srows


if __name__ == "__main__":
    main()
