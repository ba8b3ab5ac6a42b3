"""/proc/vmstat counters (cumulative since boot; rates come from two samples)."""

from __future__ import annotations

from baldr_ops.system._io import key_values, read_text


def parse_vmstat(text: str | None) -> dict[str, int]:
    return {k: v for k, v in key_values(text).items() if v >= 0}


def read_vmstat(root: str = "/") -> dict[str, int] | None:
    """The counters, or None when /proc/vmstat is missing or empty."""
    counters = parse_vmstat(read_text(root, "proc/vmstat"))
    return counters or None
