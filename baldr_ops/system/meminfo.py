"""/proc/meminfo as bytes (kernel `Documentation/filesystems/proc.rst`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from baldr_ops.system._io import read_text

GIB = 1024**3


def parse_meminfo(text: str | None) -> dict[str, int]:
    """``Key:  123 kB`` lines -> {Key: bytes}; counts without a unit (HugePages_*) stay counts."""
    out: dict[str, int] = {}
    if not text:
        return out
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts or not key.strip():
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        if value < 0:
            continue
        if len(parts) > 1 and parts[1].lower() == "kb":
            value *= 1024
        out[key.strip()] = value
    return out


@dataclass
class MemInfo:
    """Parsed /proc/meminfo. ``available`` is False when the file could not be read or parsed."""

    fields: dict[str, int] = field(default_factory=dict)
    available: bool = False
    source: str = "proc/meminfo"
    error: str | None = None

    def get(self, key: str) -> int | None:
        return self.fields.get(key)

    @property
    def total(self) -> int | None:
        return self.fields.get("MemTotal")

    @property
    def mem_available(self) -> int | None:
        return self.fields.get("MemAvailable")

    @property
    def free(self) -> int | None:
        return self.fields.get("MemFree")

    @property
    def swap_total(self) -> int | None:
        return self.fields.get("SwapTotal")

    @property
    def swap_free(self) -> int | None:
        return self.fields.get("SwapFree")


def read_meminfo(root: str = "/") -> MemInfo:
    """Read ``<root>/proc/meminfo``. Usable alone (launch preflight); never raises."""
    text = read_text(root, "proc/meminfo")
    if text is None:
        return MemInfo(error="proc/meminfo is not readable")
    fields = parse_meminfo(text)
    if "MemTotal" not in fields:
        return MemInfo(fields=fields, error="proc/meminfo has no MemTotal line")
    return MemInfo(fields=fields, available=True)
