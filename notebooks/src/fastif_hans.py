# %% [markdown]
# # FastIF: scalable influence functions, and fixing HANS errors with influential examples
#
# Replication of Guo, Rajani, Hase, Bansal, Xiong (EMNLP 2021), method in `docs/methods.md`.
# Influence functions score a training point z for a test point z' as `∇L(z) · s_test` with
# `s_test = (H + λI)⁻¹ ∇L(z')` estimated by LiSSA. FastIF makes this fast by (1) scoring only the
# k nearest training points in the model's feature space (pooled [CLS]), (2) estimating s_test with
# mini-batches of size 1, and (3) averaging independent s_test estimates from parallel workers.
# **Sign**: the package reports **positive = helpful** (training on z lowers the test loss);
# FastIF's own influence is the negative of that.
#
# Four experiments: (1) an NLI-2 model trained on every embedded SNLI-2 pair; (2) a HANS-style
# diagnostic: does the model fall for the lexical-overlap, subsequence and constituent heuristics?
# (3) speed and quality of FastIF against full influence as the training set grows; (4) the
# error-correction experiment: 10 single SGD steps, each on the 10 training points most helpful (or
# harmful, or random) for 10 anchors of one heuristic, with HANS-style accuracy tracked per label.
#
# **Deviations** (the `paper` profile removes the first three where the hub is reachable):
# - SNLI-2 (entailment vs neutral + contradiction, the 20,000 embedded training pairs) stands in
#   for MNLI-2 (392,702 pairs); our HANS-style generator (`repro.data.hans`) for HANS. It has two
#   styles with the same 30 subcases: `original` (HANS-like vocabulary: doctors, senators, ...) and
#   `snli` (people, animals, everyday actions and places in the present progressive, as in SNLI's
#   captions), because a model trained on SNLI captions does not read HANS's sentences (see the
#   identity check below). The correction experiment runs on the `snli` style.
# - MiniLM-L6 (top 2 of 6 layers + pooler + classifier trainable) stands in for BERT-base (top 2 of
#   12). Training only the top 1 (FastIF's fraction of the layers) reached 78.8% SNLI-2 accuracy in
#   2 epochs and no HANS-style bias, against 87.6% with 2 layers (probe, `scripts/probe_nli_hans.py`). On CPU the frozen lower layers are computed once and cached (`cache_frozen`; the same
#   logits, gradients and Hessian-vector products as the uncached model, tested), and training uses
#   length-bucketed batches. MiniLM was contrastively tuned on data including SNLI/MNLI.
# - Trained with AdamW (lr 1e-4, 2 epochs, no weight decay); the influence objective has no L2 term
#   either, its damping is LiSSA's λ = scale · damp. LiSSA depth and k are scaled to 2 cores.
# - The committed 600-pair version of this notebook (before 2026-12-02) could test neither headline:
#   its model predicted non-entailment for every HANS-style pair, and a speed-up measured at N = 600
#   says nothing about N = 390,000.

# %% tags=["parameters"]
# Parameters (papermill: -p NAME VALUE; repro run: --set NAME=VALUE; or edit here).
# `...` = the value of the chosen profile; `repro params fastif_hans --profile cpu` lists them.
# Any other value, None included, overrides the profile. Unknown names are an error.
profile: str = "smoke"  # smoke | cpu | gpu | paper (smoke: a seconds-long test run, numbers meaningless)
results_dir = None  # results root; None: results/ of the checkout, or $REPRO_RESULTS
seed: int = ...  # integer; all profiles: 0
source: str = ...  # string; smoke 'auto', cpu 'auto', gpu 'auto', paper 'hub'
nli_data: str = ...  # string; smoke 'snli2', cpu 'snli2', gpu 'snli2', paper 'mnli2'; MNLI-2 stand-in; paper: mnli2 (source: hub)
hans_source: str = ...  # string; smoke 'generated', cpu 'generated', gpu 'generated', paper 'hub'; HANS-style generator; paper: hub (real HANS)
hans_styles: list = ...  # list; smoke ['original', 'snli'], cpu ['original', 'snli'], gpu ['original', 'snli'], paper ['original']; generator styles in the diagnostic (the hub has one)
text_model: str = ...  # string; smoke 'minilm', cpu 'minilm', gpu 'minilm', paper 'bert-base-cased'
train_top_layers: int = ...  # integer; all profiles: 2; as FastIF: only the top layers (+ pooler, classifier) train
cache_frozen: bool = ...  # boolean; smoke True, cpu True, gpu False, paper False; compute the frozen lower layers once (same results, much cheaper)
n_train: int = ...  # integer or None; smoke 80, cpu None, gpu None, paper None; null : every training pair
n_test: int = ...  # integer or None; smoke 40, cpu 2000, gpu None, paper 2000
epochs: int = ...  # integer; smoke 1, cpu 2, gpu 3, paper 10
optimizer: str = ...  # string; all profiles: 'adamw'
lr: float = ...  # number; smoke 0.0001, cpu 0.0001, gpu 0.0001, paper 2e-05
batch_size: int = ...  # integer; smoke 32, cpu 32, gpu 32, paper 128
weight_decay: float = ...  # number; all profiles: 0.0
max_length: int = ...  # integer; smoke 48, cpu 128, gpu 128, paper 128
hans_n_per_subcase: int = ...  # integer; smoke 2, cpu 40, gpu 100, paper 1000; diagnostic: evaluation examples per subcase and style
n_identity: int = ...  # integer; smoke 20, cpu 300, gpu 1000, paper 1000; identity check: premises repeated as hypotheses
lissa_scale: float = ...  # number; smoke 1000.0, cpu 1000.0, gpu 1000.0, paper 1000000.0
lissa_damp: float = ...  # number; all profiles: 0.005; lambda : scale * damp
lissa_depth: int = ...  # integer; smoke 10, cpu 50, gpu 1000, paper 1000; J, for full influence and FastIF alike
full_batch_size: int = ...  # integer; smoke 8, cpu 8, gpu 8, paper 128; LiSSA mini-batch of the full (original) influence
n_query: int = ...  # integer; smoke 2, cpu 4, gpu 10, paper 6; test points (half misclassified) for speed/quality
speed_ns: list = ...  # list; smoke [40, 80], cpu [2000, 5000, 20000], gpu [2000, 5000, 20000], paper [20000, 100000, 392702]; nested training subsets for the speed-up curve
knn_ks: list = ...  # list; smoke [5, 20], cpu [100, 1000], gpu [100, 1000, 5000], paper [1000, 10000]; each used where k <: N / 4
recall_top: int = ...  # integer; all profiles: 10
parallel_workers: int = ...  # integer; all profiles: 2
parallel_k: int = ...  # integer; smoke 20, cpu 1000, gpu 1000, paper 1000; k of the parallel-workers timing
parallel_n: int = ...  # integer or None; smoke None, cpu 5000, gpu None, paper None; N of the parallel-workers timing (null: the largest)
grid_batch_sizes: list = ...  # list; smoke [1, 4], cpu [1, 8], gpu [1, 2, 4, 8, 16, 32, 64, 128], paper [1, 2, 4, 8, 16, 32, 64, 128]
grid_depths: list = ...  # list; smoke [5, 10], cpu [25, 50, 100], gpu [700, 1000, 1300], paper [700, 800, 900, 1000, 1100, 1200, 1300]
fix_style: str = ...  # string; smoke 'snli', cpu 'snli', gpu 'snli', paper 'original'; HANS-style generator of the correction experiment
fix_n_per_subcase: int = ...  # integer; smoke 4, cpu 20, gpu 100, paper 1000; evaluation examples per subcase, halved into anchors / test
hans_train_n_per_subcase: int = ...  # integer; smoke 2, cpu 100, gpu 100, paper 1000; the unseen HANS-style candidate pool
fix_steps: int = ...  # integer; smoke 2, cpu 10, gpu 10, paper 10
fix_anchors: int = ...  # integer; all profiles: 10
fix_per_step: int = ...  # integer; all profiles: 10
fix_lrs: list = ...  # list; all profiles: [0.0001, 0.001]; the first is the paper's; the others are sensitivity rows
fix_sensitivity_pools: int = ...  # integer; smoke 1, cpu 1, gpu 2, paper 2; how many pools (in order: NLI, HANS-style) run the sensitivity lrs
fix_sensitivity_modes: list = ...  # list; smoke ['helpful', 'harmful', 'random', 'anchors'], cpu ['helpful', 'random'], gpu ['helpful', 'harmful', 'random', 'anchors'], paper ['helpful', 'harmful', 'random', 'anchors']; modes of the sensitivity rows
fix_workers: int = ...  # integer; all profiles: 2; forked single-threaded processes for the correction runs
fix_k: int = ...  # integer; smoke 20, cpu 50, gpu 1000, paper 1000; kNN candidates per step
fix_depth: int = ...  # integer; smoke 5, cpu 10, gpu 1000, paper 1000; LiSSA depth per correction step
fix_replicas: int = ...  # integer; smoke 1, cpu 3, gpu 3, paper 3
fix_heuristics: list = ...  # list; smoke ['lexical_overlap'], cpu ['lexical_overlap', 'subsequence', 'constituent'], gpu ['lexical_overlap', 'subsequence', 'constituent'], paper ['lexical_overlap', 'subsequence', 'constituent']

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from scipy.stats import kendalltau, pearsonr, spearmanr

from repro.claims import at_least, ci_above, claim, claims_frame, mean_ci
from repro.data import load
from repro.data.hans import identity_pairs, load_hans
from repro.data.registry import hans_dataset
from repro.experiments.common import start
from repro.experiments.figures import (band_lines, bars_with_intervals, interval_frame, interval_label,
                                       proportion_frame)
from repro.experiments.hans_fix import (HansSplit, correction_experiment, correction_gains, correction_summary,
                                        fastif_scorer, paired_contrast, per_heuristic, split_anchor_test)
from repro.influence import FastIF, InfluenceFunction, knn_recall
from repro.models import text_classifier
from repro.train import TrainConfig, Trainer, predict

params, out, run_root = start("fastif_hans", globals())
p = params
T_START = time.perf_counter()
pd.Series(params, dtype=object).to_frame("value")

# %% [markdown]
# ## 1. The NLI-2 model
# Only the top layers train, as in FastIF. With `cache_frozen` the embeddings and lower layers run
# once per example (their output is stored), and every later forward pass, gradient and
# Hessian-vector product starts from the stored states.

# %%
train_ds = load(p["nli_data"], "train", n=p["n_train"], seed=p["seed"], source=p["source"], stratify=True)
test_ds = load(p["nli_data"], "test", n=p["n_test"], seed=p["seed"], source=p["source"], stratify=True)
model = text_classifier(num_classes=2, model_name=p["text_model"], max_length=p["max_length"],
                        train_top_layers=p["train_top_layers"], attn_implementation="eager",
                        frozen_in_eval=True, seed=p["seed"])


def ready(ds):
    """Model-ready examples sorted by token length (little padding per mini-batch); the frozen
    layers' output instead of token ids when the profile caches them."""
    batch = model.encode(ds)
    batch = batch[torch.argsort(batch.lengths(), stable=True)]
    return model.cache_frozen(batch, batch_size=64) if p["cache_frozen"] else batch


t0 = time.perf_counter()
train, test = ready(train_ds), ready(test_ds)
t_prepare = time.perf_counter() - t0
cfg = TrainConfig(epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], optimizer=p["optimizer"],
                  weight_decay=p["weight_decay"], schedule="constant", seed=p["seed"], group_by_length=True,
                  checkpoint_epochs="final", progress=False)
t0 = time.perf_counter()
res = Trainer(model, cfg, run_dir=None).fit(train)
t_train = time.perf_counter() - t0
model.eval()
test_pred = predict(model, test).argmax(1).numpy()
test_acc = float((test_pred == test.labels.numpy()).mean())
n_trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
model_summary = pd.Series({
    "training pairs": len(train), "trainable parameters": n_trainable,
    f"{p['nli_data']} test accuracy": round(test_acc, 4), "test pairs": len(test),
    "majority-class test accuracy": round(float(np.bincount(test.labels.numpy()).max() / len(test)), 4),
    "encode + cache seconds": round(t_prepare, 1), "training seconds": round(t_train, 1),
    "training pairs / s": round(p["epochs"] * len(train) / t_train, 1)})
out.table("model", model_summary.to_frame("value"))
model_summary.to_frame("value")

# %% [markdown]
# ## 2. Does the model fall for the HANS heuristics?
# HANS pairs a premise with a hypothesis made of its own words. Entailed cases (label 0) are right
# when the model trusts word overlap; non-entailed ones (label 1) are right only when it does not.
# McCoy et al.'s BERT: near 100% on entailed, near 0-28% on non-entailed cases. **Stated before the
# run**: the model *falls for* a heuristic on a generator when it is at least 80% accurate on its
# entailed and at most 30% on its non-entailed cases.
#
# The identity check repeats a premise word for word as the hypothesis (always entailed): a model
# that reads the generator's sentences calls nearly all of these entailment.

# %%
def styled(style):
    return {} if p["hans_source"] == "hub" else {"style": style}


diag, splits = [], {}
for style in p["hans_styles"]:
    frame = load_hans("evaluation", p["hans_n_per_subcase"], seed=p["seed"], source=p["hans_source"], **styled(style))
    splits[style] = HansSplit.from_dataset(model, hans_dataset(frame, "test", name=f"hans_{style}"), cache=p["cache_frozen"])
    diag.append(per_heuristic(model, splits[style]).assign(generator=style))
diag = pd.concat(diag, ignore_index=True)
falls = (diag.pivot_table(index=["generator", "heuristic"], columns="label", values="accuracy")
         .rename(columns={"entailment": "entailed accuracy", "non-entailment": "non-entailed accuracy"}))
falls["falls for it"] = (falls["entailed accuracy"] >= 0.8) & (falls["non-entailed accuracy"] <= 0.3)
out.table("hans_accuracy", diag)
out.table("hans_verdicts", falls.reset_index())

ident = []
if p["hans_source"] != "hub":
    for style in p["hans_styles"]:
        f = identity_pairs(p["n_identity"], seed=p["seed"], style=style, split="evaluation")
        pr = predict(model, ready(hans_dataset(f, "test", name=f"identity_{style}"))).argmax(1)
        ident.append({"premises": f"HANS-style ({style})", "n": len(f), "called entailment": float((pr == 0).float().mean())})
prem = pd.unique(test_ds.texts.astype(str))
prem = prem[np.random.default_rng(p["seed"]).choice(len(prem), size=min(p["n_identity"], len(prem)), replace=False)]
f = pd.DataFrame({"id": np.arange(len(prem)) + 9_000_000, "premise": prem, "hypothesis": prem, "label": 0,
                  "heuristic": "identity", "subcase": "identity"})
pr = predict(model, ready(hans_dataset(f, "test", name="identity_nli"))).argmax(1)
ident.append({"premises": f"{p['nli_data']} test premises", "n": len(f), "called entailment": float((pr == 0).float().mean())})
ident = pd.DataFrame(ident)
out.table("identity_check", ident)
display(ident)
falls.round(3)

# %%
fell = falls[falls["falls for it"]].index.tolist()
print("The model falls for: " + (", ".join(f"{h} ({g} style)" for g, h in fell) if fell else "no heuristic")
      + " (criterion: entailed >= 80%, non-entailed <= 30%).")
fig, axes = plt.subplots(1, len(p["hans_styles"]), figsize=(4.6 * len(p["hans_styles"]), 3.6), squeeze=False)
for ax, style in zip(axes[0], p["hans_styles"]):
    d = proportion_frame(diag[diag.generator == style])  # Wilson interval of the accuracy on n pairs
    bars_with_intervals(ax, d, x="heuristic", hue="label",
                        palette={"entailment": "tab:blue", "non-entailment": "tab:orange"})
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set(title=f"HANS-style, {style} generator", ylim=(0, 1), xlabel="",
           ylabel=f"accuracy ({interval_label(int(d.n.min()), 'pairs', 'wilson')})")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=7, title="gold label", title_fontsize=7)
fig.tight_layout()
out.figure("hans_diagnostic", fig)

# %% [markdown]
# ## 3. Speed and quality: FastIF against full influence as N grows
# *Full* influence scores every training point: s_test from LiSSA with mini-batches of
# `full_batch_size`, then one gradient per training point. *FastIF*: the k nearest training points
# of the test point (exact L2 on pooled features), s_test with mini-batches of 1, a gradient per
# candidate. Same depth J and damping λ = scale · damp. Times are per test point: the full scan as
# the paper ran it (one test point at a time) and amortized over all test points (the training
# gradients computed once for all of them); the kNN index build is reported separately and
# amortized over the test points. The training sets are nested random subsets; a k is used where
# k ≤ N/4 (above that, the "nearest neighbours" are most of the training set). The parallel
# workers are timed at N = `parallel_n` (spawned workers each get a copy of the training set).

# %%
lissa = dict(scale=p["lissa_scale"], damp=p["lissa_damp"], depth=p["lissa_depth"], seed=p["seed"])
wrong, right = np.flatnonzero(test_pred != test.labels.numpy()), np.flatnonzero(test_pred == test.labels.numpy())
rng = np.random.default_rng(p["seed"])
half = p["n_query"] // 2
qpos = np.concatenate([rng.choice(wrong, min(half, len(wrong)), replace=False),
                       rng.choice(right, p["n_query"] - min(half, len(wrong)), replace=False)])
queries = test[torch.from_numpy(qpos)]
Q = len(queries)
perm = torch.from_numpy(rng.permutation(len(train)))
ns = sorted({min(int(n), len(train)) for n in p["speed_ns"]})
ks = p["knn_ks"]
# spawned workers each receive a copy of the training set (here: cached hidden states, ~170 kB per
# pair); the profile may time them at a smaller N to stay within memory
parallel_n = min(ns, key=lambda n: abs(n - (p["parallel_n"] or ns[-1])))
speed_rows, corr_rows, recall_rows = [], [], []
for N in ns:
    tr = train if N == len(train) else train[perm[:N]]  # (no copy of the whole cached set)
    full_if = InfluenceFunction(model, tr, params="trainable", solver="lissa", batch_size=p["full_batch_size"],
                                progress=False, **lissa)
    t0 = time.perf_counter()
    S_full = full_if.s_test(queries)
    t_stest_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    full_scores = full_if.scores(queries, s_test=S_full)
    t_pass = time.perf_counter() - t0
    fif = FastIF(model, k=max(ks), params="trainable", batch_size=1, progress=False, **lissa)
    t0 = time.perf_counter()
    fif.fit(tr)
    t_index = time.perf_counter() - t0
    base = {"N": N, "full_per_query_s": t_stest_full / Q + t_pass, "full_amortized_s": (t_stest_full + t_pass) / Q,
            "full_s_test_s": t_stest_full / Q, "full_train_pass_s": t_pass, "index_build_s": t_index}
    for k in ks:
        if 4 * k > N:
            continue  # k above N / 4 is no longer a nearest-neighbour shortlist
        r = fif.candidates(queries, k=k)
        per_q = r.timings["total_s"] / Q
        speed_rows.append({**base, "k": k, "variant": "FastIF, 1 process", "fastif_per_query_s": per_q,
                           "fastif_amortized_index_s": per_q + t_index / Q,
                           "knn_s": r.timings["knn_s"] / Q, "s_test_s": r.timings["s_test_s"] / Q,
                           "candidate_grads_s": r.timings["candidate_grads_s"] / Q})
        for q in range(Q):
            cand = r.candidate_positions[q]
            fast, full_c = r.scores[q].numpy(), full_scores[q, cand].numpy()
            corr_rows.append({"N": N, "k": k, "query": q, "correct": bool(q >= min(half, len(wrong))),
                              "pearson": pearsonr(fast, full_c)[0], "spearman": spearmanr(fast, full_c)[0],
                              "kendall": kendalltau(fast, full_c)[0]})
        for kind in ("helpful", "harmful", "abs"):
            rec = knn_recall(full_scores, r.candidate_positions, p["recall_top"], kind)
            recall_rows.append({"N": N, "k": k, "k/N": k / N, "kind": kind, "recall": float(rec.mean()),
                                "recall_min": float(rec.min()), "recall_max": float(rec.max())})
        if N == parallel_n and k == p["parallel_k"] and p["parallel_workers"] > 1:
            W = p["parallel_workers"]
            seq = FastIF(model, k=k, params="trainable", batch_size=1, progress=False, repetitions=W, **lissa)
            seq.fit(tr, index=fif.index)
            t0 = time.perf_counter()
            seq_r = seq.candidates(queries)
            t_seq = time.perf_counter() - t0
            t0 = time.perf_counter()
            par_r = fif.candidates(queries, k=k, workers=W)
            t_par = time.perf_counter() - t0
            for name, t in ((f"FastIF, {W} repetitions in 1 process", t_seq),
                            (f"FastIF, {W} gloo workers x 1 repetition", t_par)):
                speed_rows.append({**base, "k": k, "variant": name, "fastif_per_query_s": t / Q,
                                   "fastif_amortized_index_s": t / Q + t_index / Q})
            parallel_spearman = float(np.mean([spearmanr(par_r.scores[q].numpy(), seq_r.scores[q].numpy())[0]
                                               for q in range(Q)]))
del full_if, fif, S_full, full_scores, tr  # free the largest training set's estimators
speed = pd.DataFrame(speed_rows)
speed["speedup"] = speed["full_per_query_s"] / speed["fastif_per_query_s"]
speed["speedup_amortized"] = speed["full_amortized_s"] / speed["fastif_amortized_index_s"]
corr = pd.DataFrame(corr_rows)
recall = pd.DataFrame(recall_rows)
quality = corr.groupby(["N", "k"])[["pearson", "spearman", "kendall"]].mean().reset_index()
out.table("fastif_vs_full", speed)
out.table("fastif_vs_full_per_query", corr)
out.table("fastif_quality", quality)
out.table("knn_recall", recall)
speed[["N", "k", "variant", "full_per_query_s", "fastif_per_query_s", "speedup", "index_build_s", "speedup_amortized"]].round(3)

# %%
quality.round(3)

# %%
recall.pivot_table(index=["N", "k", "k/N"], columns="kind", values="recall").round(3)

# %% [markdown]
# **Extrapolation to MNLI's N = 392,702** (not a measurement): the full scan's training-gradient
# pass grows linearly in N (fitted through the origin on the measured N); its s_test and FastIF's
# cost do not depend on N except for the kNN search, also scaled linearly.

# %%
N_MNLI = 392_702
one = speed[speed.variant == "FastIF, 1 process"]
per_example = float(np.polyfit(one.N.to_numpy(float), one.full_train_pass_s.to_numpy(), 1)[0]) \
    if one.N.nunique() > 1 else float(one.full_train_pass_s.iloc[0] / one.N.iloc[0])
big = one[one.N == ns[-1]]
extrap = pd.DataFrame([{
    "k": int(r.k), "full per test point (s, extrapolated)": r.full_s_test_s + per_example * N_MNLI,
    "FastIF per test point (s, extrapolated)": r.fastif_per_query_s + r.knn_s * (N_MNLI / ns[-1] - 1),
} for r in big.itertuples()])
extrap["speed-up (extrapolated)"] = extrap.iloc[:, 1] / extrap.iloc[:, 2]
out.table("extrapolation_mnli", extrap)
extrap.round(2)

# %%
fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.5))
sns.lineplot(data=one, x="N", y="speedup", hue="k", marker="o", palette="viridis", ax=axes[0])
axes[0].set(title="FastIF speed-up over full influence", ylabel="full / FastIF time per test point", xscale="log")
sns.lineplot(data=corr, x="N", y="spearman", hue="k", marker="o", palette="viridis", errorbar=("ci", 95), ax=axes[1])
axes[1].set(title="agreement on the candidates", ylabel="Spearman (mean, 95% CI over test points)", xscale="log")
fig.tight_layout()
out.figure("speed_quality", fig)

# %% [markdown]
# ## The s_test grid: mini-batch size × recursion depth
# Error of s_test relative to a reference (largest batch and twice the largest depth, 2
# repetitions averaged), and time per s_test, for one test point on the full training set.

# %%
q1 = queries[[0]]
ref_if = InfluenceFunction(model, train, params="trainable", solver="lissa", progress=False,
                           **{**lissa, "depth": 2 * max(p["grid_depths"]), "batch_size": max(p["grid_batch_sizes"]),
                              "repetitions": 2})
s_ref = ref_if.s_test(q1)
grid = []
for bs in p["grid_batch_sizes"]:
    for J in p["grid_depths"]:
        est = InfluenceFunction(model, train, params="trainable", solver="lissa", progress=False,
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
grid.pivot(index="depth", columns="batch_size", values="rel_error").round(3)

# %% [markdown]
# ## 4. Fixing HANS-style errors with influential training points
# FastIF's protocol: the `snli`-style evaluation split is halved (stratified by subcase) into an
# anchor part and a held-out test part. Each of `fix_steps` steps samples `fix_anchors` anchors of
# one heuristic; FastIF scores the `fix_k` nearest pool points of the anchors' mean feature by their
# influence on the anchors' mean loss; one plain SGD step (lr `fix_lr`, trainable parameters, dropout
# off) is taken on the 10 most helpful, or most harmful, or 10 random pool points; the control
# (`anchors`) steps on the anchors themselves. Two candidate pools: the NLI training set and an
# unseen HANS-style training split (premises disjoint from evaluation). The kNN index is built once
# from the starting model's features; influence is recomputed with the current model at every step.
# Replicas are paired: replica r samples the same anchors in every mode.
#
# **Scale**: the paper takes the k = 1,000 nearest of MNLI's 392,702 pairs (0.25%) and s_test with
# scale 10⁶, damp 5·10⁻³, J = 1,000, i.e. λ = 5,000: far above the Hessian's scale, so its s_test is
# close to v/λ and the ranking close to the gradient dot product's. We take `fix_k` candidates (cpu:
# 50 of 20,000, the same fraction) and a shallow LiSSA (`fix_depth` steps at scale `lissa_scale`:
# so few steps keep s_test close to depth · v / scale, the same gradient-like regime). The runs go to
# `fix_workers` forked processes (the same rows as in one process, tested).
#
# **Anchor label, stated before the run**: where the model's errors on a heuristic are
# label-specific (anchor-part accuracy differs by at least 20 points between the labels), anchors
# come from the label it gets wrong; else from both labels, as in the paper.

# %%
fix_frame = load_hans("evaluation", p["fix_n_per_subcase"], seed=p["seed"] + 1, source=p["hans_source"],
                      **styled(p["fix_style"]))
fix_eval = HansSplit.from_dataset(model, hans_dataset(fix_frame, "test", name="hans_fix"), cache=p["cache_frozen"])
anchors, hans_test = split_anchor_test(fix_eval, 0.5, seed=p["seed"])
pool_frame = load_hans("train", p["hans_train_n_per_subcase"], seed=p["seed"], source=p["hans_source"],
                       **styled(p["fix_style"]))
hans_pool = ready(hans_dataset(pool_frame, "train", name="hans_pool"))
anchor_acc = per_heuristic(model, anchors).pivot(index="heuristic", columns="label", values="accuracy")
anchor_label = {}
for h in p["fix_heuristics"]:
    ent, non = anchor_acc.loc[h, "entailment"], anchor_acc.loc[h, "non-entailment"]
    anchor_label[h] = None if abs(ent - non) < 0.2 else (1 if non < ent else 0)
anchor_acc.assign(anchor_label=[{None: "both", 0: "entailment", 1: "non-entailment"}[anchor_label.get(h)]
                                if h in anchor_label else "-" for h in anchor_acc.index]).round(3)

# %%
pools = {f"{p['nli_data']} training set": train, "HANS-style training split (unseen)": hans_pool}
fix_lissa = {**lissa, "depth": p["fix_depth"]}
fix_kw = dict(steps=p["fix_steps"], anchors_per_step=p["fix_anchors"], per_step=p["fix_per_step"],
              replicas=p["fix_replicas"], anchor_label=anchor_label, workers=p["fix_workers"], progress=False)
runs = []
t_fix = time.perf_counter()
for i, lr in enumerate(p["fix_lrs"]):
    for j, (pool_name, pool) in enumerate(pools.items()):
        if i > 0 and j >= p["fix_sensitivity_pools"]:
            continue  # the sensitivity learning rates run on the first pools only (profile)
        index = FastIF(model, k=1, progress=False).fit(pool).index  # the starting model's features
        scorer = fastif_scorer(pool, index, p["fix_k"], params="trainable", batch_size=1, **fix_lissa)
        modes = ["helpful", "harmful", "random"] + (["anchors"] if j == 0 else [])
        if i > 0:  # sensitivity rows: the modes the profile names
            modes = [m for m in modes if m in p["fix_sensitivity_modes"]]
        r = correction_experiment(model, pool, anchors, hans_test, scorer, p["fix_heuristics"], modes=modes,
                                  lr=lr, **fix_kw)
        r["pool"] = np.where(r["mode"] == "anchors", "anchors themselves (control)", pool_name)
        runs.append(r.assign(lr=lr))
runs = pd.concat(runs, ignore_index=True)
t_fix = time.perf_counter() - t_fix
out.table("hans_fix_runs", runs)
fix_summary = correction_summary(runs, by=["lr", "pool"])
out.table("hans_fix_summary", fix_summary)
print(f"{runs.groupby(['lr', 'pool', 'target', 'mode', 'seed']).ngroups} correction runs in {t_fix / 60:.1f} min")
fix_summary[["lr", "pool", "target", "mode", "start_accuracy", "end_accuracy", "gain_accuracy", "gain_accuracy_sd",
             "gain_entailed_accuracy", "gain_non_entailed_accuracy", "replicas"]].round(3)

# %% [markdown]
# ### Helpful minus random, paired by replica and heuristic
# Gain = accuracy on the targeted heuristic after the last step minus before the first, on the
# held-out test part; over both labels (the paper's number) and on each label. Mean and 95% t
# interval over the (heuristic, replica) pairs.

# %%
gains = correction_gains(runs, by=["lr", "pool"])
contrast_rows = []
for (lr, pool_name), g in gains[gains["mode"] != "anchors"].groupby(["lr", "pool"], sort=False):
    for a, b in (("helpful", "random"), ("helpful", "harmful")):
        if not {a, b} <= set(g["mode"]):
            continue  # a sensitivity row may run fewer modes (fix_sensitivity_modes)
        for metric in ("accuracy", "entailed_accuracy", "non_entailed_accuracy"):
            d = paired_contrast(g, a, b, metric)["diff"].to_numpy()
            m, ci = mean_ci(d)
            contrast_rows.append({"lr": lr, "pool": pool_name, "contrast": f"{a} - {b}", "metric": metric,
                                  "mean": m, "ci_low": ci[0], "ci_high": ci[1], "n_pairs": len(d)})
contrasts = pd.DataFrame(contrast_rows)
out.table("hans_fix_contrasts", contrasts)
contrasts.round(4)

# %%
main_lr = p["fix_lrs"][0]
FIG_METRICS = {"accuracy": "accuracy, both labels", "entailed_accuracy": "accuracy, entailed",
               "non_entailed_accuracy": "accuracy, non-entailed", "loss": "loss, both labels",
               "entailed_loss": "loss, entailed", "non_entailed_loss": "loss, non-entailed"}
own = runs[(runs.heuristic == runs.target)].melt(
    id_vars=["lr", "pool", "target", "mode", "seed", "step"],
    value_vars=list(FIG_METRICS), var_name="metric", value_name="value")
palette = {"helpful": "tab:green", "harmful": "tab:red", "random": "tab:gray", "anchors": "tab:purple"}
pool_tag = {list(pools)[0]: "nli_pool", list(pools)[1]: "hans_pool"}
for lr in p["fix_lrs"]:
    ctl = own[(own.lr == lr) & (own["mode"] == "anchors")]
    for pool_name in own[(own.lr == lr) & (own["mode"] != "anchors")].pool.unique():
        sub = pd.concat([own[(own.lr == lr) & (own.pool == pool_name)], ctl], ignore_index=True)
        targets = list(dict.fromkeys(sub.target))
        n_rep = int(sub.groupby(["target", "mode"]).seed.nunique().min())
        bands = interval_frame(sub, ["metric", "target", "mode", "step"], "value")  # t interval over replicas
        fig, axes = plt.subplots(len(FIG_METRICS), len(targets), figsize=(3.3 * len(targets), 1.9 * len(FIG_METRICS)),
                                 sharex=True, squeeze=False)
        for i, (metric, label) in enumerate(FIG_METRICS.items()):
            for j, t in enumerate(targets):
                ax = axes[i, j]
                band_lines(ax, bands[(bands.metric == metric) & (bands.target == t)], x="step", hue="mode",
                           palette=palette, order=[m for m in palette if m in set(sub["mode"])], marker="o", ms=2.5)
                ax.set_title(f"{t}: {label}", fontsize=8)
                ax.set_ylabel(label if j == 0 else "", fontsize=8)
                ax.set_xlabel("SGD step" if i == len(FIG_METRICS) - 1 else "")
                ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
                ax.tick_params(labelsize=7)
        axes[0, -1].legend(fontsize=7, title="step taken on", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
        fig.suptitle(f"held-out HANS-style accuracy and loss on the targeted heuristic; pool: {pool_name}, lr {lr:g}\n"
                     f"line: mean, band: {interval_label(n_rep, 'replicas')}", fontsize=9)
        fig.tight_layout()
        out.figure(f"hans_fix_{pool_tag[pool_name]}" + ("" if lr == main_lr else f"_lr{lr:g}"), fig)

# %% [markdown]
# ## Paper vs ours
# Criteria, stated before the run:
# - `model_fails_hans`: reproduced if the model falls for every heuristic on the domain-matched
#   (`snli`) generator (entailed ≥ 80%, non-entailed ≤ 30%); partly if for at least one.
# - `hans_fix_helpful_beats_random` (NLI pool) and `..._unseen_pool` (HANS-style pool), at lr
#   `fix_lrs[0]`: reproduced if the 95% CI of (helpful − random) accuracy gain over both labels lies
#   above 0; partly if only the mean does.
# - `fastif_speedup`: at the largest N, k = 1,000 (or the largest k), one process: reproduced if at
#   least 10x, partly from 2x (the paper's 80x is at N = 392,702; ours is read with its N).
# - `fastif_correlation`: Spearman at k = 1,000 (or the largest k), largest N: reproduced from 0.95,
#   partly from 0.8.

# %%
k_claim = 1000 if 1000 in one.k.values else int(one.k.max())
big_k = one[(one.N == ns[-1]) & (one.k == k_claim)].iloc[0]
q_big = corr[(corr.N == ns[-1]) & (corr.k == k_claim)]
sp_m, sp_ci = mean_ci(q_big.spearman.to_numpy())
primary = "snli" if "snli" in p["hans_styles"] else p["hans_styles"][0]
fv = falls.loc[primary]
n_fell = int(fv["falls for it"].sum())
fails_criterion = at_least(len(fv), partly_from=1, what="the number of heuristics the model falls for")


def fix_claim(cid, pool_name, paper):
    c = contrasts[(contrasts.lr == main_lr) & (contrasts.pool == pool_name)]
    row = c[(c.contrast == "helpful - random") & (c.metric == "accuracy")].iloc[0]
    per = {f"{r.contrast} / {r.metric}": [round(r["mean"], 4), round(r.ci_low, 4), round(r.ci_high, 4)]
           for _, r in c.iterrows()}
    return claim(cid, claim=f"one SGD step per anchor set on helpful points ({pool_name}) fixes more HANS errors "
                            "than random points", paper=paper, ours=row["mean"], ci95=(row.ci_low, row.ci_high),
                 unit=f"accuracy gain over both labels after {p['fix_steps']} steps, helpful minus random (lr {main_lr:g})",
                 n=f"{int(row.n_pairs)} (heuristic, replica) pairs", criterion=ci_above(0.0, "helpful minus random"),
                 reason="see the per-label contrasts: the steps move the label balance; small model, few replicas",
                 contrasts=per)


claims = [
    claim("model_fails_hans", claim="the NLI model falls for the HANS heuristics (right on entailed, wrong on non-entailed)",
          paper="BERT ≈ 100% entailed, 0-28% non-entailed (McCoy et al.; FastIF's MNLI-2 model ≈ 50% overall)",
          ours=n_fell, unit=f"heuristics (of {len(fv)}) the model falls for on the {primary} generator",
          n=f"{len(splits[primary])} HANS-style pairs per generator", criterion=fails_criterion,
          reason="the model does not prefer entailment on these templates",
          per_heuristic={f"{g}/{h}": [round(r["entailed accuracy"], 3), round(r["non-entailed accuracy"], 3)]
                         for (g, h), r in falls.iterrows()}),
    fix_claim("hans_fix_helpful_beats_random", list(pools)[0], "+2.5 points (MNLI-2 pool; abstract)"),
    fix_claim("hans_fix_helpful_beats_random_unseen_pool", list(pools)[1], "+2.8 points (HANS training pool; abstract)"),
    claim("fastif_speedup", claim="FastIF is much faster than full influence", paper="≈80x (MNLI, N = 392,702, k = 1,000)",
          ours=float(big_k.speedup), unit=f"speed-up per test point at k = {k_claim}, N = {ns[-1]}",
          criterion=at_least(10.0, partly_from=2.0, what="the speed-up"), n=f"{Q} test points",
          reason=f"N = {ns[-1]}: the full scan is linear in N, so the ratio is smaller than at N = 392,702",
          extrapolated_to_mnli=float(extrap[extrap.k == k_claim].iloc[0, 3]) if (extrap.k == k_claim).any() else None),
    claim("fastif_correlation", claim="FastIF's scores correlate with full influence on the candidates",
          paper="Spearman 99.8 at k = 1,000 [V-nb]", ours=sp_m, ci95=sp_ci,
          unit=f"Spearman at k = {k_claim}, N = {ns[-1]}", criterion=at_least(0.95, partly_from=0.8, what="the Spearman correlation"),
          n=f"{Q} test points", reason=f"LiSSA depth {p['lissa_depth']} (paper 1,000): s_test noise differs between the two"),
]
paper_vs_ours = claims_frame(claims)
out.table("paper_vs_ours", paper_vs_ours)
metrics = {
    "test_accuracy": test_acc, "n_train": len(train), "trainable_params": n_trainable, "train_seconds": t_train,
    "hans_accuracy": {f"{r.generator}/{r.heuristic}/{r.label}": r.accuracy for r in diag.itertuples()},
    "identity_entailment": dict(zip(ident["premises"], ident["called entailment"])),
    "speed": {f"N={int(r.N)}/k={int(r.k)}/{r.variant}": {"full_s": r.full_per_query_s, "fastif_s": r.fastif_per_query_s,
                                                          "speedup": r.speedup} for r in speed.itertuples()},
    "quality": {f"N={int(r.N)}/k={int(r.k)}": {"pearson": r.pearson, "spearman": r.spearman, "kendall": r.kendall}
                for r in quality.itertuples()},
    "knn_recall_helpful": {f"N={int(r.N)}/k={int(r.k)}": r.recall for r in recall[recall.kind == "helpful"].itertuples()},
    "hans_fix_gain": {f"lr={r.lr:g}/{r.pool}/{r.target}/{r['mode']}": r.gain_accuracy for _, r in fix_summary.iterrows()},
    "wall_seconds": time.perf_counter() - T_START,
}
if "parallel_spearman" in globals():
    metrics["parallel_vs_sequential_spearman"] = parallel_spearman
out.finish(metrics, claims=claims, notes=[
    f"{p['nli_data']} stands in for MNLI-2; HANS-style ({p['hans_source']}, styles {p['hans_styles']}) for HANS",
    f"{p['text_model']} with top {p['train_top_layers']} layers trainable stands in for BERT-base",
    f"torch threads: {torch.get_num_threads()}"])
with pd.option_context("display.max_colwidth", 200):
    display(paper_vs_ours)
