"""TracIn-WE (Yeh et al., NeurIPS 2022, "First is Better Than Last"): TracIn through the word embeddings.

    TracIn-WE(z, z') = sum_i eta_i  sum_{w in tokens(z) & tokens(z')}  g_i(z, w) . g_i(z', w)

where ``g_i(z, w)`` is the gradient of the loss of ``z`` at checkpoint ``i`` w.r.t. the row ``E_w``
of the word-embedding matrix. That gradient is non-zero only for tokens that occur in ``z``, and it
is the sum, over the positions ``t`` with ``input_ids[t] = w``, of the gradient w.r.t. the input
embedding at position ``t``. So the full embedding-layer TracIn dot product (``V x H`` entries per
example) equals a sum over *shared* tokens of ``H``-vectors. **Sign convention** as in TracIn:
positive = proponent (a step on ``z`` lowers the test loss at ``z'``), negative = opponent.

How the rows are obtained (no ``V x H`` gradient ever exists): a forward hook replaces the output of
the word-embedding module by a leaf tensor ``X`` of shape ``(b, L, H)``; one backward of the **sum**
of the per-example losses of a chunk gives ``dL/dX``. In eval mode (no dropout; padding is masked
out of attention) each example's logits depend on its own positions only, so ``dL/dX[j]`` is exactly
example ``j``'s own per-position gradient: one backward pass per chunk instead of one per example.
Positions are then summed per (example, token id) with one ``unique`` + ``index_add``.

What is counted: padding positions (``attention_mask == 0``) and the embedding's ``padding_idx``
never (their rows are zero in the dense gradient too); special tokens ([CLS], [SEP], [PAD], [UNK],
[MASK]) are excluded by default (``exclude_special=True``; ``False`` keeps them, which makes the
score the plain dense embedding-gradient dot product; or pass an explicit list of token ids).

Pairwise scoring groups the stored rows by token: for every token shared by the test and the train
rows, the test rows ``A (a, H)`` and train rows ``B (b, H)`` with that token contribute ``A B^T`` to
the ``(n_test, n_train)`` matrix (scattered with ``index_add``). Tokens with many pairs use one small
matmul each; the many tokens with few pairs are done together, vectorised, by enumerating their
(test row, train row) pairs and gathering both rows. The work is proportional to the number of
(shared token, test example, train example) triples, not to ``n_test x n_train x V``.

TracIn-WE-Topk (``top_k_tokens=k``): keep, per example and checkpoint, only the ``k`` token rows
with the largest L2 norm (after the exclusions above), on the train and the test side.

:func:`cancellation_ratio` measures the "cancellation effect" of a parameter block:
``sum_i ||g_i|| / ||sum_i g_i||`` over per-example gradients (1 = all aligned, large = they cancel).
"""
from __future__ import annotations

import math

import copy
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from repro.data.core import Batch
from repro.errors import EmptyDatasetError, ReproError
from repro.influence.grads import (EvalState, as_batch, train_batch, param_names, per_example_grads,
                                   resolve_target)
from repro.influence.base import Estimator
from repro.influence.tracin import resolve_checkpoints
from repro.models.foreign import as_model, unwrap_logits
from repro.utils import progress as _progress
from repro.utils import resolve_device

__all__ = ["TracInWE", "TokenGrads", "word_embedding_module", "special_token_ids",
           "position_grads", "token_grads", "sparse_dot", "cancellation_ratio",
           "cancellation_ratio_from_grads"]


# ---------------------------------------------------------------------------- model access
def word_embedding_module(model) -> nn.Embedding:
    """The input word-embedding module of a text model: ``model.word_embeddings`` when the model has
    it (our :class:`~repro.models.text.TextClassifier`), else ``get_input_embeddings()`` of the model
    or of its first child that has one (any Hugging Face encoder inside a wrapper)."""
    emb = getattr(model, "word_embeddings", None)
    if isinstance(emb, nn.Embedding):
        return emb
    for mod in (model, *model.children()):
        get = getattr(mod, "get_input_embeddings", None)
        if callable(get):
            emb = get()
            if isinstance(emb, nn.Embedding):
                return emb
    raise ReproError(f"{type(model).__name__} has no reachable input word embeddings: give it a "
                     "`word_embeddings` property or a Hugging Face child with get_input_embeddings()")


def special_token_ids(model) -> list[int]:
    """Ids of the special tokens of a text model (``model.special_token_ids()``, else its
    tokenizer's ``all_special_ids``)."""
    if callable(getattr(model, "special_token_ids", None)):
        return sorted(int(i) for i in model.special_token_ids())
    tok = getattr(model, "tokenizer", None)
    if tok is not None and hasattr(tok, "all_special_ids"):
        return sorted(set(int(i) for i in tok.all_special_ids))
    raise ReproError(f"cannot tell the special tokens of {type(model).__name__} (no special_token_ids() "
                     "and no tokenizer): pass exclude_special=[ids] explicitly")


def _excluded_ids(model, exclude_special) -> list[int]:
    """Token ids whose rows are never counted: the embedding's padding_idx, plus the special tokens
    (``True``), none (``False``) or an explicit list."""
    emb = word_embedding_module(model)
    out = set()
    if emb.padding_idx is not None:
        out.add(int(emb.padding_idx))
    if exclude_special is True:
        out.update(special_token_ids(model))
    elif exclude_special is False or exclude_special is None:
        pass
    elif isinstance(exclude_special, (str, bytes)):
        raise TypeError("exclude_special must be True, False or a list of token ids")
    else:
        out.update(int(i) for i in exclude_special)
    return sorted(out)


# ---------------------------------------------------------------------------- position gradients
def position_grads(model, batch: Batch, target=None) -> torch.Tensor:
    """Gradient of ``target(model(x_j), y_j)`` w.r.t. the input word embedding at every position of
    every example of ``batch``: ``(b, L, H)``, float32, on the model's device.

    One forward and one backward of the **sum** over the batch (see module doc): exact per-example
    gradients because in eval mode the examples do not interact. The model is put in eval mode and
    no parameter requires grad during the call (both restored afterwards)."""
    tgt = resolve_target(target)
    emb = word_embedding_module(model)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    handle = emb.register_forward_hook(hook)
    try:
        with EvalState(model, names=(), set_requires_grad=True), torch.enable_grad():
            logits = unwrap_logits(model(**batch.inputs))
            value = tgt(logits, batch.labels).sum()
            if len(captured) != 1:
                raise ReproError(f"the word-embedding module ran {len(captured)} times in one forward "
                                 "pass; TracIn-WE needs exactly one lookup per example")
            (g,) = torch.autograd.grad(value, captured[0])
    finally:
        handle.remove()
    return g.float()


@dataclass
class TokenGrads:
    """Sparse word-embedding gradients of ``n`` examples (one checkpoint): entry ``r`` is the
    gradient row of token ``tok[r]`` for example ``ex[r]`` (position in the data), ``rows[r]`` (H,).
    Entries are sorted by (example, token); an example has at most one entry per token."""

    ex: torch.Tensor  # (nnz,) int64
    tok: torch.Tensor  # (nnz,) int64
    rows: torch.Tensor  # (nnz, H) float32
    n: int

    def __len__(self) -> int:
        return int(self.ex.numel())

    def sq_norms(self) -> torch.Tensor:
        """``||g(z)||^2`` of every example ``(n,)`` (sum of its squared row norms)."""
        out = torch.zeros(self.n, dtype=torch.float32, device=self.rows.device)
        return out.index_add_(0, self.ex, self.rows.pow(2).sum(1))

    def example(self, i: int) -> dict[int, torch.Tensor]:
        """``{token id: row}`` of example ``i``."""
        sel = torch.nonzero(self.ex == int(i)).squeeze(1)
        return {int(t): r for t, r in zip(self.tok[sel].tolist(), self.rows[sel])}

    def top_k(self, k: int) -> "TokenGrads":
        """Only the ``k`` rows of largest L2 norm of every example (ties: smaller token id first)."""
        if k is None:
            return self
        if len(self) == 0:
            return self
        norms = self.rows.norm(dim=1)
        order = torch.sort(norms, descending=True, stable=True).indices  # ties keep token order
        order = order[torch.sort(self.ex[order], stable=True).indices]  # group by example
        ex = self.ex[order]
        counts = torch.bincount(ex, minlength=self.n)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(ex), device=ex.device) - starts[ex]
        keep = order[rank < int(k)]
        keep = keep[torch.argsort(self.ex[keep] * (self.tok.max() + 1) + self.tok[keep])]
        return TokenGrads(self.ex[keep], self.tok[keep], self.rows[keep], self.n)

    def to(self, device) -> "TokenGrads":
        return TokenGrads(self.ex.to(device), self.tok.to(device), self.rows.to(device), self.n)

    @staticmethod
    def cat(parts: Sequence["TokenGrads"]) -> "TokenGrads":
        """Concatenate (example positions of part ``j`` are shifted by the sizes of parts < j)."""
        shift, ex = 0, []
        for p in parts:
            ex.append(p.ex + shift)
            shift += p.n
        return TokenGrads(torch.cat(ex), torch.cat([p.tok for p in parts]),
                          torch.cat([p.rows for p in parts]), shift)


def _rows_from_positions(g: torch.Tensor, input_ids: torch.Tensor, attention_mask, excluded: torch.Tensor,
                         out_device) -> TokenGrads:
    """Sum the position gradients ``g (b, L, H)`` per (example, token id), dropping padding positions
    and excluded token ids."""
    b, L, H = g.shape
    ids = input_ids.to(g.device)
    valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(g.device).bool()
    if excluded.numel():
        valid &= ~torch.isin(ids, excluded.to(g.device))
    ex = torch.arange(b, device=g.device)[:, None].expand(b, L)[valid]
    tok = ids[valid]
    vals = g[valid]
    vocab = int(tok.max()) + 1 if tok.numel() else 1
    key, inverse = torch.unique(ex * vocab + tok, return_inverse=True)  # sorted by (ex, tok)
    rows = torch.zeros(len(key), H, dtype=torch.float32, device=g.device).index_add_(0, inverse, vals)
    return TokenGrads((key // vocab).to(out_device), (key % vocab).to(out_device), rows.to(out_device), b)


def token_grads(model, data, target=None, exclude_special=True, top_k_tokens: int | None = None,
                batch_size: int = 32, device=None, out_device="cpu", progress: bool = False) -> TokenGrads:
    """Sparse word-embedding gradient rows of every example of ``data`` at the model's current
    weights (see module doc for what is counted). ``batch_size`` examples share one backward pass."""
    batch = as_batch(model, data)
    if "input_ids" not in batch.inputs:
        raise ReproError("TracIn-WE needs token inputs (`input_ids`) in the encoded batch")
    dev = next(model.parameters()).device if device is None else resolve_device(device)
    model.to(dev)
    excluded = torch.tensor(_excluded_ids(model, exclude_special), dtype=torch.int64)
    parts = []
    n = len(batch)
    starts = range(0, n, batch_size)
    for s in _progress(starts, total=len(starts), desc="embedding grads", disable=not progress, leave=False):
        chunk = batch[torch.arange(s, min(n, s + batch_size))].to(dev)
        g = position_grads(model, chunk, target)
        parts.append(_rows_from_positions(g, chunk.inputs["input_ids"], chunk.inputs.get("attention_mask"),
                                          excluded, out_device).top_k(top_k_tokens))
    if not parts:
        raise EmptyDatasetError("no examples to take embedding gradients of")
    return TokenGrads.cat(parts)


# ---------------------------------------------------------------------------- pairwise scoring
def _by_token(tg: TokenGrads) -> tuple[TokenGrads, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entries re-sorted by (token, example) with each token's [start, start+count) range."""
    order = torch.argsort(tg.tok * (tg.n + 1) + tg.ex)
    s = TokenGrads(tg.ex[order], tg.tok[order], tg.rows[order], tg.n)
    uniq, counts = torch.unique_consecutive(s.tok, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return s, uniq, starts, counts


def sparse_dot(test: TokenGrads, train: TokenGrads, out: torch.Tensor | None = None, alpha: float = 1.0,
               heavy_pairs: int = 256, pair_chunk: int = 1 << 16) -> torch.Tensor:
    """``out[i, j] += alpha * sum_{shared tokens w} test_i(w) . train_j(w)`` for all pairs;
    ``out`` is ``(test.n, train.n)`` (created when None).

    Tokens whose (test rows x train rows) block has at least ``heavy_pairs`` pairs get one matmul
    each; the others are done together by gathering their row pairs, ``pair_chunk`` pairs at a time.
    Both routes give the same numbers (see the tests)."""
    dev = train.rows.device
    if out is None:
        out = torch.zeros(test.n, train.n, dtype=torch.float32, device=dev)
    if len(test) == 0 or len(train) == 0:
        return out
    te, te_uniq, te_start, te_count = _by_token(test.to(dev))
    tr, tr_uniq, tr_start, tr_count = _by_token(train)
    # shared tokens: where each test token sits among the train tokens
    pos = torch.searchsorted(tr_uniq, te_uniq).clamp_max(len(tr_uniq) - 1)
    shared = tr_uniq[pos] == te_uniq
    if not bool(shared.any()):
        return out
    te_start, te_count, pos = te_start[shared], te_count[shared], pos[shared]
    b_start, b_count = tr_start[pos], tr_count[pos]
    pairs = te_count * b_count
    flat = out.view(-1)
    n_tr = train.n
    heavy = pairs >= heavy_pairs
    # heavy tokens: one small dense product each
    for a0, a, b0, b in zip(te_start[heavy].tolist(), te_count[heavy].tolist(),
                            b_start[heavy].tolist(), b_count[heavy].tolist()):
        block = te.rows[a0:a0 + a] @ tr.rows[b0:b0 + b].T
        idx = te.ex[a0:a0 + a, None] * n_tr + tr.ex[None, b0:b0 + b]
        flat.index_add_(0, idx.reshape(-1), block.reshape(-1), alpha=alpha)
    # light tokens: every test entry meets every train entry of its token; enumerate those pairs
    light = ~heavy
    if bool(light.any()):
        lt_start, lt_count = te_start[light], te_count[light]
        lb_start, lb_count = b_start[light], b_count[light]
        # test entries of light tokens, each with the train range of its token
        e = torch.repeat_interleave(lt_start, lt_count) + (
            torch.arange(int(lt_count.sum()), device=dev)
            - torch.repeat_interleave(torch.cumsum(lt_count, 0) - lt_count, lt_count))
        e_bstart = torch.repeat_interleave(lb_start, lt_count)
        e_bcount = torch.repeat_interleave(lb_count, lt_count)
        # process test entries in groups of about pair_chunk pairs
        cum = torch.cumsum(e_bcount, 0)
        lo = 0
        total = int(cum[-1])
        done = 0
        while done < total:
            hi = int(torch.searchsorted(cum, done + pair_chunk, right=True))
            hi = max(hi, lo + 1)
            ee, bs, bc = e[lo:hi], e_bstart[lo:hi], e_bcount[lo:hi]
            p = int(bc.sum())
            rep = torch.repeat_interleave(torch.arange(len(ee), device=dev), bc)
            offs = torch.arange(p, device=dev) - torch.repeat_interleave(torch.cumsum(bc, 0) - bc, bc)
            te_idx = ee[rep]
            tr_idx = bs[rep] + offs
            dots = (te.rows[te_idx] * tr.rows[tr_idx]).sum(1)
            flat.index_add_(0, te.ex[te_idx] * n_tr + tr.ex[tr_idx], dots, alpha=alpha)
            done += p
            lo = hi
    return out


# ---------------------------------------------------------------------------- estimator
class TracInWE(Estimator):
    """TracIn-WE over saved checkpoints (and its Top-k variant), with word-level attributions.

    Args:
        model: a text model: our :class:`~repro.models.text.TextClassifier`, a raw Hugging Face
            sequence classifier (``as_model(hf, tokenizer=tok)`` to name its special tokens), or any
            module whose input embeddings are reachable (see :func:`word_embedding_module`). It is
            copied; the caller's model is never changed.
        checkpoints: a run folder, Checkpoint(s), ``[(state_dict or weights file, lr), ...]``, or
            ``None`` = the model's current weights as the only checkpoint, with weight 1.
        lr_weighting: ``True``/``"lr"`` (weight by ``Checkpoint.lr``), ``"mean"`` (``lr_mean``),
            ``False`` (weight 1, as the official notebook does).
        exclude_special: ``True`` (default: [CLS], [SEP], [PAD], [UNK], [MASK] rows are not counted),
            ``False`` (all tokens: the score is then the full embedding-layer TracIn), or a list of
            token ids. Padding positions and the embedding's ``padding_idx`` are never counted.
        top_k_tokens: TracIn-WE-Topk: keep only the ``k`` largest-norm token rows per example and
            checkpoint (train and test side). ``None`` = all.
        test_target: what is differentiated at the test point (``"loss"`` or another target of
            :func:`repro.influence.grads.resolve_target`); for targets where higher is better the
            score is negated, so positive still means proponent.
        batch_size: examples per backward pass.
        device: where gradients are computed (``"auto"``: CUDA when available).
        storage_device: where the train rows are kept and scores computed (default CPU).
        progress: show progress bars.

    Example::

        we = TracInWE(model, "runs/text").fit(train)
        s = we.scores(test)                          # (n_test, n_train), positive = proponent
        top = we.top_k(test, k=5)
        we.word_attributions(test.subset([0]), int(top["proponents"][0, 0]))
    """

    def __init__(self, model, checkpoints=None, lr_weighting=True, exclude_special=True,
                 top_k_tokens: int | None = None, test_target="loss", batch_size: int = 32,
                 device="auto", storage_device="cpu", progress: bool = True):
        self.device = resolve_device(device)
        self.model = copy.deepcopy(as_model(model)).to(self.device).eval()
        word_embedding_module(self.model)  # fail early when there are none
        self.checkpoints = None if checkpoints is None else resolve_checkpoints(checkpoints)
        if lr_weighting is True or lr_weighting == "lr":
            weights = [float(c.lr) for c in self.checkpoints] if self.checkpoints else [1.0]
        elif lr_weighting == "mean":
            weights = [float(c.lr_mean) for c in self.checkpoints] if self.checkpoints else [1.0]
        elif lr_weighting is False or lr_weighting is None:
            weights = [1.0] * (len(self.checkpoints) if self.checkpoints else 1)
        else:
            raise ValueError(f"lr_weighting must be True, 'lr', 'mean' or False, got {lr_weighting!r}")
        self.weights = weights
        self.lr_weighting = lr_weighting
        self.exclude_special = exclude_special
        self.excluded_ids = _excluded_ids(self.model, exclude_special)
        if top_k_tokens is not None and int(top_k_tokens) < 1:
            raise ValueError(f"top_k_tokens must be >= 1 or None, got {top_k_tokens}")
        self.top_k_tokens = None if top_k_tokens is None else int(top_k_tokens)
        self.target = resolve_target(test_target)
        self.batch_size = int(batch_size)
        self.storage_device = torch.device(storage_device)
        self.progress = progress
        self._train: Batch | None = None
        self._rows: list[TokenGrads] = []

    # ------------------------------------------------------------------ internals
    def _steps(self):
        """(checkpoint or None, weight) pairs; loads nothing."""
        if self.checkpoints is None:
            return [(None, self.weights[0])]
        return list(zip(self.checkpoints, self.weights))

    def _load(self, ck) -> None:
        if ck is not None:
            ck.load_into(self.model)

    def _token_grads(self, batch: Batch, target=None) -> TokenGrads:
        return token_grads(self.model, batch, target=target, exclude_special=self.excluded_ids,
                           top_k_tokens=self.top_k_tokens, batch_size=self.batch_size,
                           device=self.device, out_device=self.storage_device)


    def _one(self, example) -> Batch:
        b = as_batch(self.model, example)
        if len(b) != 1:
            raise ValueError(f"expected a single example, got {len(b)}")
        return b

    @property
    def _sign(self) -> float:
        return -1.0 if self.target.higher_is_better else 1.0

    # ------------------------------------------------------------------ public interface
    def fit(self, train) -> "TracInWE":
        """Sparse embedding-gradient rows of every training example at every checkpoint."""
        batch = train_batch(self.model, train, "TracInWE")
        rows = []
        for ck, _ in _progress(self._steps(), desc="TracIn-WE train rows", disable=not self.progress,
                               leave=False):
            self._load(ck)
            rows.append(self._token_grads(batch))
        self._train, self._rows = batch, rows
        return self

    def scores(self, test) -> torch.Tensor:
        """TracIn-WE scores ``(n_test, n_train)`` on the CPU; positive = proponent."""
        self._check_fitted()
        batch = as_batch(self.model, test)
        out = torch.zeros(len(batch), len(self._train), dtype=torch.float32, device=self.storage_device)
        for (ck, w), train_rows in _progress(list(zip(self._steps(), self._rows)), desc="TracIn-WE scores",
                                             disable=not self.progress, leave=False):
            self._load(ck)
            sparse_dot(self._token_grads(batch, self.target), train_rows, out=out, alpha=self._sign * w)
        return out.cpu()

    def self_influence(self) -> torch.Tensor:
        """``sum_i eta_i sum_w ||g_i(z, w)||^2`` for every training example ``(n_train,)``, >= 0."""
        self._check_fitted()
        out = torch.zeros(len(self._train), dtype=torch.float32)
        for w, rows in zip(self.weights, self._rows):
            out.add_(rows.sq_norms().cpu(), alpha=w)
        return out

    def token_contributions(self, test_example, train_example) -> dict[int, float]:
        """``{token id: sum_i eta_i g_i(z', w) . g_i(z, w)}`` over the shared (counted) tokens of a
        test example and a training example; the values sum to the pair's score."""
        self._check_fitted()
        test_b = self._one(test_example)
        train_b, j = None, None
        if isinstance(train_example, numbers.Integral) or (
                isinstance(train_example, torch.Tensor) and train_example.numel() == 1):
            tid = int(train_example)
            match = torch.nonzero(self._train.ids == tid).squeeze(1)
            if len(match) != 1:
                raise KeyError(f"id {tid} is not a fitted training example")
            j = int(match[0])
        else:
            train_b = self._one(train_example)
        contrib: dict[int, float] = {}
        for (ck, w), stored in zip(self._steps(), self._rows):
            self._load(ck)
            te = self._token_grads(test_b, self.target).example(0)
            tr = stored.example(j) if train_b is None else self._token_grads(train_b).example(0)
            for tok in sorted(set(te) & set(tr)):
                contrib[tok] = contrib.get(tok, 0.0) + self._sign * w * float(te[tok] @ tr[tok])
        return contrib

    def word_attributions(self, test_example, train_example) -> list[tuple[str, float]]:
        """Per-shared-token terms of the pair's score as ``(token string, contribution)``, sorted by
        ``|contribution|`` (largest first); they sum to ``scores(test)[., train]``.

        ``test_example``: a Dataset/Batch with one example. ``train_example``: the id of a fitted
        training example, or a Dataset/Batch with one example."""
        contrib = self.token_contributions(test_example, train_example)
        toks = sorted(contrib.items(), key=lambda kv: -abs(kv[1]))
        tokenizer = getattr(self.model, "tokenizer", None)
        if callable(getattr(self.model, "convert_ids_to_tokens", None)):  # models with remapped ids (WordCNN)
            names = self.model.convert_ids_to_tokens([t for t, _ in toks])
        elif tokenizer is not None and hasattr(tokenizer, "convert_ids_to_tokens"):
            names = tokenizer.convert_ids_to_tokens([t for t, _ in toks])
        else:
            names = [str(t) for t, _ in toks]
        return [(str(nm), v) for nm, (_, v) in zip(names, toks)]

    def __repr__(self) -> str:
        n_ck = len(self.checkpoints) if self.checkpoints else 0
        return (f"TracInWE(checkpoints={n_ck}, lr_weighting={self.lr_weighting!r}, "
                f"exclude_special={self.exclude_special!r}, top_k_tokens={self.top_k_tokens})")


# ---------------------------------------------------------------------------- cancellation
def _ratio_parts(sum_norms: float, sum_sq: float, norm_of_sum: float, parts: bool):
    ratio = sum_norms / norm_of_sum if norm_of_sum > 0 else float("inf")
    if not parts:
        return ratio
    root = math.sqrt(sum_sq)
    return {"ratio": ratio, "sum_of_norms": sum_norms, "norm_of_sum": norm_of_sum,
            "orthogonal_ratio": sum_norms / root if root > 0 else float("nan"),
            "beyond_orthogonal": root / norm_of_sum if norm_of_sum > 0 else float("inf")}


def cancellation_ratio_from_grads(grads: torch.Tensor, parts: bool = False):
    """``sum_i ||g_i|| / ||sum_i g_i||`` for per-example gradient rows ``(n, d)``: 1 when all rows
    point the same way, larger when they cancel (``inf`` when the sum is exactly zero).

    ``parts=True`` returns a dict that splits the ratio into ``orthogonal_ratio`` =
    ``sum_i ||g_i|| / sqrt(sum_i ||g_i||^2)`` (the ratio mutually orthogonal gradients of these norms
    would give: it grows with the number of comparable examples without any cancellation) times
    ``beyond_orthogonal`` = ``sqrt(sum_i ||g_i||^2) / ||sum_i g_i||`` (> 1 when the gradients point
    against each other on balance, < 1 when they agree), plus the sums."""
    grads = grads.double()
    norms = grads.norm(dim=1)
    return _ratio_parts(float(norms.sum()), float(norms.pow(2).sum()), float(grads.sum(0).norm()), parts)


def _is_embedding_block(model, names: list[str]) -> bool:
    emb = word_embedding_module(model)
    weight_names = [n for n, p in model.named_parameters() if p is emb.weight]
    return len(names) == 1 and names[0] in weight_names


def cancellation_ratio(model, batch, params="last", target=None, exclude_special=False,
                       batch_size: int = 32, device=None, parts: bool = False):
    """Cancellation ratio ``sum_i ||g_i|| / ||sum_i g_i||`` of a parameter block over the examples of
    ``batch`` at the model's current weights (Yeh et al. 2022: larger = more cancellation; they find
    it larger for the last layer than for the word embeddings).

    For the word-embedding matrix (``params="embeddings"`` or its parameter name) the per-example
    gradients are the sparse token rows (``||g_i||^2`` = sum of its squared row norms, ``sum_i g_i``
    by scatter-summing rows per token; ``exclude_special`` as in :class:`TracInWE`, default: all
    tokens, i.e. the true block gradient); other blocks use
    :func:`repro.influence.grads.per_example_grads`. ``parts=True``: the decomposition of
    :func:`cancellation_ratio_from_grads` (how much of the ratio mere orthogonality explains)."""
    batch = as_batch(model, batch)
    names = param_names(model, params)
    if not _is_embedding_block(model, names):
        return cancellation_ratio_from_grads(per_example_grads(model, batch, names, target=target, device=device),
                                             parts=parts)
    tg = token_grads(model, batch, target=target, exclude_special=exclude_special, batch_size=batch_size,
                     device=device)
    sq = tg.sq_norms().double()
    uniq, inverse = torch.unique(tg.tok, return_inverse=True)
    summed = torch.zeros(len(uniq), tg.rows.shape[1], dtype=torch.float64).index_add_(0, inverse, tg.rows.double())
    return _ratio_parts(float(sq.sqrt().sum()), float(sq.sum()), float(summed.norm()), parts)
