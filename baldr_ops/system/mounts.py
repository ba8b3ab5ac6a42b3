"""Mounts from /proc/self/mountinfo, and the size/use of tmpfs mounts (which share the RAM pool)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from baldr_ops.system._io import capture, is_live, read_captured, read_text


@dataclass
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_point: str
    fstype: str
    source: str
    options: str


@dataclass
class TmpfsUsage:
    """A tmpfs mount's limit and use in bytes."""

    mount_point: str
    size_bytes: int | None     # the tmpfs limit (size=); None when unknown
    used_bytes: int | None     # None when unknown


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...)
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1:i + 4].isdigit():
            try:
                out.append(chr(int(text[i + 1:i + 4], 8)))
                i += 4
                continue
            except ValueError:
                pass
        out.append(text[i])
        i += 1
    return "".join(out)


def parse_mountinfo(text: str | None) -> list[Mount]:
    mounts: list[Mount] = []
    if not text:
        return mounts
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lparts, rparts = left.split(), right.split()
        if len(lparts) < 5 or len(rparts) < 2:
            continue
        mounts.append(Mount(mount_point=_unescape(lparts[4]), fstype=rparts[0], source=rparts[1],
                            options=" ".join(rparts[2:3])))
    return mounts


def read_mounts(root: str = "/") -> list[Mount] | None:
    text = read_text(root, "proc/self/mountinfo")
    if text is None:
        return None
    return parse_mountinfo(text)


def _size_option(options: str) -> int | None:
    for opt in options.split(","):
        if opt.startswith("size="):
            raw = opt[5:]
            mult = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(raw[-1:].lower(), 1)
            try:
                return int(raw[:-1] if mult != 1 else raw) * mult
            except ValueError:
                return None
    return None


def read_tmpfs(root: str = "/", mounts: list[Mount] | None = None) -> list[TmpfsUsage] | None:
    """tmpfs mounts with size and use: statvfs on the live root, captured figures on a snapshot root."""
    if mounts is None:
        mounts = read_mounts(root)
    if mounts is None:
        return None
    seen: set[str] = set()
    out: list[TmpfsUsage] = []
    live = is_live(root)
    captured: dict = {}
    if not live:
        try:
            captured = json.loads(read_captured(root, "statvfs.json") or "{}")
        except ValueError:
            captured = {}
        if not isinstance(captured, dict):
            captured = {}
    for m in mounts:
        if m.fstype != "tmpfs" or m.mount_point in seen:
            continue
        seen.add(m.mount_point)
        size, used = _size_option(m.options), None
        if live:
            try:
                st = os.statvfs(m.mount_point)
                size = st.f_blocks * st.f_frsize
                used = (st.f_blocks - st.f_bfree) * st.f_frsize
            except OSError:
                pass
        else:
            entry = captured.get(m.mount_point)
            if isinstance(entry, dict):
                s, u = entry.get("size_bytes"), entry.get("used_bytes")
                size = s if isinstance(s, int) and s >= 0 else size
                used = u if isinstance(u, int) and u >= 0 else None
        out.append(TmpfsUsage(m.mount_point, size, used))
    if live:
        capture("statvfs.json", json.dumps({t.mount_point: {"size_bytes": t.size_bytes, "used_bytes": t.used_bytes}
                                            for t in out}, indent=1))
    return out
