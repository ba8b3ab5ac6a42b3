"""Reading one memory sample from the system readers (meminfo, PSI, buddyinfo, the kernel log).

Every reader takes a root, so a recorded trajectory (a directory of step roots, see
:func:`replay`) gives the guard exactly the samples the live machine gave. A signal that cannot be
read is None in the sample (UNKNOWN), never zero.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from baldr_ops.memguard.policy import Sample
from baldr_ops.system.buddyinfo import read_buddyinfo
from baldr_ops.system.kernel import KernelFollower
from baldr_ops.system.meminfo import read_meminfo
from baldr_ops.system.psi import read_psi

TWO_MIB = 2 << 20
TRAJECTORY_FILE = "trajectory.json"


def read_sample(root: str, t: float, kernel: KernelFollower, page_size: int) -> Sample:
    mem = read_meminfo(root)
    psi = read_psi(root)
    buddy = read_buddyinfo(root)
    cached, shmem = mem.get("Cached"), mem.get("Shmem")
    return Sample(
        t=t,
        mem_total=mem.total if mem.available else None,
        mem_free=mem.free if mem.available else None,
        mem_available=mem.mem_available if mem.available else None,
        reclaimable_cache=max(0, cached - (shmem or 0)) if mem.available and cached is not None else None,
        psi_full_avg10=psi.full.avg10 if psi.available and psi.full is not None else None,
        psi_some_avg10=psi.some.avg10 if psi.available and psi.some is not None else None,
        free_2m_bytes=buddy.free_bytes_at_least(TWO_MIB, page_size, zone=None) if buddy.available else None,
        kernel_lines=tuple(kernel.new_lines(root)),
        kernel_log_readable=kernel.readable,
    )


class Sampler:
    """Live sampling of this machine (or of one fixture root)."""

    def __init__(self, root: str = "/", clock=time.monotonic, page_size: int | None = None):
        self.root = root
        self.clock = clock
        self.page_size = page_size or os.sysconf("SC_PAGE_SIZE")
        self.kernel = KernelFollower(root)

    def read(self) -> Sample:
        return read_sample(self.root, self.clock(), self.kernel, self.page_size)

    def close(self) -> None:
        self.kernel.close()


def replay(directory: str | os.PathLike) -> Iterator[tuple[Sample, str]]:
    """A recorded trajectory: ``trajectory.json`` ({"steps": [{"t": seconds, "phase": ...}, ...],
    "page_size": ...}) beside one step root per sample (``step-000``, ...). Yields (sample, phase)."""
    directory = Path(directory)
    meta = json.loads((directory / TRAJECTORY_FILE).read_text())
    page_size = int(meta.get("page_size", 4096))
    for i, step in enumerate(meta["steps"]):
        root = str(directory / f"step-{i:03d}")
        yield read_sample(root, float(step["t"]), KernelFollower(root), page_size), step["phase"]
