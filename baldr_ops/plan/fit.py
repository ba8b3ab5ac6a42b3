"""Does a model fit now? The one fit judgement that `doctor --model` and `launch`/`compile` share.

Input: meminfo as read (``system.meminfo.MemInfo``), the planned footprint in bytes (or a
``models.footprint.Footprint``) and the floor kept for the OS. Output: a :class:`FitVerdict`
with doctor's statuses; doctor renders it as the check ``mem.available.vs_plan``, the planner
stops a launch on CRIT. Pure: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from baldr_ops.sizes import parse_spec

GIB = 1024**3
CHECK_ID = "mem.available.vs_plan"


@dataclass
class FitVerdict:
    status: str                    # OK | WARN | CRIT | UNKNOWN (doctor's statuses)
    headroom: int | None           # bytes left in MemAvailable after the model and the floor
    evidence: dict = field(default_factory=dict)
    hint: str | None = None

    def headroom_text(self) -> str:
        return "n/a" if self.headroom is None else f"{self.headroom / GIB:.1f} GiB"


def _gib(n: int) -> float:
    return round(n / GIB, 2)


def _fmt(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def floor_bytes(text: str, meminfo, what: str = "--floor") -> int:
    """A floor as typed (``8G``, or ``10%`` of MemTotal) in bytes, in the one size grammar."""
    return parse_spec(text, what).resolve(meminfo.get("MemTotal") if meminfo.available else None, what)


def judge_fit(meminfo, footprint, floor: int = 0) -> FitVerdict:
    """CRIT when the model and the floor do not fit in MemAvailable plus free swap; WARN when they
    fit only through swap, or only once page cache is reclaimed (the GB10 load hazard)."""
    plan = footprint if isinstance(footprint, int) else int(footprint.total_bytes)
    floor = max(0, int(floor or 0))
    avail, free = meminfo.get("MemAvailable"), meminfo.get("MemFree")
    if not meminfo.available or avail is None or free is None:
        reason = getattr(meminfo, "error", None) or "MemAvailable/MemFree missing"
        return FitVerdict("UNKNOWN", None, {"reason": reason})
    swap_free = meminfo.get("SwapFree") or 0
    need = plan + floor
    evidence = {"plan_GiB": _gib(plan), "floor_GiB": _gib(floor), "MemFree_GiB": _gib(free),
                "MemAvailable_GiB": _gib(avail), "SwapFree_GiB": _gib(swap_free)}
    for key in ("weights_bytes", "kv_cache_bytes", "overhead_bytes"):
        if hasattr(footprint, key):
            evidence[key.replace("_bytes", "_GiB")] = _gib(getattr(footprint, key))
    headroom = avail - need
    evidence["headroom_GiB"] = _gib(headroom)
    if need > avail + swap_free:
        return FitVerdict("CRIT", headroom, evidence,
                          f"needs {_fmt(need)} (model {_fmt(plan)} + floor {_fmt(floor)}) but only {_fmt(avail)} "
                          "available: free memory, lower the context length, or use a smaller model")
    if need > avail:
        return FitVerdict("WARN", headroom, evidence, f"fits only by pushing {_fmt(need - avail)} into swap: free memory first")
    if plan > free:
        return FitVerdict("WARN", headroom, evidence,
                          f"fits in MemAvailable but not in MemFree ({_fmt(free)}): page cache must be reclaimed while "
                          "loading; on UMA CUDA may not count it (drop caches as a diagnostic)")
    return FitVerdict("OK", headroom, evidence)
