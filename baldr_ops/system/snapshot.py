"""One snapshot of everything doctor judges, with a second sample for rates, and bundles for replay.

``take_snapshot(root, interval)`` reads every signal once, and again after ``interval`` seconds for
the counters that need a rate (vmstat, PSI totals, cgroup memory.events). ``interval=0`` gives a
single sample: rates are then "not available", never zero.

A bundle (``doctor --snapshot FILE.tar.gz``) holds exactly the files read (same relative paths),
the second sample under ``.baldr/sample2/``, and the captured answers (NVML, kernel log, statvfs,
platform) under ``.baldr/``. Extracted, it is a root: ``take_snapshot(<dir>)`` replays it, so the
verdicts are the same.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from baldr_ops.system import _io
from baldr_ops.system.buddyinfo import BuddyInfo, read_buddyinfo
from baldr_ops.system.cgroup import CgroupInfo, read_cgroup
from baldr_ops.system.kernel import KernelLog, read_kernel_log
from baldr_ops.system.meminfo import MemInfo, read_meminfo
from baldr_ops.system.mounts import TmpfsUsage, read_mounts, read_tmpfs
from baldr_ops.system.nvml import NvmlInfo, read_nvml
from baldr_ops.system.platform import PlatformInfo, read_platform
from baldr_ops.system.psi import Psi, read_psi
from baldr_ops.system.sysctl import read_sysctl_vm, read_thp
from baldr_ops.system.vmstat import read_vmstat
from baldr_ops.system.zram import CompressedSwap, read_compressed_swap

BUNDLE_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class Rates:
    """Per-second deltas between the two samples. ``None`` fields: not available."""

    interval_s: float
    vmstat: dict[str, float] = field(default_factory=dict)        # counter -> per second
    psi_some_stall_pct: float | None = None                       # Δtotal / Δt, in percent
    psi_full_stall_pct: float | None = None
    cgroup_events: dict[str, int] = field(default_factory=dict)   # memory.events deltas


@dataclass
class Snapshot:
    """Everything doctor judges, read once (``rates`` from a second sample)."""

    root: str
    time: float
    meminfo: MemInfo
    psi: Psi
    vmstat: dict[str, int] | None
    cgroup: CgroupInfo
    buddyinfo: BuddyInfo
    sysctl_vm: dict[str, int]
    thp: dict[str, str]
    compressed_swap: CompressedSwap
    tmpfs: list[TmpfsUsage] | None
    kernel_log: KernelLog
    nvml: NvmlInfo
    platform: PlatformInfo
    rates: Rates | None = None      # None: single sample (interval 0)
    meta: dict = field(default_factory=dict)


def _rates(interval: float, v1: dict | None, v2: dict | None, p1: Psi, p2: Psi,
           e1: dict[str, int], e2: dict[str, int]) -> Rates:
    r = Rates(interval_s=interval)
    if v1 and v2 and interval > 0:
        r.vmstat = {k: max(0, v2[k] - v1[k]) / interval for k in v2 if k in v1}
    if p1.available and p2.available and interval > 0:
        if p1.some and p2.some:
            r.psi_some_stall_pct = max(0, p2.some.total_us - p1.some.total_us) / (interval * 1e4)
        if p1.full and p2.full:
            r.psi_full_stall_pct = max(0, p2.full.total_us - p1.full.total_us) / (interval * 1e4)
    if e1 and e2:
        r.cgroup_events = {k: max(0, e2[k] - e1[k]) for k in e2 if k in e1}
    return r


def _events(root: str, cgroup: CgroupInfo) -> dict[str, int]:
    if cgroup.memory is None or cgroup.memory.version != 2:
        return {}
    return _io.key_values(_io.read_text(root, f"{cgroup.memory.fs_path}/memory.events"))


def take_snapshot(root: str = "/", interval: float = 1.0, cgroup: str | None = None,
                  recorder: _io.Recorder | None = None) -> Snapshot:
    """Read everything under ``root``. On the live root, sleep ``interval`` s for the second sample;
    on a snapshot root, use the bundle's own second sample (if it has one)."""
    root = os.fspath(root)
    live = _io.is_live(root)
    meta: dict = {}
    if not live:
        try:
            meta = json.loads(_io.read_captured(root, "meta.json") or "{}")
        except ValueError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        if cgroup is None and isinstance(meta.get("cgroup"), str):
            cgroup = meta["cgroup"]
    started = time.monotonic()
    psi = read_psi(root)
    vmstat = read_vmstat(root)
    cg = read_cgroup(root, cgroup)
    events1 = _events(root, cg)
    mounts = read_mounts(root)
    snap = Snapshot(
        root=root, time=time.time() if live else float(meta.get("time") or 0.0) or time.time(),
        meminfo=read_meminfo(root), psi=psi, vmstat=vmstat, cgroup=cg, buddyinfo=read_buddyinfo(root),
        sysctl_vm=read_sysctl_vm(root), thp=read_thp(root), compressed_swap=read_compressed_swap(root),
        tmpfs=read_tmpfs(root, mounts), kernel_log=read_kernel_log(root), nvml=read_nvml(root),
        platform=read_platform(root), meta=meta)
    if live and interval > 0:
        remaining = interval - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
        elapsed = time.monotonic() - started
        if recorder is not None:
            recorder.prefix = _io.SAMPLE2_DIR
        try:
            snap.rates = _rates(elapsed, vmstat, read_vmstat(root), psi, read_psi(root),
                                events1, _events(root, cg))
        finally:
            if recorder is not None:
                recorder.prefix = ""
    elif not live and _io.exists(root, _io.SAMPLE2_DIR):
        root2 = _io.join(root, _io.SAMPLE2_DIR)
        try:
            elapsed = float(meta.get("interval_s") or 0)
        except (TypeError, ValueError):
            elapsed = 0.0
        if elapsed > 0:
            if recorder is not None:
                recorder.prefix = _io.SAMPLE2_DIR
            try:
                snap.rates = _rates(elapsed, vmstat, read_vmstat(root2), psi, read_psi(root2),
                                    events1, _events(root2, cg))
            finally:
                if recorder is not None:
                    recorder.prefix = ""
    return snap


def write_bundle(path: str, recorder: _io.Recorder, snap: Snapshot, extra: dict[str, str] | None = None) -> str:
    """Write the files ``recorder`` saw while taking ``snap`` as a .tar.gz, atomically."""
    import io
    import tarfile

    from baldr_ops.atomic import atomic_writer

    meta = {"tool": "baldr-ops", "time": snap.time, "cgroup": snap.cgroup.memory.path if snap.cgroup.memory else None,
            "interval_s": snap.rates.interval_s if snap.rates else 0, "format": 1}
    files = {**recorder.files, **recorder.captured, f"{_io.CAPTURE_DIR}/meta.json": json.dumps(meta, indent=1)}
    for name, text in (extra or {}).items():
        files[f"{_io.CAPTURE_DIR}/{name}"] = text
    target = os.path.abspath(path)
    with atomic_writer(target, text=False) as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name in sorted(files):
            data = files[name].encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(snap.time), 0o644
            tar.addfile(info, io.BytesIO(data))
    return target


def extract_bundle(path: str, into: str) -> str:
    """Extract a snapshot bundle into directory ``into`` and return it (the replay root).

    Raises ValueError with a reason for anything that is not a baldr-ops bundle.
    """
    import tarfile

    try:
        tar = tarfile.open(path, mode="r:*")
    except (OSError, tarfile.TarError, EOFError) as exc:
        why = "not a tar archive" if isinstance(exc, tarfile.ReadError) else str(exc).splitlines()[0]
        raise ValueError(f"{path} is not a readable .tar.gz bundle ({why})") from None
    total = 0
    with tar:
        try:
            members = tar.getmembers()
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise ValueError(f"{path} is truncated or corrupt ({exc})") from None
        for m in members:
            name = m.name
            if not m.isfile():
                continue
            if name.startswith("/") or ".." in name.split("/"):
                raise ValueError(f"{path} has an unsafe member name {name!r}")
            total += m.size
            if total > BUNDLE_MAX_BYTES:
                raise ValueError(f"{path} is larger than {BUNDLE_MAX_BYTES >> 20} MiB unpacked")
            dest = os.path.join(into, name)
            try:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise ValueError(f"{path} has a file where {name!r} needs a directory") from None
            try:
                src = tar.extractfile(m)
                data = src.read() if src else b""
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise ValueError(f"{path} is truncated or corrupt ({exc})") from None
            try:
                with open(dest, "wb") as fh:
                    fh.write(data)
            except IsADirectoryError:
                raise ValueError(f"{path} has {name!r} both as a file and as a directory") from None
    if not os.path.exists(os.path.join(into, _io.CAPTURE_DIR, "meta.json")):
        raise ValueError(f"{path} is not a baldr-ops snapshot (no {_io.CAPTURE_DIR}/meta.json)")
    return into
