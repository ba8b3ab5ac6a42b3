"""The memory guard's plan: on, dry-run or off, with which floors, over which weight files."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from baldr_ops.errors import UserError
from baldr_ops.memguard.policy import DEFAULT_HZ, GIB, GuardConfig, default_load_floor, default_serve_floor
from baldr_ops.sizes import parse_spec

MEMGUARD_MODES = ("auto", "on", "off", "dry-run")
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


class MemGuardPlan(BaseModel):
    mode: Literal["on", "dry-run", "off"]
    reason: str
    load_floor: int
    serve_floor: int
    weight_files: list[str] = []
    trend_horizon_s: float = 60.0    # act when MemAvailable would reach zero within this
    load_hz: float = DEFAULT_HZ[0]   # samples a second from start to ready
    serve_hz: float = DEFAULT_HZ[1]  # and while serving

    def config(self, **overrides) -> GuardConfig:
        return GuardConfig(mode=self.mode, load_floor=self.load_floor, serve_floor=self.serve_floor,
                           has_weight_files=bool(self.weight_files), trend_horizon_s=self.trend_horizon_s,
                           **overrides)

    def note(self) -> str:
        return (f"memory guard: {self.mode} ({self.reason}); load floor {self.load_floor / GIB:.1f} GiB MemFree, "
                f"serve floor {self.serve_floor / GIB:.1f} GiB MemAvailable")


def weight_files(model: Path) -> list[str]:
    """The files whose pages a load puts in the page cache (what fadvise drops)."""
    if model.is_file():
        return [str(model)]
    if not model.is_dir():
        return []
    return sorted(str(p) for p in model.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def _floor(text: str | None, what: str, default: int, total: int) -> int:
    if text is None:
        return default
    value = parse_spec(text, what).resolve(total, what)
    if value >= total:
        raise UserError(f"{what} {text} is at or above this machine's memory ({total / GIB:.1f} GiB MemTotal)",
                        hint=f"give a floor below MemTotal, e.g. {default / GIB:.0f}G (the default here)")
    return value


def guard_floors(requested: str, mem_total: int | None, load_floor: str | None = None,
                 serve_floor: str | None = None) -> tuple[int, int] | None:
    """The floors in bytes (None: no meminfo, the guard stays off). Cheap and early: preflight
    checks them before anything slow."""
    if requested not in MEMGUARD_MODES:
        raise UserError(f"--memguard {requested!r} is not a mode", hint=f"choose one of: {', '.join(MEMGUARD_MODES)}")
    if mem_total is None:
        if requested == "on":
            raise UserError("--memguard on needs /proc/meminfo, which cannot be read here")
        return None
    return (_floor(load_floor, "--load-floor", default_load_floor(mem_total), mem_total),
            _floor(serve_floor, "--serve-floor", default_serve_floor(mem_total), mem_total))


def sample_rates(text: str | None) -> tuple[float, float]:
    """``--memguard-hz LOAD:SERVE`` (default 4:1): samples a second while loading and while serving."""
    if text is None:
        return DEFAULT_HZ
    try:
        load, serve = (float(x) for x in str(text).split(":"))
    except ValueError:
        raise UserError(f"--memguard-hz {text!r} is not LOAD:SERVE", hint="e.g. 4:1 (4 samples a second while "
                        "loading, 1 while serving)") from None
    if not (0.1 <= load <= 20 and 0.1 <= serve <= 20):
        raise UserError(f"--memguard-hz {text!r} is out of range", hint="each rate between 0.1 and 20 samples a second")
    return load, serve


def decide_memguard(requested: str, unified_gpu: bool, floors: tuple[int, int] | None, model: Path,
                    rates: tuple[float, float] = DEFAULT_HZ) -> MemGuardPlan:
    """auto: on for a unified-memory GPU (where a flood of page cache wedges the host), dry-run
    elsewhere (it logs what it would do)."""
    if floors is None:
        return MemGuardPlan(mode="off", reason="/proc/meminfo cannot be read", load_floor=0, serve_floor=0)
    loads, serves = floors
    if requested == "auto":
        mode, reason = (("on", "unified-memory GPU") if unified_gpu else
                        ("dry-run", "no unified-memory GPU: logs what it would do"))
    else:
        mode, reason = requested, f"--memguard {requested}"
    return MemGuardPlan(mode=mode, reason=reason, load_floor=loads, serve_floor=serves, weight_files=weight_files(model),
                        load_hz=rates[0], serve_hz=rates[1])
