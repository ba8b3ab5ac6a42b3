"""The memory-cap shim from Python: the environment that preloads it into a child, a budget's
live ledger, and the shim's own view of memory (what its memory queries will answer).

These are the shim's own C functions, called through cffi (:mod:`baldr_ops.native`), so Python and
the preloaded library can never disagree; sizes go through :mod:`baldr_ops.sizes`, the one grammar.
The library is built by `make shim` (or `baldr-ops shim build`, which runs it), never on demand.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel

from baldr_ops.errors import UserError
from baldr_ops.native import DEFAULT_LIBRARY, NO_CAP, REPO_ROOT, library_path, load
from baldr_ops.sizes import parse_spec

# The environment the shim reads at load (docs/shim.md has the table).
ENV_LIMIT = "BALDR_MEMCAP_LIMIT"
ENV_FLOOR = "BALDR_MEMCAP_FLOOR"
ENV_BUDGET = "BALDR_MEMCAP_BUDGET"
ENV_UNIFIED = "BALDR_MEMCAP_UNIFIED"
ENV_ON_ERROR = "BALDR_MEMCAP_ON_ERROR"
ENV_MEMINFO = "BALDR_MEMCAP_MEMINFO"
SHIM_ENV = (ENV_LIMIT, ENV_FLOOR, ENV_BUDGET, ENV_UNIFIED, ENV_ON_ERROR, ENV_MEMINFO)
DEFAULT_BUDGET = "default"


class ProcessUsage(BaseModel):
    pid: int
    start_time: int  # clock ticks since boot, from /proc/PID/stat
    used: int  # bytes
    alive: bool


class LedgerState(BaseModel):
    """One budget's ledger as the shim sees it: what is committed against which cap, and by whom."""

    budget: str
    path: str
    cap: int | None  # bytes; None: no cap
    committed: int
    dead_used: int  # held by processes that died and have not been reclaimed yet
    processes: list[ProcessUsage]


def build_library(force: bool = False) -> Path:
    """Run `make shim` in this checkout (the explicit `baldr-ops shim build`)."""
    make = shutil.which("make")
    if make is None or not (REPO_ROOT / "Makefile").is_file():
        raise UserError("cannot build the memory-cap shim here: 'make' or the checkout's Makefile is missing",
                        hint="build from a baldr-ops checkout with make and a C compiler, or set BALDR_SHIM_PATH")
    proc = subprocess.run([make, "-s", *(["-B"] if force else []), "-C", str(REPO_ROOT), "shim"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"building the memory-cap shim failed: {last[0]}", hint="run 'make shim' to see the whole error")
    return DEFAULT_LIBRARY


def check_budget(name: str) -> str:
    ffi, lib = load()
    err = ffi.new("char[256]")
    if lib.baldr_memcap_check_budget(str(name).encode(), err, 256) != 0:
        raise UserError(f"bad budget: {ffi.string(err).decode()}", hint="use letters, digits, '.', '_' or '-'")
    return name


# ---- a child's environment ----------------------------------------------------------------------------

def child_env(limit: str | None = None, floor: str | None = None, budget: str | None = None,
              unified: str | None = None, on_error: str | None = None, meminfo: str | None = None,
              base_env: dict[str, str] | os._Environ | None = None) -> dict[str, str]:
    """The variables to add to a child's environment so it runs under the shim.

    LD_PRELOAD gets the shim in front of what `base_env` (default: this process) already preloads.
    Values are validated with the shim's own parser, so a bad value fails here, not in the child.
    A BALDR_MEMCAP_* variable present in `base_env` but not given here is set to "" (unset)."""
    base = os.environ if base_env is None else base_env
    env: dict[str, str] = {}
    if limit is not None and str(limit) != "":
        spec = parse_spec(str(limit), "limit")
        if spec.bytes == 0:
            raise UserError("bad limit: 0 would refuse every allocation", hint="omit the limit for no cap")
        env[ENV_LIMIT] = spec.text
    if floor is not None and str(floor) != "":
        env[ENV_FLOOR] = parse_spec(str(floor), "floor").text
    env[ENV_BUDGET] = check_budget(budget or DEFAULT_BUDGET)
    if unified is not None:
        if unified not in ("auto", "on", "off"):
            raise UserError(f"bad unified setting {unified!r}", hint="use auto, on or off")
        env[ENV_UNIFIED] = unified
    if on_error is not None:
        if on_error not in ("open", "closed"):
            raise UserError(f"bad on_error setting {on_error!r}", hint="use open or closed")
        env[ENV_ON_ERROR] = on_error
    if meminfo is not None:
        if not Path(meminfo).is_file():
            raise UserError(f"meminfo file {meminfo} does not exist", hint="omit it to read /proc/meminfo")
        env[ENV_MEMINFO] = str(meminfo)
    for name in SHIM_ENV:  # do not let the parent's settings leak into the child's
        if name not in env and base.get(name):
            env[name] = ""
    lib = str(library_path())
    preload = [p for p in re.split(r"[: ]", base.get("LD_PRELOAD", "")) if p and p != lib]
    env["LD_PRELOAD"] = ":".join([lib, *preload])
    return env


# ---- reading ----------------------------------------------------------------------------------------

def ledger_path(budget: str = DEFAULT_BUDGET) -> str:
    ffi, lib = load()
    out = ffi.new("char[512]")
    lib.baldr_memcap_ledger_path(check_budget(budget).encode(), out, 512)
    return ffi.string(out).decode()


def read_ledger(budget: str = DEFAULT_BUDGET) -> LedgerState | None:
    """The budget's ledger now, or None if no process has used this budget since boot."""
    ffi, lib = load()
    view = ffi.new("struct baldr_memcap_view *")
    rc = lib.baldr_memcap_ledger_read(check_budget(budget).encode(), view)
    if rc == -2:  # ENOENT
        return None
    if rc != 0:
        raise UserError(f"cannot read the ledger of budget {budget!r} ({os.strerror(-rc)})",
                        hint=f"check {ledger_path(budget)} (it should be a 0600 file of this user)")
    procs = [ProcessUsage(pid=s.pid, start_time=s.start_time, used=s.used, alive=bool(s.alive))
             for s in (view.slots[i] for i in range(view.nslots))]
    return LedgerState(budget=budget, path=ledger_path(budget), cap=None if view.cap == NO_CAP else int(view.cap),
                       committed=int(view.committed), dead_used=int(view.dead_used), processes=procs)


class ShimMemory(BaseModel):
    """/proc/meminfo as the shim's C reader sees it (hugepages included); see system.meminfo for
    doctor's reader, which never raises."""

    mem_total: int
    mem_free: int
    mem_available: int
    hugepages_total: int
    hugepages_free: int
    hugepage_size: int
    available_eff: int  # what the shim counts as available: MemAvailable, or free hugepages


def read_shim_memory(path: str | None = None) -> ShimMemory:
    """The shim's view of memory; raises UserError when the file cannot be read."""
    ffi, lib = load()
    m = ffi.new("struct baldr_memcap_meminfo *")
    rc = lib.baldr_memcap_meminfo_read((path or "").encode(), m)
    if rc != 0:
        raise UserError(f"cannot read {path or '/proc/meminfo'} ({os.strerror(-rc)})")
    return ShimMemory(**{k: int(getattr(m, k)) for k in ShimMemory.model_fields})


def free_figure(cap: int | None, committed: int, available: int, floor: int, total: int) -> int:
    """The shim's free-memory formula: min(cap - committed, available - floor), clamped to [0, total]."""
    _, lib = load()
    return int(lib.baldr_memcap_free_figure(NO_CAP if cap is None else cap, committed, available, floor, total))


def planning_free_bytes(env: dict[str, str] | os._Environ | None = None) -> int:
    """The free figure the shim reports on unified memory, computed without CUDA from the shim's
    environment (default: this process's), meminfo and the live ledger. MemTotal stands in for the
    device total, as the integrated GPU's total is about that."""
    env = os.environ if env is None else env
    info = read_shim_memory(env.get(ENV_MEMINFO) or None)
    total = info.mem_total
    cap = parse_spec(env[ENV_LIMIT], "limit").resolve(total, "limit") if env.get(ENV_LIMIT) else None
    floor = parse_spec(env[ENV_FLOOR], "floor").resolve(total, "floor") if env.get(ENV_FLOOR) else 0
    ledger = read_ledger(env.get(ENV_BUDGET) or DEFAULT_BUDGET)
    committed = ledger.committed - ledger.dead_used if ledger else 0
    shown_total = total if cap is None else min(cap, total)
    return free_figure(cap, max(committed, 0), info.available_eff, floor, shown_total)
