"""Any PyTorch or Hugging Face classifier as a repro model, so the estimators take it as it is.

The estimators need four things from a model: its logits for a batch of inputs, the names of its
parameters (``params="last"``, ``"embeddings"``, ``"all"``, ...), the input of its last linear layer
(for the last-layer fast paths and nearest-neighbour search) and a way to turn data into tensors.
repro's own models (:class:`repro.models.base.ReproModel`) provide them; :func:`as_model` wraps any
other ``nn.Module`` in a :class:`ForeignModel` that provides them too:

- **logits**: ``module(x)`` for a tensor input, ``module(**inputs)`` for a dict of tensors (Hugging
  Face models); an output with a ``.logits`` attribute, a ``"logits"`` key or a tuple is unwrapped.
- **parameter names**: the module's own names (``"0.weight"``, ``"classifier.bias"``); ``"last"`` is
  the last ``nn.Linear`` in registration order (or the module named by ``last_layer=``),
  ``"embeddings"`` the input word embeddings (``get_input_embeddings()`` or the first
  ``nn.Embedding``).
- **features**: the input of that last linear layer, captured by a forward hook. Fast paths that
  assume ``logits = last_layer(features)`` check it on the first batch and are skipped when it does
  not hold.
- **data**: ``(inputs, labels)`` or ``(inputs, labels, ids)`` with inputs a tensor or a dict of
  tensors, or a ``DataLoader`` yielding such tuples (see :func:`repro.data.core.batch_from`).

Every estimator calls :func:`as_model` itself, so users pass their module directly; calling it by
hand is only needed to set ``num_classes`` / ``last_layer`` / ``tokenizer`` or to train the module
with :class:`repro.train.Trainer`.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from repro.data.core import Batch, Dataset
from repro.errors import ReproError, UnknownNameError
from repro.models.base import ReproModel

__all__ = ["ForeignModel", "as_model", "unwrap_logits", "last_linear_name"]

PREFIX = "module."


def unwrap_logits(out) -> torch.Tensor:
    """The logits tensor of a model output: the tensor itself, ``out.logits`` (Hugging Face
    ``ModelOutput``), ``out["logits"]`` or the first element of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ReproError(f"the model returned a {type(out).__name__}, not logits; return a tensor of "
                     "shape (batch, classes), or an object with a .logits tensor")


def last_linear_name(module: nn.Module) -> str | None:
    """Name of the last ``nn.Linear`` submodule in registration order (``""`` when the module
    itself is an ``nn.Linear``), or None when there is none."""
    name = None
    for n, m in module.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    return name


def _no_last_layer(module: nn.Module, what: str) -> ReproError:
    return ReproError(f"{type(module).__name__} has no nn.Linear layer, so {what} is not defined; pass "
                      "as_model(model, last_layer='<module name>'), or use params='all' / a list of "
                      "parameter names (FastIF: features=callable(model, inputs))")


def _spec_of(module: nn.Module, num_classes: int | None) -> dict:
    """A JSON-able description: class, classes and a digest of parameter names and shapes (enough
    for checkpoint sidecars and cache stamps to tell two architectures apart)."""
    h = hashlib.sha256()
    for n, p in module.named_parameters():
        h.update(f"{n}:{tuple(p.shape)};".encode())
    cls = type(module)
    return {"kind": "foreign", "class": f"{cls.__module__}.{cls.__qualname__}",
            "num_classes": num_classes, "params": h.hexdigest()[:16]}


class ForeignModel(ReproModel):
    """A user's ``nn.Module`` (plain PyTorch, Hugging Face, torchvision) seen as a repro model.

    The wrapped module is kept (not copied) as ``self.module``; parameter names inside repro carry
    the prefix ``module.``, but every name the user gives (``params=[...]``, ``last_layer=``, state
    dict keys) is the module's own. Build it with :func:`as_model`.
    """

    input_name = "x"

    def __init__(self, module: nn.Module, num_classes: int | None = None, last_layer: str | None = None,
                 tokenizer=None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"as_model takes an nn.Module, got {type(module).__name__}")
        self.module = module
        name = last_linear_name(module) if last_layer is None else str(last_layer)
        last = None
        if name is not None:
            try:
                last = module.get_submodule(name)
            except AttributeError:
                raise UnknownNameError(f"{type(module).__name__} has no submodule {name!r} (last_layer=)") from None
        # None when the module has no linear layer: "last" and the features are then undefined
        self.last_layer_name = None if name is None else ((PREFIX + name) if name else "module")
        if num_classes is None and isinstance(last, nn.Linear):
            num_classes = last.out_features
        # None: labels are not range-checked against the head (the model's output decides)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.tokenizer = tokenizer
        self.spec = _spec_of(module, self.num_classes)

    # ---------------------------------------------------------------- names
    @property
    def last_layer(self) -> nn.Module:
        if self.last_layer_name is None:
            raise _no_last_layer(self.module, "the last layer")
        return self.get_submodule(self.last_layer_name)

    def group_prefixes(self) -> dict[str, list[str]]:
        out = {"last": [self.last_layer_name + "."]} if self.last_layer_name is not None else {}
        emb = self._embedding_name()
        if emb is not None:
            out["embeddings"] = [emb + "."]
        return out

    def _embedding_name(self) -> str | None:
        target = None
        get = getattr(self.module, "get_input_embeddings", None)
        if callable(get):
            try:
                target = get()
            except (NotImplementedError, AttributeError):
                target = None
        for n, m in self.named_modules():
            if (target is not None and m is target) or (target is None and isinstance(m, nn.Embedding)):
                return n
        return None

    def param_group(self, group):
        """As :meth:`ReproModel.param_group`, with explicit names in the module's own spelling
        (``"0.weight"``; the internal ``module.`` prefix is added)."""
        if group == "last" and self.last_layer_name is None:
            raise _no_last_layer(self.module, "params='last'")
        if isinstance(group, str):
            own = [n for n, _ in self.named_parameters()]
            if group not in ("all", "trainable") and group not in self.group_prefixes() and PREFIX + group in own:
                return [PREFIX + group]
            if group not in ("all", "trainable") and group not in self.group_prefixes():
                prefixed = PREFIX + group
                if any(n.startswith(prefixed.rstrip(".") + ".") for n in own):
                    return super().param_group([prefixed])
            return super().param_group(group)
        return super().param_group([w if w.startswith(PREFIX) else PREFIX + w for w in group])

    @property
    def word_embeddings(self):
        name = self._embedding_name()
        return None if name is None else self.get_submodule(name)

    def special_token_ids(self):
        """The wrapped module's ``special_token_ids()``, else its tokenizer's special ids (the one
        given to :func:`as_model`, or a ``tokenizer`` attribute of the module)."""
        own = getattr(self.module, "special_token_ids", None)
        if callable(own):
            return list(own())
        tok = self.tokenizer if self.tokenizer is not None else getattr(self.module, "tokenizer", None)
        if tok is None or not hasattr(tok, "all_special_ids"):
            raise ReproError("the wrapped model has no tokenizer to tell its special tokens: pass "
                             "as_model(model, tokenizer=tok) or exclude_special=[ids]")
        return list(tok.all_special_ids)

    # ---------------------------------------------------------------- calls
    def forward(self, ids=None, flip=None, **inputs) -> torch.Tensor:
        """Logits of the wrapped module (``ids`` / ``flip`` are repro's turn-over arguments and are
        ignored here)."""
        if set(inputs) == {self.input_name}:
            out = self.module(inputs[self.input_name])
        else:
            out = self.module(**inputs)
        return unwrap_logits(out)

    def features(self, ids=None, flip=None, **inputs) -> torch.Tensor:
        """The input of the last linear layer (flattened to ``(batch, features)``), by a hook."""
        if self.last_layer_name is None:
            raise _no_last_layer(self.module, "features() (the input of the last layer)")
        captured = []

        def hook(mod, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            captured.append(x)

        handle = self.last_layer.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self.forward(**inputs)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ReproError(f"the last layer {self.last_layer_name[len(PREFIX):]!r} ran {len(captured)} "
                             "times in one forward pass; its input is not a per-example feature vector")
        return captured[0].reshape(captured[0].shape[0], -1)

    def encode(self, data) -> Batch:
        """A :class:`Batch` from ``(inputs, labels[, ids])`` or a DataLoader of such tuples; a
        repro Dataset only when the wrapped module is itself a repro model."""
        from repro.data.core import batch_from

        if isinstance(data, Dataset):
            if isinstance(self.module, ReproModel):
                return self.module.encode(data)
            raise TypeError(f"{type(self.module).__name__} cannot encode a repro {type(data).__name__}; "
                            "pass (inputs, labels) tensors, or a DataLoader yielding them")
        return batch_from(data, self.input_name)

    def load_state(self, state: dict) -> None:
        """Load a state dict in the module's own key spelling (or repro's prefixed one)."""
        if state and all(k.startswith(PREFIX) for k in state):
            state = {k[len(PREFIX):]: v for k, v in state.items()}
        missing, unexpected = self.module.load_state_dict(state, strict=False)
        if missing or unexpected:
            from repro.errors import CheckpointError
            raise CheckpointError(f"the state dict does not fit {type(self.module).__name__}: missing "
                                  f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}")


def as_model(model: nn.Module, num_classes: int | None = None, last_layer: str | None = None,
             tokenizer=None) -> ReproModel:
    """``model`` itself when it is a repro model, else a :class:`ForeignModel` around it.

    Args:
        model: any classifier ``nn.Module``: tensor in and logits out, or keyword tensors in
            (Hugging Face) and an output with ``.logits``.
        num_classes: classes of the head (default: ``out_features`` of the last linear layer;
            labels are range-checked against it).
        last_layer: module name of the output layer (default: the last ``nn.Linear``; a model
            without one still works with ``params="all"`` or names).
        tokenizer: a Hugging Face tokenizer (TracIn-WE reads its special tokens from it).

    Example::

        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
        tracin = TracInCP(net, [(state_1, 0.1), (state_2, 0.1)]).fit((X_train, y_train))
    """
    if isinstance(model, ReproModel):
        if num_classes is not None or last_layer is not None or tokenizer is not None:
            raise ReproError("num_classes / last_layer / tokenizer are for models repro did not build")
        return model
    return ForeignModel(model, num_classes=num_classes, last_layer=last_layer, tokenizer=tokenizer)
