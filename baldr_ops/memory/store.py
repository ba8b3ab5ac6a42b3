"""A memory store on disk: a signed header and one append-only, signed log per layer.

Layout of a store directory::

    store.json         header: format, store id, the model the vectors belong to, the key id; signed
    layer-013.jsonl    layer 13's log: reference, record and decision entries, one JSON line each
    audit.jsonl        one signed line per generation the memory took part in
    DISABLED           present = the kill switch is on (nothing is injected)

Appends are atomic in the sense that matters: each append is one ``write`` of whole lines under an
exclusive lock, then ``fsync``; a crash mid-write leaves at worst a torn last line, which readers
report and skip, and the next append starts on a fresh line, so no earlier entry is ever touched.
Nothing is rewritten: approvals and revocations are new entries. A line that fails its HMAC (edited,
truncated, or signed with another key) is excluded and reported, never trusted.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from baldr_ops.errors import UserError
from baldr_ops.memory.identity import ModelIdentity, require_same_model
from baldr_ops.memory.keys import SigningKey
from baldr_ops.memory.records import (
    BadEntry,
    DecisionBody,
    Kind,
    RecordBody,
    ReferenceBody,
    canonical,
    make_entry,
    now,
    parse_entry,
)

FORMAT = "baldr-ops memory store v1"
HEADER = "store.json"
AUDIT = "audit.jsonl"
KILL_FLAG = "DISABLED"
KILL_ENV = "BALDR_MEMORY_DISABLE"
_LOCK = ".lock"
_LAYER_FILE = re.compile(r"^layer-(\d+)\.jsonl$")

Status = Literal["quarantined", "approved", "revoked"]


class StoreHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str
    store_id: str
    created_at: str
    model: ModelIdentity
    key_id: str
    hmac: str = ""

    def message(self) -> bytes:
        return canonical({"header": self.model_dump(mode="json", exclude={"hmac"})})


@dataclass
class LogProblem:
    """A log line that was excluded, and why."""

    file: str
    line: int
    reason: str


@dataclass
class RecordState:
    id: str
    body: RecordBody
    status: Status = "quarantined"
    decided_at: str | None = None


@dataclass
class LayerState:
    """Everything valid in one layer's log, in the order it was written, plus what was excluded."""

    layer: int
    reference_id: str | None = None
    reference: ReferenceBody | None = None
    records: dict[str, RecordState] = field(default_factory=dict)
    problems: list[LogProblem] = field(default_factory=list)

    def with_status(self, *statuses: Status) -> list[RecordState]:
        return [r for r in self.records.values() if r.status in statuses]


def layer_file(layer: int) -> str:
    return f"layer-{layer:03d}.jsonl"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_lines(path: Path, lines: Sequence[bytes]) -> None:
    """Append whole lines with one write and fsync; first end a torn last line, if there is one."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = os.fstat(fd).st_size
        prefix = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
        data = memoryview(prefix + b"".join(lines))
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


def read_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, complete) for each non-empty line; the last is incomplete if torn."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    pieces = data.split(b"\n")
    for number, piece in enumerate(pieces, start=1):
        if piece.strip():
            yield number, piece, number < len(pieces)


class MemoryStore:
    """An opened store: its header checked against the key (and model, when one is given)."""

    def __init__(self, directory: Path, header: StoreHeader, key: SigningKey):
        self.directory = directory
        self.header = header
        self.key = key

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | os.PathLike, model: ModelIdentity, key: SigningKey) -> MemoryStore:
        directory = Path(directory).expanduser()
        if (directory / HEADER).exists():
            raise UserError(f"{directory} is already a memory store")
        if directory.exists() and any(directory.iterdir()):
            raise UserError(f"{directory} exists and is not an empty directory or a memory store",
                            hint="give a new or empty directory for --store")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        header = StoreHeader(format=FORMAT, store_id=uuid.uuid4().hex, created_at=now(), model=model,
                             key_id=key.key_id)
        header.hmac = key.sign(header.message())
        tmp = directory / f".{HEADER}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(header.model_dump_json(indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / HEADER)
        _fsync_dir(directory)
        return cls(directory, header, key)

    @classmethod
    def open(cls, directory: str | os.PathLike, key: SigningKey, model: ModelIdentity | None = None) -> MemoryStore:
        directory = Path(directory).expanduser()
        path = directory / HEADER
        if not path.is_file():
            raise UserError(f"{directory} is not a memory store (no {HEADER})",
                            hint="'baldr-ops memory add --store DIR ...' creates one")
        try:
            header = StoreHeader.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError, ValidationError) as exc:
            raise UserError(f"the header {path} is unreadable or corrupt: {str(exc).splitlines()[0]}",
                            hint="the records are untouched; restore store.json from a backup") from exc
        if header.format != FORMAT:
            raise UserError(f"{directory} is in format {header.format!r}; this baldr-ops reads {FORMAT!r}")
        if header.key_id != key.key_id:
            raise UserError(f"{directory} was signed with key id {header.key_id}; the key from {key.origin} has id "
                            f"{key.key_id}", hint="give the key the store was made with (--key-file or $BALDR_MEMORY_KEY)")
        if not key.verify(header.message(), header.hmac):
            raise UserError(f"the header {path} fails its HMAC: it was modified",
                            hint="the records are untouched; restore store.json from a backup")
        if model is not None:
            require_same_model(header.model, model, f"store {directory}")
        return cls(directory, header, key)

    @classmethod
    def open_or_create(cls, directory: str | os.PathLike, key: SigningKey, model: ModelIdentity) -> MemoryStore:
        if (Path(directory).expanduser() / HEADER).exists():
            return cls.open(directory, key, model)
        return cls.create(directory, model, key)

    # -- reading -------------------------------------------------------------------------------
    def layers(self) -> list[int]:
        found = (_LAYER_FILE.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def read_layer(self, layer: int) -> LayerState:
        state = LayerState(layer)
        name = layer_file(layer)
        decisions: list[tuple[str, DecisionBody]] = []
        for number, line, complete in read_lines(self.directory / name):
            if not complete:
                state.problems.append(LogProblem(name, number, "torn last line (an interrupted write)"))
                continue
            try:
                kind, entry_id, body = parse_entry(self.header.store_id, line, self.key)
            except BadEntry as exc:
                state.problems.append(LogProblem(name, number, str(exc)))
                continue
            if getattr(body, "layer", layer) != layer:
                state.problems.append(LogProblem(name, number, f"entry for layer {body.layer} in {name}"))
            elif kind == "reference":
                if state.reference is None:
                    state.reference_id, state.reference = entry_id, body
            elif kind == "record":
                if body.reference_id != state.reference_id:
                    state.problems.append(LogProblem(name, number, "record measured against an unknown reference"))
                else:
                    state.records.setdefault(entry_id, RecordState(entry_id, body))
            else:
                decisions.append((f"{name}:{number}", body))
        for where, decision in decisions:
            record = state.records.get(decision.record_id)
            if record is None:
                file, _, number = where.partition(":")
                state.problems.append(LogProblem(file, int(number), f"decision for unknown record {decision.record_id}"))
            elif record.status == "revoked":
                continue  # revocation is final
            elif decision.decision == "revoke":
                record.status, record.decided_at = "revoked", decision.decided_at
            elif not record.body.flags or decision.override_flags:
                record.status, record.decided_at = "approved", decision.decided_at
        return state

    def find_record(self, record_id: str) -> tuple[int, RecordState]:
        """The layer and state of a record, by id or unique id prefix."""
        matches = []
        for layer in self.layers():
            matches += [(layer, r) for rid, r in self.read_layer(layer).records.items() if rid.startswith(record_id)]
        if not matches:
            raise UserError(f"no record {record_id} in {self.directory}", hint="'baldr-ops memory list' shows the ids")
        if len(matches) > 1:
            raise UserError(f"record id prefix {record_id} is ambiguous ({len(matches)} records)")
        return matches[0]

    # -- writing -------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def append(self, layer: int, entries: Sequence[tuple[Kind, ReferenceBody | RecordBody | DecisionBody]]) -> list[str]:
        """Sign and append entries to a layer's log in one write; returns their ids."""
        signed = [make_entry(self.header.store_id, kind, body, self.key) for kind, body in entries]
        with self.locked():
            append_lines(self.directory / layer_file(layer), [line for _, line in signed])
        return [entry_id for entry_id, _ in signed]

    def decide(self, record_id: str, decision: Literal["approve", "revoke"], override_flags: bool = False,
               note: str | None = None) -> RecordState:
        layer, record = self.find_record(record_id)
        if record.status == "revoked":
            raise UserError(f"record {record.id} was revoked on {record.decided_at}; revocation is final",
                            hint="add the text again for a new record")
        if decision == "approve" and record.body.flags and not override_flags:
            raise UserError(f"record {record.id} is flagged ({', '.join(record.body.flags)}); not approving it",
                            hint="inspect it with 'memory list', then approve with --override-flags if it is sound")
        self.append(layer, [("decision", DecisionBody(record_id=record.id, decision=decision, decided_at=now(),
                                                       override_flags=override_flags, note=note))])
        return self.read_layer(layer).records[record.id]

    # -- kill switch ---------------------------------------------------------------------------
    def disabled_reason(self, env: dict | None = None) -> str | None:
        return kill_switch_reason(self.directory, env)

    def set_disabled(self, disabled: bool, note: str | None = None) -> None:
        set_kill_switch(self.directory, disabled, note)


def kill_switch_reason(directory: Path, env: dict | None = None) -> str | None:
    """Why injection is off, or None: the store's DISABLED flag file or $BALDR_MEMORY_DISABLE."""
    env = os.environ if env is None else env
    if env.get(KILL_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return f"${KILL_ENV} is set"
    flag = Path(directory) / KILL_FLAG
    if flag.exists():
        return f"kill switch {flag} is on"
    return None


def set_kill_switch(directory: Path, disabled: bool, note: str | None = None) -> None:
    """Turn the kill switch on or off. Needs no key: whoever may stop the memory can, at once."""
    directory = Path(directory)
    if not (directory / HEADER).is_file():
        raise UserError(f"{directory} is not a memory store (no {HEADER})")
    flag = directory / KILL_FLAG
    if disabled:
        tmp = directory / f".{KILL_FLAG}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"disabled_at": now(), "note": note}) + "\n")
        os.replace(tmp, flag)
        _fsync_dir(directory)
    elif flag.exists():
        flag.unlink()
        _fsync_dir(directory)
