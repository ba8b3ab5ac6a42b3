"""The audit trail: one signed line per generation the memory took part in (or was switched off for).

Each line names the generation, a hash of its prompt (not the prompt), whether the kill switch was
on, and per layer which records influenced it with what relevance and weight, the size of the
nudge, how many tokens were nudged and clipped, and the largest realised change relative to the
residual norm. Lines are signed with the store's key and chained like the layer logs (each line's
HMAC covers its sequence number and the previous line's HMAC; the store's signed head records the
count), so the trail cannot be edited, cut short or have lines removed quietly. Appends take the
store lock. A damaged trail is still appended to (after its head, so the damage stays visible):
losing the record of a generation would be worse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError

from baldr_ops.memory.nudge import LayerTrace
from baldr_ops.memory.recall import LayerMemory
from baldr_ops.memory.records import BadEntry, canonical
from baldr_ops.memory.store import AUDIT, MemoryStore


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuditRecord(_Model):
    id: str
    relevance: float
    weight: float


class LayerAudit(_Model):
    layer: int
    strength: float
    threshold: float | None  # None: calibrated thresholds (threshold_z), each record's or its label's
    threshold_z: float | None = None
    # "label": a record's weight comes from its label's mean key (its relevance below is its own
    # cosine, which may lie under the threshold); "record"; None in lines written before it existed
    recall_by: str | None = None
    key_layer: int | None = None
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
        return cls(layer=trace.layer, strength=s.strength, threshold=s.threshold,
                   threshold_z=s.threshold_z if s.threshold is None else None, recall_by=s.recall_by,
                   key_layer=memory.key_layer, clip=s.clip,
                   gate=s.gate,
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


@dataclass
class AuditLine:
    seq: int
    prev: str
    mac: str
    entry: AuditEntry | None
    invalid: str | None = None


class AuditLog:
    """The audit trail of a store: ``DIR/audit.jsonl``."""

    def __init__(self, store: MemoryStore):
        self.store = store
        self.path = store.directory / AUDIT

    def _message(self, seq: int, prev: str, body: dict) -> bytes:
        return canonical({"store": self.store.header.store_id, "log": AUDIT, "seq": seq, "prev": prev, "audit": body})

    def _parse(self, line: bytes) -> AuditLine:
        try:
            raw = json.loads(line)
            body, seq, prev, signature = raw["entry"], raw["seq"], raw["prev"], raw["hmac"]
            message = self._message(seq, prev, body)
        except (ValueError, KeyError, TypeError) as exc:
            raise BadEntry(f"not an audit line ({type(exc).__name__})") from exc
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(prev, str):
            raise BadEntry("not an audit line (bad seq or prev)")
        if not self.store.key.verify(message, signature):
            raise BadEntry("HMAC mismatch")
        try:
            return AuditLine(seq, prev, signature, AuditEntry.model_validate(body))
        except ValidationError as exc:
            return AuditLine(seq, prev, signature, None, f"signed, but invalid: {str(exc).splitlines()[0]}")

    def append(self, entry: AuditEntry) -> None:
        body = entry.model_dump(mode="json")

        def make(seq: int, prev: str) -> tuple[str, bytes]:
            mac = self.store.key.sign(self._message(seq, prev, body))
            return mac, canonical({"seq": seq, "prev": prev, "entry": body, "hmac": mac}) + b"\n"

        self.store.append_chained(AUDIT, self._parse, [make], allow_damaged=True)

    def read(self) -> tuple[list[AuditEntry], list[tuple[int | None, str]]]:
        """The entries on the unbroken chain, and (line, reason) for everything else (line None: the
        trail as a whole, e.g. lines missing at its end)."""
        chain = self.store.read_chain(AUDIT, self._parse)
        problems = [(p.line, p.reason) for p in chain.problems]
        entries = []
        for number, line in chain.links:
            if line.entry is None:
                problems.append((number, line.invalid))
            else:
                entries.append(line.entry)
        problems.sort(key=lambda p: (p[0] is None, p[0] or 0))
        return entries, problems
