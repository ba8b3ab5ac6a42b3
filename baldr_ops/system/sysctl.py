"""/proc/sys/vm settings and transparent hugepages (kernel `admin-guide/sysctl/vm.rst`)."""

from __future__ import annotations

from baldr_ops.system._io import read_text, to_int

VM_KEYS = ("overcommit_memory", "overcommit_ratio", "overcommit_kbytes", "swappiness", "min_free_kbytes",
           "watermark_scale_factor", "panic_on_oom", "oom_kill_allocating_task", "zone_reclaim_mode",
           "vfs_cache_pressure", "nr_hugepages", "compaction_proactiveness", "extfrag_threshold")


def read_sysctl_vm(root: str = "/") -> dict[str, int]:
    """{name: value} for the vm settings that could be read; a missing key means not available."""
    out: dict[str, int] = {}
    for key in VM_KEYS:
        value = to_int(read_text(root, f"proc/sys/vm/{key}"))
        if value is not None:
            out[key] = value
    return out


def selected(text: str | None) -> str | None:
    """The bracketed choice of a sysfs selector file ("always [madvise] never" -> "madvise")."""
    if not text:
        return None
    start, end = text.find("["), text.find("]")
    if 0 <= start < end:
        return text[start + 1:end]
    return text.strip() or None


def read_thp(root: str = "/") -> dict[str, str]:
    out: dict[str, str] = {}
    for key in ("enabled", "defrag"):
        value = selected(read_text(root, f"sys/kernel/mm/transparent_hugepage/{key}"))
        if value:
            out[key] = value
    return out
