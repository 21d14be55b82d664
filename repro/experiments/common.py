"""Plumbing shared by the notebooks: parameters + result folder, standard figures."""
from __future__ import annotations

import pandas as pd

from repro import profiles
from repro.results import ResultWriter, runs_root


def start(notebook: str, namespace: dict):
    """Resolve the notebook's parameters and open its result folder.

    Call it as ``start("quickstart", globals())`` right after the ``parameters`` cell: the profile
    (``profile``), the results root (``results_dir``) and every parameter not left at ``...`` are
    read from the notebook's variables (so ``papermill -p profile cpu -p seed 1`` does what it says;
    a mistyped name is an error). Returns ``(params, writer, run_dir)``; ``run_dir`` is where this
    notebook keeps training runs (checkpoints): ``runs/<notebook>/<profile>`` for the profile's own
    parameters, ``runs/<notebook>/<profile>-<hash>`` when some were overridden (git-ignored).

    The smoke profile prints a banner: its numbers only show that the code runs. Under
    ``torchrun ... repro run`` it joins the process group as rank 0 (:func:`repro.distributed.connect`),
    so that estimators built through :func:`repro.distributed.shard` split their training set
    over the ranks."""
    from repro import distributed

    profile, overrides, results_dir = profiles.from_namespace(notebook, namespace)
    params = profiles.resolve(notebook, profile, overrides)
    if distributed.connect():  # run by `torchrun ... repro run`: influence sections split over ranks
        import torch.distributed as dist
        print(f"{notebook}: influence sections run on {dist.get_world_size()} processes "
              f"({dist.get_backend()}); everything else on this one")
    writer = ResultWriter(notebook, profile, params=params, root=results_dir)
    if profile == "smoke":
        print(f"SMOKE TEST ({notebook}): tiny data and one or two epochs, to check that the notebook runs "
              "(seconds; what CI executes). Its numbers and figures mean nothing; run "
              f"`repro run {notebook} --profile cpu` (or papermill -p profile cpu) for results.")
    return params, writer, runs_root() / notebook / profiles.run_key(notebook, profile, overrides)


def history_frame(histories: dict[str, list[dict]]) -> pd.DataFrame:
    """Per-epoch training histories of several models as one long table (column ``model``)."""
    return pd.concat([pd.DataFrame(h).assign(model=name) for name, h in histories.items()],
                     ignore_index=True)


def learning_curve_figure(frame: pd.DataFrame):
    """Train/eval accuracy and loss per epoch, one panel per model."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    models = list(dict.fromkeys(frame["model"]))
    fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 6), squeeze=False)
    for j, name in enumerate(models):
        sub = frame[frame["model"] == name]
        for i, metric in enumerate(("accuracy", "loss")):
            cols = [c for c in (f"train_{metric}", f"eval_{metric}") if c in sub]
            long = sub.melt(id_vars="epoch", value_vars=cols, var_name="split", value_name=metric)
            long["split"] = long["split"].str.replace(f"_{metric}", "", regex=False)
            sns.lineplot(data=long, x="epoch", y=metric, hue="split", marker="o", ax=axes[i, j])
            axes[i, j].set_title(f"{name}: {metric}")
    fig.tight_layout()
    return fig


def image_explanation_figure(explanations: list[dict], train, test, max_rows: int = 4):
    """One row per test image: the image, its k most helpful and k most harmful training images."""
    import matplotlib.pyplot as plt

    rows = explanations[:max_rows]
    k = len(rows[0]["helpful"]) if rows else 0
    fig, axes = plt.subplots(len(rows), 1 + 2 * k, figsize=(1.6 * (1 + 2 * k), 1.9 * len(rows)), squeeze=False)
    name = lambda ds, y: ds.classes[int(y)][:10]
    for r, e in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(test.images[e["test_pos"]][0], cmap="gray")
        ax.set_title(f"test: {name(test, e['label'])}\npred: {name(test, e['pred'])}", fontsize=7,
                     color="black" if e["label"] == e["pred"] else "red")
        for j, (pos, sc) in enumerate(zip(e["helpful"], e["helpful_scores"])):
            a = axes[r, 1 + j]
            a.imshow(train.images[pos][0], cmap="gray")
            a.set_title(f"helpful {sc:+.2f}\n{name(train, train.labels[pos])}", fontsize=7, color="green")
        for j, (pos, sc) in enumerate(zip(e["harmful"], e["harmful_scores"])):
            a = axes[r, 1 + k + j]
            a.imshow(train.images[pos][0], cmap="gray")
            a.set_title(f"harmful {sc:+.2f}\n{name(train, train.labels[pos])}", fontsize=7, color="darkred")
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    return fig


def text_explanation_table(explanations: list[dict], train, test, width: int = 90) -> pd.DataFrame:
    """The same as a table of texts: one row per (test example, helpful/harmful training example)."""
    cut = lambda s: s if len(s) <= width else s[: width - 1] + "…"
    rows = []
    for e in explanations:
        for kind in ("helpful", "harmful"):
            for pos, sc in zip(e[kind], e[f"{kind}_scores"]):
                rows.append({"test_id": e["test_id"], "test": cut(test.example(e["test_pos"])),
                             "label": test.classes[e["label"]], "pred": test.classes[e["pred"]], "kind": kind,
                             "score": float(sc), "train_id": int(train.ids[pos]),
                             "train_label": train.classes[int(train.labels[pos])], "train": cut(train.example(pos))})
    return pd.DataFrame(rows)
