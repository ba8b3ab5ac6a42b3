"""zram devices, zswap parameters and active swap areas (kernel `blockdev/zram.rst`, zswap params)."""

from __future__ import annotations

from dataclasses import dataclass, field

from baldr_ops.system._io import listdir, read_text, to_int

MM_STAT = ("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max",
           "same_pages", "pages_compacted", "huge_pages", "huge_pages_since")


@dataclass
class ZramDevice:
    """A zram device: its size and mm_stat figures."""

    name: str
    disksize: int | None = None
    mm_stat: dict[str, int] = field(default_factory=dict)


@dataclass
class SwapArea:
    """One line of /proc/swaps, sizes in bytes."""

    filename: str
    kind: str
    size_bytes: int
    used_bytes: int
    priority: int


@dataclass
class CompressedSwap:
    """zram devices, zswap parameters and the swap areas (``swaps`` None: not readable)."""

    zram: list[ZramDevice] = field(default_factory=list)
    zswap: dict[str, str] = field(default_factory=dict)   # enabled, compressor, max_pool_percent, ...
    swaps: list[SwapArea] | None = None                   # None: /proc/swaps not readable


def parse_mm_stat(text: str | None) -> dict[str, int]:
    if not text:
        return {}
    out: dict[str, int] = {}
    for name, raw in zip(MM_STAT, text.split(), strict=False):
        try:
            out[name] = int(raw)
        except ValueError:
            return {}
    return out


def parse_swaps(text: str | None) -> list[SwapArea] | None:
    if text is None:
        return None
    areas = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5:
            continue
        try:
            areas.append(SwapArea(parts[0], parts[1], int(parts[2]) * 1024, int(parts[3]) * 1024, int(parts[4])))
        except ValueError:
            continue
    return areas


def read_compressed_swap(root: str = "/") -> CompressedSwap:
    out = CompressedSwap(swaps=parse_swaps(read_text(root, "proc/swaps")))
    for name in listdir(root, "sys/block"):
        if not name.startswith("zram"):
            continue
        out.zram.append(ZramDevice(name=name, disksize=to_int(read_text(root, f"sys/block/{name}/disksize")),
                                   mm_stat=parse_mm_stat(read_text(root, f"sys/block/{name}/mm_stat"))))
    for key in ("enabled", "compressor", "zpool", "max_pool_percent", "accept_threshold_percent",
                "shrinker_enabled"):
        text = read_text(root, f"sys/module/zswap/parameters/{key}")
        if text is not None and text.strip():
            out.zswap[key] = text.strip()[:64]
    return out
