"""A memory store on disk: a signed header, one append-only, hash-chained log per layer, and a signed
head for every log.

Layout of a store directory::

    store.json         header: format, store id, the model the vectors belong to, the key id; signed
    heads.json         each log's head: entry count, last entry's HMAC, byte size, revoked record ids; signed
    layer-013.jsonl    layer 13's log: reference, record and decision entries, one JSON line each
    audit.jsonl        one signed line per generation the memory took part in (chained the same way)
    DISABLED           present = the kill switch is on (nothing is injected)

Integrity (docs/memory.md, "Integrity model"): every entry's HMAC covers its log's name, its sequence
number and the previous entry's HMAC, so the lines of a log form a chain. `walk_chain` follows it:
the entries up to the first break are trusted; a break (a missing, reordered, replayed or spliced
entry) excludes that entry and every later one, and the log counts as damaged. A line that is not a
signed entry (a torn write, junk) is reported and skipped; if the next entry continues the chain,
nothing was lost. The head, replaced atomically under the store lock after each append, catches what
a chain cannot: a log cut at a line boundary. It also keeps every revoked record id, so a revocation
holds even if its log line is deleted. Appends to a damaged layer log are refused, except revocations.

Appends: each is one ``write`` of whole lines under an exclusive lock, then ``fsync``, then the new
head; a crash leaves at worst a torn last line (skipped) or entries the head does not count yet
(they chain, so they are kept). Nothing is rewritten: approvals and revocations are new entries.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from baldr_ops.atomic import atomic_directory, atomic_write, fsync_dir
from baldr_ops.errors import UserError
from baldr_ops.memory.identity import ModelIdentity, require_same_model
from baldr_ops.memory.keys import SigningKey
from baldr_ops.memory.records import (
    GENESIS,
    BadEntry,
    DecisionBody,
    Entry,
    Kind,
    RecordBody,
    ReferenceBody,
    canonical,
    make_entry,
    now,
    parse_entry,
)

# v2: chained logs and signed heads; v3: the key rule (key layer, metric, calibration); v4: key pooling (topic keys);
# v5: the within-topic key metric (the topic corpus in each reference)
FORMAT = "baldr-ops memory store v5"
FORMAT_V2 = "baldr-ops memory store v2"
FORMAT_V3 = "baldr-ops memory store v3"
FORMAT_V4 = "baldr-ops memory store v4"
MIGRATABLE = (FORMAT_V2, FORMAT_V3, FORMAT_V4)  # read only by `memory migrate`
HEADER = "store.json"
HEADS = "heads.json"
HEADS_FORMAT = "baldr-ops memory heads v1"
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


class LogHead(BaseModel):
    """What a log held after its last append: checked against the log at every read."""

    model_config = ConfigDict(extra="forbid")

    count: int  # entries in the chain
    last: str  # the last entry's HMAC
    size: int  # the file's size in bytes
    revoked: list[str] = []  # every record id ever revoked in this log (layer logs only)


class Heads(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str
    store_id: str
    logs: dict[str, LogHead]
    hmac: str = ""

    def message(self) -> bytes:
        return canonical({"heads": self.model_dump(mode="json", exclude={"hmac"})})


@dataclass
class LogProblem:
    """A log line that was excluded, and why (``line`` None: the log or the store as a whole)."""

    file: str
    line: int | None
    reason: str

    def where(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


@dataclass
class Chain:
    """A log walked along its chain: the entries on it up to the first break (``links``), the signed
    entries after the break (``after``, excluded), and everything that was wrong."""

    links: list[tuple[int, Any]]  # (line number, parsed entry)
    after: list[tuple[int, Any]]
    problems: list[LogProblem]
    damaged: str | None  # why the log cannot be trusted as a whole (None: intact)
    next_seq: int  # where the next entry goes: after the chain's tip, or after the head if that is further
    next_prev: str


def _entries(first: int, last: int) -> str:
    return f"entry #{first}" if first == last else f"entries #{first}-#{last}"


def _break_reason(seq: int, tip: int) -> str:
    if seq <= tip:
        return f"entry #{seq} comes again or out of order (expected #{tip + 1}): a replayed or reordered line"
    if seq > tip + 1:
        return f"{_entries(tip + 1, seq - 1)} missing before this line (deleted, or damaged beyond reading)"
    return f"entry #{seq} does not follow entry #{tip} (a line spliced in from another copy of the log)"


def walk_chain(path: Path, name: str, parse: Callable[[bytes], Any], head: LogHead | None,
               heads_problem: str | None = None) -> Chain:
    """Follow a log's chain. ``parse(line)`` returns an object with ``seq``, ``prev`` and ``mac`` for a
    signed line, or raises `BadEntry`. ``head`` is the log's signed head (None: none recorded)."""
    links: list[tuple[int, Any]] = []
    after: list[tuple[int, Any]] = []
    problems: list[LogProblem] = []
    broken: int | None = None
    tip, tip_mac = -1, GENESIS
    for number, raw, complete in read_lines(path):
        if not complete:
            problems.append(LogProblem(name, number, "torn last line (an interrupted write)"))
            continue
        try:
            item = parse(raw)
        except BadEntry as exc:
            problems.append(LogProblem(name, number, str(exc)))
            continue
        if broken is None and item.seq == tip + 1 and item.prev == tip_mac:
            links.append((number, item))
            tip, tip_mac = item.seq, item.mac
            continue
        if broken is None:
            broken = number
            problems.append(LogProblem(name, number, f"chain break: {_break_reason(item.seq, tip)}; this entry "
                                                     f"and every later one are excluded"))
        else:
            problems.append(LogProblem(name, number, f"after the chain break at line {broken}: excluded"))
        after.append((number, item))
    damaged = heads_problem
    if broken is not None:
        damaged = damaged or f"chain break at line {broken}"
    next_seq, next_prev = tip + 1, tip_mac
    if head is not None:
        present = len(links) + len(after)
        if head.count > present:
            missing = head.count - present
            problems.append(LogProblem(name, None, f"its signed head records {head.count} entries, the log holds "
                                                   f"{present}: {missing} missing (the log was cut short, or lines "
                                                   f"were deleted)"))
            damaged = damaged or f"{missing} of {head.count} entries missing"
        elif broken is None and head.count > 0 and links[head.count - 1][1].mac != head.last:
            line = links[head.count - 1][0]
            problems.append(LogProblem(name, line, "the log does not match its signed head here (replaced or "
                                                   "rolled back)"))
            damaged = damaged or f"does not match its head at line {line}"
        if head.count > next_seq:
            next_seq, next_prev = head.count, head.last
    if heads_problem:
        problems.append(LogProblem(HEADS, None, heads_problem))
    return Chain(links, after, problems, damaged, next_seq, next_prev)


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
    entries: int = 0  # on the unbroken chain
    damaged: str | None = None  # why the log cannot be trusted as a whole; None: intact

    def with_status(self, *statuses: Status) -> list[RecordState]:
        return [r for r in self.records.values() if r.status in statuses]


def layer_file(layer: int) -> str:
    return f"layer-{layer:03d}.jsonl"


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
        fsync_dir(path.parent)


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


class StoreAppeared(Exception):
    """A pending store's directory became a store meanwhile: another process wrote it first."""


_LOCKS: dict[tuple[int, str], list] = {}  # (pid, lock file) -> [RLock, fd or None, depth]
_LOCKS_GUARD = threading.Lock()


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An flock on ``path``, re-entrant per thread (a second flock on another descriptor of the same
    file in the same process would block), exclusive between threads and processes."""
    with _LOCKS_GUARD:
        held = _LOCKS.setdefault((os.getpid(), str(path)), [threading.RLock(), None, 0])
    with held[0]:
        if held[2] == 0:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            held[1] = fd
        held[2] += 1
        try:
            yield
        finally:
            held[2] -= 1
            if held[2] == 0:
                fcntl.flock(held[1], fcntl.LOCK_UN)
                os.close(held[1])
                held[1] = None


def _write_chain(path: Path, makers: Sequence[Callable[[int, str], tuple[str, bytes]]], seq: int,
                 prev: str) -> tuple[int, str, list[str]]:
    """Sign entries from (seq, prev) on and append them in one write: (count, last HMAC, HMACs)."""
    lines, macs = [], []
    for make in makers:
        mac, line = make(seq, prev)
        lines.append(line)
        macs.append(mac)
        seq, prev = seq + 1, mac
    append_lines(path, lines)
    return seq, prev, macs


LineMaker = Callable[[int, str], tuple[str, bytes]]  # (seq, prev) -> (hmac, line)


class MemoryStore:
    """An opened store: its header checked against the key (and model, when one is given)."""

    def __init__(self, directory: Path, header: StoreHeader, key: SigningKey, pending: bool = False):
        self.directory = directory
        self.header = header
        self.key = key
        self.pending = pending  # not on disk yet (`new`)

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def new(cls, directory: str | os.PathLike, model: ModelIdentity, key: SigningKey) -> MemoryStore:
        """A store that exists only in memory until its first append, which writes the directory
        whole (header, heads and the first logs, 0700 and 0600) with one rename: a failed first add
        leaves nothing behind. Refuses a directory that exists and is neither empty nor a store."""
        directory = Path(directory).expanduser()
        if (directory / HEADER).exists():
            raise UserError(f"{directory} is already a memory store")
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise UserError(f"{directory} exists and is not an empty directory or a memory store",
                            hint="give a new or empty directory for --store")
        header = StoreHeader(format=FORMAT, store_id=uuid.uuid4().hex, created_at=now(), model=model,
                             key_id=key.key_id)
        header.hmac = key.sign(header.message())
        return cls(directory, header, key, pending=True)

    @classmethod
    def create(cls, directory: str | os.PathLike, model: ModelIdentity, key: SigningKey) -> MemoryStore:
        """A new, empty store, written now."""
        store = cls.new(directory, model, key)
        store._materialize({})
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike, key: SigningKey, model: ModelIdentity | None = None, *,
             formats: Sequence[str] = (FORMAT,)) -> MemoryStore:
        """Open a store whose header is signed with ``key``; ``formats``: the formats accepted (a v2, v3
        or v4 store is opened only to migrate it)."""
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
        if header.format not in formats and header.format == FORMAT:
            raise UserError(f"{directory} is already in format {FORMAT!r}: there is nothing to migrate",
                            hint="use it as it is (--store)")
        if header.format not in formats:
            hint = ("migrate it: 'baldr-ops memory migrate --store OLD --out NEW --model M' re-derives its records "
                    "under the v5 key rule into a new store" if header.format in MIGRATABLE else
                    "stores of the unchained v1 format are not read: add the texts to a new store")
            raise UserError(f"{directory} is in format {header.format!r}; this baldr-ops reads {FORMAT!r}", hint=hint)
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
        """The store at ``directory``, or a `new` one (written at its first append)."""
        if (Path(directory).expanduser() / HEADER).exists():
            return cls.open(directory, key, model)
        return cls.new(directory, model, key)

    def _materialize(self, logs: dict[str, tuple[Sequence[LineMaker], Sequence[str]]]) -> dict[str, list[str]]:
        """Write a pending store with its first logs ({name: (makers, revoked ids)}): everything goes
        into a private temporary directory next to it, which is then renamed into place. If another
        process created the store first, `StoreAppeared`."""
        directory = self.directory
        if (directory / HEADER).exists():
            raise StoreAppeared(str(directory))
        try:
            out: dict = {}
            with atomic_directory(directory, mode=0o700, durable=True) as tmp:   # replaces an empty directory
                self._write_new(tmp, logs, out)
        except OSError as exc:
            if (directory / HEADER).exists():
                raise StoreAppeared(str(directory)) from exc
            if directory.is_dir() and any(directory.iterdir()):
                raise UserError(f"{directory} exists and is not an empty directory or a memory store",
                                hint="give a new or empty directory for --store") from exc
            raise
        self.pending = False
        return out

    def _write_new(self, tmp: Path, logs, out: dict) -> None:
        """The new store's files, written into its private temporary directory."""
        heads = Heads(format=HEADS_FORMAT, store_id=self.header.store_id, logs={})
        for name, (makers, revoked) in logs.items():
            count, last, out[name] = _write_chain(tmp / name, makers, 0, GENESIS)
            heads.logs[name] = LogHead(count=count, last=last, size=(tmp / name).stat().st_size,
                                       revoked=sorted(set(revoked)))
        heads.hmac = self.key.sign(heads.message())
        atomic_write(tmp / HEADS, heads.model_dump_json() + "\n", mode=0o600, durable=True)
        atomic_write(tmp / HEADER, self.header.model_dump_json(indent=2) + "\n", mode=0o600, durable=True)
        os.close(os.open(tmp / _LOCK, os.O_RDWR | os.O_CREAT, 0o600))  # there from the start: locking adds no file

    def adopt(self) -> None:
        """After `StoreAppeared`: become the store another process wrote (same key and model)."""
        other = MemoryStore.open(self.directory, self.key, self.header.model)
        self.header, self.pending = other.header, False

    # -- heads -----------------------------------------------------------------------------------
    def load_heads(self) -> tuple[Heads | None, str | None]:
        """The signed heads, or None and why they cannot be used. Read them before the logs they
        describe: a writer appends to a log first and replaces its head after."""
        if self.pending:
            return Heads(format=HEADS_FORMAT, store_id=self.header.store_id, logs={}), None
        path = self.directory / HEADS
        try:
            heads = Heads.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            return None, f"{HEADS} is missing, so a log cut short cannot be detected"
        except (OSError, ValueError, ValidationError):
            return None, f"{HEADS} is unreadable or corrupt, so a log cut short cannot be detected"
        if (heads.format != HEADS_FORMAT or heads.store_id != self.header.store_id
                or not self.key.verify(heads.message(), heads.hmac)):
            return None, f"{HEADS} fails its HMAC (modified, or from another store)"
        return heads, None

    def _write_heads(self, heads: Heads) -> None:
        heads.hmac = self.key.sign(heads.message())
        atomic_write(self.directory / HEADS, heads.model_dump_json() + "\n", mode=0o600, durable=True)

    # -- reading -------------------------------------------------------------------------------
    def layers(self) -> list[int]:
        """Layers with a log, or with a head (a log that was deleted is still listed, and reported)."""
        if self.pending:
            return []
        heads, _ = self.load_heads()
        names = {p.name for p in self.directory.iterdir()} | set(heads.logs if heads else ())
        found = (_LAYER_FILE.match(name) for name in names)
        return sorted(int(m.group(1)) for m in found if m)

    def read_chain(self, name: str, parse: Callable[[bytes], Any]) -> Chain:
        heads, problem = self.load_heads()
        return walk_chain(self.directory / name, name, parse, heads.logs.get(name) if heads else None, problem)

    def _parse_layer_line(self, name: str) -> Callable[[bytes], Entry]:
        return lambda raw: parse_entry(self.header.store_id, name, raw, self.key)

    def read_layer(self, layer: int) -> LayerState:
        """Everything trustworthy in a layer's log. Entries on the chain up to its first break count;
        after a break only revocations do (revoking is always safe), and every id the signed head
        lists as revoked stays revoked, even if its log line is gone."""
        name = layer_file(layer)
        heads, heads_problem = self.load_heads()
        head = heads.logs.get(name) if heads else None
        chain = walk_chain(self.directory / name, name, self._parse_layer_line(name), head, heads_problem)
        state = LayerState(layer, problems=list(chain.problems), entries=len(chain.links), damaged=chain.damaged)
        decisions: list[tuple[int, DecisionBody]] = []
        for number, entry in chain.links:
            body = entry.body
            if body is None:
                state.problems.append(LogProblem(name, number, f"signed, but {entry.invalid}"))
            elif getattr(body, "layer", layer) != layer:
                state.problems.append(LogProblem(name, number, f"entry for layer {body.layer} in {name}"))
            elif entry.kind == "reference":
                if state.reference is None:
                    state.reference_id, state.reference = entry.id, body
            elif entry.kind == "record":
                if body.reference_id != state.reference_id:
                    state.problems.append(LogProblem(name, number, "record measured against an unknown reference"))
                else:
                    state.records.setdefault(entry.id, RecordState(entry.id, body))
            else:
                decisions.append((number, body))
        for number, decision in decisions:
            record = state.records.get(decision.record_id)
            if record is None:
                state.problems.append(LogProblem(name, number, f"decision for unknown record {decision.record_id}"))
            elif record.status == "revoked":
                continue  # revocation is final
            elif decision.decision == "revoke":
                record.status, record.decided_at = "revoked", decision.decided_at
            elif not record.body.flags or decision.override_flags:
                record.status, record.decided_at = "approved", decision.decided_at
        late = [(e.body.record_id, e.body.decided_at) for _, e in chain.after
                if isinstance(e.body, DecisionBody) and e.body.decision == "revoke"]
        late += [(rid, None) for rid in (head.revoked if head else [])]
        for rid, decided_at in late:
            record = state.records.get(rid)
            if record is not None and record.status != "revoked":
                record.status, record.decided_at = "revoked", decided_at
        state.problems.sort(key=lambda p: (p.line is None, p.line or 0))
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
        """The store's exclusive lock, across processes and threads; re-entrant within a thread, so a
        whole read-check-append sequence can hold it around `append`. A pending store has nothing
        to lock: its first write is one atomic rename that fails if another process got there first."""
        if self.pending:
            yield
            return
        with _exclusive(self.directory / _LOCK):
            yield

    def append_chained(self, name: str, parse: Callable[[bytes], Any], makers: Sequence[LineMaker], *,
                       revoked: Sequence[str] = (), damaged: str | None = None,
                       allow_damaged: bool = False) -> list[str]:
        """Append entries to the log ``name`` as one write, each chained to the one before, and then
        replace its head; returns their HMACs. ``makers[i](seq, prev)`` signs entry i. A damaged log
        (``damaged``: what the caller found reading it under the lock) is refused unless
        ``allow_damaged``; entries then go after the head, so the damage stays visible."""
        if self.pending:
            return self._materialize({name: (makers, revoked)})[name]
        path = self.directory / name
        with self.locked():
            heads, heads_problem = self.load_heads()
            head = heads.logs.get(name) if heads else None
            size = path.stat().st_size if path.exists() else 0
            if heads is not None and size == (head.size if head else 0):
                # Nothing was written since the head: the head is the tip.
                seq, prev = (head.count, head.last) if head else (0, GENESIS)
            else:  # a crash after a write, a torn line, or damage: follow the chain
                chain = walk_chain(path, name, parse, head, heads_problem)
                seq, prev, damaged = chain.next_seq, chain.next_prev, damaged or chain.damaged
            if damaged and not allow_damaged:
                raise UserError(f"the log {path} is damaged ({damaged}); not appending to it",
                                hint="'baldr-ops memory verify' shows the damage; restore the store from a backup. "
                                     "Revocations are still recorded, and 'memory disable' still works")
            count, last, macs = _write_chain(path, makers, seq, prev)
            if heads is not None:  # without valid heads, none is written: the problem stays visible
                old = set(head.revoked) if head else set()
                heads.logs[name] = LogHead(count=count, last=last, size=path.stat().st_size,
                                           revoked=sorted(old | set(revoked)))
                self._write_heads(heads)
        return macs

    def _layer_makers(self, layer: int, entries, ids: list[str]) -> tuple[list[LineMaker], list[str]]:
        name = layer_file(layer)

        def maker(kind: Kind, body) -> LineMaker:
            def make(seq: int, prev: str) -> tuple[str, bytes]:
                entry_id, mac, line = make_entry(self.header.store_id, name, seq, prev, kind, body, self.key)
                ids.append(entry_id)
                return mac, line
            return make

        revokes = [b.record_id for k, b in entries if k == "decision" and b.decision == "revoke"]
        return [maker(k, b) for k, b in entries], revokes

    def append(self, layer: int, entries: Sequence[tuple[Kind, ReferenceBody | RecordBody | DecisionBody]], *,
               damaged: str | None = None) -> list[str]:
        """Sign and append entries to a layer's log in one write; returns their ids. Refused on a
        damaged log, except when every entry is a revocation."""
        return self.append_layers({layer: entries}, {layer: damaged})[layer]

    def append_layers(self, entries: dict[int, Sequence[tuple[Kind, ReferenceBody | RecordBody | DecisionBody]]],
                      damaged: dict[int, str | None] | None = None) -> dict[int, list[str]]:
        """`append` for several layers; a pending store writes them all with its first rename."""
        damaged = damaged or {}
        ids = {layer: [] for layer in entries}
        makers = {layer: self._layer_makers(layer, todo, ids[layer]) for layer, todo in entries.items()}
        if self.pending:
            self._materialize({layer_file(layer): m for layer, m in makers.items()})
            return ids
        with self.locked():
            for layer, (todo, revokes) in makers.items():
                name = layer_file(layer)
                self.append_chained(name, self._parse_layer_line(name), todo, revoked=revokes,
                                    damaged=damaged.get(layer), allow_damaged=len(revokes) == len(todo))
        return ids

    def decide(self, record_id: str, decision: Literal["approve", "revoke"], override_flags: bool = False,
               note: str | None = None) -> RecordState:
        with self.locked():  # the record's state is read and decided on under the same lock
            layer, record = self.find_record(record_id)
            if record.status == "revoked":
                raise UserError(f"record {record.id} was revoked on {record.decided_at}; revocation is final",
                                hint="add the text again for a new record")
            if decision == "approve" and record.body.flags and not override_flags:
                raise UserError(f"record {record.id} is flagged ({', '.join(record.body.flags)}); not approving it",
                                hint="inspect it with 'memory list', then approve with --override-flags if it is sound")
            self.append(layer, [("decision", DecisionBody(record_id=record.id, decision=decision, decided_at=now(),
                                                           override_flags=override_flags, note=note))],
                        damaged=self.read_layer(layer).damaged)
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
        atomic_write(flag, json.dumps({"disabled_at": now(), "note": note}) + "\n", mode=0o600, durable=True)
    elif flag.exists():
        flag.unlink()
        fsync_dir(directory)
