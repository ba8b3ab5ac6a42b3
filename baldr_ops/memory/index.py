"""Nearest keys by cosine: exact top-k by batched matmul, and the interface an approximate index fills.

`ExactIndex` keeps the unit-normalised keys as one [n, d] float32 matrix and answers a batch of
queries with one matmul per block of ``block_rows`` keys plus a top-k merge, so memory stays bounded
(queries x block_rows scores) at any n. It is exact, and it is what every store up to
`EXACT_LIMIT` entries per layer uses; at 10 k keys x 576 dims one query costs ~1 ms on a CPU core.

Beyond that an approximate index (faiss, hnswlib, ...) can be plugged in: anything with ``size``
and ``search(queries, k) -> (scores, ids)`` of the same meaning (`VectorIndex`), built by a factory
``(unit_keys) -> VectorIndex`` passed to `build_index`. None ships with the kit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from baldr_ops.errors import UserError

EXACT_LIMIT = 100_000


class VectorIndex(Protocol):
    @property
    def size(self) -> int: ...

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine scores [b, k'] (descending) and key row ids [b, k'] with k' = min(k, size)."""
        ...


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class ExactIndex:
    def __init__(self, keys: torch.Tensor, block_rows: int = 65_536):
        if keys.ndim != 2:
            raise ValueError(f"keys must be [n, d], got {tuple(keys.shape)}")
        self.keys = unit(keys.to(torch.float32)).contiguous()
        self.block_rows = block_rows

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def to(self, device: torch.device | str) -> ExactIndex:
        moved = ExactIndex.__new__(ExactIndex)
        moved.keys, moved.block_rows = self.keys.to(device), self.block_rows
        return moved

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """Every key's cosine with each query, [b, size] in row order (recall by label ranks records
        after gating them, so it needs all of them, not the top k)."""
        return unit(queries.to(torch.float32)) @ self.keys.T

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = unit(queries.to(torch.float32))
        k = min(k, self.size)
        if k == 0:
            empty = q.new_zeros((q.shape[0], 0))
            return empty, empty.long()
        best_scores, best_ids = None, None
        for start in range(0, self.size, self.block_rows):
            scores = q @ self.keys[start:start + self.block_rows].T
            top, ids = scores.topk(min(k, scores.shape[1]), dim=1)
            ids = ids + start
            if best_scores is not None:
                top, pick = torch.cat([best_scores, top], 1).topk(k, dim=1)
                ids = torch.cat([best_ids, ids], 1).gather(1, pick)
            best_scores, best_ids = top, ids
        return best_scores, best_ids


IndexFactory = Callable[[torch.Tensor], VectorIndex]


def build_index(keys: torch.Tensor, approximate: IndexFactory | None = None, limit: int = EXACT_LIMIT) -> VectorIndex:
    """The exact index up to ``limit`` keys; above it the ``approximate`` factory, which must be given."""
    if keys.shape[0] <= limit:
        return ExactIndex(keys)
    if approximate is None:
        raise UserError(f"{keys.shape[0]} keys at one layer is more than the exact index's {limit}",
                        hint="pass an approximate index factory (e.g. around faiss) to build_index, or split the store")
    return approximate(unit(keys.to(torch.float32)))
