"""Models: the BERT-family text classifier, the small-image VGG, turn-over dropout."""
from __future__ import annotations

from repro.errors import UnknownNameError
from repro.models.base import ReproModel


def build_model(spec: dict, seed: int | None = None) -> ReproModel:
    """Build a model from its spec (``model.spec``; ``kind`` is ``"vgg"`` or ``"text"``).

    ``seed`` makes the random initialisation (the heads) reproducible without touching the global
    RNG of the caller."""
    import torch

    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in ("vgg", "text"):
        raise UnknownNameError(f"unknown model kind {kind!r}; use 'vgg' or 'text'")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if kind == "vgg":
            from repro.models.vision import VGG

            return VGG(**spec)
        from repro.models.text import TextClassifier

        return TextClassifier(**spec)


def vgg(**kwargs) -> ReproModel:
    """Shortcut: ``build_model({"kind": "vgg", **kwargs}, seed=kwargs.pop("seed", None))``."""
    seed = kwargs.pop("seed", None)
    return build_model({"kind": "vgg", **kwargs}, seed=seed)


def text_classifier(**kwargs) -> ReproModel:
    """Shortcut for the text classifier (see :class:`repro.models.text.TextClassifier`)."""
    seed = kwargs.pop("seed", None)
    return build_model({"kind": "text", **kwargs}, seed=seed)


__all__ = ["ReproModel", "build_model", "text_classifier", "vgg"]
