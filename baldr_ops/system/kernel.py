"""Kernel log: OOM kills, NVIDIA RM allocation failures (NV_ERR_NO_MEMORY), Xid errors, oomd kills.

Live, the log comes from /dev/kmsg (non-blocking), else ``dmesg``, else ``journalctl -k -b``. Only
lines matching the memory/GPU patterns below are kept (message formats from mm/oom_kill.c, NVIDIA RM,
systemd-oomd, earlyoom). On a snapshot or fixture root the captured ``.baldr/kernel.log`` is read.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

from baldr_ops.system._io import capture, is_live, read_captured, read_text

OOM_PATTERNS = ("invoked oom-killer", "Out of memory: Killed process", "Memory cgroup out of memory",
                "oom-kill:constraint=", "killed by the OOM killer", "result 'oom-kill'", "oom_reaper:")
NVRM_OOM_PATTERNS = ("NV_ERR_NO_MEMORY", "_memdescAllocInternal")
USERSPACE_KILL_PATTERNS = ("systemd-oomd", "earlyoom")
XID_RE = re.compile(r"NVRM: Xid \(([^)]*)\): (\d+)")
_TS_RE = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\]\s?(.*)$")


def relevant(message: str) -> bool:
    if any(p in message for p in OOM_PATTERNS) or any(p in message for p in NVRM_OOM_PATTERNS):
        return True
    if "NVRM: Xid" in message:
        return True
    return any(p in message for p in USERSPACE_KILL_PATTERNS) and ("Killed" in message or "SIG" in message)


@dataclass
class KernelLine:
    """One kernel-log line and its time since boot."""

    ts: float | None      # seconds since boot, when known
    text: str

    def render(self) -> str:
        return f"[{self.ts:12.6f}] {self.text}" if self.ts is not None else self.text


@dataclass
class KernelLog:
    """The memory/GPU-relevant kernel-log lines of the current boot; ``available`` False with ``error``."""

    available: bool = False
    source: str = "none"
    lines: list[KernelLine] = field(default_factory=list)
    scanned: int = 0
    error: str | None = None

    def oom_lines(self) -> list[KernelLine]:
        return [ln for ln in self.lines if any(p in ln.text for p in OOM_PATTERNS)]

    def nvrm_oom_lines(self) -> list[KernelLine]:
        return [ln for ln in self.lines if any(p in ln.text for p in NVRM_OOM_PATTERNS)]

    def userspace_kill_lines(self) -> list[KernelLine]:
        return [ln for ln in self.lines if any(p in ln.text for p in USERSPACE_KILL_PATTERNS)]

    def xids(self) -> list[tuple[int, KernelLine]]:
        out = []
        for ln in self.lines:
            m = XID_RE.search(ln.text)
            if m:
                out.append((int(m.group(2)), ln))
        return out


def parse_dmesg(text: str | None) -> tuple[list[KernelLine], int]:
    """dmesg-format text ("[  12.345] msg") -> the relevant lines and how many lines were scanned."""
    lines: list[KernelLine] = []
    if not text:
        return lines, 0
    scanned = 0
    for raw in text.splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        scanned += 1
        m = _TS_RE.match(raw)
        ts, msg = (float(m.group(1)), m.group(2)) if m else (None, raw)
        if relevant(msg):
            lines.append(KernelLine(ts, msg[:2000]))
    return lines, scanned


def parse_kmsg_record(record: str) -> KernelLine | None:
    """One /dev/kmsg record: "prio,seq,usec,flags;message" (continuation lines dropped)."""
    head, sep, msg = record.partition(";")
    if not sep:
        return None
    parts = head.split(",")
    try:
        ts = int(parts[2]) / 1e6
    except (IndexError, ValueError):
        ts = None
    return KernelLine(ts, msg.split("\n", 1)[0])


def _read_kmsg(limit: int = 200_000) -> tuple[list[KernelLine], int]:
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    lines, scanned = [], 0
    try:
        while scanned < limit:
            try:
                data = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:      # EPIPE: a record was overwritten while reading; go on
                if exc.errno == 32:
                    continue
                raise
            if not data:
                break
            scanned += 1
            line = parse_kmsg_record(data.decode("utf-8", "replace"))
            if line and relevant(line.text):
                lines.append(line)
    finally:
        os.close(fd)
    return lines, scanned


def _run(cmd: list[str]) -> str | None:
    import subprocess

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, errors="replace")
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 and proc.stdout.strip() else None


def read_kernel_log(root: str = "/") -> KernelLog:
    if not is_live(root):
        text = read_captured(root, "kernel.log")
        if text is None:
            return KernelLog(error="no captured kernel log (.baldr/kernel.log) in this snapshot")
        source = "captured"
        for raw in text.splitlines()[:1]:
            if raw.startswith("# source="):
                source = raw.split()[1].split("=", 1)[1]   # as it was read on the original machine
        lines, scanned = parse_dmesg(text)
        return KernelLog(available=True, source=source, lines=lines, scanned=scanned)
    errors = []
    log = None
    try:
        lines, scanned = _read_kmsg()
        if scanned:
            log = KernelLog(available=True, source="kmsg", lines=lines, scanned=scanned)
        else:
            errors.append("/dev/kmsg: empty")
    except OSError as exc:
        errors.append(f"/dev/kmsg: {exc.strerror or exc}")
    if log is None:
        text = _run(["dmesg"])
        if text is not None:
            lines, scanned = parse_dmesg(text)
            log = KernelLog(available=True, source="dmesg", lines=lines, scanned=scanned)
        else:
            errors.append("dmesg: failed (kernel.dmesg_restrict=1 needs root)")
    if log is None:
        text = _run(["journalctl", "-k", "-b", "--no-pager", "-q", "-o", "short-monotonic"])
        if text is not None:
            lines, scanned = parse_dmesg(text)
            log = KernelLog(available=True, source="journalctl", lines=lines, scanned=scanned)
        else:
            errors.append("journalctl -k: no journal")
    if log is None:
        return KernelLog(error="; ".join(errors))
    capture("kernel.log", f"# source={log.source} scanned={log.scanned}\n"
            + "".join(ln.render() + "\n" for ln in log.lines))
    return log


def boot_time(root: str = "/") -> float | None:
    """Wall-clock time of boot (epoch seconds), from /proc/uptime."""
    text = read_text(root, "proc/uptime")
    try:
        return time.time() - float(text.split()[0]) if text else None
    except (ValueError, IndexError):
        return None


def memory_kill_evidence(since: float | None = None, root: str = "/") -> dict:
    """For launch post-mortems: {"oom_kills": vmstat oom_kill (0 if unreadable), "lines": [...]}.

    ``since`` is a wall-clock time (time.time()); only kernel-log lines after it are returned.
    """
    from baldr_ops.system.vmstat import read_vmstat

    counters = read_vmstat(root) or {}
    log = read_kernel_log(root)
    lines = log.lines
    if since is not None:
        boot = boot_time(root)
        if boot is not None:
            lines = [ln for ln in lines if ln.ts is None or boot + ln.ts >= since - 1.0]
    return {"oom_kills": int(counters.get("oom_kill", 0)), "lines": [ln.render() for ln in lines],
            "source": log.source}


class KernelFollower:
    """New relevant kernel-log lines since the last call, for a sampler that runs for hours.

    Live: /dev/kmsg opened once, positioned at its end (only what happens from now on), read
    without blocking. On a fixture step root: that step's ``.baldr/kernel.log`` holds the lines
    that appeared since the step before. ``readable`` is False when the log cannot be followed
    (kernel.dmesg_restrict without root): the guard then reports the signal UNKNOWN."""

    def __init__(self, root: str = "/"):
        self.live = is_live(root)
        self.fd: int | None = None
        self.error: str | None = None
        if self.live:
            try:
                self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
                os.lseek(self.fd, 0, os.SEEK_END)
            except OSError as exc:
                self.error = f"/dev/kmsg: {exc.strerror or exc}"
                self.fd = None

    @property
    def readable(self) -> bool:
        return not self.live or self.fd is not None

    def new_lines(self, root: str = "/") -> list[str]:
        if not self.live:
            lines, _ = parse_dmesg(read_captured(root, "kernel.log"))
            return [ln.text for ln in lines]
        if self.fd is None:
            return []
        out = []
        for _ in range(10_000):   # bounded: a log storm must not stall the sampler
            try:
                data = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:   # EPIPE: records were overwritten since the last read; go on
                if exc.errno == 32:
                    continue
                break
            if not data:
                break
            line = parse_kmsg_record(data.decode("utf-8", "replace"))
            if line and relevant(line.text):
                out.append(line.text)
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
