"""Platform versions: kernel, arch, OS and DGX release, page size, MAX and baldr-ops versions."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass

from baldr_ops.system._io import capture, is_live, read_captured, read_text


@dataclass
class PlatformInfo:
    """Versions and facts of the machine; None where not known."""

    hostname: str | None = None
    kernel: str | None = None
    arch: str | None = None
    os_release: str | None = None
    dgx_release: str | None = None
    uptime_s: float | None = None
    page_size: int | None = None
    python: str | None = None
    max_version: str | None = None
    baldr_ops_version: str | None = None


def parse_os_release(text: str | None) -> str | None:
    if not text:
        return None
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return fields.get("PRETTY_NAME") or " ".join(filter(None, (fields.get("NAME"), fields.get("VERSION")))) or None


def parse_dgx_release(text: str | None) -> str | None:
    if not text:
        return None
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    parts = [fields.get(k) for k in ("DGX_PRETTY_NAME", "DGX_NAME", "DGX_SWBUILD_VERSION", "DGX_OTA_VERSION")]
    first = text.strip().splitlines()
    return " ".join(p for p in parts if p) or (first[0][:120] if first else None)


def _max_version() -> str | None:
    """The installed `modular`/`max` distribution version, from dist-info names (no importlib.metadata)."""
    for entry in sys.path:
        if not entry.endswith("site-packages"):
            continue
        try:
            names = os.listdir(entry)
        except OSError:
            continue
        for prefix in ("modular-", "max-"):
            for name in names:
                if name.startswith(prefix) and name.endswith(".dist-info"):
                    return name[len(prefix):-len(".dist-info")]
    return None


def read_platform(root: str = "/") -> PlatformInfo:
    from baldr_ops import __version__

    info = PlatformInfo(baldr_ops_version=__version__)
    info.hostname = (read_text(root, "proc/sys/kernel/hostname") or "").strip() or None
    info.kernel = (read_text(root, "proc/sys/kernel/osrelease") or "").strip() or None
    info.arch = (read_text(root, "proc/sys/kernel/arch") or "").strip() or None
    info.os_release = parse_os_release(read_text(root, "etc/os-release"))
    info.dgx_release = parse_dgx_release(read_text(root, "etc/dgx-release"))
    up = read_text(root, "proc/uptime")
    try:
        info.uptime_s = float(up.split()[0]) if up else None
    except (ValueError, IndexError):
        info.uptime_s = None
    if is_live(root):
        uname = os.uname()
        info.hostname = info.hostname or uname.nodename
        info.kernel = info.kernel or uname.release
        info.arch = info.arch or uname.machine
        info.page_size = os.sysconf("SC_PAGE_SIZE")
        info.python = sys.version.split()[0]
        info.max_version = _max_version()
        capture("platform.json", json.dumps({k: v for k, v in asdict(info).items()
                                             if k in ("page_size", "python", "max_version", "arch")}, indent=1))
    else:
        try:
            extra = json.loads(read_captured(root, "platform.json") or "{}")
        except ValueError:
            extra = {}
        if isinstance(extra, dict):
            ps = extra.get("page_size")
            info.page_size = ps if isinstance(ps, int) and ps > 0 and ps & (ps - 1) == 0 else None
            for key in ("python", "max_version", "arch"):
                if isinstance(extra.get(key), str) and not getattr(info, key):
                    setattr(info, key, extra[key])
    return info
