"""The estimator protocol every influence estimator of repro follows, and its top-k result.

An estimator is configured by its constructor (model, checkpoints, settings; no data), then:

- ``fit(train) -> self``: the training examples whose influence is asked for (a repro Dataset, an
  encoded Batch, ``(inputs, labels[, ids])`` tensors or a DataLoader of them);
- ``scores(test) -> Tensor (n_test, n_train)``: influence of every training example on every test
  example, **positive = helpful** (the training example lowers the test loss / moves the test
  target the good way), columns in the order of ``train_ids``;
- ``self_influence() -> Tensor (n_train,)``: each training example's influence on itself, where
  the method defines one (large for atypical or mislabelled examples);
- ``top_k(test, k) -> TopK``: the ``k`` most helpful (proponents) and most harmful (opponents)
  training ids per test example, with their scores;
- ``train_ids``: stable ids of the fitted training examples.

Shared behaviour (top-k from the scores, the fitted check, ``train_ids``) lives here once.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from repro.checks import check_k
from repro.errors import NotFittedError

__all__ = ["Estimator", "RandomInfluence", "TopK", "proponents_opponents"]


@dataclass(frozen=True)
class TopK(Mapping):
    """Proponents and opponents of each test example (one row per test example).

    Attributes:
        test_ids: ``(n_test,)`` ids of the test examples.
        proponents: ``(n_test, k)`` training ids with the largest scores (most helpful first).
        proponent_scores: their scores, descending.
        opponents: ``(n_test, k)`` training ids with the smallest scores (most harmful first).
        opponent_scores: their scores, ascending.

    It also reads like a dict (``top["proponents"]``), as earlier versions returned one.
    """

    test_ids: torch.Tensor
    proponents: torch.Tensor
    proponent_scores: torch.Tensor
    opponents: torch.Tensor
    opponent_scores: torch.Tensor

    def __getitem__(self, key: str):
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def proponents_opponents(scores: torch.Tensor, train_ids: torch.Tensor, test_ids: torch.Tensor, k: int) -> TopK:
    """The ``k`` largest (proponents) and smallest (opponents) scores of every row, as ids and
    scores (see :class:`TopK`); ``k`` larger than the number of columns gives all of them."""
    k = min(check_k(k), scores.shape[1])
    hi = scores.topk(k, dim=1, largest=True)
    lo = scores.topk(k, dim=1, largest=False)
    return TopK(test_ids=torch.as_tensor(test_ids).clone(), proponents=train_ids[hi.indices],
                proponent_scores=hi.values, opponents=train_ids[lo.indices], opponent_scores=lo.values)


class Estimator:
    """Base class of the estimators (see the module docstring for the protocol).

    Subclasses implement :meth:`fit` (setting ``self._train`` to the encoded training Batch) and
    :meth:`scores`, and :meth:`self_influence` where the method defines it; they inherit
    :meth:`top_k`, :attr:`train_ids` and the fitted check.
    """

    _train = None

    def fit(self, train) -> "Estimator":  # pragma: no cover - abstract
        raise NotImplementedError

    def scores(self, test) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def self_influence(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no self-influence")

    def _check_fitted(self):
        if self._train is None:
            raise NotFittedError(f"call {type(self).__name__}.fit(train) before asking for scores")

    @property
    def train_ids(self) -> torch.Tensor:
        """Stable ids of the training examples, in the column order of :meth:`scores`."""
        self._check_fitted()
        return self._train.ids.clone()

    def top_k(self, test, k: int = 5) -> TopK:
        """The ``k`` most helpful (proponents) and most harmful (opponents) training examples of
        every test example (see :class:`TopK`)."""
        from repro.influence.grads import as_batch

        check_k(k)
        batch = as_batch(self.model, test)  # encoded once, for the scores and the ids
        return proponents_opponents(self.scores(batch), self.train_ids, batch.ids, k)


class RandomInfluence(Estimator):
    """I.i.d. standard-normal scores, seeded: the random baseline of deletion and detection
    experiments (its top-k is a random set). The model is optional: it is only used to read the
    data as elsewhere (``as_batch``); without one, a repro Dataset, a Batch or ``(inputs, labels[,
    ids])`` tensors are taken as they are (ids from the data, else positions)."""

    def __init__(self, model=None, seed: int = 0):
        self.model, self.seed = model, int(seed)

    def _batch(self, data):
        from repro.data.core import Batch, Dataset, batch_from
        from repro.influence.grads import as_batch

        if self.model is not None or isinstance(data, Batch):
            return as_batch(self.model, data)
        if isinstance(data, Dataset):
            from types import SimpleNamespace
            return SimpleNamespace(ids=torch.as_tensor(data.ids), n=len(data))
        return batch_from(data, "x")

    def fit(self, train) -> "RandomInfluence":
        """Remember the training ids; returns self."""
        self._train = self._batch(train)
        return self

    def scores(self, test) -> torch.Tensor:
        """``(n_test, n_train)`` normal draws from a generator seeded with ``seed`` (the same call
        gives the same matrix)."""
        self._check_fitted()
        g = torch.Generator().manual_seed(self.seed)
        return torch.randn(len(self._batch(test).ids), len(self._train.ids), generator=g)

    def top_k(self, test, k: int = 5) -> TopK:
        check_k(k)
        batch = self._batch(test)
        return proponents_opponents(self.scores(batch), self.train_ids, batch.ids, k)
