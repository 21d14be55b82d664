"""A multilayer perceptron for small images, with turn-over dropout after any number of hidden layers.

The turn-over dropout reference example is an MLP with turn-over layers in more than one hidden
layer; this model offers that placement with the number of turn-over layers as a parameter. It has
no ordinary dropout, so it trains deterministically given its seed (and many masked copies can be
trained at once with :func:`repro.multitrain.masked_fit`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from repro.data.core import Batch, ImageDataset
from repro.errors import InvalidParameterError
from repro.models.base import ReproModel


def turnover_seeds(turnover: dict, n_hidden: int) -> list[int | None]:
    """Per hidden layer (bottom to top) the seed of its turn-over layer, or None for no layer.

    ``turnover`` holds ``p`` (drop rate), and either ``seeds`` (one integer per turn-over layer,
    counted from the top hidden layer down) or ``seed`` plus ``layers`` (how many of the top hidden
    layers get one; default 1; layer ``k`` from the top gets ``seed + 1000 * k``, so every layer has
    its own seed)."""
    unknown = set(turnover) - {"p", "seed", "seeds", "layers"}
    if unknown:
        raise InvalidParameterError(f"unknown turnover option(s) {sorted(unknown)}; use p, seed and layers, "
                                    "or p and seeds")
    if "seeds" in turnover:
        if "layers" in turnover or "seed" in turnover:
            raise InvalidParameterError("turnover: give either seeds=[...] or seed= and layers=, not both")
        seeds = [int(s) for s in turnover["seeds"]]
    else:
        layers = turnover.get("layers", 1)
        if isinstance(layers, bool) or not isinstance(layers, (int, np.integer)):
            raise InvalidParameterError(f"turnover layers must be an integer, got {layers!r}")
        seed = int(turnover.get("seed", 0))
        seeds = [seed + 1000 * k for k in range(int(layers))]
    if not 1 <= len(seeds) <= n_hidden:
        raise InvalidParameterError(f"turnover needs 1..{n_hidden} layers (one per hidden layer at most), "
                                    f"got {len(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise InvalidParameterError(f"turnover seeds must differ between layers, got {seeds}")
    # seeds[0] belongs to the top hidden layer
    return [None] * (n_hidden - len(seeds)) + list(reversed(seeds))


class MLP(ReproModel):
    """``in_features -> hidden[0] -> ... -> hidden[-1] -> num_classes`` with ReLU.

    Args:
        num_classes: classes of the head.
        in_features: flattened input size (784 for 28x28 grey images).
        hidden: widths of the hidden layers.
        turnover: ``None`` (plain MLP) or ``{"p": 0.5, "seed": s, "layers": L}`` (turn-over dropout
            after each of the top ``L`` hidden layers, each with its own seed) or
            ``{"p": 0.5, "seeds": [s_top, s_below, ...]}`` (see :func:`turnover_seeds`).

    ``forward(pixel_values, ids=None, flip=None)``: ``ids``/``flip`` are passed to every turn-over
    layer (identity without ids). Inputs are images in [0, 1] of any shape that flattens to
    ``in_features``.
    """

    last_layer_name = "classifier"
    input_name = "pixel_values"  # the keyword a plain (images, labels) tensor pair is passed as

    def __init__(self, num_classes: int = 10, in_features: int = 784, hidden=(256, 256),
                 turnover: dict | None = None):
        super().__init__()
        hidden = [int(h) for h in hidden]
        if not hidden or min(hidden) <= 0:
            raise InvalidParameterError(f"hidden must be a non-empty list of positive widths, got {hidden}")
        self.spec = dict(kind="mlp", num_classes=num_classes, in_features=in_features, hidden=hidden,
                         turnover=dict(turnover) if turnover else None)
        self.num_classes = num_classes
        seeds = turnover_seeds(turnover, len(hidden)) if turnover else [None] * len(hidden)
        p = float(turnover.get("p", 0.5)) if turnover else 0.5
        widths = [in_features] + hidden
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        from repro.models.turnover import TurnOverDropout

        self.drops = nn.ModuleList(TurnOverDropout(h, p, seed=s) if s is not None else nn.Identity()
                                   for h, s in zip(hidden, seeds))
        self.classifier = nn.Linear(hidden[-1], num_classes)

    def group_prefixes(self) -> dict[str, list[str]]:
        return {**super().group_prefixes(), "hidden": ["hidden_layers."]}

    def head_turnover(self):
        """The top turn-over layer when it is the only one (then influence has a fast path)."""
        tod = [d for d in self.drops if not isinstance(d, nn.Identity)]
        if len(tod) == 1 and tod[0] is self.drops[-1]:
            return tod[0]
        return None

    def features(self, pixel_values, ids=None, flip=None) -> torch.Tensor:
        """Input of ``classifier`` (after the top hidden layer and its turn-over layer)."""
        x = pixel_values.reshape(pixel_values.shape[0], -1)
        for lin, drop in zip(self.hidden_layers, self.drops):
            x = torch.relu(lin(x))
            if not isinstance(drop, nn.Identity):
                x = drop(x, ids=ids, flip=flip)
        return x

    def forward(self, pixel_values, ids=None, flip=None) -> torch.Tensor:
        return self.classifier(self.features(pixel_values, ids, flip))

    def encode(self, ds: ImageDataset) -> Batch:
        """Images to float tensors in [0, 1], flattened."""
        self.check_labels(ds)
        size = int(np.prod(ds.images.shape[1:]))
        if size != self.spec["in_features"]:
            raise ValueError(f"images of shape {ds.images.shape[1:]} have {size} values; this MLP takes "
                             f"in_features={self.spec['in_features']}")
        pixels = torch.from_numpy(ds.images.reshape(len(ds), -1)).float().div_(255.0)
        return Batch({"pixel_values": pixels}, torch.from_numpy(ds.labels), torch.from_numpy(ds.ids))
