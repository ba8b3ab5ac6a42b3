"""One layer's recall: from a pooled state to the records it recalls and the vector they add up to.

relevance r_i = cos(W q, W k_i), q = pooled state at the key layer - its reference centre (the same
          rule that made k_i), W the store's key metric (`keyspace`: identity or whitening);
weight    w_i = min(weight_cap, strength * relu(r_i - t_i))          ("relevance" gate)
          w_i = min(weight_cap, strength / top_k)                    ("fixed": relevance ignored, for evaluation)
threshold t_i = the settings' ``threshold``, or else the record's calibrated threshold,
          max(0, null mean + threshold_z * null std);
delta       = sum_i w_i v_i over the top_k records by relevance; the per-token clip is applied by the hook.

Recall by label (the default): records that share a label form a group with one key, the mean of
their keys, and one calibrated threshold t_g. The gate reads r_g - t_g for each of the group's
records instead of r_i - t_i; candidates are the top_k records by relevance among those whose gate
passes, and a group's weight is shared among its candidates (divided by their number), so it nudges
like one record holding the mean of their values. A record whose label no other record shares (or
that has none) is gated alone, as by record.
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
            groups = None if self.group_scores is None else self.group_scores.cpu().tolist()
            ids, rel, wts, top = [], [], [], []
            for s_row, r_row, w_row in zip(scores, rows, weights, strict=True):
                keep = [j for j, w in enumerate(w_row) if w > 0]
                ids.append([self._ids[r_row[j]] for j in keep])
                rel.append([s_row[j] for j in keep])
                wts.append([w_row[j] for j in keep])
                top.append([(self._ids[r], v) for r, v in zip(r_row, s_row, strict=True)])
            self._lists = ids, rel, wts, top, groups
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
        return self._host()[4]

    @property
    def active(self) -> bool:
        return any(self.record_ids)


@dataclass
class Groups:
    """Records recalled together (``recall_by`` "label"): ``of`` [n] each record's group (-1: gated
    alone), ``keys`` [g, d] each group's key (the mean of its records' keys, centred at the key
    layer, not yet mapped) and ``null`` ([g] mean, [g] std) its calibration (None with a fixed
    threshold)."""

    of: torch.Tensor
    keys: torch.Tensor
    null: tuple[torch.Tensor, torch.Tensor] | None = None


def label_groups(labels: list[str | None], keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each record's group (-1 for a record whose label no other shares, or that has none), numbered
    in order of first appearance, and each group's mean key [g, d]; None when no label is shared."""
    counts: dict[str, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    numbers: dict[str, int] = {}
    of = torch.tensor([numbers.setdefault(label, len(numbers)) if label is not None and counts[label] > 1 else -1
                       for label in labels], dtype=torch.long)
    if not numbers:
        return None
    member = of >= 0
    sums = torch.zeros((len(numbers), keys.shape[1]), dtype=torch.float32).index_add_(
        0, of[member], keys[member].to(torch.float32))
    return of, sums / torch.bincount(of[member], minlength=len(numbers)).to(torch.float32)[:, None]


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
        # Recall by label: each group's key (mapped, unit) and threshold; records outside every group
        # (group -1) are gated alone. No groups (or by record): every record is gated alone.
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
        group_scores = None
        if s.gate == "relevance":
            scores, rows, margin, read = self._candidates(query, s.top_k)
            weights = (s.strength * margin.clamp_min(0)).clamp_max(s.weight_cap)
            if self.group_of is not None:
                weights, group_scores = weights / self._share(rows), read
        else:
            scores, rows = self.index.search(query, s.top_k)
            scores, rows = scores.to(self.device), rows.to(self.device)
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
        if self.group_of is not None and int(self.group_of[i]) >= 0:
            return float(self.group_thresholds[self.group_of[i]])
        return self.settings.threshold if self.thresholds is None else float(self.thresholds[i])

    def _margin(self, query: torch.Tensor, scores: torch.Tensor,
                rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each candidate's margin over its threshold and the relevance the gate read, [b, k] each:
        its group's, or its own when alone."""
        thresholds = self.thresholds[rows] if self.settings.threshold is None else self.settings.threshold
        if self.group_of is None:
            return scores - thresholds, scores
        groups = self.group_of[rows]
        alone = groups < 0
        group_scores = (unit(query) @ self.group_keys.T).gather(1, groups.clamp_min(0))  # [b, k]
        read = torch.where(alone, scores, group_scores)
        return read - torch.where(alone, thresholds, self.group_thresholds[groups.clamp_min(0)]), read

    def _candidates(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        """The top k records by relevance (cosine, row, margin and the relevance read, [b, k]).
        Recalling by label, among the records whose gate passes first, so that a label whose mean key
        fails cannot crowd out one whose key passes: every record is scored (as the exact index does
        anyway)."""
        if self.group_of is None:
            scores, rows = self.index.search(query, k)
            scores, rows = scores.to(self.device), rows.to(self.device)
            return scores, rows, *self._margin(query, scores, rows)
        scores, rows = self._every_score(query)
        margin, read = self._margin(query, scores, rows)
        order = torch.where(margin > 0, scores, scores - 4.0)  # cosines lie in [-1, 1]: passing ones first
        pick = order.topk(min(k, self.size), dim=1).indices
        return tuple(t.gather(1, pick) for t in (scores, rows, margin, read))

    def _every_score(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every record's cosine with each query and its row, [b, n] each (in row order from the exact
        index, without sorting; best first from another)."""
        if isinstance(self.index, ExactIndex):
            scores = self.index.scores(query).to(self.device)
            return scores, torch.arange(self.size, device=self.device).expand_as(scores)
        scores, rows = self.index.search(query, self.size)
        return scores.to(self.device), rows.to(self.device)

    def _share(self, rows: torch.Tensor) -> torch.Tensor:
        """How many candidates of each row share each candidate's weight: its group's, or 1 alone."""
        groups = self.group_of[rows]
        same = (groups[:, :, None] == groups[:, None, :]) & (groups[:, :, None] >= 0)
        return same.sum(dim=2).clamp_min(1).to(torch.float32)

    def margins(self, pooled: torch.Tensor) -> torch.Tensor:
        """Every record's margin over its threshold (its group's, recalling by label) for pooled states
        [b, d] at the key layer, [b, n] in record order: what the relevance gate weighs."""
        if self.index is None:
            return torch.zeros((pooled.shape[0], 0), device=self.device)
        query = self.query(pooled)
        scores, rows = self._every_score(query)
        margin = self._margin(query, scores, rows)[0]
        return torch.full_like(margin, -torch.inf).scatter_(1, rows, margin)
