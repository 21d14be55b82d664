"""In-memory datasets with stable integer ids, and the tensor batches models consume.

A :class:`Dataset` holds raw examples (images as uint8 arrays, or texts) with a label and a stable
integer ``id`` per example. Ids come from the source (the position in the original file), so they
survive subsetting, shuffling, noise injection and batching; removal experiments and turn-over
dropout address examples by id. A model turns a dataset into a :class:`Batch` of tensors
(``model.encode(dataset)``); slicing a :class:`Batch` gives mini-batches that keep their ids.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from repro.errors import EmptyDatasetError, InvalidParameterError

def _id_array(ids) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.cpu().numpy()
    return np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).reshape(-1)


def _as_index(index, n: int) -> np.ndarray:
    if isinstance(index, slice):
        return np.arange(n)[index]
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    index = np.asarray(index)
    if index.dtype == bool:
        if index.shape != (n,):
            raise IndexError(f"boolean mask has shape {index.shape}, expected ({n},)")
        return np.flatnonzero(index)
    return index.astype(np.int64).reshape(-1)


@dataclass(frozen=True)
class Dataset:
    """Examples with labels and stable ids. Subclasses add the per-example payload fields.

    Attributes:
        name: registry name (e.g. ``"fashion_mnist"``).
        split: ``"train"``, ``"test"``, ...
        labels: int64 array (N,).
        ids: int64 array (N,), unique, stable across subsetting and shuffling.
        classes: class names; label ``k`` means ``classes[k]``.
    """

    name: str
    split: str
    labels: np.ndarray
    ids: np.ndarray
    classes: tuple[str, ...]

    _per_example = ("labels", "ids")

    def __post_init__(self):
        n = len(self.ids)
        for f in self._per_example:
            if len(getattr(self, f)) != n:
                raise ValueError(f"field {f!r} has {len(getattr(self, f))} rows, ids has {n}")
        from repro.checks import check_unique_ids
        check_unique_ids(self.ids, f"examples of {self.name}/{self.split}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index) -> "Dataset":
        """Examples at the given positions (slice, int array or boolean mask), in that order."""
        idx = _as_index(index, len(self))
        return dataclasses.replace(self, **{f: getattr(self, f)[idx] for f in self._per_example})

    def positions(self, ids) -> np.ndarray:
        """Positions of the given ids. Raises KeyError naming ids that are not in the dataset."""
        ids = _id_array(ids)
        order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[order]
        pos = np.minimum(np.searchsorted(sorted_ids, ids), max(len(self) - 1, 0))
        ok = (sorted_ids[pos] == ids) if len(self) else np.zeros(len(ids), dtype=bool)
        if not ok.all():
            missing = ids[~ok]
            raise KeyError(f"{len(missing)} id(s) not in {self.name}/{self.split}: {missing[:10].tolist()}")
        return order[pos].astype(np.int64)

    def select_ids(self, ids: Iterable[int]) -> "Dataset":
        """The examples with these ids, in the order given."""
        return self.subset(self.positions(ids))

    def exclude(self, ids: Iterable[int], strict: bool = True) -> "Dataset":
        """All examples except those with the given ids (the basis of every removal experiment).

        With ``strict`` (default) an id that is not in the dataset raises KeyError rather than being
        silently ignored; an empty result raises :class:`EmptyDatasetError`.
        """
        ids = _id_array(ids)
        if strict and len(ids):
            self.positions(ids)
        keep = ~np.isin(self.ids, ids)
        if not keep.any():
            raise EmptyDatasetError(f"removing {len(ids)} ids leaves {self.name}/{self.split} empty")
        return self.subset(keep)

    def with_labels(self, labels) -> "Dataset":
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != self.labels.shape:
            raise ValueError(f"labels shape {labels.shape} != {self.labels.shape}")
        return dataclasses.replace(self, labels=labels)

    def shuffled(self, seed: int) -> "Dataset":
        return self.subset(np.random.default_rng(seed).permutation(len(self)))

    def sample(self, n: int | None, seed: int = 0, stratify: bool = False) -> "Dataset":
        """A seeded random subset of ``n`` examples (all when ``n`` is None), sorted by position.

        ``stratify`` keeps the class proportions (useful for small subsets). ``n`` larger than the
        dataset raises :class:`repro.errors.InvalidParameterError` (never a silently smaller set)."""
        from repro.checks import as_int
        n = as_int("n", n, allow_none=True)
        seed = as_int("seed", seed)
        if n is None or n == len(self):
            return self
        if n <= 0:
            raise EmptyDatasetError(f"asked for n={n} examples of {self.name}/{self.split}")
        if n > len(self):
            raise InvalidParameterError(f"asked for n={n} examples but {self.name}/{self.split} has only "
                                        f"{len(self)}; use n=None (all of them) or n <= {len(self)}")
        rng = np.random.default_rng(seed)
        if not stratify:
            return self.subset(np.sort(rng.choice(len(self), size=n, replace=False)))
        picks = []
        classes, counts = np.unique(self.labels, return_counts=True)
        quota = np.floor(counts / counts.sum() * n).astype(int)
        quota[np.argsort(-(counts / counts.sum() * n - quota))[: n - quota.sum()]] += 1
        for c, q in zip(classes, quota):
            picks.append(rng.choice(np.flatnonzero(self.labels == c), size=q, replace=False))
        return self.subset(np.sort(np.concatenate(picks)))

    def class_counts(self) -> dict[str, int]:
        return {self.classes[k]: int((self.labels == k).sum()) for k in range(self.num_classes)}


@dataclass(frozen=True)
class ImageDataset(Dataset):
    """Images as uint8 arrays of shape (N, C, H, W)."""

    images: np.ndarray = dataclasses.field(default=None, repr=False)
    _per_example = ("labels", "ids", "images")


@dataclass(frozen=True)
class TextDataset(Dataset):
    """Single texts, or text pairs (``texts`` = premise, ``pairs`` = hypothesis), as object arrays."""

    texts: np.ndarray = dataclasses.field(default=None, repr=False)
    pairs: np.ndarray | None = dataclasses.field(default=None, repr=False)
    extra: dict | None = dataclasses.field(default=None, repr=False)  # per-example metadata arrays

    @property
    def _per_example(self):  # type: ignore[override]
        base = ("labels", "ids", "texts") + (("pairs",) if self.pairs is not None else ())
        return base

    def subset(self, index) -> "TextDataset":
        idx = _as_index(index, len(self))
        out = super().subset(idx)
        if self.extra:
            out = dataclasses.replace(out, extra={k: np.asarray(v)[idx] for k, v in self.extra.items()})
        return out

    def example(self, i: int) -> str:
        """A readable one-line rendering of example ``i`` (for tables of proponents)."""
        if self.pairs is None:
            return str(self.texts[i])
        return f"{self.texts[i]} => {self.pairs[i]}"


@dataclass
class Batch:
    """Model-ready tensors with labels and ids; index it to get mini-batches.

    ``inputs`` are keyword arguments of the model's forward (e.g. ``pixel_values`` or ``input_ids``
    and ``attention_mask``), each with the example dimension first. Indexing trims padding columns
    that no example of the mini-batch uses, so text batches cost what their longest member needs.
    """

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index) -> "Batch":
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index.astype(np.int64))
        inputs = {k: v[index] for k, v in self.inputs.items()}
        mask = inputs.get("attention_mask")
        if mask is not None and mask.dim() == 2 and mask.shape[0] > 0:
            width = int(mask.sum(1).max())
            inputs = {k: (v[:, :width] if v.dim() >= 2 and v.shape[1] == mask.shape[1] else v)
                      for k, v in inputs.items()}
        return Batch(inputs, self.labels[index], self.ids[index])

    def to(self, device) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.inputs.items()},
                     self.labels.to(device), self.ids.to(device))

    def batches(self, batch_size: int, shuffle_seed: int | None = None, group_by_length: bool = False,
                group_batches: int = 50):
        """Yield mini-batches in order (or shuffled with a seeded generator).

        ``group_by_length`` (needs ``shuffle_seed`` and text inputs): mini-batches of examples of
        similar length, see :meth:`length_grouped_order`; since indexing trims padding to the longest
        member, they cost less. Off (the default), the order is exactly the plain seeded permutation.
        """
        n = len(self)
        if group_by_length:
            if shuffle_seed is None:
                raise InvalidParameterError("group_by_length=True needs a shuffle_seed (it groups a seeded "
                                            "permutation); without one the batches are in order anyway")
            for index in self.length_grouped_order(batch_size, shuffle_seed, group_batches):
                yield self[index]
            return
        if shuffle_seed is None:
            order = torch.arange(n)
        else:
            g = torch.Generator().manual_seed(int(shuffle_seed))
            order = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            yield self[order[start:start + batch_size]]

    def lengths(self) -> torch.Tensor:
        """Number of non-padding tokens of every example (row sums of the 2-D ``attention_mask``).

        Inputs without one (images, plain tensors) raise :class:`repro.errors.InvalidParameterError`."""
        mask = self.inputs.get("attention_mask")
        if mask is None or mask.dim() != 2:
            raise InvalidParameterError(
                "grouping by length needs text inputs with a 2-D 'attention_mask' (padding = 0); these "
                f"inputs are {sorted(self.inputs)}: turn group_by_length off for non-text data")
        return (mask != 0).sum(1).cpu()

    def length_grouped_order(self, batch_size: int, seed: int, group_batches: int = 50) -> list[torch.Tensor]:
        """Seeded mini-batch index lists of examples of similar length (``group_by_length``).

        The seeded permutation of :meth:`batches` is cut into mega-batches of ``group_batches *
        batch_size`` examples; each mega-batch is sorted by :meth:`lengths` (longest first, ties in
        permutation order), then cut into mini-batches of ``batch_size``; finally the mini-batches
        are put in a seeded random order (same generator). Every example appears exactly once, there
        are ``ceil(n / batch_size)`` mini-batches (only the very last mega-batch can end in a short
        one), and the result depends only on ``seed``."""
        from repro.checks import as_positive_int
        batch_size = as_positive_int("batch_size", batch_size)
        group_batches = as_positive_int("group_batches", group_batches)
        lengths = self.lengths().numpy()
        n = len(self)
        g = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(n, generator=g).numpy()
        mega = group_batches * batch_size
        chunks = []
        for start in range(0, n, mega):
            part = order[start:start + mega]
            part = part[np.argsort(-lengths[part], kind="stable")]
            chunks.extend(torch.from_numpy(part[s:s + batch_size].copy()) for s in range(0, len(part), batch_size))
        shuffle = torch.randperm(len(chunks), generator=g).tolist()
        return [chunks[i] for i in shuffle]

    def exclude(self, ids, strict: bool = True) -> "Batch":
        """All rows except those with the given ids (ids not in the batch raise KeyError when strict)."""
        ids = torch.from_numpy(_id_array(ids))
        if strict:
            missing = ids[~torch.isin(ids, self.ids.cpu())]
            if len(missing):
                raise KeyError(f"{len(missing)} id(s) not in the batch: {missing[:10].tolist()}")
        keep = ~torch.isin(self.ids, ids)
        if not bool(keep.any()):
            raise EmptyDatasetError("removing the given ids leaves the batch empty")
        return self[torch.nonzero(keep).squeeze(1)]


def concat_datasets(parts: Sequence[Dataset]) -> Dataset:
    """Concatenate datasets of the same type and classes (ids must stay unique)."""
    first = parts[0]
    fields = {f: np.concatenate([getattr(p, f) for p in parts]) for f in first._per_example}
    if len(np.unique(fields["ids"])) != len(fields["ids"]):
        raise ValueError("concatenated datasets share ids; ids must be unique")
    return dataclasses.replace(first, **fields)


def _pad_cat(parts: list[torch.Tensor], key: str) -> torch.Tensor:
    """Concatenate along the example dimension; 2-D+ integer tensors of different widths (token ids,
    attention masks from per-batch padding) are right-padded with 0 to the widest."""
    widths = {p.shape[1:] for p in parts}
    if len(widths) == 1:
        return torch.cat(parts)
    if any(p.dim() < 2 or p.is_floating_point() for p in parts) or len({p.shape[2:] for p in parts}) > 1:
        raise ValueError(f"input {key!r} has shapes {sorted(tuple(w) for w in widths)} across batches; "
                         "only integer token tensors can be padded to a common width")
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1]))
                      for p in parts])


def batch_from(data, input_name: str = "x") -> Batch:
    """A :class:`Batch` from plain tensors, for models repro did not build.

    Accepts ``(inputs, labels)`` or ``(inputs, labels, ids)``, where ``inputs`` is a tensor (stored
    under ``input_name`` and passed positionally) or a dict of tensors (keyword arguments, e.g. a
    tokenizer's output), ``labels`` integer class labels and ``ids`` unique integers (default: the
    positions ``0..n-1``); or an iterable of such tuples (a ``DataLoader`` in a fixed order:
    ``shuffle=False``), which is concatenated, ids continuing across batches. Token tensors padded
    per batch are right-padded with 0 to the widest batch.
    """
    if isinstance(data, Batch):
        return data
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and not isinstance(data[0], (tuple, list)):
        parts = [data]
    else:
        try:
            parts = list(data)
        except TypeError:
            raise TypeError(f"expected (inputs, labels), (inputs, labels, ids), a DataLoader of them, a "
                            f"repro Dataset or a Batch; got {type(data).__name__}") from None
        if not parts:
            raise EmptyDatasetError("the data loader yielded no batches")
    inputs: dict[str, list] = {}
    labels, ids = [], []
    for part in parts:
        if not isinstance(part, (tuple, list)) or len(part) not in (2, 3):
            raise TypeError("each batch must be (inputs, labels) or (inputs, labels, ids), got "
                            f"{type(part).__name__}" + (f" of length {len(part)}" if hasattr(part, "__len__") else ""))
        x, y = part[0], part[1]
        x = {input_name: x} if isinstance(x, torch.Tensor) else x
        if not hasattr(x, "items") or not all(isinstance(v, torch.Tensor) for v in x.values()):
            raise TypeError(f"inputs must be a tensor or a dict of tensors, got {type(part[0]).__name__}")
        y = torch.as_tensor(y)
        if y.is_floating_point() or y.dim() != 1:
            raise TypeError(f"labels must be a 1-D integer tensor of class indices, got dtype {y.dtype} "
                            f"and shape {tuple(y.shape)}")
        if set(inputs) and set(x) != set(inputs):
            raise ValueError(f"batches have different input keys: {sorted(inputs)} vs {sorted(x)}")
        for k, v in x.items():
            if v.shape[0] != len(y):
                raise ValueError(f"input {k!r} has {v.shape[0]} rows but there are {len(y)} labels")
            inputs.setdefault(k, []).append(v)
        labels.append(y.long())
        ids.append(torch.as_tensor(part[2]).long().reshape(-1) if len(part) == 3 else None)
    n = sum(len(y) for y in labels)
    if n == 0:
        raise EmptyDatasetError("no examples in the data")
    if all(i is None for i in ids):
        id_t = torch.arange(n)
    elif any(i is None for i in ids):
        raise ValueError("some batches carry ids and others do not")
    else:
        id_t = torch.cat(ids)
    from repro.checks import check_unique_ids
    check_unique_ids(id_t, "examples")
    return Batch({k: _pad_cat(v, k) for k, v in inputs.items()}, torch.cat(labels), id_t)
