"""/proc/buddyinfo: free blocks per order per zone (fragmentation)."""

from __future__ import annotations

from dataclasses import dataclass, field

from baldr_ops.system._io import read_text


@dataclass
class BuddyZone:
    """Free blocks of one zone of one NUMA node, by order."""

    node: int
    zone: str
    free_blocks: list[int] = field(default_factory=list)   # index = order


@dataclass
class BuddyInfo:
    """/proc/buddyinfo; ``available`` False (with ``error``) when unreadable."""

    zones: list[BuddyZone] = field(default_factory=list)
    available: bool = False
    error: str | None = None

    def free_bytes_at_least(self, block_bytes: int, page_size: int, zone: str | None = "Normal") -> int:
        """Free bytes held in blocks of at least ``block_bytes`` (all zones when ``zone`` is None)."""
        total = 0
        for z in self.zones:
            if zone is not None and z.zone != zone:
                continue
            for order, count in enumerate(z.free_blocks):
                size = page_size << order
                if size >= block_bytes:
                    total += count * size
        return total


def parse_buddyinfo(text: str | None) -> list[BuddyZone]:
    zones: list[BuddyZone] = []
    if not text:
        return zones
    for line in text.splitlines():
        # "Node 0, zone   Normal   3104    847 ..."
        parts = line.replace(",", " ").split()
        if len(parts) < 5 or parts[0] != "Node" or parts[2] != "zone":
            continue
        try:
            node = int(parts[1])
            counts = [int(x) for x in parts[4:]]
        except ValueError:
            continue
        if any(c < 0 for c in counts) or len(counts) > 20:
            continue
        zones.append(BuddyZone(node=node, zone=parts[3], free_blocks=counts))
    return zones


def read_buddyinfo(root: str = "/") -> BuddyInfo:
    text = read_text(root, "proc/buddyinfo")
    if text is None:
        return BuddyInfo(error="proc/buddyinfo is not readable")
    zones = parse_buddyinfo(text)
    if not zones:
        return BuddyInfo(error="proc/buddyinfo has no zone lines")
    return BuddyInfo(zones=zones, available=True)
