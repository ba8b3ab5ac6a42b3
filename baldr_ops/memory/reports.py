"""The JSON documents `baldr-ops memory` prints with --json (the larger ones live with their logic:
`verify.VerifyReport`, `compare.ABReport`, `evaluate.EvalReport`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from baldr_ops.memory.audit import AuditEntry
from baldr_ops.memory.store import LayerState, RecordState
from baldr_ops.memory.writer import AddedRecord
from baldr_ops.schema import Document


class KeyReport(Document):
    key_file: str
    key_id: str


class AddReport(Document):
    store: str
    model: str
    layers: list[int]
    layer_source: str
    records: list[AddedRecord]


class RecordLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    layer: int
    status: str
    label: str | None
    origin: str
    created_at: str
    decided_at: str | None
    flags: list[str]
    text: str


def record_line(layer: int, r: RecordState) -> RecordLine:
    return RecordLine(id=r.id, layer=layer, status=r.status, label=r.body.label, origin=r.body.origin,
                      created_at=r.body.created_at, decided_at=r.decided_at, flags=r.body.flags,
                      text=r.body.source_text)


class ListReport(Document):
    store: str
    model: str
    disabled: str | None
    records: list[RecordLine]
    excluded_lines: int

    @classmethod
    def from_states(cls, store, states: list[LayerState], statuses: set[str] | None) -> ListReport:
        lines = [record_line(s.layer, r) for s in states for r in s.records.values()
                 if statuses is None or r.status in statuses]
        return cls(store=str(store.directory), model=store.header.model.short(), disabled=store.disabled_reason(),
                   records=lines, excluded_lines=sum(len(s.problems) for s in states))


class DecisionReport(Document):
    store: str
    decision: str
    records: list[RecordLine]


class KillSwitchReport(Document):
    store: str
    disabled: str | None


class AuditReport(Document):
    store: str
    entries: list[AuditEntry]
    bad_lines: list[str]
