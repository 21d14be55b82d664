# %% [markdown]
# # Turn-over Dropout: estimating the influence of a training instance
#
# Replication of Kobayashi, Yokoi, Suzuki, Inui (SustaiNLP 2020), "Efficient Estimation of
# Influence of a Training Instance" (method: `docs/methods.md`). Every training instance *i* owns a
# fixed dropout mask *m(i)*; the model learns instance *i* only through its own sub-network, and the
# flipped mask *1 − m(i)* selects a sub-network that never saw it. The influence of *z_i* on a target
# *z* is `L(f_{1−m(i)}(x), y) − L(f_{m(i)}(x), y)` — **positive = z_i helped z**. No gradients, no
# Hessian, no retraining.
#
# The paper's abstract claims the estimates (a) capture training influence, (b) explain erroneous
# predictions, (c) cleanse the training set to improve generalization. We check each, plus that
# turn-over dropout costs little accuracy compared with ordinary dropout.
#
# **Deviations** (also in `results/README.md`): Fashion-MNIST stands in for CIFAR-10, a width-scaled
# VGG-11 for the paper's VGG, MiniLM-L6 for BERT and SpamAssassin for the paper's text sets (all
# offline); the turn-over layer sits in the classifier head (VGG: after the hidden FC layer; text:
# on the pooled [CLS] vector), which makes influence one forward pass per target; the paper's own
# numbers could not be verified against the paper's text (marked [U], see `docs/methods.md`), so the comparison is qualitative.

# %% tags=["parameters"]
profile = "smoke"
overrides = {}
results_dir = None

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy.stats import pearsonr, spearmanr

from repro.data import flip_labels, load
from repro.experiments.common import image_explanation_figure, start, text_explanation_table
from repro.experiments.turnover import (cleansing, cleansing_summary, explain, loo_agreement, loo_correlations,
                                        train_fresh)
from repro.influence.turnover import TurnOverInfluence
from repro.models import text_classifier, vgg
from repro.train import TrainConfig

params, out, run_root = start("turnover_cleansing", profile, overrides, results_dir)
p = params
pd.Series(params, dtype=object).to_frame("value")

# %% [markdown]
# ## Data and models
# Training and validation sets are disjoint parts of the training split; the test set is the test split.

# %%
pool = load(p["image_data"], "train", n=p["vgg_n_train"] + p["vgg_n_val"], seed=p["seed"], source=p["source"],
            stratify=True).shuffled(p["seed"])
train, val = pool.subset(slice(0, p["vgg_n_train"])), pool.subset(slice(p["vgg_n_train"], None))
test = load(p["image_data"], "test", n=p["vgg_n_test"], seed=p["seed"], source=p["source"], stratify=True)
C, S = train.images.shape[1], train.images.shape[-1]


def vgg_factory(turnover: bool):
    tod = {"p": p["turnover_p"], "seed": 1234} if turnover else None
    return lambda seed: vgg(num_classes=train.num_classes, depth=p["vgg_depth"], in_channels=C, image_size=S,
                            width=p["vgg_width"], dropout=p["turnover_p"], turnover=tod, seed=seed)


cfg = TrainConfig(epochs=p["vgg_epochs"], lr=p["vgg_lr"], batch_size=p["vgg_batch_size"], momentum=0.9,
                  weight_decay=5e-4, schedule="cosine")
print(f"train {len(train)}, val {len(val)}, test {len(test)} {p['image_data']} images")

# %% [markdown]
# ## 1. Accuracy: turn-over dropout vs ordinary dropout (same p, same seed)

# %%
model_tod, res_tod = train_fresh(vgg_factory(True), train, cfg, p["seed"], eval=test)
model_do, res_do = train_fresh(vgg_factory(False), train, cfg, p["seed"], eval=test)
acc = pd.DataFrame([{"model": "VGG + turn-over dropout", "test_accuracy": res_tod.final["eval_accuracy"]},
                    {"model": "VGG + ordinary dropout", "test_accuracy": res_do.final["eval_accuracy"]}])
acc

# %% [markdown]
# ## 2. Does the estimate capture influence? Agreement with leave-one-out retraining
# On a small subset: for each seed, train a turn-over model, estimate every instance's influence on
# the total loss of a target set, then retrain without each of a few candidates (most harmful, most
# helpful, random) and measure the actual change. A helpful instance (positive estimate) should raise
# the target loss when removed.

# %%
loo_train, loo_targets = train.subset(slice(0, p["loo_n_train"])), val.subset(slice(0, p["loo_n_targets"]))
loo_cfg = TrainConfig(**{**cfg.__dict__, "epochs": p["loo_epochs"]})
loo = loo_agreement(vgg_factory(True), loo_train, loo_targets, loo_cfg, p["loo_candidates"], p["loo_seeds"])
loo_corr = loo_correlations(loo)
out.table("loo_agreement", loo)
out.table("loo_correlations", loo_corr)
fig, ax = plt.subplots(figsize=(4.5, 3.5))
sns.scatterplot(data=loo, x="estimated", y="actual", hue="seed", palette="deep", ax=ax)
ax.axhline(0, color="gray", lw=0.5)
ax.axvline(0, color="gray", lw=0.5)
ax.set(xlabel="turn-over influence (summed over targets)", ylabel="actual LOO change of target loss",
       title="estimate vs leave-one-out")
out.figure("loo_agreement", fig)
loo_corr

# %% [markdown]
# ## 3. Explaining errors
# For test images (misclassified first), the most helpful training images and the most harmful
# ones; for a wrong prediction, harmful ones are taken among training images of the predicted class
# (as in the paper's demo).

# %%
from repro.train import predict

preds = predict(model_tod, test).argmax(1).numpy()
wrong = np.flatnonzero(preds != test.labels)
right = np.flatnonzero(preds == test.labels)
show = np.concatenate([wrong[: max(1, p["n_explain"] - 1)], right[:1]])[: p["n_explain"]]
expl = explain(model_tod, train, test.subset(show), k=3)
fig = image_explanation_figure(expl, train, test.subset(show), max_rows=p["n_explain"])
out.figure("explain_errors", fig)
same_label_helpful = np.mean([train.labels[e["helpful"][0]] == e["label"] for e in expl])
print(f"top helpful training image shares the test label in {same_label_helpful:.0%} of {len(expl)} cases")

# %% [markdown]
# ## 4. Data cleansing
# Influence of every training instance summed over the validation set; remove the k most harmful
# (most negative), retrain from scratch, and compare test accuracy with no removal and with removing
# k random instances, over several seeds; with and without injected uniform label noise.

# %%
clean_rows = []
detections = []
for noise in p["noise_levels"]:
    tr, flipped = flip_labels(train, noise, seed=p["seed"]) if noise > 0 else (train, np.array([], dtype=np.int64))
    rows, summed = cleansing(vgg_factory(True), tr, val, test, cfg, p["cleanse_ks"], p["cleanse_seeds"],
                             flipped_ids=flipped, influence_seed=p["seed"])
    clean_rows.append(rows.assign(noise=noise))
    if noise > 0:
        from sklearn.metrics import roc_auc_score
        is_flip = np.isin(tr.ids, flipped)
        detections.append({"noise": noise, "auc_summed_val_influence": roc_auc_score(is_flip, -summed),
                           "n_flipped": int(is_flip.sum())})
clean = pd.concat(clean_rows, ignore_index=True)
out.table("cleansing_runs", clean)
summary = pd.concat([cleansing_summary(g).assign(noise=n) for n, g in clean.groupby("noise")], ignore_index=True)
out.table("cleansing_summary", summary)
summary

# %%
fig, axes = plt.subplots(1, len(p["noise_levels"]), figsize=(4.5 * len(p["noise_levels"]), 3.5), squeeze=False)
for ax, (noise, g) in zip(axes[0], clean.groupby("noise")):
    base = g[g.method == "none"]["test_accuracy"]
    sns.pointplot(data=g[g.method != "none"], x="k", y="test_accuracy", hue="method", errorbar="sd",
                  dodge=0.2, ax=ax, palette={"harmful": "tab:red", "random": "tab:gray"})
    ax.axhline(base.mean(), color="black", ls="--", lw=1, label="no removal")
    ax.set(title=f"label noise {noise:.0%}", xlabel="instances removed (k)", ylabel="test accuracy")
    ax.legend(fontsize=8)
fig.tight_layout()
out.figure("cleansing", fig)
pd.DataFrame(detections)

# %% [markdown]
# ## 5. Text: MiniLM with turn-over dropout on the pooled representation

# %%
ttrain = load(p["text_data"], "train", n=p["text_n_train"], seed=p["seed"], source=p["source"], stratify=True)
ttest = load(p["text_data"], "test", n=p["text_n_test"], seed=p["seed"], source=p["source"], stratify=True)


def text_factory(turnover: bool):
    tod = {"p": p["turnover_p"], "seed": 4321} if turnover else None
    return lambda seed: text_classifier(num_classes=ttrain.num_classes, model_name=p["text_model"],
                                        max_length=p["text_max_length"], dropout=p["turnover_p"], turnover=tod,
                                        seed=seed)


tcfg = TrainConfig(epochs=p["text_epochs"], lr=p["text_lr"], batch_size=p["text_batch_size"], optimizer="adamw",
                   weight_decay=0.01, schedule="linear", warmup_steps=5)
tmodel_tod, tres_tod = train_fresh(text_factory(True), ttrain, tcfg, p["seed"], eval=ttest)
tmodel_do, tres_do = train_fresh(text_factory(False), ttrain, tcfg, p["seed"], eval=ttest)
acc_text = pd.DataFrame([{"model": f"{p['text_model']} + turn-over dropout", "test_accuracy": tres_tod.final["eval_accuracy"]},
                         {"model": f"{p['text_model']} + ordinary dropout", "test_accuracy": tres_do.final["eval_accuracy"]}])
accuracy = pd.concat([acc.assign(data=p["image_data"]), acc_text.assign(data=p["text_data"])], ignore_index=True)
out.table("accuracy", accuracy)
accuracy

# %%
tpreds = predict(tmodel_tod, ttest).argmax(1).numpy()
twrong = np.flatnonzero(tpreds != ttest.labels)
tshow = np.concatenate([twrong[:2], np.flatnonzero(tpreds == ttest.labels)[:1]])
texpl = explain(tmodel_tod, ttrain, ttest.subset(tshow), k=2)
text_table = text_explanation_table(texpl, ttrain, ttest.subset(tshow))
out.table("explain_errors_text", text_table)
with pd.option_context("display.max_colwidth", 90):
    display(text_table[["test", "label", "pred", "kind", "score", "train_label", "train"]])

# %% [markdown]
# ## Paper vs ours

# %%
gain = lambda noise, method: summary[(summary.noise == noise) & (summary.method == method)]
kmax = max(p["cleanse_ks"])
row = lambda noise, method: gain(noise, method)[gain(noise, method).k == kmax].iloc[0]
noisy_level = max(p["noise_levels"])
pooled = loo_corr[loo_corr.seed == "pooled"].iloc[0]
paper_vs_ours = pd.DataFrame([
    {"claim": "turn-over dropout keeps accuracy close to ordinary dropout", "paper": "implied [U]",
     "ours": f"{acc.test_accuracy[0]:.3f} vs {acc.test_accuracy[1]:.3f} (VGG); "
             f"{acc_text.test_accuracy[0]:.3f} vs {acc_text.test_accuracy[1]:.3f} (text)"},
    {"claim": "(a) estimates capture training influence (vs leave-one-out)", "paper": "qualitative; numbers [U]",
     "ours": f"Spearman {pooled.spearman:+.2f}, Pearson {pooled.pearson:+.2f} over {int(pooled.n)} LOO retrains"},
    {"claim": "(b) explains errors: most helpful share the test label", "paper": "qualitative",
     "ours": f"{same_label_helpful:.0%} of {len(expl)} shown test images"},
    {"claim": f"(c) cleansing: remove k={kmax} most harmful, retrain (noise {noisy_level:.0%})",
     "paper": "accuracy gain; numbers [U]",
     "ours": f"gain {row(noisy_level, 'harmful').gain_mean:+.4f} ± {row(noisy_level, 'harmful').gain_std:.4f} vs random "
             f"{row(noisy_level, 'random').gain_mean:+.4f}; {row(noisy_level, 'harmful').removed_flipped:.0f} of {kmax} removed were flips"},
    {"claim": "(c) cleansing without injected noise", "paper": "accuracy gain; numbers [U]",
     "ours": f"gain {row(0.0, 'harmful').gain_mean:+.4f} vs random {row(0.0, 'random').gain_mean:+.4f}"
     if 0.0 in p["noise_levels"] else "not run"},
])
out.table("paper_vs_ours", paper_vs_ours)
with pd.option_context("display.max_colwidth", 200):
    display(paper_vs_ours)

# %%
metrics = {
    "vgg_acc_turnover": float(acc.test_accuracy[0]), "vgg_acc_dropout": float(acc.test_accuracy[1]),
    "text_acc_turnover": float(acc_text.test_accuracy[0]), "text_acc_dropout": float(acc_text.test_accuracy[1]),
    "loo_spearman_pooled": float(pooled.spearman), "loo_pearson_pooled": float(pooled.pearson),
    "loo_spearman_per_seed": loo_corr[loo_corr.seed != "pooled"].spearman.astype(float).tolist(),
    "helpful_share_label": float(same_label_helpful),
    "cleansing": {f"noise{n}_{m}_k{k}": {"gain_mean": float(r.gain_mean), "gain_std": float(r.gain_std),
                                          "acc_mean": float(r.acc_mean), "removed_flipped": float(r.removed_flipped)}
                  for n, m, k, r in zip(summary.noise, summary.method, summary.k, summary.itertuples())},
    "noise_detection_auc": {str(d["noise"]): float(d["auc_summed_val_influence"]) for d in detections},
}
out.finish(metrics, notes=[f"{p['image_data']} stands in for CIFAR-10; {p['text_data']} for the paper's text data",
                           "turn-over layer in the classifier head (VGG hidden FC / pooled [CLS])"])
metrics
