"""From a store of format v2, v3 or v4 to one of format v5: `baldr-ops memory migrate --store OLD --out NEW`.

A v2 record's key is its text's centred mean state at the nudged layer, compared by plain cosine
against a fixed threshold; a v3 record's key is a mean state at its layer's key layer, whitened and
calibrated; a v4 record's key is a topic state, whitened; a v5 record's key follows its layer's key
rule (`keyspace`: key layer, pooling (topic by default), metric (within-topic by default), calibration). The vectors cannot be converted, but every record keeps its source text, so the
migration re-derives each one with the store's model through the normal add path (screens,
calibration, signatures) into a new store, and leaves the old one untouched (logs are append-only,
and a half-migrated store would be worse than none).

What is carried: every record on a trusted part of a layer log that is not revoked, with its label
and origin; an approval becomes a new approval (with ``override_flags`` where the old one had to
override flags), noting the old record's id and decision time. A record the new screens flag that was
approved without an override stays quarantined for review. Revoked records are not carried; the
audit trail stays with the old store; the kill switch is carried. Entries a damaged log excludes are
not carried, and the damage is reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from baldr_ops.errors import UserError
from baldr_ops.memory.identity import identity_of
from baldr_ops.memory.keys import SigningKey
from baldr_ops.memory.keyspace import KeyRule
from baldr_ops.memory.store import KILL_FLAG, MIGRATABLE, MemoryStore
from baldr_ops.memory.verify import LineProblem
from baldr_ops.memory.writer import UNTRUSTED_FLAG, add_texts
from baldr_ops.schema import Document


class MigratedRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    old_id: str
    new_id: str | None  # None: not carried
    layer: int
    status: str  # in the new store ("approved", "quarantined"), or "not carried"
    flags: list[str] = []
    note: str | None = None


class MigrateReport(Document):
    source: str
    target: str
    model: str
    key_rule: KeyRule
    layers: list[int]
    records: list[MigratedRecord]
    problems: list[LineProblem]  # what the old store's logs excluded (not carried)
    disabled: str | None  # the kill switch, carried

    @property
    def carried(self) -> int:
        return sum(r.new_id is not None for r in self.records)


def migrate_store(source: str | Path, target: str | Path, key: SigningKey, lm, key_rule: KeyRule | None = None,
                  progress: Callable[[str], None] = lambda _: None) -> MigrateReport:
    """Re-derive the v2, v3 or v4 store at ``source`` into a new v5 store at ``target`` (which must not
    exist or be empty), with ``lm``, the model the store was made with."""
    ident = identity_of(lm)
    old = MemoryStore.open(source, key, ident, formats=MIGRATABLE)
    new = MemoryStore.new(target, ident, key)
    rule = key_rule or KeyRule()
    out: list[MigratedRecord] = []
    problems: list[LineProblem] = []
    layers = old.layers()
    for layer in layers:
        state = old.read_layer(layer)
        problems += [LineProblem(file=p.file, line=p.line, reason=p.reason) for p in state.problems]
        groups: dict[tuple, list] = {}
        for record in state.records.values():
            if record.status == "revoked":
                out.append(MigratedRecord(old_id=record.id, new_id=None, layer=layer, status="not carried",
                                          note=f"revoked {record.decided_at or ''}".strip()))
                continue
            groups.setdefault((record.body.label, record.body.origin), []).append(record)
        for (label, origin), records in groups.items():
            progress(f"layer {layer}: re-deriving {len(records)} record(s) labelled {label or '-'} ({origin})")
            added = add_texts(new, lm, [r.body.source_text for r in records], [layer], origin=origin, label=label,
                              allow_untrusted_origin=True, keep_flagged=True, key_rule=rule, progress=progress)
            by_text = {a.text: a for a in added}
            for record in records:
                result = by_text.get(record.body.source_text.strip())
                if result is None or result.id is None:
                    out.append(MigratedRecord(old_id=record.id, new_id=None, layer=layer, status="not carried",
                                              note=result.reason if result else "not re-derived"))
                    continue
                status, note = "quarantined", None
                if record.status == "approved":
                    # An old approval of a flagged record was an override; it carries as one only for
                    # flags the old record had too. Anything the new screens add needs a new review.
                    new_flags = set(result.flags) - set(record.body.flags) - {UNTRUSTED_FLAG}
                    if new_flags:
                        note = f"approved in the old store, but the new screens flag it: {', '.join(sorted(new_flags))}"
                    else:
                        new.decide(result.id, "approve", override_flags=bool(result.flags),
                                   note=f"migrated from store {old.header.store_id[:12]} record {record.id}, "
                                        f"approved {record.decided_at}")
                        status = "approved"
                out.append(MigratedRecord(old_id=record.id, new_id=result.id, layer=layer, status=status,
                                          flags=result.flags, note=note))
    if new.pending:
        raise UserError(f"{source} holds no record to migrate", hint="nothing was written")
    if old.disabled_reason(env={}):
        new.set_disabled(True, note=f"carried from {old.directory}: {_kill_note(old.directory)}")
    return MigrateReport(source=str(old.directory), target=str(new.directory), model=ident.short(), key_rule=rule,
                         layers=layers, records=out, problems=problems, disabled=new.disabled_reason(env={}))


def _kill_note(directory: Path) -> str:
    """The note of a store's kill switch flag file (what the operator wrote when switching it on)."""
    try:
        return str(json.loads((directory / KILL_FLAG).read_text()).get("note") or "no note")
    except (OSError, ValueError, AttributeError):
        return "flag file unreadable"
