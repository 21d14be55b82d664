"""TracIn-WE: the sparse shared-token route vs dense embedding-gradient routes (ours, captum, dattri)
vs TracIn-last.

Same model (MiniLM classifier, one checkpoint), same inputs, one process, measured side by side:

* ``we_sparse``: :class:`repro.influence.tracin_we.TracInWE` (one backward per chunk for the
  position gradients, token rows summed per example, pairwise scoring grouped by token), with all
  tokens counted (``exclude_special=False``) and weight 1 (``lr_weighting=False``), so that its score
  *is* the full embedding-layer TracIn dot product ``grad_E l(z) . grad_E l(z')`` over the whole
  ``word_embeddings.weight`` matrix (the shared-token restriction of the paper's formula loses
  nothing: the rows of tokens absent from an example are zero in its dense gradient);
* ``we_sparse_top10``: the same with ``top_k_tokens=10`` (TracIn-WE-Topk);
* ``tracin_last``: :class:`repro.influence.TracInCP` with ``params="last"`` (factorised fast path);
* the **dense routes**, which materialise the full gradient of ``word_embeddings.weight``
  (30522 x 384 floats = 47 MB per example) for every example and take dense dot products.
  Affordable only for a few examples, so they run on the first ``--dense-n`` train /
  ``--dense-test`` test examples; their scores are checked against ``we_sparse`` on those pairs
  (:func:`common.agreement`: max relative difference, Spearman, top-10 overlap, which is trivially
  1 when ``--dense-n`` <= 10), and their cost is extrapolated linearly to the full sizes
  (``*_est`` rows: time per gradient x (n_train + n_test); the n_train x n_test dense dot products,
  11.7 M multiply-adds per pair, are scaled only linearly too, so the estimates are lower bounds):

  - ``we_dense``: our engine, ``per_example_grads(params="embeddings", method="loop")`` for train
    (fit) and test, then ``G_test @ G_train.T`` (score);
  - ``captum_dense``: ``captum.influence.TracInCP`` with ``layers=["encoder.embeddings.
    word_embeddings"]``, ``CrossEntropyLoss(reduction="none")`` (one forward per batch, one backward
    per example), the checkpoint loader returning learning rate 1 (like ``lr_weighting=False``);
    constructor + ``influence()``. captum keeps no train gradients: every ``influence`` call
    recomputes them;
  - ``dattri_dense``: ``dattri.algorithm.tracin.TracInAttributor`` (``torch.func`` ``vmap(grad)`` of
    the per-example loss, ``layer_name=["encoder.embeddings.word_embeddings.weight"]``, weight 1,
    ``normalized_grad=False``, random projection switched off so the scores are exact); it
    recomputes the test gradients for every train batch (one train batch here). With transformers
    5, ``vmap`` rejects the model as called with its 2D padding mask (the mask builder tests
    ``padding_mask.all()``, data-dependent control flow); the error is printed and the row
    ``dattri_dense_mask4d`` is measured instead, whose loss function hands the model a ready
    additive 4D mask (same scores). dattri is very slow here (minutes for 4 x 2 pairs on one CPU
    thread): with ``layer_name`` its differentiated function rebuilds the flat vector of *all*
    22.7 M model parameters (``partial_param`` -> ``flatten_params``, one slice assignment per
    parameter tensor), so every per-example backward copies that 90 MB vector about once per
    parameter tensor (105 times; ``CopySlices`` / ``clone`` / ``zeros_like`` dominate a profile),
    whatever layer is selected. Its warm-up is therefore only the vmapped forward of its loss
    (``--skip dattri`` leaves it out);
  - ``we_sparse_subset``: ours on exactly those pairs, the baseline of their ``x_ours`` (peer time /
    our time) and ``mem_x_ours`` (peer peak memory / our peak memory) columns; on ``*_est`` rows
    ``x_ours`` is relative to ``we_sparse`` at the full sizes.

  The peers are optional: when captum or dattri is not installed, or fails on this model, a note is
  printed and its rows are left out.

Time is wall-clock (fit = train rows, score = test rows + pairwise scores; peers: total only, their
constructor included), after a warm-up of every route outside the measurements (dattri: see above).
Memory (:func:`common.timed_peak`) is the peak resident-set growth during the step, sampled from
``/proc/self/statm`` every 2 ms after giving freed heap memory back to the OS (CPU), or
``torch.cuda.max_memory_allocated`` growth (CUDA); it includes loading the checkpoint (~87 MB for
MiniLM), which every route does. ``stored_MB`` is the size of the kept train rows (peers keep
none). A shared machine makes the numbers noisy (the load average is printed).

    python benchmarks/bench_tracin_we.py [--n-train 64] [--n-test 8] [--dense-n 4] [--dense-test 2]
        [--threads 2] [--skip captum,dattri] [--out f.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import traceback

import torch
import torch.nn.functional as F

from common import (PeerCheckpoints, agreement, dattri_tracin, format_table, loader, peer_copy,
                    peer_version, timed_peak)
from repro.data import load
from repro.influence import TracInCP, per_example_grads
from repro.influence.tracin_we import TracInWE, word_embedding_module
from repro.models import text_classifier
from repro.train import TrainConfig, Trainer, list_checkpoints
from repro.utils import resolve_device

MB = 2 ** 20
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _embedding_names(model) -> tuple[str, str]:
    """(module name, weight parameter name) of the model's input word embedding."""
    emb = word_embedding_module(model)
    module = next(n for n, m in model.named_modules() if m is emb)
    weight = next(n for n, p in model.named_parameters() if p is emb.weight)
    return module, weight


def _tensors(batch, device) -> tuple[torch.Tensor, ...]:
    """A batch as the positional tuple the peers use: (input_ids, attention_mask[, token_type_ids],
    labels), in the order of ``TextClassifier.forward``."""
    keys = [k for k in INPUT_KEYS if k in batch.inputs]
    if keys[:2] != ["input_ids", "attention_mask"]:
        raise ValueError(f"expected input_ids and attention_mask, got {list(batch.inputs)}")
    return tuple(batch.inputs[k].to(device) for k in keys) + (batch.labels.long().to(device),)


class DensePeers:
    """captum / dattri TracIn restricted to the word-embedding matrix, for one model and checkpoint
    list (their own conventions: a loader returning the learning rate, data as positional tuples)."""

    def __init__(self, model, checkpoints, device, lr: float = 1.0):
        # learning rate 1 for captum, as ``TracInWE(lr_weighting=False)`` weighs the checkpoint
        self.model, self.cks, self.device, self.lr = model, list(checkpoints), device, lr
        self.loader = PeerCheckpoints(self.cks, lr=lr)
        self.module_name, self.weight_name = _embedding_names(model)

    def captum(self, train, test):
        from captum.influence import TracInCP as CaptumTracInCP

        model = peer_copy(self.model, self.device)

        def run():
            t = CaptumTracInCP(model, torch.utils.data.TensorDataset(*train), self.loader.paths,
                               checkpoints_load_func=self.loader.captum_load, layers=[self.module_name],
                               loss_fn=torch.nn.CrossEntropyLoss(reduction="none"),
                               batch_size=len(train[-1]))
            return t.influence(test)  # (n_test, n_train)
        return run

    @staticmethod
    def _dattri_loss(model, mask4d: bool):
        """dattri's ``loss_func(params, data)`` for one example (dattri vmaps it over the batch, so the
        batch dimension is added here). ``mask4d``: hand the model a ready additive ``(1, 1, 1, L)``
        attention mask instead of the 2D padding mask (transformers returns a 4D mask as is, so its
        mask-building code, whose ``padding_mask.all()`` test is data-dependent control flow that
        ``vmap`` rejects, never runs; the scores are the same)."""
        def loss_func(params, data):
            *inputs, label = data
            inputs = [x.unsqueeze(0) for x in inputs]
            if mask4d:
                inputs[1] = (1.0 - inputs[1][:, None, None, :].float()) * torch.finfo(torch.float32).min
            out = torch.func.functional_call(model, params, tuple(inputs))
            return F.cross_entropy(out, label.unsqueeze(0))
        return loss_func

    def dattri_probe(self, train, test, mask4d: bool = False):
        """The warm-up of the dattri route: only the vmapped forward of its loss function on the
        first train example (a full dattri call costs minutes here, see the module doc), which is
        where the model fails under ``vmap`` if it does."""
        model = peer_copy(self.model, self.device)
        loss_func = self._dattri_loss(model, mask4d)
        params = {k: p.detach() for k, p in model.named_parameters()}
        return lambda: torch.func.vmap(loss_func, in_dims=(None, 0))(params, tuple(x[:1] for x in train))

    def dattri(self, train, test, mask4d: bool = False):
        """dattri's TracIn restricted to the word-embedding weight, exact (no projection)."""
        from dattri.task import AttributionTask

        model = peer_copy(self.model, self.device)
        loss_func = self._dattri_loss(model, mask4d)

        def run():
            task = AttributionTask(loss_func=loss_func, model=model, checkpoints=self.cks,
                                   checkpoints_load_func=PeerCheckpoints.dattri_load)
            return dattri_tracin(task, [self.lr] * len(self.cks), [self.weight_name], self.device,
                                 loader(*train), loader(*test))
        return run


def _short(e: BaseException, limit: int = 400) -> str:
    """One line: the exception, its message (shortened) and where it was raised."""
    msg = " ".join(str(e).split())
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}: {tb[-1].line})" if tb else ""
    return f"{type(e).__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}{where}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-test", type=int, default=8)
    ap.add_argument("--dense-n", type=int, default=4, help="train examples for the dense routes")
    ap.add_argument("--dense-test", type=int, default=2, help="test examples for the dense routes")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--dataset", default="snli")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip", default="", help="comma-separated peers to leave out: captum,dattri")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = resolve_device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    notes = []
    # (route, library, how to call DensePeers): dattri first as its users would call it (2D padding
    # mask); when that fails, the 4D-mask variant is tried in its place
    peer_routes = {"captum": [("captum_dense", "captum", dict(name="captum"))],
                   "dattri": [("dattri_dense", "dattri", dict(name="dattri")),
                              ("dattri_dense_mask4d", "dattri", dict(name="dattri", mask4d=True))]}
    peers_on = []
    for name in ("captum", "dattri"):
        if name in skip:
            notes.append(f"{name}: skipped (--skip)")
        elif peer_version(name) is None:
            notes.append(f"{name}: not installed, its rows are skipped (pip install -e '.[bench]')")
        else:
            peers_on.append(name)

    train_ds = load(args.dataset, n=args.n_train, seed=0)
    test_ds = load(args.dataset, split="test", n=args.n_test, seed=0)
    model = text_classifier(num_classes=train_ds.num_classes, max_length=args.max_length, seed=0)
    with tempfile.TemporaryDirectory() as run_dir:
        # one short fine-tuning epoch gives a real checkpoint for all routes
        Trainer(model, TrainConfig(epochs=1, batch_size=16, lr=1e-4, optimizer="adamw", progress=False,
                                   device=str(device)), run_dir).fit(train_ds.subset(range(min(16, args.n_train))))
        ck = list_checkpoints(run_dir)[-1]
        ck.load_into(model)
        model.eval()
        train, test = model.encode(train_ds), model.encode(test_ds)
        n_tr, n_te = len(train), len(test)
        dn, dt_ = min(args.dense_n, n_tr), min(args.dense_test, n_te)
        tr_small, te_small = train[torch.arange(dn)], test[torch.arange(dt_)]
        peers = DensePeers(model, [ck], device, lr=1.0)
        peer_data = (_tensors(tr_small, device), _tensors(te_small, device))
        rows = []

        # warm-up (lazy initialisation, allocator caches, thread pools) outside the measurements
        warm = train[torch.arange(min(2, n_tr))]
        TracInWE(model, ck, device=device, progress=False).fit(warm).scores(warm)
        TracInCP(model, ck, params="last", device=device, progress=False).fit(warm).scores(warm)
        per_example_grads(model, warm[torch.arange(1)], "embeddings", method="loop", device=device)
        warm1 = (_tensors(tr_small[torch.arange(1)], device), _tensors(te_small[torch.arange(1)], device))
        runnable = []  # (route, library, call) of the peer routes that ran in the warm-up
        for name in peers_on:
            for route, lib, call in peer_routes[name]:
                kw = {k: v for k, v in call.items() if k != "name"}
                warm_fn = peers.dattri_probe if lib == "dattri" else getattr(peers, call["name"])
                try:
                    warm_fn(*warm1, **kw)()
                except Exception as e:  # noqa: BLE001 - a peer that cannot run this model is reported, not fatal
                    notes.append(f"{route} ({lib} {peer_version(lib)}) failed on this model, row skipped: "
                                 f"{_short(e)}")
                    continue
                runnable.append((route, lib, call))
                break

        # ---------------- TracIn-WE, sparse
        we = TracInWE(model, ck, lr_weighting=False, exclude_special=False, device=device, progress=False)
        _, fit_s, fit_mb = timed_peak(lambda: we.fit(train), device)
        s_sparse, sc_s, sc_mb = timed_peak(lambda: we.scores(test), device)
        stored = sum(r.rows.numel() * 4 + r.ex.numel() * 16 for r in we._rows) / MB
        sparse = dict(route="we_sparse", n_train=n_tr, n_test=n_te, fit_s=fit_s, score_s=sc_s,
                      total_s=fit_s + sc_s, peak_MB=max(fit_mb, sc_mb), stored_MB=stored,
                      rows_per_example=len(we._rows[0]) / n_tr)
        rows.append(sparse)
        # Top-10 variant
        we10 = TracInWE(model, ck, lr_weighting=False, top_k_tokens=10, device=device, progress=False)
        _, fit10, mb10 = timed_peak(lambda: we10.fit(train), device)
        _, sc10, mb10b = timed_peak(lambda: we10.scores(test), device)
        rows.append(dict(route="we_sparse_top10", n_train=n_tr, n_test=n_te, fit_s=fit10, score_s=sc10,
                         total_s=fit10 + sc10, peak_MB=max(mb10, mb10b),
                         stored_MB=sum(r.rows.numel() * 4 + r.ex.numel() * 16 for r in we10._rows) / MB,
                         rows_per_example=len(we10._rows[0]) / n_tr))

        # ---------------- TracIn on the last layer (fast path)
        last = TracInCP(model, ck, params="last", lr_weighting=False, device=device, progress=False)
        _, lfit, lmb = timed_peak(lambda: last.fit(train), device)
        _, lsc, lmb2 = timed_peak(lambda: last.scores(test), device)
        tracin_last = dict(route="tracin_last", n_train=n_tr, n_test=n_te, fit_s=lfit, score_s=lsc,
                           total_s=lfit + lsc, peak_MB=max(lmb, lmb2),
                           stored_MB=sum(v.numel() * 4 for v in last._rows[0].values()) / MB)
        rows.append(tracin_last)

        # ---------------- ours (sparse) on the dense subset: the baseline of the x_ours columns
        ref = s_sparse[:dt_, :dn]
        we_sub = TracInWE(model, ck, lr_weighting=False, exclude_special=False, device=device, progress=False)
        _, sfit, smb = timed_peak(lambda: we_sub.fit(tr_small), device)
        _, ssc, smb2 = timed_peak(lambda: we_sub.scores(te_small), device)
        sub = dict(route="we_sparse_subset", n_train=dn, n_test=dt_, fit_s=sfit, score_s=ssc,
                   total_s=sfit + ssc, peak_MB=max(smb, smb2),
                   stored_MB=sum(r.rows.numel() * 4 + r.ex.numel() * 16 for r in we_sub._rows) / MB,
                   x_ours=1.0, mem_x_ours=1.0)

        def vs_ours(row, scores):
            """x_ours / mem_x_ours against ours on the same pairs, and the agreement of the scores."""
            row["x_ours"] = row["total_s"] / sub["total_s"]
            row["mem_x_ours"] = row["peak_MB"] / max(sub["peak_MB"], 1.0)
            row.update(agreement(ref, scores))
            return row

        def estimate(route, row, n_grads):
            """Linear extrapolation to the full sizes from the time per gradient on the subset."""
            per_grad = row["total_s"] / n_grads
            total = per_grad * (n_tr + n_te)
            return dict(route=route, n_train=n_tr, n_test=n_te, fit_s=None, score_s=None, total_s=total,
                        peak_MB=None, stored_MB=None, x_ours=total / sparse["total_s"])

        # ---------------- dense embedding-gradient route (our engine) on a few examples
        G_tr, dfit, dmb = timed_peak(lambda: per_example_grads(model, tr_small, "embeddings", method="loop",
                                                                  chunk_size=1, device=device), device)

        def dense_scores():
            g_te = per_example_grads(model, te_small, "embeddings", method="loop", chunk_size=1, device=device)
            return g_te @ G_tr.T
        s_dense, dsc, dmb2 = timed_peak(dense_scores, device)
        rel_err = float((s_dense - ref).abs().max() / ref.abs().max())
        per_fit, per_test = dfit / dn, dsc / dt_
        mb_per_row = G_tr.numel() * 4 / dn / MB
        rows.append(vs_ours(dict(route="we_dense", n_train=dn, n_test=dt_, fit_s=dfit, score_s=dsc,
                                 total_s=dfit + dsc, peak_MB=max(dmb, dmb2), stored_MB=G_tr.numel() * 4 / MB,
                                 max_rel_diff_vs_sparse=rel_err), s_dense))
        dense_est = dict(route="we_dense_est", n_train=n_tr, n_test=n_te, fit_s=per_fit * n_tr,
                         score_s=per_test * n_te, total_s=per_fit * n_tr + per_test * n_te,
                         peak_MB=None, stored_MB=mb_per_row * n_tr)
        dense_est["x_ours"] = dense_est["total_s"] / sparse["total_s"]
        rows.append(dense_est)
        rows.append(sub)
        G_tr = None  # free the dense train rows before the peers run

        # ---------------- the peers' dense routes on the same subset
        for route, lib, call in runnable:
            kw = {k: v for k, v in call.items() if k != "name"}
            try:
                s_peer, secs, mb = timed_peak(getattr(peers, call["name"])(*peer_data, **kw), device)
            except Exception as e:  # noqa: BLE001
                notes.append(f"{route} ({lib} {peer_version(lib)}) failed, row skipped: {_short(e)}")
                continue
            s_peer = s_peer.detach().float().cpu()
            row = vs_ours(dict(route=route, n_train=dn, n_test=dt_, fit_s=None, score_s=None,
                               total_s=secs, peak_MB=mb, stored_MB=None, library=f"{lib} {peer_version(lib)}"),
                          s_peer)
            rows.append(row)
            rows.append(estimate(f"{route}_est", row, dn + dt_))
            del s_peer

    by = {r["route"]: r for r in rows}
    load_avg = f" | load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    versions = " | ".join(f"{p} {peer_version(p)}" for p in ("captum", "dattri") if peer_version(p))
    print(f"# {platform.platform()} | torch {torch.__version__} | {versions} | device {device} | threads "
          f"{torch.get_num_threads()}{load_avg}")
    cols = ["route", "n_train", "n_test", "fit_s", "score_s", "total_s", "peak_MB", "stored_MB",
            "x_ours", "mem_x_ours", "max_rel_diff", "spearman", "top10_overlap"]
    print(format_table(rows, cols))
    print(f"\nsparse rows per train example: {sparse['rows_per_example']:.1f} (of {args.max_length} positions)")
    print(f"dense vs sparse scores on {dn}x{dt_} shared pairs: max rel diff {by['we_dense']['max_rel_diff_vs_sparse']:.2e}")
    for route, _, _ in runnable:
        r = by.get(route)
        if r is not None:
            print(f"{route} vs ours on {dn}x{dt_} pairs: max rel diff {r['max_rel_diff']:.2e}, spearman "
                  f"{r['spearman']:.4f}; time x{r['x_ours']:.1f}, peak memory x{r['mem_x_ours']:.1f} "
                  f"({r['peak_MB']:.0f} MB vs {sub['peak_MB']:.0f} MB)")
    print(f"dense/sparse (estimated at n_train={n_tr}, n_test={n_te}): "
          f"time x{dense_est['total_s'] / sparse['total_s']:.1f}, "
          f"stored train rows x{dense_est['stored_MB'] / max(sparse['stored_MB'], 1e-9):.0f}")
    print(f"dense per example: {per_fit:.3f} s and {mb_per_row:.1f} MB; sparse per train example: "
          f"{sparse['fit_s'] / n_tr:.4f} s and {sparse['stored_MB'] / n_tr * 1024:.1f} KB")
    print(f"sparse/tracin_last: time x{sparse['total_s'] / tracin_last['total_s']:.1f}")
    for note in notes:
        print(f"note: {note}")
    print(f"(run time {time.perf_counter() - t_start:.1f} s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
