"""Plumbing shared by the notebooks: parameters + result folder, standard figures."""
from __future__ import annotations

import pandas as pd

from repro import profiles
from repro.results import ResultWriter, runs_root


def start(notebook: str, profile: str, overrides: dict | None = None, results_dir=None):
    """Resolve the notebook's parameters and open its result folder.

    Returns ``(params, writer, run_dir)``; ``run_dir`` is where training runs (checkpoints) of this
    notebook and profile go (``runs/<notebook>/<profile>``, git-ignored)."""
    params = profiles.resolve(notebook, profile, overrides)
    writer = ResultWriter(notebook, profile, params=params, root=results_dir)
    return params, writer, runs_root() / notebook / profile


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
