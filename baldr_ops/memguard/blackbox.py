"""The black box: the last minutes of memory samples and every guard decision, kept where a reboot
cannot erase them, so a wedged host can still tell what happened.

Written by one owner (the supervisor's main loop, or the `guard` command): JSON lines appended to
two segment files in turn (each holds up to ``SEGMENT_S`` seconds, so the pair always covers the
last 10 minutes), fsynced about once a second. A run opens with a ``start`` record (pid, boot id)
and, when it ends normally, closes with an ``end`` record: a box without its end, whose writer is
gone (another boot, or a dead pid), is an unclean run that `doctor` reports.

Cheap to import (stdlib only): doctor reads boxes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

SEGMENT_S = 600.0            # seconds per segment; two segments keep at least the last 10 minutes
SYNC_EVERY_S = 1.0
SEGMENTS = ("blackbox-0.jsonl", "blackbox-1.jsonl")
BOOT_ID = "proc/sys/kernel/random/boot_id"


def boot_id(root: str = "/") -> str | None:
    try:
        return Path(root, BOOT_ID).read_text().strip() or None
    except OSError:
        return None


class BlackBox:
    """Append-only writer. Not thread-safe by design: one owner writes."""

    def __init__(self, directory: str | os.PathLike, clock=time.time, segment_s: float = SEGMENT_S):
        self.directory = Path(directory)
        self.clock = clock
        self.segment_s = segment_s
        self._fh = None
        self._segment = -1
        self._segment_started = 0.0
        self._last_sync = 0.0

    def _open_next(self, now: float) -> None:
        if self._fh is not None:
            self._sync()
            self._fh.close()
        self._segment = (self._segment + 1) % len(SEGMENTS)
        fd = os.open(self.directory / SEGMENTS[self._segment], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._fh = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        self._segment_started = now

    def _sync(self) -> None:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError:
            pass
        self._last_sync = self.clock()

    def start(self, **info) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = self.clock()
        # A new run starts on a fresh pair: the previous run's records must not read as this one's.
        for name in SEGMENTS:
            (self.directory / name).unlink(missing_ok=True)
        self._segment = -1
        self._open_next(now)
        self.record("start", pid=os.getpid(), boot_id=boot_id(), **info)
        self._sync()

    def record(self, kind: str, **payload) -> None:
        if self._fh is None:
            return
        now = self.clock()
        if now - self._segment_started >= self.segment_s:
            self._open_next(now)
        self._fh.write(json.dumps({"t": round(now, 3), "kind": kind, **payload}, separators=(",", ":"),
                                  default=str) + "\n")
        if now - self._last_sync >= SYNC_EVERY_S:
            self._sync()

    def flush(self) -> None:
        if self._fh is not None:
            self._sync()

    def end(self, **info) -> None:
        """The clean-end marker; only a run that ends on purpose writes it."""
        self.record("end", clean=True, **info)
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._sync()
            self._fh.close()
            self._fh = None


@dataclass
class BoxReading:
    """What a black box says, for doctor and post-mortems."""

    directory: str
    records: list[dict] = field(default_factory=list)   # the box's run, oldest first
    started: dict | None = None
    ended: dict | None = None
    writer_alive: bool = False
    error: str | None = None

    @property
    def clean(self) -> bool:
        return self.ended is not None

    @property
    def unclean(self) -> bool:
        """Ended without its marker and nobody is writing it any more."""
        return self.started is not None and self.ended is None and not self.writer_alive

    def last_seconds(self, seconds: float = 60.0) -> list[dict]:
        if not self.records:
            return []
        last = self.records[-1]["t"]
        return [r for r in self.records if r["t"] >= last - seconds]

    def summary(self, seconds: float = 60.0) -> dict:
        """The last minute in figures: MemAvailable/MemFree minimum, PSI full maximum, decisions."""
        window = self.last_seconds(seconds)
        samples = [r for r in window if r["kind"] == "sample"]

        def extreme(key, fn):
            values = [r[key] for r in samples if r.get(key) is not None]
            return fn(values) if values else None

        return {"records": len(window), "samples": len(samples),
                "from": window[0]["t"] if window else None, "to": window[-1]["t"] if window else None,
                "min_mem_available": extreme("mem_available", min), "min_mem_free": extreme("mem_free", min),
                "max_psi_full_avg10": extreme("psi_full_avg10", max),
                "decisions": [r.get("reason") or ",".join(r.get("actions", [])) for r in window
                              if r["kind"] in ("decision", "action")][-10:],
                "kernel_lines": [line for r in samples for line in r.get("kernel_lines", [])][-10:]}


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_box(directory: str | os.PathLike, root: str = "/") -> BoxReading:
    """Read a box; torn last lines (a crash mid-write) are skipped. ``root`` gives the boot id to
    compare with (a fixture's, in tests)."""
    directory = Path(directory)
    reading = BoxReading(directory=str(directory))
    records = []
    for name in SEGMENTS:
        try:
            text = (directory / name).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("t"), (int, float)) and isinstance(rec.get("kind"), str):
                records.append(rec)
    if not records:
        reading.error = f"no black box records in {directory}"
        return reading
    records.sort(key=lambda r: r["t"])
    starts = [i for i, r in enumerate(records) if r["kind"] == "start"]
    records = records[starts[-1]:] if starts else records
    reading.records = records
    reading.started = records[0] if records[0]["kind"] == "start" else None
    reading.ended = next((r for r in reversed(records) if r["kind"] == "end"), None)
    if reading.started is not None and reading.ended is None:
        same_boot = reading.started.get("boot_id") is not None and reading.started.get("boot_id") == boot_id(root)
        reading.writer_alive = same_boot and _pid_alive(reading.started.get("pid"))
    return reading


def find_boxes(base: str | os.PathLike) -> list[Path]:
    """Directories under ``base`` (one level, or ``base`` itself) that hold a black box."""
    base = Path(base)
    candidates = [base, *(sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else [])]
    return [d for d in candidates if any((d / name).is_file() for name in SEGMENTS)]
