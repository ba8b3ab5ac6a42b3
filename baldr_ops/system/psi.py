"""Pressure stall information (kernel `Documentation/accounting/psi.rst`)."""

from __future__ import annotations

from dataclasses import dataclass

from baldr_ops.system._io import exists, read_text


@dataclass
class PsiLine:
    """One ``some``/``full`` line: averages in percent, total stall in microseconds."""

    avg10: float
    avg60: float
    avg300: float
    total_us: int


@dataclass
class Psi:
    """``some``/``full`` of one pressure file; ``available`` False (with ``error``) when absent."""

    some: PsiLine | None = None
    full: PsiLine | None = None
    available: bool = False
    source: str = "proc/pressure/memory"
    error: str | None = None


def parse_psi(text: str | None) -> dict[str, PsiLine]:
    out: dict[str, PsiLine] = {}
    if not text:
        return out
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("some", "full"):
            continue
        kv = {}
        for item in parts[1:]:
            k, sep, v = item.partition("=")
            if sep:
                kv[k] = v
        try:
            psi = PsiLine(float(kv["avg10"]), float(kv["avg60"]), float(kv["avg300"]), int(kv["total"]))
        except (KeyError, ValueError):
            continue
        if not all(0.0 <= a <= 100.0 for a in (psi.avg10, psi.avg60, psi.avg300)) or psi.total_us < 0:
            continue
        out[parts[0]] = psi
    return out


def read_psi(root: str = "/", rel: str = "proc/pressure/memory") -> Psi:
    text = read_text(root, rel)
    if text is None:
        why = ("kernel without PSI, or PSI disabled at boot (CONFIG_PSI_DEFAULT_DISABLED)"
               if not exists(root, "proc/pressure") else f"{rel} is not readable")
        return Psi(source=rel, error=why)
    lines = parse_psi(text)
    if "some" not in lines:
        return Psi(source=rel, error=f"{rel} has no parsable 'some' line")
    return Psi(some=lines["some"], full=lines.get("full"), available=True, source=rel)
