"""Atomic publication of files and directories: write beside the target, then rename over it.

A reader sees the old content or the new, never a half-written file, and a crash leaves at most a
hidden temporary that the next writer does not collide with: every temporary name is unique per
process, thread and call, so two writers of the same target never share one (the race a fixed
``state.tmp`` had). Cheap to import (``os`` only): doctor's start-up path uses it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

_counter = 0
_counter_lock = threading.Lock()


def _temp_name(target: str) -> str:
    global _counter
    with _counter_lock:
        _counter += 1
        n = _counter
    directory, name = os.path.split(target)
    return os.path.join(directory, f".{name}.{os.getpid()}-{threading.get_ident()}-{n}.tmp")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, *, mode: int = 0o644, durable: bool = False,
                  text: bool = True) -> Iterator:
    """Yield a file open on a private temporary beside ``path``; on success it replaces ``path``.

    ``mode`` is set at creation (a 0600 secret is never world-readable, not even briefly);
    ``durable`` fsyncs the file and its directory so the new content survives a power loss."""
    target = os.path.abspath(os.fspath(path))
    tmp = _temp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not narrow what the caller asked for
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(target))


def atomic_write(path: str | os.PathLike, data: str | bytes, *, mode: int = 0o644, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` (text or bytes) atomically; see :func:`atomic_writer`."""
    with atomic_writer(path, mode=mode, durable=durable, text=isinstance(data, str)) as fh:
        fh.write(data)


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike, *, mode: int = 0o644) -> None:
    """Copy ``source`` to ``path`` so that ``path`` is either absent/old or complete."""
    import shutil  # not at module level: it pulls in compression modules doctor never needs

    with open(source, "rb") as src, atomic_writer(path, mode=mode, text=False) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, mode: int = 0o755, replace: bool = False,
                     durable: bool = False) -> Iterator[Path]:
    """Yield a private temporary directory beside ``path``; on success it is renamed to ``path``.

    ``replace`` removes an existing ``path`` first (the swap is then two steps: a reader may see it
    missing for a moment, never half-written). Without it an existing non-empty ``path`` makes the
    rename fail with OSError and the temporary is removed. On any error nothing is left behind."""
    import shutil

    target = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = _temp_name(target)
    os.mkdir(tmp, 0o700)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        if replace and os.path.lexists(target):
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                os.unlink(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if durable:
        fsync_dir(os.path.dirname(target))
