# %% [markdown]
# # TracIn: finding mislabelled examples and explaining predictions by tracing gradient descent
#
# Replication of Pruthi, Liu, Kale, Sundararajan (NeurIPS 2020) (spec: `PAPERS.md` section 2).
# **TracInCP**(z, z') = Σ_checkpoints η_i ∇ℓ(w_i, z) · ∇ℓ(w_i, z'): positive = **proponent**
# (training on z lowered the loss on z'), negative = **opponent**. **Self-influence** TracIn(z, z)
# = Σ η_i ‖∇ℓ(w_i, z)‖² flags memorized, atypical or mislabelled training points.
#
# Experiments, as in the paper: (1) mislabel detection — flip 20% of the training labels, train,
# rank training points by self-influence, and count flips found vs data inspected, against the
# paper's baselines (influence functions, representer points) plus a loss baseline and random;
# (2) proponents and opponents of test images; (3) the same for a text classifier (the paper's
# DBPedia experiment).
#
# **Deviations**: Fashion-MNIST and a width-scaled VGG-11 stand in for CIFAR-10 / ResNet-56 (offline);
# SpamAssassin and MiniLM-L6 stand in for DBPedia and the paper's text model; the influence-function
# baseline uses the last layer with its exact (damped) Hessian; the paper's curve values are
# unverified ([U] in PAPERS.md), so only its qualitative ordering is compared.

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

from repro.data import flip_labels, load
from repro.experiments.common import start
from repro.experiments.mislabel import detection_curves_frame, detection_table
from repro.influence import TracInCP
from repro.influence.lastlayer import LastLayerInfluence, RepresenterPoints, loss_per_example
from repro.models import text_classifier, vgg
from repro.train import TrainConfig, Trainer, list_checkpoints, load_run, predict

params, out, run_root = start("tracin_proponents", profile, overrides, results_dir)
p = params
pd.Series(params, dtype=object).to_frame("value")

# %% [markdown]
# ## Data with flipped labels, and a VGG trained with a checkpoint every epoch

# %%
clean = load(p["image_data"], "train", n=p["vgg_n_train"], seed=p["seed"], source=p["source"], stratify=True)
test = load(p["image_data"], "test", n=p["vgg_n_test"], seed=p["seed"], source=p["source"], stratify=True)
train, flipped = flip_labels(clean, p["noise"], mode=p["noise_mode"], seed=p["seed"])
is_flipped = np.isin(train.ids, flipped)
C, S = train.images.shape[1], train.images.shape[-1]
model = vgg(num_classes=train.num_classes, depth=p["vgg_depth"], in_channels=C, image_size=S, width=p["vgg_width"],
            seed=p["seed"])
cfg = TrainConfig(epochs=p["vgg_epochs"], lr=p["vgg_lr"], batch_size=p["vgg_batch_size"], momentum=0.9,
                  weight_decay=5e-4, schedule="constant", checkpoint_epochs="all", seed=p["seed"])
run_dir = run_root / "vgg"
res = Trainer(model, cfg, run_dir).fit(train, eval=test, resume=False)
checkpoints = list_checkpoints(run_dir)
print(f"{len(train)} training images, {is_flipped.sum()} labels flipped ({p['noise_mode']}); "
      f"test accuracy {res.final['eval_accuracy']:.3f}; {len(checkpoints)} checkpoints")
pd.DataFrame([{"epoch": c.epoch, "step": c.step, "lr": c.lr, "train_acc": c.metrics["train_accuracy"],
               "test_acc": c.metrics["eval_accuracy"]} for c in checkpoints])

# %% [markdown]
# ## 1. Mislabel detection
# Every method scores each training point; we inspect points in order of decreasing score.

# %%
timings = {}


def timed(name, fn):
    t0 = time.perf_counter()
    value = fn()
    timings[name] = time.perf_counter() - t0
    return np.asarray(value, dtype=float)


final_model, _ = load_run(run_dir)
scores = {
    "TracInCP (last layer)": timed("TracInCP (last layer)",
                                   lambda: TracInCP(model, checkpoints, params="last").fit(train).self_influence()),
    "TracInCP (more layers)": timed("TracInCP (more layers)",
                                    lambda: TracInCP(model, checkpoints, params=p["more_layers"]).fit(train).self_influence()),
    "TracIn (final checkpoint)": timed("TracIn (final checkpoint)",
                                       lambda: TracInCP(model, checkpoints[-1:], params="last").fit(train).self_influence()),
    "loss (final checkpoint)": timed("loss (final checkpoint)", lambda: loss_per_example(final_model, train)),
    "influence function (last layer)": timed(
        "influence function (last layer)",
        lambda: LastLayerInfluence(final_model, train, damping=p["if_damping"]).self_influence()),
    "representer points": timed("representer points",
                                lambda: RepresenterPoints(final_model, train, lam=p["representer_lambda"]).self_importance()),
    "random": np.random.default_rng(p["seed"]).random(len(train)),
}
table = detection_table(scores, is_flipped)
table["seconds"] = table["method"].map(timings)
out.table("mislabel_detection", table)
curves = detection_curves_frame(scores, is_flipped)
out.table("mislabel_curves", curves)
table

# %%
fig, ax = plt.subplots(figsize=(6, 4.5))
sns.lineplot(data=curves, x="inspected", y="found", hue="method", ax=ax)
ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1)
ax.set(xlabel="fraction of training data inspected", ylabel="fraction of flipped labels found",
       title=f"{p['image_data']}, {p['noise']:.0%} labels flipped ({p['noise_mode']})")
ax.legend(fontsize=7)
out.figure("mislabel_curves", fig)

# %% [markdown]
# ## 2. Proponents and opponents of test images (TracInCP, last layer, all checkpoints)

# %%
tracin = TracInCP(model, checkpoints, params="last").fit(train)
preds = predict(final_model, test).argmax(1).numpy()
wrong, right = np.flatnonzero(preds != test.labels), np.flatnonzero(preds == test.labels)
n_eval = min(p["n_proponent_eval"], len(test))
eval_scores = tracin.scores(test.subset(slice(0, n_eval)))
k = p["top_k"]
top_pro = eval_scores.topk(k, dim=1).indices.numpy()
top_opp = (-eval_scores).topk(k, dim=1).indices.numpy()
share_pro = (train.labels[top_pro] == test.labels[:n_eval, None]).mean()
share_opp = (train.labels[top_opp] == test.labels[:n_eval, None]).mean()
flip_share_opp = is_flipped[top_opp].mean()
print(f"top-{k} proponents share the test label: {share_pro:.1%}; top-{k} opponents: {share_opp:.1%} "
      f"(base rate {np.mean(train.labels[None, :] == test.labels[:n_eval, None]):.1%}); "
      f"{flip_share_opp:.1%} of opponents carry a flipped label (base rate {is_flipped.mean():.1%})")

# %%
show = np.concatenate([wrong[: p["n_show"] // 2], right[: p["n_show"] - min(len(wrong), p["n_show"] // 2)]])
sub = test.subset(show)
sc = tracin.scores(sub)
name = lambda y: train.classes[int(y)][:10]
fig, axes = plt.subplots(len(show), 1 + 2 * k, figsize=(1.5 * (1 + 2 * k), 1.8 * len(show)), squeeze=False)
for r in range(len(show)):
    axes[r, 0].imshow(sub.images[r][0], cmap="gray")
    axes[r, 0].set_title(f"test: {name(sub.labels[r])}\npred: {name(preds[show[r]])}", fontsize=7,
                         color="black" if preds[show[r]] == sub.labels[r] else "red")
    for j, pos in enumerate(sc[r].topk(k).indices.tolist()):
        axes[r, 1 + j].imshow(train.images[pos][0], cmap="gray")
        axes[r, 1 + j].set_title(f"pro {sc[r, pos]:+.2g}\n{name(train.labels[pos])}{' (flip)' if is_flipped[pos] else ''}",
                                 fontsize=6, color="green")
    for j, pos in enumerate((-sc[r]).topk(k).indices.tolist()):
        axes[r, 1 + k + j].imshow(train.images[pos][0], cmap="gray")
        axes[r, 1 + k + j].set_title(f"opp {sc[r, pos]:+.2g}\n{name(train.labels[pos])}{' (flip)' if is_flipped[pos] else ''}",
                                     fontsize=6, color="darkred")
for a in axes.ravel():
    a.set_xticks([])
    a.set_yticks([])
fig.tight_layout()
out.figure("proponents_opponents", fig)

# %% [markdown]
# ## 3. Text: proponents and opponents for a MiniLM classifier
# (The paper uses DBPedia; offline we use SpamAssassin, ham vs spam.)

# %%
ttrain = load(p["text_data"], "train", n=p["text_n_train"], seed=p["seed"], source=p["source"], stratify=True)
ttest = load(p["text_data"], "test", n=p["text_n_test"], seed=p["seed"], source=p["source"], stratify=True)
tmodel = text_classifier(num_classes=ttrain.num_classes, model_name=p["text_model"], max_length=p["text_max_length"],
                         seed=p["seed"])
tcfg = TrainConfig(epochs=p["text_epochs"], lr=p["text_lr"], batch_size=p["text_batch_size"], optimizer="adamw",
                   weight_decay=0.01, schedule="constant", checkpoint_epochs="all", seed=p["seed"])
tres = Trainer(tmodel, tcfg, run_root / "text").fit(ttrain, eval=ttest, resume=False)
ttracin = TracInCP(tmodel, run_root / "text", params="last").fit(ttrain)
tsc = ttracin.scores(ttest)
cut = lambda s, n=100: (s[: n - 1] + "…") if len(s) > n else s
rows = []
for t in range(min(4, len(ttest))):
    for kind, order in (("proponent", tsc[t].topk(2).indices), ("opponent", (-tsc[t]).topk(2).indices)):
        for pos in order.tolist():
            rows.append({"test": cut(ttest.example(t).replace("\n", " ")), "test_label": ttest.classes[ttest.labels[t]],
                         "kind": kind, "score": float(tsc[t, pos]), "train_label": ttrain.classes[ttrain.labels[pos]],
                         "train": cut(ttrain.example(pos).replace("\n", " "))})
text_table = pd.DataFrame(rows)
out.table("text_proponents_opponents", text_table)
text_share = (ttrain.labels[tsc.topk(min(k, len(ttrain)), dim=1).indices.numpy()] == ttest.labels[:, None]).mean()
print(f"text test accuracy {tres.final['eval_accuracy']:.3f}; top-{k} proponents share the test label: {text_share:.1%}")
with pd.option_context("display.max_colwidth", 100):
    display(text_table)

# %% [markdown]
# ## Paper vs ours

# %%
row = table.set_index("method")
best_baseline = row.loc[["influence function (last layer)", "representer points"], "auc"].max()
paper_vs_ours = pd.DataFrame([
    {"claim": "self-influence finds mislabelled examples better than influence functions and representer points",
     "paper": "yes: TracIn > representer ≳ IF > random (curve values [U])",
     "ours": f"AUC TracInCP last {row.loc['TracInCP (last layer)', 'auc']:.3f}, more layers "
             f"{row.loc['TracInCP (more layers)', 'auc']:.3f}, IF {row.loc['influence function (last layer)', 'auc']:.3f}, "
             f"representer {row.loc['representer points', 'auc']:.3f}, loss {row.loc['loss (final checkpoint)', 'auc']:.3f}, "
             f"random {row.loc['random', 'auc']:.3f}"},
    {"claim": "fraction of flips found after inspecting 20% (CIFAR-10, 20% flipped)", "paper": "[U] (read from Fig. 1 of the PDF)",
     "ours": f"{row.loc['TracInCP (last layer)', 'found@20%']:.1%} (TracInCP last layer)"},
    {"claim": "more checkpoints help or are neutral", "paper": "yes (qualitative)",
     "ours": f"AUC all checkpoints {row.loc['TracInCP (last layer)', 'auc']:.3f} vs final only {row.loc['TracIn (final checkpoint)', 'auc']:.3f}"},
    {"claim": "a loss-based ranking is a competitive baseline (NeurIPS review)", "paper": "reviewer remark",
     "ours": f"loss AUC {row.loc['loss (final checkpoint)', 'auc']:.3f}"},
    {"claim": "proponents mostly share the test label", "paper": "qualitative",
     "ours": f"{share_pro:.1%} of top-{k} proponents (images), {text_share:.1%} (text)"},
])
out.table("paper_vs_ours", paper_vs_ours)
with pd.option_context("display.max_colwidth", 250):
    display(paper_vs_ours)

# %%
metrics = {
    "test_accuracy": res.final["eval_accuracy"], "n_train": len(train), "n_flipped": int(is_flipped.sum()),
    "n_checkpoints": len(checkpoints),
    "detection": {r.method: {"found@10%": r._2, "found@20%": r._3, "found@30%": r._4, "auc": r.auc, "seconds": r.seconds}
                  for r in table.itertuples()},
    "tracin_beats_if_and_representer": bool(row.loc["TracInCP (last layer)", "auc"] > best_baseline),
    "proponent_label_share": float(share_pro), "opponent_label_share": float(share_opp),
    "opponent_flipped_share": float(flip_share_opp),
    "text_test_accuracy": tres.final["eval_accuracy"], "text_proponent_label_share": float(text_share),
}
out.finish(metrics, notes=[f"{p['image_data']} + VGG-{p['vgg_depth']} (width {p['vgg_width']}) stand in for CIFAR-10 + ResNet-56",
                           f"{p['text_data']} + {p['text_model']} stand in for DBPedia",
                           "IF baseline: last layer, exact damped Hessian"])
metrics
