"""The memory cgroup of a process (or a named cgroup): v2 unified, v1 legacy, or hybrid.

Kernel `admin-guide/cgroup-v2.rst` (memory.current/max/high/events) and the v1 fallbacks
(memory.usage_in_bytes/limit_in_bytes/oom_control). The mode comes from /proc/self/mountinfo:
cgroup2 on /sys/fs/cgroup is unified; v1 controllers on a tmpfs there is legacy, or hybrid when a
cgroup2 hierarchy is also mounted (usually /sys/fs/cgroup/unified).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from baldr_ops.system._io import key_values, read_text
from baldr_ops.system.mounts import Mount, read_mounts

V1_UNLIMITED = 1 << 62   # v1 reports "no limit" as a huge page-aligned number (9223372036854771712)


@dataclass
class CgroupMemory:
    """Memory figures of one cgroup. Limits are None when unlimited ("max") or unreadable."""

    version: int                          # 2 or 1
    path: str                             # the cgroup path ("/system.slice/max.service")
    fs_path: str                          # relative to root, where the files were read
    current: int | None = None
    peak: int | None = None
    max: int | None = None                # tightest memory.max over the path (v2) / limit_in_bytes (v1)
    max_at: str | None = None             # the cgroup that sets it
    high: int | None = None
    swap_current: int | None = None
    swap_max: int | None = None
    events: dict[str, int] = field(default_factory=dict)        # v2 memory.events
    oom_control: dict[str, int] = field(default_factory=dict)   # v1 memory.oom_control
    failcnt: int | None = None            # v1
    stat: dict[str, int] = field(default_factory=dict)


@dataclass
class CgroupInfo:
    """The cgroup hierarchy mode and the memory cgroup judged (``memory`` None with ``error``)."""

    mode: str                             # unified | hybrid | legacy | none | unknown
    controllers_v2: list[str] = field(default_factory=list)
    memory_v2: bool = False               # memory controller on the v2 hierarchy
    memory: CgroupMemory | None = None
    error: str | None = None
    evidence: dict[str, str] = field(default_factory=dict)


def _limit(text: str | None) -> int | None:
    if text is None:
        return None
    value = text.strip()
    if value == "max" or not value:
        return None
    try:
        n = int(value.split()[0])
    except ValueError:
        return None
    return None if n >= V1_UNLIMITED or n < 0 else n


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text and text.strip() else None
    except ValueError:
        return None


def parse_proc_cgroup(text: str | None) -> dict[str, str]:
    """/proc/<pid>/cgroup -> {"": v2 path, "memory": v1 memory path, ...}."""
    out: dict[str, str] = {}
    if not text:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not path.startswith("/"):
            continue
        if controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def detect_mode(mounts: list[Mount] | None) -> tuple[str, str | None, str | None]:
    """(mode, v2 mount point, v1 memory mount point) from the mount table."""
    if mounts is None:
        return "unknown", None, None
    v2 = v1_memory = None
    top = None
    v1_any = False
    for m in mounts:
        if m.mount_point == "/sys/fs/cgroup":
            top = m.fstype
        if m.fstype == "cgroup2" and v2 is None:
            v2 = m.mount_point
        if m.fstype == "cgroup":
            v1_any = True
            if "memory" in m.options.split(",") or m.mount_point.endswith("/memory"):
                v1_memory = v1_memory or m.mount_point
    if top == "cgroup2":
        return "unified", "/sys/fs/cgroup", None
    if v1_any and v2:
        return "hybrid", v2, v1_memory
    if v1_any:
        return "legacy", None, v1_memory
    if v2:
        return "unified", v2, None
    return "none", None, None


def _read_v2(root: str, mount: str, path: str) -> CgroupMemory:
    rel_mount = mount.lstrip("/")
    fs_path = f"{rel_mount}{path}".rstrip("/") if path != "/" else rel_mount
    mem = CgroupMemory(version=2, path=path, fs_path=fs_path)
    mem.current = _int(read_text(root, f"{fs_path}/memory.current"))
    mem.peak = _int(read_text(root, f"{fs_path}/memory.peak"))
    mem.high = _limit(read_text(root, f"{fs_path}/memory.high"))
    mem.swap_current = _int(read_text(root, f"{fs_path}/memory.swap.current"))
    mem.swap_max = _limit(read_text(root, f"{fs_path}/memory.swap.max"))
    mem.events = key_values(read_text(root, f"{fs_path}/memory.events"))
    stat = key_values(read_text(root, f"{fs_path}/memory.stat"))
    mem.stat = {k: stat[k] for k in ("anon", "file", "shmem", "file_mapped", "file_dirty", "pgscan",
                                     "pgsteal", "pgmajfault") if k in stat}
    # the effective hard limit is the tightest memory.max on the way up to the root
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), 0, -1):
        cg = "/" + "/".join(parts[:depth])
        limit = _limit(read_text(root, f"{rel_mount}{cg}/memory.max"))
        if limit is not None and (mem.max is None or limit < mem.max):
            mem.max, mem.max_at = limit, cg
    return mem


def _read_v1(root: str, mount: str, path: str) -> CgroupMemory:
    rel_mount = mount.lstrip("/")
    fs_path = f"{rel_mount}{path}".rstrip("/") if path != "/" else rel_mount
    mem = CgroupMemory(version=1, path=path, fs_path=fs_path)
    mem.current = _int(read_text(root, f"{fs_path}/memory.usage_in_bytes"))
    mem.peak = _int(read_text(root, f"{fs_path}/memory.max_usage_in_bytes"))
    mem.max = _limit(read_text(root, f"{fs_path}/memory.limit_in_bytes"))
    mem.max_at = path if mem.max is not None else None
    mem.high = _limit(read_text(root, f"{fs_path}/memory.soft_limit_in_bytes"))
    mem.failcnt = _int(read_text(root, f"{fs_path}/memory.failcnt"))
    mem.oom_control = key_values(read_text(root, f"{fs_path}/memory.oom_control"))
    stat = key_values(read_text(root, f"{fs_path}/memory.stat"))
    mem.stat = {k: stat[k] for k in ("cache", "rss", "shmem", "swap", "mapped_file", "total_cache", "total_rss")
                if k in stat}
    return mem


def read_cgroup(root: str = "/", cgroup: str | None = None) -> CgroupInfo:
    """The memory cgroup of this process, or of ``cgroup`` (a path inside the hierarchy)."""
    mounts = read_mounts(root)
    mode, v2_mount, v1_memory = detect_mode(mounts)
    info = CgroupInfo(mode=mode)
    if mounts is None:
        info.error = "proc/self/mountinfo is not readable"
        return info
    if v2_mount:
        ctl = read_text(root, f"{v2_mount.lstrip('/')}/cgroup.controllers")
        info.controllers_v2 = ctl.split() if ctl else []
        info.memory_v2 = "memory" in info.controllers_v2
    own = parse_proc_cgroup(read_text(root, "proc/self/cgroup"))
    info.evidence = {"v2_mount": v2_mount or "-", "v1_memory_mount": v1_memory or "-",
                     "controllers_v2": " ".join(info.controllers_v2) or "-"}
    if cgroup is not None and not cgroup.startswith("/"):
        cgroup = "/" + cgroup
    if info.memory_v2 and v2_mount:
        path = cgroup or own.get("")
        if path is None:
            info.error = "proc/self/cgroup has no v2 entry"
            return info
        mem = _read_v2(root, v2_mount, path)
        if mem.current is None and cgroup is None and path != "/":
            # a cgroup namespace or a container: our path may not exist under this mount
            info.evidence["unreachable_path"] = path
        info.memory = mem
    elif v1_memory:
        path = cgroup or own.get("memory")
        if path is None:
            info.error = "proc/self/cgroup has no v1 memory entry"
            return info
        info.memory = _read_v1(root, v1_memory, path)
    else:
        info.error = "no memory controller mounted (neither cgroup v2 'memory' nor a v1 memory hierarchy)"
    return info
