"""Checking a store: every line's signature, and (with the model) the re-derivation check.

Re-derivation: activations are a deterministic function of (model, text, dtype), so a record's key
(at the layer's key layer) and value are recomputed from its stored source text and compared with the
stored vectors, and its calibration (null mean and std) is recomputed from the recomputed key. A
vector that does not come from its claimed text, even one signed with the right key (a compromised
writer, a substituted file), fails with a relative error far above the tolerance (1e-4; recomputing
a genuine record on the same machine gives 0 in the same batch, ~4e-7 batched with other texts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from baldr_ops.memory.audit import AuditLog
from baldr_ops.memory.derive import key_states, pooled
from baldr_ops.memory.identity import identity_of, require_same_model
from baldr_ops.memory.keyspace import reference_null_scores, summarise_null
from baldr_ops.memory.store import AUDIT, LayerState, MemoryStore, RecordState
from baldr_ops.schema import Document

REDERIVE_TOLERANCE = 1e-4
# A null mean or std off by more than this (in cosine) does not come from the record's key: the
# threshold it gives is not the one the key earns (a forged calibration can make a record recalled
# for anything). Recomputing a genuine record's gives differences of ~1e-6.
CALIBRATION_TOLERANCE = 1e-3


class RederiveResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    layer: int
    key_error: float
    value_error: float
    calibration_error: float = 0.0  # largest difference of the null mean or std (cosine units)
    ok: bool


def rederive(lm, state: LayerState, records: Sequence[RecordState], tolerance: float = REDERIVE_TOLERANCE,
             progress: Callable[[str], None] = lambda _: None) -> list[RederiveResult]:
    """Recompute each record's vectors from its source text at the layer and its key layer, and its
    calibration, and compare."""
    if not records:
        return []
    reference = state.reference
    centre, key_centre = reference.arrays()[0], reference.key_arrays()[0]
    texts = [r.body.source_text for r in records]
    mean_keys = reference.pooling == "mean"   # then one pass reads values and keys
    fresh = pooled(lm, texts, sorted({state.layer, reference.keyed_at} if mean_keys else {state.layer}),
                   progress=progress)
    keyed = fresh if mean_keys else key_states(lm, texts, [reference.keyed_at], reference.pooling, progress=progress)
    keys = keyed[reference.keyed_at].numpy() - key_centre
    values = fresh[state.layer].numpy() - centre
    calibrated = [r.body.null_std is not None for r in records]
    null_mean, null_std = (summarise_null(reference_null_scores(reference, keys))
                           if any(calibrated) else (None, None))
    out = []
    for i, record in enumerate(records):
        key_error = _relative(record.body.key_vector(), keys[i])
        value_error = _relative(record.body.value_vector(), values[i])
        calibration_error = (max(abs(record.body.null_mean - float(null_mean[i])),
                                 abs(record.body.null_std - float(null_std[i]))) if calibrated[i] else 0.0)
        out.append(RederiveResult(id=record.id, layer=state.layer, key_error=key_error, value_error=value_error,
                                  calibration_error=calibration_error,
                                  ok=key_error <= tolerance and value_error <= tolerance
                                  and calibration_error <= CALIBRATION_TOLERANCE))
    return out


def _relative(stored: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(stored - expected)) / max(float(np.linalg.norm(expected)), 1e-12)


class LineProblem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    line: int | None  # None: the log (or the store) as a whole
    reason: str


class LayerCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int
    reference: bool
    entries: int  # on the unbroken chain
    damaged: str | None  # why the log cannot be trusted as a whole (a chain break, missing entries)
    approved: int
    quarantined: int
    revoked: int
    flagged: int
    problems: list[LineProblem]
    rederived: list[RederiveResult] | None = None

    @property
    def ok(self) -> bool:
        return self.reference and not self.problems and all(r.ok for r in self.rederived or [])


class AuditCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entries: int
    problems: list[LineProblem]


class VerifyReport(Document):
    store: str
    model: str
    key_id: str
    disabled: str | None
    layers: list[LayerCheck]
    audit: AuditCheck
    ok: bool


def verify_store(store: MemoryStore, lm=None, rederive_records: bool = False, tolerance: float = REDERIVE_TOLERANCE,
                 progress: Callable[[str], None] = lambda _: None) -> VerifyReport:
    """Check every layer's log (signatures, ids, vectors); with ``lm``, also re-derive live records."""
    if lm is not None:
        require_same_model(store.header.model, identity_of(lm), f"store {store.directory}")
    layers = []
    for layer in store.layers():
        state = store.read_layer(layer)
        records = list(state.records.values())
        check = LayerCheck(layer=layer, reference=state.reference is not None, entries=state.entries,
                           damaged=state.damaged,
                           approved=sum(r.status == "approved" for r in records),
                           quarantined=sum(r.status == "quarantined" for r in records),
                           revoked=sum(r.status == "revoked" for r in records),
                           flagged=sum(bool(r.body.flags) for r in records),
                           problems=[LineProblem(file=p.file, line=p.line, reason=p.reason) for p in state.problems])
        if rederive_records and lm is not None and state.reference is not None:
            live = [r for r in records if r.status != "revoked"]
            progress(f"layer {layer}: re-deriving {len(live)} record(s)")
            check.rederived = rederive(lm, state, live, tolerance, progress)
        layers.append(check)
    entries, problems = AuditLog(store).read()
    audit = AuditCheck(entries=len(entries), problems=[LineProblem(file=AUDIT, line=n, reason=r) for n, r in problems])
    return VerifyReport(store=str(store.directory), model=store.header.model.short(), key_id=store.header.key_id,
                        disabled=store.disabled_reason(), layers=layers, audit=audit,
                        ok=all(c.ok for c in layers) and not audit.problems)
