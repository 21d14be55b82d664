"""Seeded random projections of gradient rows (Johnson-Lindenstrauss sketches).

``Projector(dim_in, dim_out)`` represents a ``(dim_in, dim_out)`` matrix ``P`` with i.i.d. entries
``N(0, 1/k)`` (``kind="gaussian"``) or ``+-1/sqrt(k)`` (``kind="rademacher"``), ``k = dim_out``, so
that ``E[P P^T] = I`` and hence ``E[<gP, g'P>] = <g, g'>`` for any rows ``g, g'``. The variance of
the sketched dot product is ``(<g,g'>^2 + |g|^2 |g'|^2) / k`` for Gaussian entries (a little less
for Rademacher ones), i.e. a relative error of order ``1/sqrt(k)``.

``P`` is never materialised at once when it is large: it is made of column blocks of ``block_size``
input coordinates, block ``j`` drawn from its own ``torch.Generator`` seeded with a hash of
``(seed, j)`` on the CPU. The result is therefore a pure function of ``spec()`` (identical across
calls, processes, devices and however the rows are chunked), and blocks where every row of the
input is zero (e.g. the untouched rows of an embedding matrix) are skipped without being drawn.
Small matrices (``dim_in * dim_out * 4`` bytes up to ``cache_bytes``) are drawn once and kept.
"""
from __future__ import annotations

import math

import torch

from repro.errors import UnknownNameError

__all__ = ["Projector", "KINDS"]

KINDS = ("gaussian", "rademacher")
_MASK63 = (1 << 63) - 1


def _block_seed(seed: int, j: int) -> int:
    """splitmix64 of (seed, block index), as a non-negative 63-bit seed."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + (int(j) + 1) * 0xD1B54A32D192ED03) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK63


class Projector:
    """A seeded random projection ``R^dim_in -> R^dim_out`` that preserves dot products in expectation.

    Args:
        dim_in: gradient dimension ``d``.
        dim_out: sketch dimension ``k``.
        kind: ``"gaussian"`` or ``"rademacher"``.
        seed: integer seed; the matrix depends only on ``(dim_in, dim_out, kind, seed, block_size)``.
        block_size: input coordinates per generated block (default: about 32 MiB per block).
        cache_bytes: keep the whole matrix in memory when it is at most this large (default 256 MiB).
    """

    def __init__(self, dim_in: int, dim_out: int, kind: str = "gaussian", seed: int = 0,
                 block_size: int | None = None, cache_bytes: int = 256 * 2**20):
        if kind not in KINDS:
            raise UnknownNameError(f"unknown projection kind {kind!r}; use one of {KINDS}")
        if int(dim_in) <= 0 or int(dim_out) <= 0:
            raise ValueError(f"dim_in and dim_out must be positive, got {dim_in}, {dim_out}")
        self.dim_in, self.dim_out, self.kind, self.seed = int(dim_in), int(dim_out), kind, int(seed)
        if block_size is None:
            block_size = max(256, (32 * 2**20) // (4 * self.dim_out))
        self.block_size = int(min(block_size, self.dim_in))
        self.n_blocks = math.ceil(self.dim_in / self.block_size)
        self._scale = 1.0 / math.sqrt(self.dim_out)
        self._full = None
        self._cache = self.dim_in * self.dim_out * 4 <= cache_bytes

    def spec(self) -> dict:
        """JSON-able description (for cache stamps); equal specs give identical projections."""
        return {"kind": self.kind, "dim_in": self.dim_in, "dim_out": self.dim_out, "seed": self.seed,
                "block_size": self.block_size, "version": 1}

    def __repr__(self) -> str:
        return f"Projector({self.dim_in} -> {self.dim_out}, kind={self.kind!r}, seed={self.seed})"

    def block(self, j: int) -> torch.Tensor:
        """Block ``j`` of the matrix: rows ``[j*block_size, ...)`` of ``P``, shape ``(b_j, dim_out)``,
        float32 on the CPU."""
        if not 0 <= j < self.n_blocks:
            raise IndexError(f"block {j} out of range [0, {self.n_blocks})")
        rows = min(self.block_size, self.dim_in - j * self.block_size)
        gen = torch.Generator().manual_seed(_block_seed(self.seed, j))
        if self.kind == "gaussian":
            m = torch.randn(rows, self.dim_out, generator=gen, dtype=torch.float32)
        else:
            m = torch.randint(0, 2, (rows, self.dim_out), generator=gen, dtype=torch.int8).float().mul_(2).sub_(1)
        return m.mul_(self._scale)

    def matrix(self) -> torch.Tensor:
        """The whole ``(dim_in, dim_out)`` matrix (only sensible when it is small)."""
        return torch.cat([self.block(j) for j in range(self.n_blocks)])

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """``g @ P`` for rows ``g`` of shape ``(n, dim_in)`` (or one row ``(dim_in,)``), float32, on
        ``g``'s device."""
        single = g.dim() == 1
        if single:
            g = g.unsqueeze(0)
        if g.shape[-1] != self.dim_in:
            raise ValueError(f"expected rows of length {self.dim_in}, got shape {tuple(g.shape)}")
        g = g.float()
        if self._cache:
            if self._full is None or self._full.device != g.device:
                self._full = self.matrix().to(g.device)
            out = g @ self._full
        else:
            out = torch.zeros(g.shape[0], self.dim_out, dtype=torch.float32, device=g.device)
            for j in range(self.n_blocks):
                cols = g[:, j * self.block_size:(j + 1) * self.block_size]
                if not bool(cols.any()):
                    continue  # zero block (e.g. untouched embedding rows): contributes nothing
                out.addmm_(cols, self.block(j).to(g.device))
        return out[0] if single else out
