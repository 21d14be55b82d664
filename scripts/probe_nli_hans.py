"""Exploratory probe for the FastIF / HANS replication (not a notebook, no committed output): does an
SNLI-2-trained MiniLM (top 2 layers, trained on the cached frozen layers with length-bucketed batches)
fall for the HANS heuristics on our HANS-style data, in both generator styles, and does it read the
generated sentences (identity check: premise repeated as hypothesis)?

    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_nli_hans.py      # ~8-9 min on one core

Env: PROBE_N_TRAIN (default: all 20,000 SNLI-2 training pairs), PROBE_N_TEST, PROBE_EPOCHS (2),
PROBE_N_PER_SUBCASE (30), PROBE_TOP_LAYERS (2), PROBE_SAVE (a path to save the trained state dict; default: not saved).
One run (2026-12-02, 1 thread): SNLI-2 test accuracy 0.876; entailed / non-entailed accuracy on the
snli style 0.91 / 0.07 (lexical overlap), 0.94 / 0.11 (subsequence), 0.69 / 0.19 (constituent).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time

import numpy as np
import pandas as pd
import torch

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass

import repro
from repro.data import hans, load
from repro.data.registry import NLI2, hans_dataset
from repro.train import TrainConfig, Trainer, predict

T_START = time.perf_counter()
N_TRAIN = int(os.environ["PROBE_N_TRAIN"]) if os.environ.get("PROBE_N_TRAIN") else None
EPOCHS = int(os.environ.get("PROBE_EPOCHS", "2"))
NPS = int(os.environ.get("PROBE_N_PER_SUBCASE", "30"))
SEED = 0
MAX_LENGTH = 128
LR = 1e-4
BATCH = 32


def say(*a):
    print(*a, flush=True)


def elapsed():
    return f"[{time.perf_counter() - T_START:7.1f}s]"


say(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
    f"interop = {torch.get_num_interop_threads()}, repro at {os.path.dirname(repro.__file__)}")

# ----------------------------------------------------------------------------- data
train_ds = load("snli2", "train", n=N_TRAIN, seed=SEED)
N_TEST = int(os.environ["PROBE_N_TEST"]) if os.environ.get("PROBE_N_TEST") else None
test_ds = load("snli2", "test", n=N_TEST, seed=SEED)
assert tuple(train_ds.classes) == NLI2 == ("entailment", "non-entailment")
assert hans.ENTAILMENT == 0 and hans.LABELS[0] == "entailment"  # same label order: no mapping needed
say(f"SNLI-2 train {len(train_ds)} (label counts {np.bincount(train_ds.labels).tolist()}), "
    f"test {len(test_ds)} (label counts {np.bincount(test_ds.labels).tolist()}; "
    f"majority-class test accuracy {np.bincount(test_ds.labels).max() / len(test_ds):.4f})")

model = repro.models.text_classifier(num_classes=2, model_name="minilm", max_length=MAX_LENGTH,
                                     train_top_layers=int(os.environ.get("PROBE_TOP_LAYERS", "2")), attn_implementation="eager",
                                     frozen_in_eval=True, seed=SEED)
n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
say(f"model: MiniLM-L6, top {os.environ.get('PROBE_TOP_LAYERS', '2')} layers + pooler + classifier trainable ({n_trainable:,} params), "
    f"max_length {MAX_LENGTH}")

# ----------------------------------------------------------------------------- cache + train
t0 = time.perf_counter()
tok_train = model.encode(train_ds)
lens = tok_train.lengths().numpy()
say(f"{elapsed()} train token lengths: median {np.median(lens):.0f}, p99 {np.percentile(lens, 99):.0f}, "
    f"max {lens.max()}, truncated at {MAX_LENGTH}: {(lens >= MAX_LENGTH).sum()}")
cached_train = model.cache_frozen(tok_train, batch_size=64)
del tok_train
t_cache = time.perf_counter() - t0
say(f"{elapsed()} cached frozen layers for {len(train_ds)} pairs in {t_cache:.1f}s "
    f"({len(train_ds) / t_cache:.1f} pairs/s), hidden {tuple(cached_train.inputs['hidden_states'].shape)}")

cfg = TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR, optimizer="adamw", seed=SEED,
                  group_by_length=True, checkpoint_epochs="final", progress=True, device="cpu")
say(f"TrainConfig: {cfg.to_dict()}")
t0 = time.perf_counter()
res = Trainer(model, cfg, run_dir=None).fit(cached_train)
t_train = time.perf_counter() - t0
del cached_train
for row in res.history:
    say(f"  epoch {row['epoch']}: train loss {row['train_loss']:.4f}, train acc {row['train_accuracy']:.4f}")
say(f"{elapsed()} training: {t_train:.1f}s for {EPOCHS} epochs x {len(train_ds)} pairs = "
    f"{EPOCHS * len(train_ds) / t_train:.1f} pairs/s (training steps only; + {t_cache:.1f}s caching once)")
if os.environ.get("PROBE_SAVE"):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.environ["PROBE_SAVE"])


# ----------------------------------------------------------------------------- evaluation helpers
def logits_of(ds, chunk=2048):
    """Logits in dataset order: tokenise, sort by length, cache the frozen part chunk-wise, predict."""
    tok = model.encode(ds)
    order = torch.argsort(tok.lengths(), stable=True)
    out = torch.empty(len(ds), 2)
    for s in range(0, len(ds), chunk):
        idx = order[s:s + chunk]
        c = model.cache_frozen(tok[idx], batch_size=64)
        out[idx] = predict(model, c, batch_size=128, device="cpu")
    return out


t0 = time.perf_counter()
test_logits = logits_of(test_ds)
test_pred = test_logits.argmax(1).numpy()
test_acc = float((test_pred == test_ds.labels).mean())
say(f"\n{elapsed()} SNLI-2 test accuracy: {test_acc:.4f}  (n={len(test_ds)}, eval {time.perf_counter() - t0:.1f}s)")
for lab, name in enumerate(NLI2):
    m = test_ds.labels == lab
    say(f"  recall {name:15s}: {(test_pred[m] == lab).mean():.4f} (n={m.sum()})")
say(f"  predicted entailment: {(test_pred == 0).mean():.4f}")

# ----------------------------------------------------------------------------- HANS-style
summary = {}
per_subcase = {}
for style in ("original", "snli"):
    frame = hans.load_hans("evaluation", n_per_subcase=NPS, seed=SEED, style=style)
    ds = hans_dataset(frame, "test", name=f"hans_{style}")
    pred = logits_of(ds).argmax(1).numpy()
    frame = frame.assign(pred=pred, correct=(pred == frame["label"].to_numpy()))
    frame["gold"] = frame["label"].map({0: "entailed", 1: "non-entailed"})
    tab = frame.pivot_table(index="heuristic", columns="gold", values="correct", aggfunc="mean")
    tab = tab.reindex(list(hans.HEURISTICS))
    tab["all"] = frame.groupby("heuristic")["correct"].mean()
    tab.loc["all"] = [frame.loc[frame.gold == c, "correct"].mean() for c in ("entailed", "non-entailed")] + [
        frame["correct"].mean()]
    summary[style] = tab
    per_subcase[style] = frame.groupby("subcase", sort=False)["correct"].mean()
    say(f"\n{elapsed()} HANS-style, style={style!r}, evaluation split, {NPS} per subcase "
        f"({len(frame)} pairs; predicted entailment overall {(pred == 0).mean():.3f}) -- accuracy:")
    say(tab.round(3).to_string())

say("\nPer-subcase accuracy (l/s/c = heuristic, e/n = entailed/non-entailed gold label):")
say(pd.DataFrame(per_subcase).round(2).to_string())

# ----------------------------------------------------------------------------- identity checks
say("\nIdentity sanity check (premise repeated as hypothesis; share predicted entailment):")
rows = []
for style in ("original", "snli"):
    f = hans.identity_pairs(300, seed=SEED, style=style, split="evaluation")
    p = logits_of(hans_dataset(f, "test", name=f"identity_{style}")).argmax(1).numpy()
    rows.append((f"HANS-style {style}", len(f), float((p == 0).mean())))
prem = pd.unique(test_ds.texts.astype(str))
rng = np.random.default_rng(SEED)
prem = prem[rng.choice(len(prem), size=min(300, len(prem)), replace=False)]
f = pd.DataFrame({"id": np.arange(len(prem)) + 9_000_000, "premise": prem, "hypothesis": prem,
                  "label": 0, "heuristic": "identity", "subcase": "identity"})
p = logits_of(hans_dataset(f, "test", name="identity_snli_premises")).argmax(1).numpy()
rows.append(("SNLI test premises", len(f), float((p == 0).mean())))
say(pd.DataFrame(rows, columns=["premises", "n", "entailment %"]).assign(
    **{"entailment %": lambda d: (100 * d["entailment %"]).round(1)}).to_string(index=False))

say(f"\n{elapsed()} done. settings: n_train={len(train_ds)}, epochs={EPOCHS}, AdamW lr={LR} (constant, "
    f"wd 0), batch {BATCH}, seed {SEED}, max_length {MAX_LENGTH}, cache_frozen + group_by_length, "
    f"torch threads {torch.get_num_threads()}, HANS n_per_subcase={NPS} (evaluation split, seed {SEED})")
