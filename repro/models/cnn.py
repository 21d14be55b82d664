"""A word-embedding CNN text classifier trained from scratch (the model of the TracIn-WE authors'
released notebook): word embedding -> 1-D convolutions (ReLU) -> global max-pool -> linear head.

Tokens are the WordPiece ids of the bundled MiniLM (BERT-uncased) tokenizer, remapped to a compact
embedding table over the ids that occur in the training set (``vocab``, part of the spec, so a
checkpoint rebuilds the same table): row 0 = padding, row 1 = every id not seen in training
("unknown"), rows ``2..`` = ``vocab`` in order. Pairs are encoded ``[CLS] a [SEP] b [SEP]``; with
``segments=True`` a 2-row segment embedding (premise / hypothesis) is added to the word embedding.

Padding never changes the output: padded positions are zeroed before every convolution (so a
convolution sees the same zeros beyond the text as "same" zero-padding gives) and after every ReLU,
and the global max-pool takes the maximum of non-negative values, where the zeros of padding can
never win over a real position's value. So an example's logits do not depend on how much padding its
mini-batch has, and examples in a batch never interact (needed by TracIn-WE's batched gradients).
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from torch import nn

from repro.data.core import Batch, TextDataset
from repro.errors import ReproError
from repro.models.base import ReproModel

PAD, UNK = 0, 1


@lru_cache(maxsize=4)
def _tokenizer(name: str):
    """The WordPiece tokenizer of a text model (``"minilm"``: the bundled one), loaded once."""
    from transformers import AutoTokenizer

    from repro.models.text import resolve_model_path

    path = resolve_model_path(name)
    from pathlib import Path
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=Path(path).is_dir())
    except OSError as e:
        raise ReproError(f"could not load the tokenizer of {name!r} ({path}): {e}") from None


def _tokenize(tokenizer, ds: TextDataset, max_length: int):
    texts = [str(t) for t in ds.texts]
    pairs = None if ds.pairs is None else [str(t) for t in ds.pairs]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if tokenizer.padding_side != "right":
        tokenizer.padding_side = "right"
    return tokenizer(texts, pairs, truncation=True, max_length=max_length, padding="max_length",
                     return_tensors="pt", return_token_type_ids=True)


def build_vocab(ds: TextDataset, tokenizer: str = "minilm", max_length: int = 128,
                min_count: int = 1) -> list[int]:
    """The WordPiece ids occurring (at least ``min_count`` times, within the first ``max_length``
    tokens) in ``ds``, sorted: the rows of :class:`WordCNN`'s embedding table. Build it from the
    **full** training set once and keep it for every retraining, so all models share one table."""
    if len(ds) == 0:
        raise ReproError("cannot build a vocabulary from an empty dataset")
    tok = _tokenizer(tokenizer)
    enc = _tokenize(tok, ds, max_length)
    ids = enc["input_ids"][enc["attention_mask"].bool()]
    uniq, counts = torch.unique(ids, return_counts=True)
    keep = uniq[counts >= int(min_count)]
    keep = keep[keep != tok.pad_token_id]
    return sorted(int(i) for i in keep)


class WordCNN(ReproModel):
    """Word-embedding CNN: ``Embedding(V, emb_dim)`` -> ``Conv1d(filters, k)`` + ReLU for every ``k``
    in ``kernel_sizes`` -> global max-pool over positions -> ``Linear(filters, num_classes)``.

    Args:
        num_classes: classes of the head.
        vocab: WordPiece ids of the embedding rows (see :func:`build_vocab`); any other id maps to
            the "unknown" row.
        emb_dim: embedding size (authors: 128).
        filters: channels of every convolution (authors: 50).
        kernel_sizes: one convolution per entry, odd sizes ("same" padding; authors: 5, 5, 1).
        max_length: tokenizer truncation length (authors: 128).
        segments: add a segment embedding for text pairs.
        tokenizer: ``"minilm"`` (bundled BERT-uncased WordPiece) or another HF tokenizer name/path.

    Parameter groups: ``"embeddings"`` (the word-embedding table, TracIn-WE's block), ``"middle"``
    (the middle convolution), ``"last"`` (the head). ``features()`` is the max-pooled vector.
    """

    last_layer_name = "fc"
    input_name = "input_ids"  # the keyword a plain (token ids, labels) tensor pair is passed as

    def __init__(self, num_classes: int, vocab: Sequence[int], emb_dim: int = 64, filters: int = 50,
                 kernel_sizes: Sequence[int] = (5, 5, 1), max_length: int = 128, segments: bool = True,
                 tokenizer: str = "minilm"):
        super().__init__()
        vocab = [int(v) for v in vocab]
        if not vocab:
            raise ReproError("WordCNN needs a non-empty vocab (repro.models.cnn.build_vocab(train))")
        if len(set(vocab)) != len(vocab):
            raise ReproError("WordCNN vocab has repeated ids")
        kernel_sizes = [int(k) for k in kernel_sizes]
        if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd positive sizes, got {kernel_sizes}")
        if emb_dim < 1 or filters < 1 or max_length < 2:
            raise ValueError("emb_dim, filters must be >= 1 and max_length >= 2")
        self.spec = dict(kind="word_cnn", num_classes=int(num_classes), vocab=vocab, emb_dim=int(emb_dim),
                         filters=int(filters), kernel_sizes=kernel_sizes, max_length=int(max_length),
                         segments=bool(segments), tokenizer=tokenizer)
        self.num_classes = int(num_classes)
        self.tokenizer = _tokenizer(tokenizer)
        n_vocab = len(self.tokenizer)
        if max(vocab) >= n_vocab or min(vocab) < 0:
            raise ReproError(f"vocab ids must lie in [0, {n_vocab}) of the {tokenizer!r} tokenizer")
        remap = torch.full((n_vocab,), UNK, dtype=torch.int64)
        remap[torch.tensor(vocab)] = torch.arange(2, len(vocab) + 2)
        remap[self.tokenizer.pad_token_id] = PAD
        self.register_buffer("remap", remap, persistent=False)
        self.register_buffer("inverse", torch.tensor([self.tokenizer.pad_token_id, self.tokenizer.unk_token_id]
                                                     + vocab), persistent=False)
        self.embedding = nn.Embedding(len(vocab) + 2, emb_dim, padding_idx=PAD)
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)  # as Keras' default embedding init
        with torch.no_grad():
            self.embedding.weight[PAD].zero_()
        self.segment = nn.Embedding(2, emb_dim) if segments else None
        if self.segment is not None:
            nn.init.uniform_(self.segment.weight, -0.05, 0.05)
        chans = [emb_dim] + [filters] * len(kernel_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(chans[i], chans[i + 1], k, padding=k // 2)
                                   for i, k in enumerate(kernel_sizes))
        self.fc = nn.Linear(filters, num_classes)
        for mod in [*self.convs, self.fc]:  # Keras defaults (the authors' model): Glorot-uniform, zero bias
            nn.init.xavier_uniform_(mod.weight)
            nn.init.zeros_(mod.bias)

    # ------------------------------------------------------------------ repro model contract
    def group_prefixes(self) -> dict[str, list[str]]:
        mid = len(self.convs) // 2
        return {"last": ["fc."], "embeddings": ["embedding."], "middle": [f"convs.{mid}."],
                "convs": ["convs."]}

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.embedding

    def special_token_ids(self) -> list[int]:
        """Embedding rows of padding, unknown, and the tokenizer's special tokens that are in the
        vocab ([CLS], [SEP], ...): excluded from word-level influence by default."""
        specials = {PAD, UNK}
        for t in self.tokenizer.all_special_ids:
            r = int(self.remap[int(t)])
            if r != UNK or t == self.tokenizer.unk_token_id:
                specials.add(r)
        return sorted(specials)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        """Readable WordPiece strings of embedding rows (for word attributions)."""
        wp = self.inverse[torch.as_tensor(list(ids), dtype=torch.int64)].tolist()
        return self.tokenizer.convert_ids_to_tokens(wp)

    def features(self, input_ids, attention_mask=None, token_type_ids=None, ids=None, flip=None):
        """The max-pooled convolution features ``(b, filters)``: the head's input."""
        x = self.embedding(input_ids)
        if self.segment is not None and token_type_ids is not None:
            x = x + self.segment(token_type_ids)
        m = (input_ids != PAD) if attention_mask is None else attention_mask.bool()
        m = m.to(x.dtype).unsqueeze(1)  # (b, 1, L)
        h = x.transpose(1, 2) * m
        for conv in self.convs:
            h = torch.relu(conv(h)) * m
        return h.amax(dim=2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, ids=None, flip=None):
        return self.fc(self.features(input_ids, attention_mask, token_type_ids))

    def encode(self, ds: TextDataset) -> Batch:
        """Tokenize with WordPiece, remap to embedding rows, pad to ``max_length`` (batches trim)."""
        self.check_labels(ds)
        if not isinstance(ds, TextDataset):
            raise TypeError(f"WordCNN encodes text datasets, got {type(ds).__name__}")
        enc = _tokenize(self.tokenizer, ds, self.spec["max_length"])
        inputs = {"input_ids": self.remap[enc["input_ids"]], "attention_mask": enc["attention_mask"]}
        if self.segment is not None:
            inputs["token_type_ids"] = enc["token_type_ids"]
        return Batch(inputs, torch.from_numpy(np.asarray(ds.labels)), torch.from_numpy(np.asarray(ds.ids)))
