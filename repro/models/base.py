"""What every repro model offers the trainer and the influence estimators.

A model is an ``nn.Module`` whose ``forward(**inputs, ids=None, flip=None)`` returns logits, built
from a JSON-able ``spec`` (so checkpoints can say which model they belong to), and which names its
parameter groups: ``"last"`` (the final classifier layer), ``"embeddings"`` (word embeddings, text
models), ``"trainable"`` and ``"all"``. ``features(**inputs)`` returns the input of the last layer
(penultimate activations), used by last-layer fast paths and nearest-neighbour search.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from repro.data.core import Batch, Dataset
from repro.errors import EmptyDatasetError, LabelRangeError, UnknownNameError


class ReproModel(nn.Module):
    """Base class: spec, parameter groups, dataset encoding checks."""

    spec: dict
    num_classes: int
    last_layer_name: str  # module name of the final nn.Linear
    input_name: str = "x"  # forward keyword of a plain tensor input (see repro.data.core.batch_from)

    @property
    def last_layer(self) -> nn.Linear:
        return self.get_submodule(self.last_layer_name)

    def group_prefixes(self) -> dict[str, list[str]]:
        """Parameter-name prefixes of the named groups (subclasses add their own)."""
        return {"last": [self.last_layer_name + "."]}

    def param_group(self, group: str | Iterable[str]) -> list[str]:
        """Names of the parameters of a group (``"last"``, ``"embeddings"``, ``"trainable"``,
        ``"all"``), or of an explicit list of parameter names / name prefixes."""
        names = [n for n, _ in self.named_parameters()]
        if isinstance(group, str):
            if group == "all":
                return names
            if group == "trainable":
                return [n for n, p in self.named_parameters() if p.requires_grad]
            prefixes = self.group_prefixes()
            if group not in prefixes and group in names:  # a single parameter name
                return [group]
            if group not in prefixes:
                raise UnknownNameError(
                    f"unknown parameter group {group!r}; known: all, trainable, {', '.join(prefixes)}")
            return [n for n in names if any(n.startswith(p) for p in prefixes[group])]
        wanted = list(group)
        chosen = [n for n in names if any(n == w or n.startswith(w.rstrip(".") + ".") for w in wanted)]
        unmatched = [w for w in wanted if not any(n == w or n.startswith(w.rstrip(".") + ".") for n in names)]
        if unmatched:
            raise UnknownNameError(f"no parameters named {unmatched}; e.g. {names[:5]}")
        return chosen

    def head_turnover(self):
        """The turn-over dropout layer that sits directly before the last layer, if any.

        When it exists, everything below it is independent of the instance masks, so turn-over
        influence needs one forward pass per target instead of one per (target, instance) pair."""
        if (self.spec or {}).get("turnover"):
            return self.drop
        return None

    def check_labels(self, ds: Dataset) -> None:
        if len(ds) == 0:
            raise EmptyDatasetError(f"dataset {ds.name}/{ds.split} is empty")
        lo, hi = int(np.min(ds.labels)), int(np.max(ds.labels))
        if lo < 0 or hi >= self.num_classes:
            raise LabelRangeError(
                f"labels of {ds.name}/{ds.split} span [{lo}, {hi}] but the model head has "
                f"{self.num_classes} classes; build the model with num_classes={ds.num_classes}")

    def encode(self, ds: Dataset) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def features(self, **inputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
