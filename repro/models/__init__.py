"""Models: the BERT-family text classifier, the word-embedding CNN, the small-image VGG, turn-over dropout."""
from __future__ import annotations

from repro.errors import UnknownNameError
from repro.models.base import ReproModel


def build_model(spec: dict, seed: int | None = None) -> ReproModel:
    """Build a model from its spec (``model.spec``; ``kind`` is ``"vgg"``, ``"text"``, ``"word_cnn"`` or ``"mlp"``).

    ``seed`` makes the random initialisation (the heads) reproducible without touching the global
    RNG of the caller."""
    import torch

    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in ("vgg", "text", "word_cnn", "mlp"):
        raise UnknownNameError(f"unknown model kind {kind!r}; use 'vgg', 'text', 'word_cnn' or 'mlp'")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if kind == "vgg":
            from repro.models.vision import VGG

            return VGG(**spec)
        if kind == "mlp":
            from repro.models.mlp import MLP

            return MLP(**spec)
        if kind == "word_cnn":
            from repro.models.cnn import WordCNN

            return WordCNN(**spec)
        from repro.models.text import TextClassifier

        return TextClassifier(**spec)


def vgg(**kwargs) -> ReproModel:
    """Shortcut: ``build_model({"kind": "vgg", **kwargs}, seed=kwargs.pop("seed", None))``."""
    seed = kwargs.pop("seed", None)
    return build_model({"kind": "vgg", **kwargs}, seed=seed)


def mlp(**kwargs) -> ReproModel:
    """Shortcut for the image MLP with optional turn-over layers (:class:`repro.models.mlp.MLP`)."""
    seed = kwargs.pop("seed", None)
    return build_model({"kind": "mlp", **kwargs}, seed=seed)


def text_classifier(**kwargs) -> ReproModel:
    """Shortcut for the text classifier (see :class:`repro.models.text.TextClassifier`)."""
    seed = kwargs.pop("seed", None)
    return build_model({"kind": "text", **kwargs}, seed=seed)


def word_cnn(train=None, vocab=None, **kwargs) -> ReproModel:
    """Shortcut for the word-embedding CNN (:class:`repro.models.cnn.WordCNN`); its vocabulary is
    built from ``train`` (a TextDataset, see :func:`repro.models.cnn.build_vocab`) unless ``vocab``
    is given. ``num_classes`` defaults to ``train.num_classes``; ``seed`` fixes the initialisation."""
    from repro.models.cnn import build_vocab

    if vocab is None:
        if train is None:
            raise ValueError("word_cnn needs a training set to build its vocabulary, or vocab=[...]")
        vocab = build_vocab(train, kwargs.get("tokenizer", "minilm"), kwargs.get("max_length", 128))
    if "num_classes" not in kwargs:
        if train is None:
            raise ValueError("word_cnn needs num_classes= when no training set is given")
        kwargs["num_classes"] = train.num_classes
    seed = kwargs.pop("seed", None)
    return build_model({"kind": "word_cnn", "vocab": list(vocab), **kwargs}, seed=seed)


__all__ = ["ReproModel", "build_model", "mlp", "text_classifier", "vgg", "word_cnn"]
