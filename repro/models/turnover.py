"""Turn-over Dropout (Kobayashi et al., 2020, "Efficient Estimation of Influence
of a Training Instance").

Every training instance ``i`` owns a fixed binary mask ``m(i)`` over the ``d``
units of a :class:`TurnOverDropout` layer.  When the model is trained on
instance ``i`` only the sub-network selected by ``m(i)`` sees (and learns from)
it; the *flipped* mask ``1 - m(i)`` selects the sub-network that never learned
from ``i``.  The influence of ``i`` on a test point is the difference between
the loss under the flipped mask and the loss under the own mask.

Masks are never stored.  ``m_j(i)`` (unit ``j``) is a pure function of
``(layer seed, j, i)`` computed with a 64-bit integer hash (splitmix64
finalizer) using only int64 multiply (two's-complement wrap-around), xor,
add, right shift followed by an ``&`` (to emulate a logical shift) and an
integer comparison.  These ops are exact on every backend, so masks are
bit-identical across processes, runs and devices (CPU / CUDA), and they are
well balanced over the whole int64 id range (unlike the floating-point
``sin``-based hash of the reference implementation, which degenerates for large
ids).

Units live on the LAST dimension of the input: ``x`` may be ``(batch, d)`` or
``(batch, ..., d)`` (e.g. ``(batch, tokens, d)``); for conv feature maps move
or flatten the channels to the last dimension first.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

__all__ = ["TurnOverDropout", "turnover_layers", "turnover_hash"]

_MASK64 = (1 << 64) - 1


def _s64(c: int) -> int:
    """A 64-bit unsigned constant as the signed int64 with the same bits."""
    c &= _MASK64
    return c - (1 << 64) if c >= (1 << 63) else c


_GOLDEN = _s64(0x9E3779B97F4A7C15)
_M1 = _s64(0xBF58476D1CE4E5B9)
_M2 = _s64(0x94D049BB133111EB)
_UNIT_SALT = _s64(0xD1B54A32D192ED03)
_ID_SALT = _s64(0x8CB92BA72F3D8DD7)


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64 finalizer: a bijection of 64-bit words with full avalanche."""
    z = (z ^ _lsr(z, 30)) * _M1
    z = (z ^ _lsr(z, 27)) * _M2
    return z ^ _lsr(z, 31)


def _py_mix64(z: int) -> int:
    """Same as :func:`_mix64` on a Python int (used for the scalar seed)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return _s64(z ^ (z >> 31))


def turnover_hash(ids: torch.Tensor, d: int, seed: int) -> torch.Tensor:
    """64-bit hash words ``h[b, j] = H(seed, j, ids[b])`` as int64 ``(len(ids), d)``.

    ``H`` xors an independent per-unit key ``mix(mix(seed) + (j+1)*golden ^ salt)``
    with a per-id key ``mix(mix(seed ^ salt') + ids*golden)`` and mixes once more.
    """
    ids = torch.as_tensor(ids, dtype=torch.int64)
    seed_key = _py_mix64(seed)
    id_seed = _py_mix64(seed ^ 0x5BD1E9955BD1E995)
    j = torch.arange(1, d + 1, dtype=torch.int64, device=ids.device)
    unit_key = _mix64((j * _GOLDEN + seed_key) ^ _UNIT_SALT)  # (d,)
    id_key = _mix64((ids.reshape(-1) * _GOLDEN + id_seed) ^ _ID_SALT)  # (n,)
    return _mix64(id_key[:, None] ^ unit_key[None, :])


FlipArg = Union[None, bool, torch.Tensor, Sequence[bool]]


class TurnOverDropout(nn.Module):
    """Turn-over Dropout over the last dimension (``d`` units).

    Args:
        d: number of units (size of the last input dimension).
        p: drop rate; each instance keeps about ``keep = 1 - p`` of the units.
        seed: integer layer seed; different layers should use different seeds.

    ``forward(x, ids=None, flip=None)``:

    * ``ids is None``: identity (no mask, no scaling), in train and eval mode.
    * ``ids`` given, ``flip is None`` (or False): ``x * m(i) / keep`` -- the
      instance's own sub-network, as used to train on instance ``i``.
    * ``ids`` given, ``flip`` True for a row: ``x * (1 - m(i)) / (1 - keep)``
      -- the sub-network that never saw ``i``.  ``flip`` is a Python bool
      (applies to all rows) or a bool tensor of shape ``(batch,)`` (per row).

    Each mask is rescaled by the inverse of the expected fraction of units it
    keeps (``keep`` for the own mask, ``1 - keep`` for the flipped one), so
    both sub-networks see activations of the same expected magnitude.  For
    ``p = 0.5`` both factors are 2, as in the paper's code.
    """

    def __init__(self, d: int, p: float = 0.5, seed: int = 0):
        super().__init__()
        if not (0.0 < p < 1.0):
            raise ValueError(f"p must be in (0, 1), got {p}")
        if int(d) <= 0:
            raise ValueError(f"d must be positive, got {d}")
        self.d = int(d)
        self.p = float(p)
        self.seed = int(seed)
        self.keep = 1.0 - self.p
        # unit j is kept iff the top 53 bits of its hash word < threshold
        self._threshold = int(round(self.keep * (1 << 53)))

    def mask(self, ids, device=None) -> torch.Tensor:
        """Own masks ``m(ids)`` as a bool tensor ``(len(ids), d)`` (True = kept)."""
        ids = torch.as_tensor(ids, dtype=torch.int64, device=device)
        h = turnover_hash(ids, self.d, self.seed)
        return _lsr(h, 11) < self._threshold

    def forward(self, x: torch.Tensor, ids=None, flip: FlipArg = None) -> torch.Tensor:
        if ids is None:
            if flip is not None and not (isinstance(flip, bool) and not flip):
                raise ValueError("flip requires ids")
            return x
        if x.shape[-1] != self.d:
            raise ValueError(f"expected last dim {self.d}, got shape {tuple(x.shape)}")
        ids = torch.as_tensor(ids, dtype=torch.int64, device=x.device).reshape(-1)
        b = x.shape[0]
        if x.dim() < 2 or ids.numel() != b:
            raise ValueError(
                f"ids must have one entry per batch row: x {tuple(x.shape)}, ids {ids.numel()}")
        if flip is None or isinstance(flip, bool):
            f = torch.full((b,), bool(flip), dtype=torch.bool, device=x.device)
        else:
            f = torch.as_tensor(flip, dtype=torch.bool, device=x.device).reshape(-1)
            if f.numel() == 1:
                f = f.expand(b)
            if f.numel() != b:
                raise ValueError(f"flip must be a bool or have shape ({b},), got {tuple(f.shape)}")
        f = f[:, None]
        sel = self.mask(ids) ^ f  # (b, d) bool; flipped rows use the complement
        own_scale = torch.tensor(1.0 / self.keep, dtype=x.dtype, device=x.device)
        flip_scale = torch.tensor(1.0 / (1.0 - self.keep), dtype=x.dtype, device=x.device)
        mult = sel.to(x.dtype) * torch.where(f, flip_scale, own_scale)
        mult = mult.reshape((b,) + (1,) * (x.dim() - 2) + (self.d,))
        return x * mult

    def extra_repr(self) -> str:
        return f"d={self.d}, p={self.p}, seed={self.seed}"


def turnover_layers(model: nn.Module) -> list[TurnOverDropout]:
    """All :class:`TurnOverDropout` layers of ``model``, in ``model.modules()`` order."""
    return [m for m in model.modules() if isinstance(m, TurnOverDropout)]
