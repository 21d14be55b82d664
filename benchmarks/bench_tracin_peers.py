#!/usr/bin/env python3
"""TracInCP: ours vs captum (and dattri) side by side, each at its best setting, time and peak memory.

Two models, trained once by the parent process (checkpoints in a temporary folder):

* **VGG-11** (width ``--width``, Fashion-MNIST 28 px), ``--epochs`` epochs (one checkpoint each, SGD,
  learning rate saved with each checkpoint) on the largest ``--sizes`` subset (12,000 = every
  embedded training image), ``--n-test`` test images;
* **MiniLM** (``text_classifier(model_name="minilm", max_length=64, train_top_layers=1)``): only the
  top encoder layer, the pooler and the classifier are trained and differentiated, ``--text-n``
  SNLI pairs, ``--text-test`` test pairs, 2 checkpoints.

Every (implementation, parameter set, task, n_train) configuration runs in **its own subprocess**
(``--child``): it loads the model and data, runs the implementation once on 8 training / 2 test
examples (warm-up: kernel and import set-up), records the resident set, runs the timed call once
and reports its wall time and its **peak RSS growth**: the
kernel's peak-RSS mark is reset after loading (``/proc/self/clear_refs``), so ``VmHWM`` (and
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which follows the same mark) after the call minus the
RSS before it is the call's own peak growth (``peak_reset`` False: the reset was refused, and the
loading phase's peak is included, an upper bound). Scores go back to the parent, which checks
**agreement** with our streaming scores before any time is reported: a row whose
``max |a - b| / max |b|`` exceeds ``1e-5`` or whose top-10 overlap is below 1 is flagged (``agree``).

Implementations (each with identical parameters on both sides of a comparison):

* ours: ``TracInCP(store="stream")`` (no training rows kept; factored "ghost" products per layer),
  ``store="rows"`` (per-example rows at every checkpoint; skipped when they would exceed
  ``--mem-budget-gb``) and the default ``store="auto"`` (its choice is recorded); default chunk sizes;
* captum 0.9.0 ``TracInCP``, default per-example loop (``sample_wise_grads_per_batch=False``,
  ``loss reduction="none"``): supports any parameter set (``layers=``);
* captum ``TracInCP(sample_wise_grads_per_batch=True)``, its fastest exact configuration (batched
  hooks, ``reduction="sum"``): Conv2d and Linear only, so that comparison uses the conv + linear
  parameters (all but the BatchNorm affine ones) on both sides (MiniLM: the Linear layers of the top
  block, the pooler and the classifier, i.e. all but the LayerNorms);
* captum ``TracInCPFast`` (last layer): it ignores the classifier bias, so that comparison uses
  ``classifier.weight`` only on both sides; dattri ``TracInAttributor`` on the same weight (other
  parameters frozen in its copy, random projection off so it is exact); dattri over all parameters
  (27-45x slower than ours in earlier runs) only with ``--dattri-all``.

captum's batch size is chosen per mode by a **probe** (``--probe-batches``, default 4, 16, 64, at
``n_train = --probe-n``): the fastest one is used for that mode's scores and self-influence rows
(the probe's timings go to ``<out>_probe.csv``). A peer configuration is **skipped** when its time,
extrapolated linearly in n_train from its largest measured (or probed) size, exceeds
``--budget-s``; the reason is recorded.

Outputs (``--out results/benchmarks/tracin_peers.csv``): the rows (+ ``.env.json``: versions,
threads, load average), ``_probe.csv``, ``_floor.csv`` (our all-parameter time over the physical
floor: checkpoints x one batched forward+backward epoch over the same train + test images) and a
printed ratio table (``x_ours`` = time / our default's time, ``store="auto"`` where that row
exists, else ``"stream"``; > 1: ours faster; ``mem_x_ours`` the same for peak RSS growth). Each row
records the load average when its subprocess started.

    OMP_NUM_THREADS=1 python benchmarks/bench_tracin_peers.py --out results/benchmarks/tracin_peers.csv \
        [--sizes 500,2000,12000] [--n-test 32] [--budget-s 600] [--skip text,self,last]

Quick check: ``--sizes 100 --n-test 8 --text-n 24 --text-test 4 --probe-n 16``.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the peers' progress bars (tqdm >= 4.66 reads this)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (PeerCheckpoints, _rss_bytes, _trim_heap, agreement, dattri_tracin, finish,  # noqa: E402
                    loader, peer_copy, require_peer, run_environment)

TOL_REL = 1e-5
WARM_N, WARM_TEST = 8, 2


# ====================================================================== model / data set-up
def _vgg_setup(spec, device):
    from repro.data import load
    from repro.models import vgg

    model = vgg(num_classes=10, width=spec["width"], seed=0)
    train = load("fashion_mnist", n=spec["n_max"], seed=0)
    test = load("fashion_mnist", split="test", n=spec["n_test"], seed=0)
    return model, train, test


def _text_setup(spec, device):
    from repro.data import load
    from repro.models import text_classifier

    model = text_classifier(num_classes=3, model_name="minilm", max_length=64, train_top_layers=1, seed=0)
    train = load("snli", n=spec["n_max"], seed=0, stratify=True)
    test = load("snli", split="test", n=spec["n_test"], seed=0)
    return model, train, test


def _tensors(model, batch, device, width=None):
    """The positional tensors a peer gets: the model's inputs in ``forward``'s order, then labels.
    Text: padded to ``width`` (the longest example of the whole set, as a user would)."""
    if "pixel_values" in batch.inputs:
        return (batch.inputs["pixel_values"].to(device), batch.labels.to(device))
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch.inputs]
    return tuple(batch.inputs[k][:, :width].to(device) for k in keys) + (batch.labels.to(device),)


class Context:
    """What a child process loads before the timed call: the model at the last checkpoint, the
    checkpoints, our batches and the peers' tensors."""

    def __init__(self, spec):
        from repro.train import list_checkpoints
        from repro.utils import resolve_device

        self.device = resolve_device(spec["device"])
        setup = _vgg_setup if spec["model"] == "vgg" else _text_setup
        model, train, test = setup(spec, self.device)
        self.cks = list_checkpoints(spec["run_dir"])
        self.cks[-1].load_into(model)
        self.model = model.to(self.device).eval()
        self.train_b, self.test_b = model.encode(train), model.encode(test)
        width = None
        if "attention_mask" in self.train_b.inputs:
            width = int(max((self.train_b.inputs["attention_mask"] != 0).sum(1).max(),
                            (self.test_b.inputs["attention_mask"] != 0).sum(1).max()))
        self.train_t = _tensors(model, self.train_b, self.device, width)
        self.test_t = _tensors(model, self.test_b, self.device, width)
        self.peers = PeerCheckpoints(self.cks)


def _patch_captum_view():
    """captum 0.9.0 bug: ``_tensor_batch_dot`` calls ``.view`` on the per-sample gradients that its
    batched hooks produce; for a conv layer whose input is 1 x 1 pixels (our VGG's 7th conv) that
    tensor is not contiguous and ``.view`` raises. Replaced by the same product with ``.reshape``
    (copies only when needed); nothing else of captum is touched."""
    from captum.influence._utils import common as cc

    def batch_dot(t1, t2):
        return torch.mm(t1.reshape(t1.shape[0], -1), t2.reshape(t2.shape[0], -1).T)
    cc._tensor_batch_dot = batch_dot


def _input_requires_grad(model, name):
    """captum's batched hooks register a backward hook on each hooked layer's input tensor, which
    fails ("cannot register a hook on a tensor that doesn't require gradient") for the first trained
    layer above frozen ones. Workaround: a forward pre-hook on module ``name`` (MiniLM's top encoder
    layer) that passes its hidden states on as a leaf requiring grad (one extra input-gradient
    product per Linear of that layer; nothing below it is differentiated)."""
    if not name:
        return
    mod = dict(model.named_modules())[name]

    def pre(module, args, kwargs):
        if args:
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = kwargs["hidden_states"].detach().requires_grad_(True)
        return args, kwargs
    mod.register_forward_pre_hook(pre, with_kwargs=True)


def run_impl(ctx: Context, cfg: dict, n: int, n_test: int, batch_size):
    """Scores ``(n_test, n)`` (task "scores") or self-influence ``(n,)`` of one implementation,
    plus a note (e.g. the store ours chose)."""
    impl, task, names = cfg["impl"], cfg["task"], cfg["names"]
    idx = torch.arange(n)
    if impl.startswith("ours"):
        from repro.influence import TracInCP

        store = impl.split(":")[1]
        t = TracInCP(ctx.model, ctx.cks, params=names, store=store, device=ctx.device, progress=False,
                     batch_size=batch_size)
        t.fit(ctx.train_b[idx])
        out = t.scores(ctx.test_b[torch.arange(n_test)]) if task == "scores" else t.self_influence()
        return out, f"store={t.stored}" + (" fast" if t.fast else "")
    x = tuple(v[:n] for v in ctx.train_t)
    xt = tuple(v[:n_test] for v in ctx.test_t)
    if impl in ("captum_loop", "captum_batched"):
        from captum.influence import TracInCP as CaptumTracInCP

        batched = impl == "captum_batched"
        model = peer_copy(ctx.model, ctx.device)
        if batched:
            _patch_captum_view()
            _input_requires_grad(model, cfg.get("grad_input"))
        loss = torch.nn.CrossEntropyLoss(reduction="sum" if batched else "none")
        t = CaptumTracInCP(model, torch.utils.data.TensorDataset(*x),
                           ctx.peers.paths, checkpoints_load_func=ctx.peers.captum_load,
                           layers=cfg["layers"], loss_fn=loss, batch_size=batch_size,
                           sample_wise_grads_per_batch=batched)
        return (t.influence(xt) if task == "scores" else t.self_influence()), ""
    if impl == "captum_fast":
        from captum.influence import TracInCPFast

        t = TracInCPFast(peer_copy(ctx.model, ctx.device), "classifier", torch.utils.data.TensorDataset(*x),
                         ctx.peers.paths, checkpoints_load_func=ctx.peers.captum_load,
                         loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"), batch_size=batch_size)
        return (t.influence(xt) if task == "scores" else t.self_influence()), "bias ignored"
    if impl == "dattri":
        from dattri.task import AttributionTask

        keep = None if cfg["params"] == "all" else names
        model = peer_copy(ctx.model, ctx.device, keep=keep)

        def loss_func(params, data):  # one example (dattri vmaps over the batch)
            image, label = data
            out = torch.func.functional_call(model, params, (image.unsqueeze(0),))
            return F.cross_entropy(out, label.unsqueeze(0))

        task_ = AttributionTask(loss_func=loss_func, model=model, checkpoints=ctx.cks,
                                checkpoints_load_func=PeerCheckpoints.dattri_load)
        if task != "scores":
            raise ValueError("dattri rows are scores only")
        return dattri_tracin(task_, [c.lr for c in ctx.cks], keep, ctx.device,
                             loader(*x, batch_size=batch_size), loader(*xt, batch_size=batch_size)), \
            "other params frozen" if keep else ""
    raise ValueError(impl)


def _hwm_mb() -> float:
    """Peak resident set of this process (``VmHWM``, MB)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (``/proc/self/clear_refs`` = 5, Linux
    >= 4.0), so that the peak measured afterwards is the timed call's own, not the loading phase's;
    ``ru_maxrss`` follows the same mark. False when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def child(spec_path: str) -> None:
    """One configuration in a fresh process: load, warm up, time one call, report peak RSS."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    load_avg = os.getloadavg()
    ctx = Context(spec)
    cfg = spec["cfg"]
    warm = run_impl(ctx, cfg, min(WARM_N, spec["n"]), min(WARM_TEST, spec["n_test"]),
                    spec["batch_sizes"][0])
    del warm
    gc.collect()
    _trim_heap()
    res: dict = {"loadavg_child_start": load_avg, "threads": torch.get_num_threads()}
    res["maxrss_load_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["hwm_reset"] = _reset_hwm()
    res["rss_after_load_mb"] = _rss_bytes() / 2**20
    cuda = ctx.device.type == "cuda"
    times = []
    for bs in spec["batch_sizes"]:  # one for a measurement, several for a probe
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base_cuda = torch.cuda.memory_allocated()
        _sync(ctx.device)
        t0 = time.perf_counter()
        out, note = run_impl(ctx, cfg, spec["n"], spec["n_test"], bs)
        _sync(ctx.device)
        times.append(time.perf_counter() - t0)
        if cuda:
            res["cuda_peak_growth_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    res["seconds"] = times
    res["note"] = note
    res["maxrss_after_run_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["hwm_after_run_mb"] = _hwm_mb()
    # the process's peak since the reset (VmHWM; without the reset: ru_maxrss, which then also
    # counts the loading phase and so is an upper bound)
    peak = res["hwm_after_run_mb"] if res["hwm_reset"] else res["maxrss_after_run_mb"]
    res["peak_rss_growth_mb"] = peak - res["rss_after_load_mb"]
    torch.save(out.detach().float().cpu(), spec["scores_path"])
    Path(spec["result_path"]).write_text(json.dumps(res))


# ====================================================================== parent
def spawn(base: dict, cfg: dict, n: int, n_test: int, batch_sizes, tmp: Path, timeout: float):
    """Run one configuration in a child process; ``(result dict, scores)`` or ``(error, None)``."""
    tag = f"{base['model']}-{cfg['task']}-{cfg['params']}-{cfg['impl'].replace(':', '_')}-{n}-{len(batch_sizes)}"
    spec = base | {"cfg": cfg, "n": n, "n_test": n_test, "batch_sizes": list(batch_sizes),
                   "scores_path": str(tmp / f"{tag}.pt"), "result_path": str(tmp / f"{tag}.json")}
    sp = tmp / f"{tag}.spec.json"
    sp.write_text(json.dumps(spec))
    env = os.environ | {"OMP_NUM_THREADS": str(base["threads"]), "MKL_NUM_THREADS": str(base["threads"])}
    try:
        p = subprocess.run([sys.executable, __file__, "--child", str(sp)], env=env, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}, None
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {p.returncode}: " + " | ".join(tail)}, None
    return json.loads(Path(spec["result_path"]).read_text()), torch.load(spec["scores_path"])


def cols_over_tol(a: torch.Tensor, b: torch.Tensor, tol: float = TOL_REL, show: int = 8) -> str:
    """Which training examples (columns) carry the disagreement: ``"count: ids"`` of the columns
    whose ``max_i |a_ij - b_ij| / max |b|`` exceeds ``tol`` (at most ``show`` ids, largest first)."""
    err = (a.double() - b.double()).abs().max(0).values / b.double().abs().max().clamp_min(1e-30)
    bad = torch.nonzero(err > tol).squeeze(1)
    if not len(bad):
        return ""
    order = bad[err[bad].argsort(descending=True)][:show]
    return f"{len(bad)}: " + ",".join(str(int(i)) for i in order)


def epoch_time(model, x, y, batch_size=64) -> float:
    """Seconds of one batched forward + backward pass over (x, y) in eval mode (best of 2)."""
    model = copy.deepcopy(model).eval()
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for lo in range(0, len(x), batch_size):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[lo:lo + batch_size]), y[lo:lo + batch_size]).backward()
        best = min(best, time.perf_counter() - t0)
    return best


def grad_dim(model, names) -> int:
    d = dict(model.named_parameters())
    return sum(d[n].numel() for n in names)


class Runner:
    def __init__(self, args, env, tmp):
        self.args, self.env, self.tmp = args, env, tmp
        self.rows, self.probes = [], []
        self.best_bs: dict = {}       # (model, impl, params) -> batch size
        self.history: dict = {}       # (model, task, params, impl) -> (n, seconds)

    def probe(self, base, cfg, n_test):
        """Fastest batch size of a peer mode (one child, every candidate timed after a warm-up)."""
        key = (base["model"], cfg["impl"], cfg["params"])
        if key in self.best_bs:
            return self.best_bs[key]
        cands = [int(b) for b in self.args.probe_batches.split(",")]
        if cfg["impl"] == "captum_fast" or cfg["impl"] == "dattri":
            cands = [64, 256, 1024]
        n = min(self.args.probe_n, base["n_max"])
        print(f"  probe {cfg['impl']} ({cfg['params']}, {cfg['task']}) at n_train={n}: batch sizes {cands}",
              flush=True)
        res, _ = spawn(base, cfg, n, n_test, cands, self.tmp, timeout=self.args.budget_s * 3)
        if "error" in res:
            print(f"    probe failed: {res['error']}", flush=True)
            self.best_bs[key] = None
            return None
        for b, s in zip(cands, res["seconds"]):
            self.probes.append({"model": base["model"], "impl": cfg["impl"], "params": cfg["params"],
                                "task": cfg["task"], "n_train": n, "n_test": n_test, "batch_size": b,
                                "seconds": round(s, 3), "loadavg": round(res["loadavg_child_start"][0], 2)})
        best = cands[min(range(len(cands)), key=lambda i: res["seconds"][i])]
        print("    " + ", ".join(f"{b}: {s:.2f} s" for b, s in zip(cands, res["seconds"])) + f" -> {best}",
              flush=True)
        self.best_bs[key] = best
        self.history.setdefault((base["model"], cfg["task"], cfg["params"], cfg["impl"]),
                                (n, min(res["seconds"])))
        return best

    def group(self, base, model, task, params, names, impls, sizes, n_test, layers=None, note="",
              grad_input=None):
        """Every implementation of one (task, parameter set) at each size; agreement vs ours stream."""
        d = grad_dim(model, names)
        for n in sizes:
            print(f"{base['model']} {task} {params} ({d:,} params), n_train={n}", flush=True)
            ref = None
            group_rows = []
            for impl in impls:
                cfg = {"impl": impl, "task": task, "params": params, "names": names, "layers": layers,
                       "grad_input": grad_input}
                row = {"model": base["model"], "task": task, "params": params, "n_params": d, "n_train": n,
                       "n_test": n_test if task == "scores" else 0, "checkpoints": base["n_ckpts"],
                       "impl": impl, "batch_size": None}
                skip = None
                if impl == "ours:rows":
                    need = n * d * base["n_ckpts"] * 4 / 2**30
                    if need > self.args.mem_budget_gb:
                        skip = f"stored rows {need:.1f} GiB > --mem-budget-gb {self.args.mem_budget_gb}"
                bs = None
                if skip is None and not impl.startswith("ours"):
                    bs = self.probe(base, cfg, n_test)
                    row["batch_size"] = bs
                    if bs is None:
                        skip = "probe failed"
                hist = self.history.get((base["model"], task, params, impl))
                if skip is None and hist is not None and hist[0] < n:
                    est = hist[1] * n / hist[0]
                    if est > self.args.budget_s:
                        skip = f"estimated {est:.0f} s > --budget-s {self.args.budget_s:.0f} (from n={hist[0]}: {hist[1]:.1f} s)"
                if skip:
                    print(f"  {impl}: skipped ({skip})", flush=True)
                    group_rows.append(row | {"skipped": skip})
                    continue
                res, scores = spawn(base, cfg, n, n_test, [bs], self.tmp,
                                    timeout=max(3 * self.args.budget_s, 120))
                if "error" in res:
                    print(f"  {impl}: FAILED {res['error']}", flush=True)
                    group_rows.append(row | {"skipped": "failed: " + res["error"]})
                    continue
                secs = res["seconds"][0]
                self.history[(base["model"], task, params, impl)] = (n, secs)
                row |= {"seconds": round(secs, 3),
                        "peak_rss_growth_mb": round(res["peak_rss_growth_mb"], 1),
                        "rss_after_load_mb": round(res["rss_after_load_mb"], 1),
                        "maxrss_after_run_mb": round(res["maxrss_after_run_mb"], 1),
                        "peak_reset": res["hwm_reset"],
                        "loadavg": round(res["loadavg_child_start"][0], 2), "threads": res["threads"],
                        "impl_note": "; ".join(filter(None, [res["note"], note]))}
                if "cuda_peak_growth_mb" in res:
                    row["cuda_peak_growth_mb"] = round(res["cuda_peak_growth_mb"], 1)
                s2 = scores.reshape(1, -1) if scores.dim() == 1 else scores
                if ref is None:
                    ref = s2
                    row |= {"max_rel_diff": 0.0, "top10_overlap": 1.0, "agree": "reference"}
                else:
                    ag = agreement(s2, ref)
                    ok = ag["max_rel_diff"] <= TOL_REL and ag["top10_overlap"] >= 1.0 - 1e-9
                    row |= {"max_rel_diff": ag["max_rel_diff"], "spearman": round(ag["spearman"], 6),
                            "top10_overlap": ag["top10_overlap"], "agree": "ok" if ok else "FLAG",
                            "train_ids_over_tol": cols_over_tol(s2, ref)}
                print("  " + ", ".join(f"{k}={row[k]}" for k in ("impl", "batch_size", "seconds",
                      "peak_rss_growth_mb", "max_rel_diff", "top10_overlap", "agree") if k in row), flush=True)
                group_rows.append(row)
            # x_ours: against our default (store="auto") where measured, else store="stream"
            ours = next((r for imp in ("ours:auto", "ours:stream") for r in group_rows
                         if r["impl"] == imp and "seconds" in r), None)
            for r in group_rows:
                if ours and "seconds" in r:
                    r["x_ours"] = round(r["seconds"] / ours["seconds"], 2)
                    if ours["peak_rss_growth_mb"] > 0:
                        r["mem_x_ours"] = round(r["peak_rss_growth_mb"] / max(ours["peak_rss_growth_mb"], 1.0), 2)
            self.rows += group_rows


def train_run(model, train, run_dir, epochs, lr, momentum, batch_size, device):
    from repro.train import TrainConfig, Trainer, list_checkpoints

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, progress=False,
                      device=str(device), seed=0)
    res = Trainer(model, cfg, run_dir).fit(train)
    return list_checkpoints(run_dir), res.wall_time_s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sizes", default="500,2000,12000", help="n_train values (VGG)")
    ap.add_argument("--n-test", type=int, default=32)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--text-n", type=int, default=300, help="SNLI training pairs (MiniLM)")
    ap.add_argument("--text-test", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget-s", type=float, default=600.0,
                    help="skip a peer configuration whose extrapolated time exceeds this")
    ap.add_argument("--mem-budget-gb", type=float, default=6.0,
                    help="skip ours store='rows' when its stored rows would exceed this (GiB)")
    ap.add_argument("--probe-n", type=int, default=64)
    ap.add_argument("--probe-batches", default="4,16,64")
    ap.add_argument("--dattri-all", action="store_true", help="also dattri over all VGG parameters")
    ap.add_argument("--skip", default="", help="comma-separated groups: all,convlin,self,last,text")
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child)
    require_peer("captum")
    require_peer("dattri")
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    from repro.data import load
    from repro.influence.grads import param_names
    from repro.models import text_classifier, vgg
    from repro.utils import resolve_device

    device = resolve_device(args.device)
    env = run_environment(args.threads, benchmark="tracin_peers",
                          args=vars(args) | {"out": str(args.out)})
    env["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    print(f"load average at start: {env['loadavg_start']}; torch threads {torch.get_num_threads()}", flush=True)
    t_start = time.perf_counter()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    floor = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        runner = Runner(args, env, tmp)
        # ------------------------------------------------------------------ VGG
        n_max = max(sizes)
        model = vgg(num_classes=10, width=args.width, seed=0)
        train = load("fashion_mnist", n=n_max, seed=0)
        cks, wall = train_run(model, train, tmp / "vgg", args.epochs, 0.05, 0.0, 64, device)
        print(f"trained VGG-11 w{args.width} on {n_max} images: {len(cks)} checkpoints, {wall:.1f} s; "
              f"lr per checkpoint {[c.lr for c in cks]}", flush=True)
        cks[-1].load_into(model)
        model = model.to(device).eval()
        base = {"model": "vgg", "run_dir": str(tmp / "vgg"), "width": args.width, "n_max": n_max,
                "n_test": args.n_test, "threads": args.threads, "device": str(device), "n_ckpts": len(cks)}
        all_names = param_names(model, "all")
        conv_linear = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        cl_names = [n for n in all_names if n.rsplit(".", 1)[0] in conv_linear]
        peers_all = ["captum_loop"] + (["dattri"] if args.dattri_all else [])
        if "all" not in skip:
            runner.group(base, model, "scores", "all", all_names,
                         ["ours:stream", "ours:rows", "ours:auto", *peers_all], sizes, args.n_test,
                         note="captum loop over all parameters (layers=None)")
        if "convlin" not in skip:
            runner.group(base, model, "scores", "conv+linear", cl_names,
                         ["ours:stream", "ours:rows", "ours:auto", "captum_batched"], sizes, args.n_test,
                         layers=conv_linear, note="no BatchNorm parameters (captum's batched hooks: Conv2d/Linear only)")
        if "self" not in skip:
            runner.group(base, model, "self", "all", all_names, ["ours:stream", "ours:rows", "captum_loop"],
                         sizes, args.n_test)
            runner.group(base, model, "self", "conv+linear", cl_names,
                         ["ours:stream", "ours:rows", "captum_batched"], sizes, args.n_test, layers=conv_linear)
        if "last" not in skip:
            runner.group(base, model, "scores", "classifier.weight", ["classifier.weight"],
                         ["ours:stream", "ours:auto", "captum_fast", "dattri"], sizes, args.n_test,
                         note="weight only: TracInCPFast ignores the bias")
        # floor: checkpoints x one batched fwd+bwd epoch over the same train + test images
        if "all" not in skip:
            ctx_train = model.encode(train)
            X, Y = ctx_train.inputs["pixel_values"].to(device), ctx_train.labels.to(device)
            test_b = model.encode(load("fashion_mnist", split="test", n=args.n_test, seed=0))
            Xt, Yt = test_b.inputs["pixel_values"].to(device), test_b.labels.to(device)
            for n in sizes:
                ours = next((r for r in runner.rows if r["task"] == "scores" and r["params"] == "all"
                             and r["impl"] == "ours:stream" and r["n_train"] == n and "seconds" in r), None)
                if ours is None:
                    continue
                fb = len(cks) * epoch_time(model, torch.cat([X[:n], Xt]), torch.cat([Y[:n], Yt]))
                floor.append({"model": "vgg", "params": "all", "n_train": n, "n_test": args.n_test,
                              "impl": "ours:stream", "seconds": ours["seconds"], "floor_seconds": round(fb, 3),
                              "x_floor": round(ours["seconds"] / fb, 2),
                              "floor": "ckpts x fwd+bwd epoch (batch 64, eval mode)",
                              "loadavg": round(os.getloadavg()[0], 2)})
            del X, Y, Xt, Yt
        # ------------------------------------------------------------------ MiniLM top layers
        if "text" not in skip:
            tmodel = text_classifier(num_classes=3, model_name="minilm", max_length=64, train_top_layers=1, seed=0)
            ttrain = load("snli", n=args.text_n, seed=0, stratify=True)
            tcks, wall = train_run(tmodel, ttrain, tmp / "text", 2, 0.02, 0.9, 16, device)
            print(f"trained MiniLM (top layer) on {len(ttrain)} SNLI pairs: {len(tcks)} checkpoints, "
                  f"{wall:.1f} s", flush=True)
            tcks[-1].load_into(tmodel)
            tbase = {"model": "minilm", "run_dir": str(tmp / "text"), "n_max": args.text_n,
                     "n_test": args.text_test, "threads": args.threads, "device": str(device),
                     "n_ckpts": len(tcks)}
            top = f"encoder.encoder.layer.{len(tmodel.encoder.encoder.layer) - 1}"
            tr_names = param_names(tmodel, "trainable")
            runner.group(tbase, tmodel, "scores", "top layer+pooler+classifier", tr_names,
                         ["ours:stream", "ours:rows", "ours:auto", "captum_loop"], [args.text_n], args.text_test,
                         layers=[top, "encoder.pooler", "classifier"],
                         note="captum layers=[top layer, pooler, classifier]")
            lin = [n for n, m in tmodel.named_modules() if isinstance(m, torch.nn.Linear)
                   and (n.startswith(top + ".") or n.startswith("encoder.pooler") or n == "classifier")]
            lin_names = [n for n in tr_names if n.rsplit(".", 1)[0] in lin]
            runner.group(tbase, tmodel, "scores", "Linear layers of top+pooler+classifier", lin_names,
                         ["ours:stream", "ours:rows", "captum_batched"], [args.text_n], args.text_test, layers=lin,
                         grad_input=top, note="no LayerNorm parameters (captum's batched hooks: Linear "
                         "only); captum's top-layer input made to require grad (see _input_requires_grad)")
        rows, probes = runner.rows, runner.probes
    cols = ["model", "task", "params", "n_train", "impl", "batch_size", "seconds", "x_ours",
            "peak_rss_growth_mb", "mem_x_ours", "max_rel_diff", "top10_overlap", "agree", "train_ids_over_tol", "loadavg", "skipped"]
    out = args.out
    finish(probes, env, out.with_name(out.stem + "_probe" + out.suffix) if out else None, t_start,
           title="batch-size probe (captum / dattri; fastest kept)")
    if floor:
        finish(floor, env, out.with_name(out.stem + "_floor" + out.suffix) if out else None, t_start,
               title="ours (stream, all parameters) over the floor")
    finish(rows, env, out, t_start, cols=cols,
           title="TracInCP side by side (x_ours = time / ours' time (store='auto', else 'stream'), > 1: ours faster; "
                 "peak = peak-RSS (VmHWM) growth of the timed call, MB)")
    return rows


if __name__ == "__main__":
    main()
