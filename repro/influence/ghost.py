"""Gradient inner products without per-example gradient rows: layer factors and "ghost" products.

For a linear map applied at positions ``t`` (``nn.Linear`` on a sequence, or ``nn.Conv2d`` on
unfolded patches), the per-example weight gradient is ``G_i = sum_t e_it a_it^T`` with ``a_it`` the
layer input (a patch) and ``e_it`` the gradient w.r.t. the layer output. Inner products of two such
gradients never need ``G``:

    <G_i, G_j> = sum_{t, s} (a_it . a_js) (e_it . e_js)

costs ``T_i T_j (d_in + d_out)`` per pair instead of ``d_in d_out`` (plus forming ``G`` at
``T d_in d_out`` per example). :func:`factors` chooses per layer: the factored ("ghost") form when
``T^2 (d_in + d_out) < d_in d_out`` -- the rule ghost-clipping training uses -- else the layer's
per-example gradients (rows). Biases and normalisation layers are always rows (they are small).

A chunk's :class:`Factors` is a list of pieces, one per chosen weight/bias in a fixed order, so
:func:`pair_products` (``(n_1, n_2)`` gradient inner products between two chunks) and
:func:`self_products` (``|g_i|^2``) add the pieces' contributions. Both equal the products of the
materialised gradient rows up to float rounding (tests/test_ghost.py). Memory: the factors of one
chunk (``n T (d_in + d_out)`` per ghost layer) and, while pairing, ``block x n_2 x T^2`` floats.

The factors come from the same single batched forward + backward as the ``"hooks"`` method of
:mod:`repro.influence.grads` (so the same modules qualify); models it does not apply to give one
row piece from :func:`repro.influence.grads.per_example_grads`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from repro.data.core import Batch

__all__ = ["Factors", "Layer", "factors", "pair_products", "self_products", "use_ghost"]

_PAIR_BLOCK = 1 << 25  # floats per (block, n_2, T, T) intermediate while pairing ghost pieces


@dataclass
class Ghost:
    """Factored weight gradient of one layer for ``n`` examples: inputs ``a`` ``(n, T, d_in)``
    and output gradients ``e`` ``(n, T, d_out)``."""
    a: torch.Tensor
    e: torch.Tensor


@dataclass
class Rows:
    """Materialised per-example gradients ``(n, k)`` of some parameters."""
    g: torch.Tensor


@dataclass
class Layer:
    """One layer's per-example gradients, not yet formed (``lazy=True`` in :func:`factors`): the
    captured input ``a`` and output gradient ``e``; :func:`_expand` forms them when the pairing
    reaches this layer and drops them after, so a chunk never holds more than one layer's rows."""
    mod: nn.Module
    a: torch.Tensor
    e: torch.Tensor
    keys: tuple  # "weight" / "bias", in that order, as chosen


@dataclass
class Factors:
    """Per-example gradient information of one chunk: pieces in a fixed order (see module doc);
    ``plan`` maps each layer to whether its weight is factored (pass it to :func:`factors` for
    every chunk that will be paired with this one: text chunks differ in length)."""
    pieces: list
    n: int
    plan: dict | None = None


def use_ghost(positions: int, d_in: int, d_out: int) -> bool:
    """The factored form is cheaper when ``positions^2 (d_in + d_out) < d_in d_out``."""
    return positions * positions * (d_in + d_out) < d_in * d_out


def _weight_factors(mod: nn.Module, a: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, T, d_in)`` inputs (patches for a convolution) and ``(n, T, d_out)`` output gradients."""
    n = a.shape[0]
    if isinstance(mod, nn.Linear):
        return a.reshape(n, -1, a.shape[-1]), e.reshape(n, -1, e.shape[-1])
    cols = F.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
    return cols.transpose(1, 2), e.reshape(n, e.shape[1], -1).transpose(1, 2)


def _positions(mod: nn.Module, a: torch.Tensor, e: torch.Tensor) -> int:
    if isinstance(mod, nn.Linear):
        return max(1, a[0].numel() // a.shape[-1])
    return e[0, 0].numel()


def factors(model, chunk: Batch, names: Sequence[str], target, owners: dict | None, ghost: bool = True,
            plan: dict | None = None, fallback: str | None = None, lazy: bool = False) -> Factors:
    """The pieces of ``chunk`` (already on the model's device) for the parameters ``names``.

    ``owners`` is :func:`repro.influence.grads.hook_modules`' result (``None``: that method does
    not apply, and one row piece is computed with the engine's fallback). ``ghost=False`` forces
    rows for every layer (the reference the ghost form is tested against). ``plan``: the
    per-layer choice of an earlier chunk (``Factors.plan``), so that chunks pair piece by piece;
    ``None`` decides from this chunk's sizes. ``fallback``: ``"vmap"`` or ``"loop"`` for the row
    piece when ``owners`` is None (default: the engine's choice). ``lazy=True`` keeps each row
    layer as its captured input and output gradient (:class:`Layer`) and forms its per-example
    gradients only while it is paired (:func:`pair_products`, :func:`self_products`): peak memory
    is one layer's rows instead of the whole chunk's. Same numbers either way."""
    from repro.influence import grads as G

    n = len(chunk)
    if owners is None:
        method = fallback or G._without_hooks(model, chunk.labels.device, names)
        g = G._vmap_chunk(model, chunk, names, target) if method == "vmap" else G._loop_chunk(model, chunk, names, target)
        return Factors([Rows(g.float())], n)
    order, seen, gouts, _ = G._capture(model, chunk, target, owners)
    chosen = set(names)
    pieces, decided = [], {}
    for m, gout in zip(order, gouts):
        mod = owners[m]
        a, version, out = seen[m]
        if a._version != version:
            raise G._HookFallback(f"the input of {m!r} was changed in place")
        gout = (torch.zeros_like(out) if gout is None else gout).detach()
        key = (lambda p: f"{m}.{p}" if m else p)
        want_w, want_b = key("weight") in chosen, key("bias") in chosen
        factored = False
        if want_w and ghost and isinstance(mod, (nn.Linear, nn.Conv2d)) and getattr(mod, "groups", 1) == 1:
            if plan is not None and m in plan:
                factored = plan[m]
            else:
                d_in = mod.weight[0].numel() if isinstance(mod, nn.Conv2d) else mod.in_features
                factored = use_ghost(_positions(mod, a, gout), d_in, mod.weight.shape[0])
        decided[m] = factored
        if not factored:  # rows: formed now, or (lazy) when the pairing reaches the layer
            keys = tuple(p for p in ("weight", "bias") if key(p) in chosen)
            if keys:
                layer = Layer(mod, a.detach(), gout, keys)
                pieces.extend([layer] if lazy else _expand([layer]))
            continue
        fa, fe = _weight_factors(mod, a, gout)
        pieces.append(Ghost(fa, fe))
        if want_b:
            bias = gout.reshape(n, gout.shape[1], -1).sum(2) if isinstance(mod, nn.Conv2d) \
                else gout.reshape(n, -1, gout.shape[-1]).sum(1)
            pieces.append(Rows(bias))
    return Factors(pieces, n, decided)


def _ghost_pair(x: Ghost, y: Ghost) -> torch.Tensor:
    n1, t1 = x.a.shape[:2]
    n2, t2 = y.a.shape[:2]
    block = max(1, _PAIR_BLOCK // max(1, n2 * t1 * t2))
    out = torch.empty(n1, n2, dtype=x.a.dtype, device=x.a.device)
    for lo in range(0, n1, block):
        hi = min(n1, lo + block)
        aa = torch.einsum("itd,jsd->ijts", x.a[lo:hi], y.a)
        ee = torch.einsum("itd,jsd->ijts", x.e[lo:hi], y.e)
        out[lo:hi] = (aa * ee).sum((2, 3))
    return out


def _expand(pieces):
    """The pieces one at a time, each :class:`Layer` formed into its weight / bias rows when reached."""
    from repro.influence import grads as G

    for piece in pieces:
        if isinstance(piece, Layer):
            grads = G._per_example_param_grads(piece.mod, piece.a, piece.e)
            n = piece.a.shape[0]
            for k in piece.keys:
                yield Rows(grads[k].reshape(n, -1))
            del grads
        else:
            yield piece


def _count(pieces) -> int:
    return sum(len(p.keys) if isinstance(p, Layer) else 1 for p in pieces)


def pair_products(x: Factors, y: Factors) -> torch.Tensor:
    """Gradient inner products ``(x.n, y.n)`` between the examples of two chunks."""
    if _count(x.pieces) != _count(y.pieces):
        raise ValueError("factors of different parameter sets")
    out = None
    for p, q in zip(_expand(x.pieces), _expand(y.pieces)):
        if isinstance(p, Ghost) != isinstance(q, Ghost):
            raise ValueError("factors computed with different per-layer plans; pass plan=")
        part = _ghost_pair(p, q) if isinstance(p, Ghost) else p.g @ q.g.T
        out = part if out is None else out.add_(part)
    return out if out is not None else torch.zeros(x.n, y.n)


def self_products(x: Factors) -> torch.Tensor:
    """``|g_i|^2`` for every example of the chunk ``(n,)``."""
    out = None
    for p in _expand(x.pieces):
        if isinstance(p, Ghost):
            part = (torch.bmm(p.a, p.a.transpose(1, 2)) * torch.bmm(p.e, p.e.transpose(1, 2))).sum((1, 2))
        else:
            part = p.g.pow(2).sum(1)
        out = part if out is None else out + part
    return out if out is not None else torch.zeros(x.n)


def to_device(x: Factors, device) -> Factors:
    """The same factors on ``device`` (lazy layers formed)."""
    return Factors([Ghost(p.a.to(device), p.e.to(device)) if isinstance(p, Ghost) else Rows(p.g.to(device))
                    for p in _expand(x.pieces)], x.n, x.plan)
