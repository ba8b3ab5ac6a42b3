"""The audit trail: one signed line per generation the memory took part in (or was switched off for).

Each line names the generation, a hash of its prompt (not the prompt), whether the kill switch was
on, and per layer which records influenced it with what relevance and weight, the size of the
nudge, how many tokens were nudged and clipped, and the largest realised change relative to the
residual norm. Lines are signed with the store's key like the records, so the trail cannot be
edited quietly.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from baldr_ops.memory.keys import SigningKey
from baldr_ops.memory.nudge import LayerTrace
from baldr_ops.memory.recall import LayerMemory
from baldr_ops.memory.records import canonical
from baldr_ops.memory.store import append_lines, read_lines


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuditRecord(_Model):
    id: str
    relevance: float
    weight: float


class LayerAudit(_Model):
    layer: int
    strength: float
    threshold: float
    clip: float
    gate: str
    query: str
    recalls: int
    records: list[AuditRecord]
    delta_norm: float
    tokens_nudged: int
    tokens_clipped: int
    max_ratio: float

    @classmethod
    def from_trace(cls, trace: LayerTrace, memory: LayerMemory) -> LayerAudit:
        s = memory.settings
        records = [AuditRecord(id=rid, **v) for rid, v in sorted(trace.records.items(), key=lambda kv: -kv[1]["weight"])]
        return cls(layer=trace.layer, strength=s.strength, threshold=s.threshold, clip=s.clip, gate=s.gate,
                   query=s.query, recalls=trace.recalls, records=records, delta_norm=trace.delta_norm,
                   tokens_nudged=trace.tokens_nudged, tokens_clipped=trace.tokens_clipped, max_ratio=trace.max_ratio)


class AuditEntry(_Model):
    generation_id: str
    started_at: str
    finished_at: str
    prompt_sha256: str | None
    disabled: str | None  # why the kill switch was on, or None
    layers: list[LayerAudit]

    @property
    def influenced(self) -> bool:
        return any(layer.records for layer in self.layers)


class AuditLog:
    def __init__(self, path: Path, store_id: str, key: SigningKey):
        self.path, self.store_id, self.key = Path(path), store_id, key

    def _message(self, body: dict) -> bytes:
        return canonical({"store": self.store_id, "audit": body})

    def append(self, entry: AuditEntry) -> None:
        body = entry.model_dump(mode="json")
        append_lines(self.path, [canonical({"entry": body, "hmac": self.key.sign(self._message(body))}) + b"\n"])

    def read(self) -> tuple[list[AuditEntry], list[tuple[int, str]]]:
        """The entries that verify, and (line, reason) for those that do not."""
        entries, problems = [], []
        for number, line, complete in read_lines(self.path):
            try:
                raw = json.loads(line)
                if not self.key.verify(self._message(raw["entry"]), raw["hmac"]):
                    raise ValueError("HMAC mismatch")
                entries.append(AuditEntry.model_validate(raw["entry"]))
            except (ValueError, KeyError, TypeError, ValidationError) as exc:
                problems.append((number, "torn last line" if not complete else str(exc).splitlines()[0]))
        return entries, problems
