"""File access for every reader: a root prefix, and a recorder for `doctor --snapshot`.

Readers never open files themselves; they call :func:`read_text` with the root they were given and
a path relative to it ("proc/meminfo"). A missing or unreadable file is ``None`` (the reader turns
that into an explicit "not available" value), never an exception. While a :class:`Recorder` is
active, every file read is kept, so the bundle holds exactly what the verdicts were made from.

Captured (non-file) answers such as NVML replies, kernel-log lines and statvfs figures live under
``<root>/.baldr/`` in a snapshot or fixture tree; on the live root (``/``) readers ask the system.
"""

from __future__ import annotations

import os

CAPTURE_DIR = ".baldr"          # captured answers inside a snapshot/fixture root
SAMPLE2_DIR = ".baldr/sample2"  # the second sample of rate files (vmstat, pressure, memory.events)
MAX_READ = 4 * 1024 * 1024      # no /proc or /sys file we read is larger; a fixture could be
CHUNK = 4096

_recorders: list[Recorder] = []


class Recorder:
    """Collects {relative path: text} for everything read while it is active (``with Recorder():``)."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.captured: dict[str, str] = {}   # .baldr/<name> -> text (NVML JSON, kernel log, ...)
        self.prefix = ""                      # "" for the first sample, SAMPLE2_DIR for the second

    def __enter__(self) -> Recorder:
        _recorders.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _recorders.remove(self)


def is_live(root: str | os.PathLike) -> bool:
    return os.path.realpath(os.fspath(root)) == "/"


def join(root: str | os.PathLike, rel: str) -> str:
    return os.path.join(os.fspath(root), rel.lstrip("/"))


def _read_bytes(path: str) -> bytes | None:
    # Small reads: some /proc/sys handlers allocate the whole count with kmalloc and fail (ENOMEM)
    # on large ones, while a 4 KiB read always works.
    chunks, total = [], 0
    try:
        with open(path, "rb", buffering=0) as fh:
            while total < MAX_READ:
                chunk = fh.read(CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
    except (OSError, ValueError):
        return None
    return b"".join(chunks)


def read_text(root: str | os.PathLike, rel: str) -> str | None:
    """The text of ``root/rel``, or None when it is missing, unreadable, a directory or not text."""
    path = join(root, rel)
    data = _read_bytes(path)
    if data is None:
        return None
    text = data.decode("utf-8", "replace")
    for rec in _recorders:
        key = rel.lstrip("/")
        if rec.prefix:
            key = f"{rec.prefix}/{key}"
        rec.files.setdefault(key, text)
    return text


def capture(name: str, text: str) -> None:
    """Record a non-file answer (NVML JSON, kernel-log lines) under .baldr/<name> for the bundle."""
    for rec in _recorders:
        rec.captured.setdefault(f"{CAPTURE_DIR}/{name}", text)


def read_captured(root: str | os.PathLike, name: str) -> str | None:
    """A captured answer from a snapshot/fixture root (``<root>/.baldr/<name>``)."""
    data = _read_bytes(join(root, f"{CAPTURE_DIR}/{name}"))
    if data is None:
        return None
    text = data.decode("utf-8", "replace")
    capture(name, text)   # a snapshot of a snapshot keeps its captured answers
    return text


def listdir(root: str | os.PathLike, rel: str) -> list[str]:
    try:
        return sorted(os.listdir(join(root, rel)))
    except (OSError, ValueError):
        return []


def exists(root: str | os.PathLike, rel: str) -> bool:
    try:
        return os.path.exists(join(root, rel))
    except (OSError, ValueError):
        return False


def to_int(text: str | None) -> int | None:
    """An integer from a one-value file ("123\\n"), or None. "max" stays None: callers check it."""
    if text is None:
        return None
    try:
        return int(text.strip().split()[0]) if text.strip() else None
    except (ValueError, IndexError):
        return None


def key_values(text: str | None) -> dict[str, int]:
    """Lines of ``key value`` (vmstat, memory.events, memory.stat, oom_control) as ints; junk skipped."""
    out: dict[str, int] = {}
    if not text:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out
