"""What a store's log holds, and how each entry is signed.

Every line of a layer's log is one entry: ``{"kind", "id", "seq", "prev", "body", "hmac"}``. The body
is a plain JSON object; its id is the sha256 of its canonical bytes (sorted keys, no spaces), so an
approval that names a record id names that record's exact content. The HMAC covers the store id,
the log's file name, the entry's sequence number in that log, the previous entry's HMAC, the kind,
the id and the body: a record cannot be edited, moved to another store or another layer's log, or
turned into another kind of entry without the operator's key, and because each entry names its
predecessor the log is a hash chain: deleting, reordering or replaying a line breaks it
(`store.MemoryStore.read_layer` finds where). Vectors travel as base64 of little-endian float32,
which round-trips bit-exactly.

Kinds: ``reference`` (the layer's clean reference: centre, reference and probe vectors, and the key
rule: key layer, key metric and that layer's reference),
``record`` (one memory), ``decision`` (approve or revoke a record; records are never rewritten).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from baldr_ops.errors import UserError
from baldr_ops.memory.identity import ModelIdentity
from baldr_ops.memory.keys import SigningKey

Kind = Literal["reference", "record", "decision"]
KeyMetric = Literal["centred", "whitened", "within"]  # how keys are compared (`keyspace`)
KeyPooling = Literal["mean", "topic"]  # how a text becomes one state at the key layer (`derive.key_states`)
KEY_RULE = ("key: the text's state at the key layer by the reference's key pooling, minus its reference centre, "
            "compared in the reference's key metric; value: mean of positions 1.. at the layer, minus its centre (v5)")
TRUSTED_ORIGINS = ("operator", "user")
UNTRUSTED_ORIGINS = ("model", "tool", "web", "import")


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def body_id(body: dict) -> str:
    return hashlib.sha256(canonical(body)).hexdigest()[:24]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- vectors -------------------------------------------------------------------------------------
def encode_array(array) -> str:
    return base64.b64encode(np.ascontiguousarray(np.asarray(array, dtype="<f4")).tobytes()).decode("ascii")


def decode_array(text: str, shape: tuple[int, ...]) -> np.ndarray:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    array = np.frombuffer(raw, dtype="<f4")
    if array.size != int(np.prod(shape)):
        raise ValueError(f"vector has {array.size} values, expected shape {tuple(shape)}")
    return array.reshape(shape).astype(np.float32)


# -- bodies --------------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReferenceBody(_Body):
    layer: int
    corpus_sha256: str
    created_at: str
    d_model: int
    n_reference: int
    n_probes: int
    centre: str  # [d_model]: mean pooled state of the reference texts; keys and values are measured from it
    reference: str  # [n_reference, d_model]: the reference texts' pooled states, centred
    probes: str  # [n_probes, d_model]: generic prompts' pooled states, centred (retrieval-magnet screen)
    # The key rule (store format v3; None in a v2 reference, whose keys are centred states at `layer`):
    key_layer: int | None = None
    key_metric: KeyMetric | None = None
    key_pooling: KeyPooling | None = None  # format v4; None: "mean"
    # centre, reference and probes at the key layer, as above; None when the keys are the values' states
    key_centre: str | None = None
    key_reference: str | None = None
    key_probes: str | None = None
    # The within-topic metric (format v5): the topic corpus's key states, each group centred on its
    # own mean [n_within, d_model], and the corpus's fingerprint
    n_within: int | None = None
    key_within: str | None = None
    within_sha256: str | None = None

    @model_validator(mode="after")
    def _within_has_its_corpus(self) -> ReferenceBody:
        # The within metric is fitted to the stored corpus rows: one without the other is not a
        # reference this kit writes (parsing then reports the entry as corrupt).
        if (self.key_metric == "within") != (self.key_within is not None) or (
                (self.key_within is None) != (self.n_within is None)):
            raise ValueError("a within-topic key metric needs its topic-corpus rows, and only it has them")
        return self

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.d_model
        return (decode_array(self.centre, (d,)), decode_array(self.reference, (self.n_reference, d)),
                decode_array(self.probes, (self.n_probes, d)))

    @property
    def keyed_at(self) -> int:
        """The layer keys are read at."""
        return self.layer if self.key_layer is None else self.key_layer

    @property
    def pooling(self) -> KeyPooling:
        return self.key_pooling or "mean"

    def key_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centre, reference and probes at the key layer."""
        if self.key_centre is None:
            if self.pooling != "mean":  # only mean keys at the layer itself share the values' states
                raise ValueError(f"layer {self.layer}: a {self.pooling} key rule without its key-layer reference")
            return self.arrays()
        d = self.d_model
        return (decode_array(self.key_centre, (d,)), decode_array(self.key_reference, (self.n_reference, d)),
                decode_array(self.key_probes, (self.n_probes, d)))

    def generic_keys(self) -> np.ndarray:
        """The generic texts (reference and probes) at the key layer, centred: what the key metric is
        fitted to and what calibrates a key."""
        _, reference, probes = self.key_arrays()
        return np.concatenate([reference, probes])

    def within_rows(self) -> np.ndarray | None:
        """The topic corpus at the key layer, each group centred (None unless the metric is "within")."""
        return None if self.key_within is None else decode_array(self.key_within, (self.n_within, self.d_model))


def check_label(label: str | None) -> str | None:
    """A record's label as stored: None, or text with something in it (a blank label would group
    its records under a name no report can show)."""
    if label is None:
        return None
    if not label.strip():
        raise UserError("the label is empty", hint="omit --label for records without one, or give a subject name")
    return label


class RecordBody(_Body):
    layer: int
    label: str | None = None
    source_text: str  # kept so the key can be re-derived and checked (as sensitive as the text itself)
    source_sha256: str
    origin: str
    created_at: str
    model: ModelIdentity
    reference_id: str
    rule: str = KEY_RULE
    d_model: int
    key: str  # at the reference's key layer
    value: str  # at `layer`
    # The key's null distribution: mean and std of its relevance to the generic texts (out of
    # sample); the calibrated threshold is mean + z * std (`keyspace`). None in a v2 record.
    null_mean: float | None = None
    null_std: float | None = None
    screen: dict[str, Any] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)  # failed screens or an untrusted origin: approval needs an override

    def key_vector(self) -> np.ndarray:
        return decode_array(self.key, (self.d_model,))

    def value_vector(self) -> np.ndarray:
        return decode_array(self.value, (self.d_model,))


class DecisionBody(_Body):
    record_id: str
    decision: Literal["approve", "revoke"]
    decided_at: str
    override_flags: bool = False
    note: str | None = None


BODY_TYPES: dict[str, type[_Body]] = {"reference": ReferenceBody, "record": RecordBody, "decision": DecisionBody}


# -- entries -------------------------------------------------------------------------------------
GENESIS = ""  # the "prev" of a log's first entry


def _message(store_id: str, log: str, seq: int, prev: str, kind: str, entry_id: str, body: dict) -> bytes:
    return canonical({"store": store_id, "log": log, "seq": seq, "prev": prev, "kind": kind, "id": entry_id,
                      "body": body})


def make_entry(store_id: str, log: str, seq: int, prev: str, kind: Kind, body: _Body,
               key: SigningKey) -> tuple[str, str, bytes]:
    """The entry's id, its HMAC and its log line (one JSON object and a newline), as entry ``seq`` of
    ``log`` following the entry whose HMAC is ``prev``."""
    plain = body.model_dump(mode="json")
    entry_id = body_id(plain)
    mac = key.sign(_message(store_id, log, seq, prev, kind, entry_id, plain))
    line = canonical({"kind": kind, "id": entry_id, "seq": seq, "prev": prev, "body": plain, "hmac": mac})
    return entry_id, mac, line + b"\n"


class BadEntry(Exception):
    """A log line that is not a signed entry; the reason says why (for `verify` and `list`)."""


@dataclass
class Entry:
    """A log line whose signature checks out. ``body`` is None (and ``invalid`` says why) when the
    signed content itself is unusable, e.g. a non-finite vector signed by a compromised writer: such an
    entry still holds its place in the chain, but it is excluded."""

    kind: str
    id: str
    seq: int
    prev: str
    mac: str
    body: _Body | None
    invalid: str | None = None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_entry(store_id: str, log: str, line: bytes, key: SigningKey) -> Entry:
    """The entry on a line of ``log`` if its signature checks out, else `BadEntry`."""
    try:
        raw = json.loads(line)
        kind, entry_id, seq, prev, body, signature = (raw["kind"], raw["id"], raw["seq"], raw["prev"], raw["body"],
                                                      raw["hmac"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BadEntry(f"not a log entry ({type(exc).__name__})") from exc
    if kind not in BODY_TYPES or not isinstance(body, dict):
        raise BadEntry(f"unknown entry kind {kind!r}")
    if not _is_int(seq) or not isinstance(prev, str) or not isinstance(entry_id, str):
        raise BadEntry("not a log entry (bad seq, prev or id)")
    try:
        message = _message(store_id, log, seq, prev, kind, entry_id, body)
    except (TypeError, ValueError) as exc:  # e.g. NaN smuggled into the JSON
        raise BadEntry(f"body is not canonical JSON ({exc})") from exc
    if not key.verify(message, signature):
        raise BadEntry("HMAC mismatch (modified, or signed with another key, for another store or another log)")
    entry = Entry(kind, entry_id, seq, prev, signature, None)
    if body_id(body) != entry_id:
        entry.invalid = "id does not match the body"
        return entry
    try:
        parsed = BODY_TYPES[kind].model_validate(body)
        if isinstance(parsed, RecordBody):
            for vector in (parsed.key_vector(), parsed.value_vector()):
                if not np.isfinite(vector).all():
                    raise ValueError("vector is not finite")
            if parsed.null_std is not None and not (np.isfinite(parsed.null_std) and parsed.null_std >= 0
                                                    and np.isfinite(parsed.null_mean)):
                raise ValueError("calibration is not finite")
        elif isinstance(parsed, ReferenceBody):
            parsed.arrays()
            parsed.key_arrays()
    except (ValueError, TypeError) as exc:
        entry.invalid = f"invalid {kind}: {str(exc).splitlines()[0]}"
        return entry
    entry.body = parsed
    return entry
