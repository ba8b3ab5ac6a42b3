"""The memory guard's reclaim actions. Each says what it did, or why it could not (never raises).

* ``fadvise``: ``posix_fadvise(POSIX_FADV_DONTNEED)`` on the model's weight files drops their
  clean pages from the page cache. Targeted (other programs' cache stays), needs no root.
* ``drop_caches``: ``1`` to ``/proc/sys/vm/drop_caches`` drops all clean page cache. Needs root.
* ``compact``: ``1`` to ``/proc/sys/vm/compact_memory`` compacts free memory into large blocks,
  the ones the GB10 driver's internal allocations need. Needs root.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

DROP_CACHES = "proc/sys/vm/drop_caches"
COMPACT_MEMORY = "proc/sys/vm/compact_memory"


@dataclass(frozen=True)
class ActionResult:
    action: str
    ok: bool
    detail: str
    seconds: float


def fadvise_dontneed(files: Iterable[str | os.PathLike]) -> ActionResult:
    started = time.monotonic()
    done, errors = 0, []
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror}")
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            done += 1
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror}")
        finally:
            os.close(fd)
    detail = f"{done} weight file(s) dropped from the page cache" + (f"; {'; '.join(errors[:3])}" if errors else "")
    return ActionResult("fadvise", done > 0, detail, time.monotonic() - started)


def _write_vm(root: str, rel: str, action: str, what: str) -> ActionResult:
    started = time.monotonic()
    try:
        with open(os.path.join(root, rel), "w") as fh:
            fh.write("1\n")
    except OSError as exc:
        return ActionResult(action, False, f"cannot write /{rel}: {exc.strerror} (needs root)", time.monotonic() - started)
    return ActionResult(action, True, what, time.monotonic() - started)


def drop_caches(root: str = "/") -> ActionResult:
    return _write_vm(root, DROP_CACHES, "drop_caches", "clean page cache dropped (vm.drop_caches=1)")


def compact_memory(root: str = "/") -> ActionResult:
    return _write_vm(root, COMPACT_MEMORY, "compact", "free memory compacted (vm.compact_memory=1)")


def may_write_vm(root: str = "/") -> bool:
    """Whether drop_caches / compact_memory can be written here (root, or a writable fixture)."""
    return os.access(os.path.join(root, DROP_CACHES), os.W_OK)
