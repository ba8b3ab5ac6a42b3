"""One layer's recall: from a pooled state to the records it recalls and the vector they add up to.

relevance r_i = cos(W q, W k_i), q = pooled state at the key layer - its reference centre (the same
          rule that made k_i), W the store's key metric (`keyspace`: identity or whitening);
weight    w_i = min(weight_cap, strength * relu(r_i - t_i))          ("relevance" gate)
          w_i = min(weight_cap, strength / top_k)                    ("fixed": relevance ignored, for evaluation)
threshold t_i = the settings' ``threshold``, or else the record's calibrated threshold,
          max(0, null mean + threshold_z * null std);
delta       = sum_i w_i v_i over the top_k records by relevance; the per-token clip is applied by the hook.

With the relevance gate, records at or below their threshold get weight exactly 0, so a query that
matches nothing recalls nothing and the hook leaves the model untouched.
"""

from __future__ import annotations

import copy

import torch

from baldr_ops.memory.config import LayerSettings
from baldr_ops.memory.index import ExactIndex, IndexFactory, VectorIndex, build_index
from baldr_ops.memory.keyspace import KeySpace, calibrated_thresholds


class Recall:
    """What one query batch recalled. The tensors stay on the memory's device (nothing is copied to
    the host while the model runs); the per-row lists, for the audit trail and reports, are read from
    them on first use, in one copy.

    ``scores``/``rows``/``weight_matrix``: [batch, k] top-k cosine, key row and weight; ``delta``:
    [batch, d] float32, zero rows where nothing was recalled."""

    def __init__(self, record_ids: list[str], scores: torch.Tensor, rows: torch.Tensor, weight_matrix: torch.Tensor,
                 delta: torch.Tensor):
        self._ids = record_ids
        self.scores, self.rows, self.weight_matrix, self.delta = scores, rows, weight_matrix, delta
        self._lists: tuple | None = None

    def _host(self) -> tuple:
        if self._lists is None:
            scores, rows, weights = (t.cpu().tolist() for t in (self.scores, self.rows, self.weight_matrix))
            ids, rel, wts, top = [], [], [], []
            for s_row, r_row, w_row in zip(scores, rows, weights, strict=True):
                keep = [j for j, w in enumerate(w_row) if w > 0]
                ids.append([self._ids[r_row[j]] for j in keep])
                rel.append([s_row[j] for j in keep])
                wts.append([w_row[j] for j in keep])
                top.append([(self._ids[r], v) for r, v in zip(r_row, s_row, strict=True)])
            self._lists = ids, rel, wts, top
        return self._lists

    @property
    def record_ids(self) -> list[list[str]]:
        """Per row, the records with nonzero weight."""
        return self._host()[0]

    @property
    def relevance(self) -> list[list[float]]:
        return self._host()[1]

    @property
    def weights(self) -> list[list[float]]:
        return self._host()[2]

    @property
    def top_relevance(self) -> list[list[tuple[str, float]]]:
        """Per row, the top_k candidates before gating, for reports."""
        return self._host()[3]

    @property
    def active(self) -> bool:
        return any(self.record_ids)


class LayerMemory:
    """The approved records of one layer, indexed, with the layer's settings. Keys, values, the
    centre and the key space live on ``device`` (give the model's: recall then runs where the model
    does).

    ``keys`` [n, d] are centred at the key layer (``key_layer``, default the layer; read by
    ``key_pooling``) and ``centre`` is that layer's reference centre; ``key_space`` maps both keys and queries before the cosine (None:
    the identity); ``null`` ([n] mean, [n] std) gives each record's calibrated threshold and is needed
    when the settings name no ``threshold``."""

    def __init__(self, settings: LayerSettings, record_ids: list[str], keys: torch.Tensor, values: torch.Tensor,
                 centre: torch.Tensor, approximate: IndexFactory | None = None,
                 device: torch.device | str | None = None, *, key_layer: int | None = None,
                 key_pooling: str = "mean", key_space: KeySpace | None = None,
                 null: tuple[torch.Tensor, torch.Tensor] | None = None):
        if len(record_ids) != keys.shape[0] or keys.shape != values.shape:
            raise ValueError("record ids, keys and values must match")
        if settings.threshold is None and settings.gate == "relevance" and record_ids and null is None:
            raise ValueError("no threshold given and no calibration (null statistics) for the records")
        device = torch.device(device) if device is not None else values.device
        self.settings = settings
        self.layer = settings.layer
        self.key_layer = settings.layer if key_layer is None else key_layer
        self.key_pooling = key_pooling  # how a query's state is read at the key layer (`derive.key_states`)
        self.record_ids = list(record_ids)
        self.values = values.to(device=device, dtype=torch.float32)
        self.centre = centre.to(device=device, dtype=torch.float32)
        self.key_space = (key_space or KeySpace("centred")).to(device)
        self.thresholds: torch.Tensor | None = None  # [n] per record, when calibrated
        if settings.threshold is None and null is not None:
            mean, std = (t.to(device=device, dtype=torch.float32) for t in null)
            self.thresholds = calibrated_thresholds(mean, std, settings.threshold_z)
        mapped = self.key_space.apply(keys.to(device=device, dtype=torch.float32))
        self.index: VectorIndex | None = build_index(mapped, approximate) if record_ids else None

    @property
    def size(self) -> int:
        return len(self.record_ids)

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device: torch.device | str) -> LayerMemory:
        """This memory on ``device`` (itself when it is there already)."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = copy.copy(self)
        moved.values, moved.centre, moved.key_space = self.values.to(device), self.centre.to(device), \
            self.key_space.to(device)
        if self.thresholds is not None:
            moved.thresholds = self.thresholds.to(device)
        if isinstance(self.index, ExactIndex):
            moved.index = self.index.to(device)
        return moved

    def query(self, pooled: torch.Tensor) -> torch.Tensor:
        """A pooled state at the key layer, centred and mapped into the key space."""
        return self.key_space.apply(pooled.to(device=self.device, dtype=torch.float32) - self.centre)

    def recall(self, pooled: torch.Tensor, valid: torch.Tensor | None = None) -> Recall:
        """Recall for pooled states [b, d] at the key layer (not yet centred); rows where ``valid`` [b]
        is False (no token pooled) recall nothing. Runs on the memory's device without a host copy."""
        s = self.settings
        b = pooled.shape[0]
        if self.index is None or s.strength == 0:
            empty = torch.zeros((b, 0), device=self.device)
            return Recall(self.record_ids, empty, empty.long(), empty,
                          torch.zeros((b, self.values.shape[1]), dtype=torch.float32, device=self.device))
        scores, rows = self.index.search(self.query(pooled), s.top_k)
        scores, rows = scores.to(self.device), rows.to(self.device)
        if s.gate == "relevance":
            threshold = self.thresholds[rows] if s.threshold is None else s.threshold
            weights = (s.strength * (scores - threshold).clamp_min(0)).clamp_max(s.weight_cap)
        else:
            weights = torch.full_like(scores, min(s.weight_cap, s.strength / s.top_k))
        if valid is not None:
            weights = weights * valid.to(self.device)[:, None]
        delta = torch.einsum("bk,bkd->bd", weights, self.values[rows])
        return Recall(self.record_ids, scores, rows, weights, delta)
