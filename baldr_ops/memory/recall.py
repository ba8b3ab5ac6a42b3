"""One layer's recall: from a pooled state to the records it recalls and the vector they add up to.

relevance r_i = cos(W q, W k_i), q = pooled state at the key layer - its reference centre (the same
          rule that made k_i), W the store's key metric (`keyspace`: identity or whitening);
weight    w_i = min(weight_cap, strength * relu(r_i - t_i))          ("relevance" gate)
          w_i = min(weight_cap, strength / top_k)                    ("fixed": relevance ignored, for evaluation)
threshold t_i = the settings' ``threshold``, or else the record's calibrated threshold,
          max(0, null mean + threshold_z * null std);
delta       = sum_i w_i v_i over the top_k records by relevance; the per-token clip is applied by the hook.

Recall by label (the default): records that share a label form a group with one key, the mean of
their keys, and one calibrated threshold t_g; for each of the group's records among the top_k,
r_i - t_i above becomes r_g - t_g, and the group's weight is shared among them (divided by their
number). A record without a label is its own group, which is the per-record rule.

With the relevance gate, records at or below their threshold get weight exactly 0, so a query that
matches nothing recalls nothing and the hook leaves the model untouched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from baldr_ops.memory.config import LayerSettings
from baldr_ops.memory.index import ExactIndex, IndexFactory, VectorIndex, build_index, unit
from baldr_ops.memory.keyspace import KeySpace, calibrated_thresholds


class Recall:
    """What one query batch recalled. The tensors stay on the memory's device (nothing is copied to
    the host while the model runs); the per-row lists, for the audit trail and reports, are read from
    them on first use, in one copy.

    ``scores``/``rows``/``weight_matrix``: [batch, k] top-k cosine, key row and weight; ``delta``:
    [batch, d] float32, zero rows where nothing was recalled; ``group_scores`` [batch, k], recalling by
    label: the relevance of each candidate's group, which the gate read."""

    def __init__(self, record_ids: list[str], scores: torch.Tensor, rows: torch.Tensor, weight_matrix: torch.Tensor,
                 delta: torch.Tensor, group_scores: torch.Tensor | None = None):
        self._ids = record_ids
        self.scores, self.rows, self.weight_matrix, self.delta = scores, rows, weight_matrix, delta
        self.group_scores = group_scores
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
    def top_group_relevance(self) -> list[list[float]] | None:
        """Per row, recalling by label, the group relevance of each of `top_relevance`'s candidates."""
        return None if self.group_scores is None else self.group_scores.cpu().tolist()

    @property
    def active(self) -> bool:
        return any(self.record_ids)


@dataclass
class Groups:
    """Records recalled together (``recall_by`` "label"): ``of`` [n] each record's group, ``keys``
    [g, d] each group's key (the mean of its records' keys, centred at the key layer, not yet mapped)
    and ``null`` ([g] mean, [g] std) its calibration."""

    of: torch.Tensor
    keys: torch.Tensor
    null: tuple[torch.Tensor, torch.Tensor] | None = None


def group_index(labels: list[str | None]) -> list[int]:
    """Each record's group: one per label, numbered in order of first appearance; an unlabelled
    record is a group of its own."""
    groups: dict[tuple, int] = {}
    return [groups.setdefault(("label", label) if label is not None else ("record", i), len(groups))
            for i, label in enumerate(labels)]


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
                 null: tuple[torch.Tensor, torch.Tensor] | None = None, groups: Groups | None = None):
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
        # Recall by label: each group's key (mapped, unit) and threshold. Without groups (or by
        # record) every record is gated alone.
        self.group_of = self.group_keys = self.group_thresholds = None
        if groups is not None and settings.recall_by == "label" and settings.gate == "relevance" and record_ids:
            if settings.threshold is None and groups.null is None:
                raise ValueError("no threshold given and no calibration for the record groups")
            self.group_of = groups.of.to(device=device, dtype=torch.long)
            self.group_keys = unit(self.key_space.apply(groups.keys.to(device=device, dtype=torch.float32)))
            self.group_thresholds = (torch.full((len(groups.keys),), settings.threshold, device=device)
                                     if settings.threshold is not None else calibrated_thresholds(
                *(t.to(device=device, dtype=torch.float32) for t in groups.null), settings.threshold_z))

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
        if self.group_of is not None:
            moved.group_of, moved.group_keys, moved.group_thresholds = (
                t.to(device) for t in (self.group_of, self.group_keys, self.group_thresholds))
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
        query = self.query(pooled)
        scores, rows = self.index.search(query, s.top_k)
        scores, rows = scores.to(self.device), rows.to(self.device)
        group_scores = None
        if s.gate == "relevance":
            margin, share = self._gate(query, scores, rows)
            weights = (s.strength * margin.clamp_min(0)).clamp_max(s.weight_cap) / share
            if self.group_of is not None:
                group_scores = margin + self.group_thresholds[self.group_of[rows]]
        else:
            weights = torch.full_like(scores, min(s.weight_cap, s.strength / s.top_k))
        if valid is not None:
            weights = weights * valid.to(self.device)[:, None]
        delta = torch.einsum("bk,bkd->bd", weights, self.values[rows])
        return Recall(self.record_ids, scores, rows, weights, delta, group_scores)

    def threshold_of(self, record_id: str) -> float | None:
        """The threshold a record's gate holds against: its group's recalling by label, else its own
        (calibrated, or the settings'); None under the fixed gate."""
        if self.settings.gate != "relevance":
            return None
        i = self.record_ids.index(record_id)
        if self.group_of is not None:
            return float(self.group_thresholds[self.group_of[i]])
        return self.settings.threshold if self.thresholds is None else float(self.thresholds[i])

    def _gate(self, query: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each candidate's margin over its threshold [b, k] (its group's, recalling by label) and the
        number of candidates its weight is shared with (its group's among the row's candidates)."""
        if self.group_of is None:
            threshold = self.thresholds[rows] if self.settings.threshold is None else self.settings.threshold
            return scores - threshold, torch.ones_like(scores)
        group_margin = unit(query) @ self.group_keys.T - self.group_thresholds  # [b, g]
        groups = self.group_of[rows]
        share = (groups[:, :, None] == groups[:, None, :]).sum(dim=2).to(scores.dtype)
        return group_margin.gather(1, groups), share

    def margins(self, pooled: torch.Tensor) -> torch.Tensor:
        """Every record's margin over its threshold (its group's, recalling by label) for pooled states
        [b, d] at the key layer, [b, n] in record order: what the relevance gate weighs."""
        query = self.query(pooled)
        scores, rows = self.index.search(query, self.size)
        margin, _ = self._gate(query, scores.to(self.device), rows.to(self.device))
        return torch.empty_like(margin).scatter_(1, rows.to(self.device), margin)
