"""One layer's recall: from a pooled state to the records it recalls and the vector they add up to.

relevance r_i = cos(q, k_i), q = pooled state - reference centre (the same rule that made k_i);
weight    w_i = min(weight_cap, strength * relu(r_i - threshold))   ("relevance" gate)
          w_i = min(weight_cap, strength / top_k)                   ("fixed": relevance ignored, for evaluation)
delta       = sum_i w_i v_i over the top_k records; the per-token clip is applied by the hook.

With the relevance gate, records at or below the threshold get weight exactly 0, so a query that
matches nothing recalls nothing and the hook leaves the model untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baldr_ops.memory.config import LayerSettings
from baldr_ops.memory.index import IndexFactory, VectorIndex, build_index


@dataclass
class Recall:
    """What one query batch recalled: per row, the records with nonzero weight."""

    record_ids: list[list[str]]
    relevance: list[list[float]]
    weights: list[list[float]]
    delta: torch.Tensor  # [batch, d] float32; zero rows where nothing was recalled
    top_relevance: list[list[tuple[str, float]]]  # the top_k candidates before gating, for reports

    @property
    def active(self) -> bool:
        return any(self.record_ids)


class LayerMemory:
    """The approved records of one layer, indexed, with the layer's settings."""

    def __init__(self, settings: LayerSettings, record_ids: list[str], keys: torch.Tensor, values: torch.Tensor,
                 centre: torch.Tensor, approximate: IndexFactory | None = None):
        if len(record_ids) != keys.shape[0] or keys.shape != values.shape:
            raise ValueError("record ids, keys and values must match")
        self.settings = settings
        self.layer = settings.layer
        self.record_ids = list(record_ids)
        self.values = values.to(torch.float32)
        self.centre = centre.to(torch.float32)
        self.index: VectorIndex | None = build_index(keys, approximate) if record_ids else None

    @property
    def size(self) -> int:
        return len(self.record_ids)

    def query(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled.to(torch.float32) - self.centre

    def recall(self, pooled: torch.Tensor) -> Recall:
        """Recall for pooled states [b, d] (not yet centred)."""
        s = self.settings
        b = pooled.shape[0]
        delta = torch.zeros((b, self.values.shape[1]), dtype=torch.float32)
        if self.index is None or s.strength == 0:
            return Recall([[] for _ in range(b)], [[] for _ in range(b)], [[] for _ in range(b)], delta,
                          [[] for _ in range(b)])
        scores, rows = self.index.search(self.query(pooled), s.top_k)
        if s.gate == "relevance":
            weights = (s.strength * (scores - s.threshold).clamp_min(0)).clamp_max(s.weight_cap)
        else:
            weights = torch.full_like(scores, min(s.weight_cap, s.strength / s.top_k))
        delta = torch.einsum("bk,bkd->bd", weights, self.values[rows])
        ids, rel, wts, top = [], [], [], []
        for row in range(b):
            keep = (weights[row] > 0).nonzero().flatten().tolist()
            ids.append([self.record_ids[rows[row, j]] for j in keep])
            rel.append([float(scores[row, j]) for j in keep])
            wts.append([float(weights[row, j]) for j in keep])
            top.append([(self.record_ids[r], float(v)) for r, v in zip(rows[row].tolist(), scores[row].tolist(), strict=True)])
        return Recall(ids, rel, wts, delta, top)
