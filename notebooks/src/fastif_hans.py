# %% [markdown]
# # FastIF: scalable influence functions, and fixing HANS errors with influential examples
#
# Replication of Guo, Rajani, Hase, Bansal, Xiong (EMNLP 2021), method in `docs/methods.md`.
# Influence functions score a training point z for a test point z' as `∇L(z) · s_test` with
# `s_test = (H + λI)⁻¹ ∇L(z')` estimated by LiSSA. FastIF makes this fast by (1) scoring only the
# k nearest training points in the model's feature space (pooled [CLS]), (2) estimating s_test with
# mini-batches of size 1 and more repetitions, and (3) averaging independent s_test estimates across
# parallel workers. **Sign**: the package reports **positive = helpful** (training on z lowers the
# test loss); FastIF's own influence is the negative of that.
#
# Experiments: model accuracy on the HANS-style set per heuristic; speed and correlation of FastIF
# vs full influence; kNN recall; the s_test batch-size × depth grid; and the error-correction
# experiment — one SGD step on the 10 most helpful (or harmful, or random) training points for 10
# anchors of a heuristic, 10 times, tracking HANS-style accuracy.
#
# **Deviations**: offline SNLI (entailment vs non-entailment) stands in for MNLI-2 and our own
# HANS-*style* generator for HANS (`repro.data.hans`: 30 subcases, our templates/vocabulary);
# MiniLM-L6 (top 2 of 6 layers trainable) stands in for BERT-base (top 2 of 12); training data, k and
# LiSSA depth are scaled down for 2 CPU cores (the paper: 392,702 examples, k = 1,000/10,000,
# J = 1,000). MiniLM was contrastively tuned on data including SNLI/MNLI, so it is not the
# lexical-overlap-prone model the paper starts from.

# %% tags=["parameters"]
profile = "smoke"
overrides = {}
results_dir = None

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from scipy.stats import kendalltau, pearsonr, spearmanr

from repro.data import load
from repro.data.hans import load_hans
from repro.data.registry import hans_dataset
from repro.experiments.common import start
from repro.experiments.hans_fix import correction_experiment, correction_summary, per_heuristic, split_anchor_test
from repro.influence import FastIF, InfluenceFunction, knn_recall
from repro.influence.hessian import WeightDecay
from repro.models import text_classifier
from repro.train import TrainConfig, Trainer, predict

params, out, run_root = start("fastif_hans", profile, overrides, results_dir)
p = params
pd.Series(params, dtype=object).to_frame("value")

# %% [markdown]
# ## The NLI model (2 labels), with only the top layers trainable

# %%
train = load(p["nli_data"], "train", n=p["n_train"], seed=p["seed"], source=p["source"], stratify=True)
test = load(p["nli_data"], "test", n=p["n_test"], seed=p["seed"], source=p["source"], stratify=True)
model = text_classifier(num_classes=2, model_name=p["text_model"], max_length=p["max_length"],
                        train_top_layers=p["train_top_layers"], seed=p["seed"])
cfg = TrainConfig(epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], optimizer=p["optimizer"], momentum=0.9,
                  weight_decay=p["weight_decay"], schedule="constant", seed=p["seed"])
res = Trainer(model, cfg, run_root / "nli").fit(train, eval=test, resume=False)
model.eval()
n_trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
print(f"{len(train)} training pairs; {n_trainable:,} trainable parameters; test accuracy {res.final['eval_accuracy']:.3f}")

# %% [markdown]
# ## Accuracy on the HANS-style set, per heuristic and gold label
# The paper's BERT (and BERT generally, McCoy et al.) is near 100% on entailed and near 0% on
# non-entailed cases. Ours:

# %%
hans_eval = hans_dataset(load_hans("evaluation", p["hans_n_per_subcase"], seed=p["seed"], source=p["hans_source"]), "test")
hans_pool = hans_dataset(load_hans("train", p["hans_train_n_per_subcase"], seed=p["seed"], source=p["hans_source"]), "train")
anchors, hans_test = split_anchor_test(hans_eval, 0.5, seed=p["seed"])
hans_acc = per_heuristic(model, hans_eval)
out.table("hans_accuracy", hans_acc)
hans_acc.pivot(index="heuristic", columns="label", values="accuracy")

# %% [markdown]
# ## Speed and quality: FastIF vs full influence
# "Full" = influence of every training point with s_test from LiSSA with mini-batches of
# `full_batch_size`; FastIF = the k nearest candidates with s_test from mini-batches of 1.
# Both at the same depth J and damping λ = scale · damp.

# %%
decay = WeightDecay(p["weight_decay"])  # the SGD weight decay the model was trained with
lissa = dict(scale=p["lissa_scale"], damp=p["lissa_damp"], depth=p["lissa_depth"], seed=p["seed"])
preds = predict(model, test).argmax(1).numpy()
wrong, right = np.flatnonzero(preds != test.labels), np.flatnonzero(preds == test.labels)
half = p["n_query"] // 2
qpos = np.concatenate([wrong[:half], right[: p["n_query"] - min(half, len(wrong))]])
queries = test.subset(qpos)

t0 = time.perf_counter()
full_if = InfluenceFunction(model, train, params="trainable", weight_decay=decay, solver="lissa",
                            batch_size=p["full_batch_size"], progress=False, **lissa)
full_scores = full_if.scores(queries)
t_full = time.perf_counter() - t0
print(f"full influence: {len(queries)} test points x {len(train)} training points in {t_full:.1f} s")

fif = FastIF(model, train, k=max(p["knn_ks"]), params="trainable", weight_decay=decay, batch_size=1,
             progress=False, **lissa)
rows, recall_rows, timing_rows = [], [], []
for k in p["knn_ks"]:
    t0 = time.perf_counter()
    r = fif.candidates(queries, k=k)
    t_k = time.perf_counter() - t0
    timing_rows.append({"k": k, "seconds": t_k, "speedup": t_full / t_k})
    for q in range(len(queries)):
        full_on_cand = full_scores[q, r.candidate_positions[q]].numpy()
        fast = r.scores[q].numpy()
        rows.append({"k": k, "query": q, "correct": bool(preds[qpos[q]] == test.labels[qpos[q]]),
                     "pearson": pearsonr(fast, full_on_cand)[0], "spearman": spearmanr(fast, full_on_cand)[0],
                     "kendall": kendalltau(fast, full_on_cand)[0]})
    for kind in ("helpful", "harmful", "abs"):
        rec = knn_recall(full_scores, r.candidate_positions, p["recall_top"], kind)
        recall_rows.append({"k": k, "k/N": k / len(train), "kind": kind, "recall_mean": float(rec.mean()),
                            "recall_min": float(rec.min()), "recall_max": float(rec.max())})
corr = pd.DataFrame(rows)
speed = corr.groupby("k")[["pearson", "spearman", "kendall"]].mean().reset_index().merge(pd.DataFrame(timing_rows), on="k")
recall = pd.DataFrame(recall_rows)
out.table("fastif_vs_full", speed)
out.table("fastif_vs_full_per_query", corr)
out.table("knn_recall", recall)
speed

# %%
recall.pivot(index=["k", "k/N"], columns="kind", values="recall_mean")

# %% [markdown]
# ### Parallel s_test: independent estimates from `parallel_workers` processes, all-reduce averaged

# %%
k_par = p["knn_ks"][len(p["knn_ks"]) // 2]
t0 = time.perf_counter()
seq2 = FastIF(model, train, k=k_par, params="trainable", weight_decay=decay, batch_size=1, progress=False,
              repetitions=p["parallel_workers"], **lissa).candidates(queries)
t_seq2 = time.perf_counter() - t0
t0 = time.perf_counter()
par = fif.candidates(queries, k=k_par, workers=p["parallel_workers"])
t_par = time.perf_counter() - t0
parallel = pd.DataFrame([
    {"variant": f"sequential, {p['parallel_workers']} repetitions", "seconds": t_seq2},
    {"variant": f"{p['parallel_workers']} gloo workers, 1 repetition each", "seconds": t_par,
     "max |diff| vs sequential": float((par.scores - seq2.scores).abs().max())},
])
parallel["speedup_vs_full"] = t_full / parallel["seconds"]
out.table("parallel", parallel)
parallel

# %% [markdown]
# ## The s_test grid: mini-batch size × recursion depth
# Error of s_test relative to a reference (largest batch and depth, 2 repetitions), and time.

# %%
q1 = queries.subset([0])
ref_if = InfluenceFunction(model, train, params="trainable", weight_decay=decay, solver="lissa", progress=False,
                           **{**lissa, "depth": max(p["grid_depths"]), "batch_size": max(p["grid_batch_sizes"]),
                              "repetitions": 2})
s_ref = ref_if.s_test(q1)
grid = []
for bs in p["grid_batch_sizes"]:
    for J in p["grid_depths"]:
        est = InfluenceFunction(model, train, params="trainable", weight_decay=decay, solver="lissa", progress=False,
                                **{**lissa, "depth": J, "batch_size": bs, "seed": p["seed"] + 1})
        t0 = time.perf_counter()
        s = est.s_test(q1)
        grid.append({"batch_size": bs, "depth": J, "seconds": time.perf_counter() - t0,
                     "rel_error": float((s - s_ref).norm() / s_ref.norm())})
grid = pd.DataFrame(grid)
out.table("s_test_grid", grid)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
sns.lineplot(data=grid, x="depth", y="rel_error", hue="batch_size", marker="o", palette="viridis", ax=axes[0])
sns.lineplot(data=grid, x="depth", y="seconds", hue="batch_size", marker="o", palette="viridis", ax=axes[1])
axes[0].set(title="s_test error vs reference", ylabel="‖s − s_ref‖ / ‖s_ref‖")
axes[1].set(title="time per s_test")
fig.tight_layout()
out.figure("s_test_grid", fig)
grid.pivot(index="depth", columns="batch_size", values="rel_error")

# %% [markdown]
# ## Fixing HANS-style errors with influential training points
# For each heuristic: 10 anchors from the anchor part; FastIF scores the k nearest candidates of the
# anchors' mean feature against the anchors' mean loss; one SGD step (lr `fix_lr`, trainable
# parameters only) on the 10 most helpful — or most harmful, or 10 random — points; repeated
# `fix_steps` times; accuracy on the held-out HANS-style test part after every step. On CPU the
# NLI candidate pool is the first `fix_pool_n` training pairs (the kNN index is rebuilt every step,
# since the model changes).

# %%
def make_scorer(pool):
    def scorer(m, anc, _pool):
        est = FastIF(m, pool, k=min(p["fix_k"], len(pool)), params="trainable", weight_decay=decay, batch_size=1,
                     progress=False, **{**lissa, "depth": p["fix_depth"]})
        r = est.candidates(anc, aggregate="mean")
        return r.candidate_positions[0].numpy(), r.scores[0].numpy()
    return scorer


fix_kw = dict(steps=p["fix_steps"], anchors_per_step=p["fix_anchors"], per_step=p["fix_per_step"], lr=p["fix_lr"])
runs = []
nli_pool = train if p["fix_pool_n"] is None else train.subset(slice(0, p["fix_pool_n"]))
for pool_name, pool in ((p["nli_data"] + " training set", nli_pool), ("HANS-style training split (unseen)", hans_pool)):
    r = correction_experiment(model, pool, anchors, hans_test, make_scorer(pool), p["fix_heuristics"],
                              replicas=p["fix_replicas"], **fix_kw)
    runs.append(r.assign(pool=pool_name))
runs = pd.concat(runs, ignore_index=True)
out.table("hans_fix_runs", runs)
fix_summary = pd.concat([correction_summary(g).assign(pool=name) for name, g in runs.groupby("pool", sort=False)],
                        ignore_index=True)
out.table("hans_fix_summary", fix_summary)
fix_summary

# %%
own = runs[runs.heuristic == runs.target]
g = sns.relplot(data=own, x="step", y="accuracy", hue="mode", col="target", row="pool", kind="line",
                errorbar="sd", height=2.6, aspect=1.2, palette={"helpful": "tab:green", "harmful": "tab:red",
                                                                  "random": "tab:gray"})
g.set_titles("{row_name}\n{col_name}", size=8)
out.figure("hans_fix", g.figure)

# %% [markdown]
# ## Paper vs ours

# %%
best = speed.iloc[speed["k"].argmin()]
gain_of = lambda pool, mode: fix_summary[(fix_summary.pool == pool) & (fix_summary["mode"] == mode)]["gain"].mean()
pool1 = p["nli_data"] + " training set"
pool2 = "HANS-style training split (unseen)"
paper_vs_ours = pd.DataFrame([
    {"claim": "FastIF is ~80x faster than full influence", "paper": "≈80x (MNLI, 390k examples, k=1,000)",
     "ours": f"{best.speedup:.1f}x at k={int(best.k)} of N={len(train)} (full scan is linear in N)"},
    {"claim": "FastIF correlates highly with full influence on the candidates",
     "paper": "Pearson 99.9 / Spearman 99.8 / Kendall 97.4 at k=1,000 [V-nb]",
     "ours": "; ".join(f"k={int(r.k)}: {100 * r.pearson:.1f} / {100 * r.spearman:.1f} / {100 * r.kendall:.1f}"
                       for r in speed.itertuples())},
    {"claim": "kNN recall of the top-10 is well above k/N", "paper": "0.05-0.4 at k/N = 2.5% [V-nb, approximate]",
     "ours": "; ".join(f"k/N={r['k/N']:.2f}: {r.recall_mean:.2f}" for _, r in recall[recall.kind == "helpful"].iterrows())},
    {"claim": "s_test error depends mainly on depth, barely on batch size; small batches are much faster",
     "paper": "yes (s_test grid)",
     "ours": f"error at max depth: " + ", ".join(f"b={int(r.batch_size)}: {r.rel_error:.2f}" for r in
                                                 grid[grid.depth == max(p['grid_depths'])].itertuples())},
    {"claim": "model fails non-entailed HANS cases", "paper": "BERT ≈ 0-28% on non-entailed (McCoy et al.)",
     "ours": ", ".join(f"{r.heuristic}: {r.accuracy:.0%}" for r in hans_acc[hans_acc.label == "non-entailment"].itertuples())},
    {"claim": "fine-tuning on helpful training points fixes HANS errors", "paper": "+2.5% (MNLI-2 pool), +2.8% (HANS pool)",
     "ours": f"gain after {p['fix_steps']} steps: helpful {gain_of(pool1, 'helpful'):+.3f}, random {gain_of(pool1, 'random'):+.3f}, "
             f"harmful {gain_of(pool1, 'harmful'):+.3f} (NLI pool); helpful {gain_of(pool2, 'helpful'):+.3f}, "
             f"random {gain_of(pool2, 'random'):+.3f} (HANS-style pool)"},
])
out.table("paper_vs_ours", paper_vs_ours)
with pd.option_context("display.max_colwidth", 250):
    display(paper_vs_ours)

# %%
metrics = {
    "test_accuracy": res.final["eval_accuracy"], "n_train": len(train), "trainable_params": n_trainable,
    "hans_accuracy": {f"{r.heuristic}/{r.label}": r.accuracy for r in hans_acc.itertuples()},
    "full_seconds": t_full,
    "fastif": {int(r.k): {"seconds": r.seconds, "speedup": r.speedup, "pearson": r.pearson, "spearman": r.spearman,
                          "kendall": r.kendall} for r in speed.itertuples()},
    "knn_recall_helpful": {int(r.k): r.recall_mean for r in recall[recall.kind == "helpful"].itertuples()},
    "parallel_seconds": t_par, "sequential_2rep_seconds": t_seq2,
    "hans_fix_gain": {f"{r.pool}/{r.target}/{r.mode}": r.gain for r in fix_summary.itertuples()},
}
# Claims: criteria stated here, verdicts computed (repro.claims). The paper's speed-up is at N = 392,702;
# ours is measured at this profile's N, so it is read against a lower bar and reported with N.
from repro.claims import at_least, claim

largest = speed.iloc[speed["k"].argmax()]
non_ent = hans_acc[hans_acc.label == "non-entailment"]
ent = hans_acc[hans_acc.label == "entailment"]
non_ent_error = 1.0 - float(non_ent.accuracy.mean())
helpful_minus_random = float(np.mean([gain_of(pool, "helpful") - gain_of(pool, "random") for pool in (pool1, pool2)]))
claims = [
    claim("fastif_speedup", claim="FastIF is much faster than full influence", paper="≈80x (MNLI, N = 392,702, k = 1,000)",
          ours=float(best.speedup), unit=f"speed-up at k = {int(best.k)}, N = {len(train)}",
          criterion=at_least(10.0, partly_from=2.0, what="the speed-up"), n=f"{len(queries)} test points",
          reason=f"N = {len(train)}: the full scan is linear in N, so the ratio is small at this size"),
    claim("fastif_correlation", claim="FastIF's scores correlate with full influence on the candidates",
          paper="Spearman 99.8 at k = 1,000 [V-nb]", ours=float(largest.spearman),
          unit=f"Spearman at k = {int(largest.k)}", criterion=at_least(0.95, partly_from=0.8, what="the Spearman correlation"),
          n=f"{len(queries)} test points", reason="shallower LiSSA than the paper's"),
    claim("model_fails_hans", claim="the NLI model fails non-entailed HANS cases",
          paper="BERT ≈ 0-28% accuracy on non-entailed (McCoy et al.)", ours=non_ent_error,
          unit="error rate on non-entailed HANS-style examples (mean over heuristics)",
          criterion=at_least(0.7, partly_from=0.5, what="the error rate"), n=f"{len(hans_eval)} HANS-style pairs",
          reason=f"entailed accuracy {float(ent.accuracy.mean()):.2f}, non-entailed {float(non_ent.accuracy.mean()):.2f}: "
                 "the model does not show HANS's entailment bias on this generator"),
    claim("hans_fix_helpful_beats_random", claim="fine-tuning on helpful points fixes more HANS errors than random points",
          paper="+2.5% (MNLI-2 pool), +2.8% (HANS pool)", ours=helpful_minus_random,
          unit=f"accuracy gain, helpful minus random, after {p['fix_steps']} steps (mean over 2 pools)",
          criterion=at_least(0.01, partly_from=1e-9, what="helpful minus random"),
          n=f"{p['fix_replicas']} replica(s) x {len(p['fix_heuristics'])} heuristics x 2 pools",
          reason="the correction steps change almost no prediction of this model"),
]
out.finish(metrics, claims=claims, notes=[f"{p['nli_data']} stands in for MNLI-2; HANS-style ({p['hans_source']}) for HANS",
                           f"{p['text_model']} with top {p['train_top_layers']} layers trainable stands in for BERT-base"])
metrics
