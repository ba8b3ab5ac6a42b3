"""The memory-cap shim from Python: find or build ``libbaldr_memcap.so``, compute the environment
that preloads it into a child, and read a budget's live ledger.

The size syntax, the free-memory formula and the ledger reader are the shim's own C functions,
called through cffi (the library doubles as a plain shared library when it is dlopen'ed rather
than preloaded), so Python and the preloaded library can never disagree. Importing this module is
cheap: nothing is built or loaded until a function needs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

from pydantic import BaseModel

from baldr_ops.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
CSRC = REPO_ROOT / "csrc"
DEFAULT_LIBRARY = REPO_ROOT / "shims" / "libbaldr_memcap.so"
ENV_PATH = "BALDR_SHIM_PATH"
NO_CAP = (1 << 64) - 1

# The environment the shim reads at load (docs/shim.md has the table).
ENV_LIMIT = "BALDR_MEMCAP_LIMIT"
ENV_FLOOR = "BALDR_MEMCAP_FLOOR"
ENV_BUDGET = "BALDR_MEMCAP_BUDGET"
ENV_UNIFIED = "BALDR_MEMCAP_UNIFIED"
ENV_ON_ERROR = "BALDR_MEMCAP_ON_ERROR"
ENV_MEMINFO = "BALDR_MEMCAP_MEMINFO"
SHIM_ENV = (ENV_LIMIT, ENV_FLOOR, ENV_BUDGET, ENV_UNIFIED, ENV_ON_ERROR, ENV_MEMINFO)
DEFAULT_BUDGET = "default"

_lock = threading.Lock()
_loaded: tuple | None = None  # (ffi, lib, path)


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


# ---- building and loading ------------------------------------------------------------------------


def _stale(lib: Path) -> bool:
    if not lib.exists():
        return True
    built = lib.stat().st_mtime
    return any(p.stat().st_mtime > built for p in CSRC.glob("*.[ch]"))


def build_library(force: bool = False) -> Path:
    """Build shims/libbaldr_memcap.so as `make shim` does (only when missing or out of date)."""
    if not CSRC.is_dir():
        raise UserError(f"the shim's C sources are not at {CSRC}",
                        hint=f"run from a baldr-ops checkout, or set {ENV_PATH} to a built library")
    if not force and not _stale(DEFAULT_LIBRARY):
        return DEFAULT_LIBRARY
    make = shutil.which("make")
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        raise UserError("cannot build the memory-cap shim: no C compiler (cc) found",
                        hint="install a C compiler (e.g. apt-get install build-essential) and run 'make shim'")
    if make and (REPO_ROOT / "Makefile").exists():
        cmd = [make, "-s", *(["-B"] if force else []), "-C", str(REPO_ROOT), "shim"]
    else:  # the Makefile's recipe, for a tree without make
        DEFAULT_LIBRARY.parent.mkdir(parents=True, exist_ok=True)
        tmp = DEFAULT_LIBRARY.with_suffix(f".so.{os.getpid()}.tmp")
        cmd = [cc, "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden", "-pthread",
               "-shared", "-o", str(tmp), *sorted(str(p) for p in CSRC.glob("*.c")), "-ldl"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"building the memory-cap shim failed: {last[0]}", hint="run 'make shim' to see the whole error")
    if cmd[0] == cc:
        os.replace(tmp, DEFAULT_LIBRARY)
    return DEFAULT_LIBRARY


def library_path(build: bool = False) -> Path:
    """Where the shim is: $BALDR_SHIM_PATH, else shims/libbaldr_memcap.so in this checkout
    (built first when `build` and it is missing or older than its sources)."""
    explicit = os.environ.get(ENV_PATH)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UserError(f"{ENV_PATH}={explicit} does not exist", hint=f"unset {ENV_PATH} or point it at the built library")
        return path.resolve()
    if build:
        return build_library()
    if not DEFAULT_LIBRARY.exists():
        raise UserError(f"the memory-cap shim is not built ({DEFAULT_LIBRARY})", hint="run 'make shim'")
    return DEFAULT_LIBRARY


def _cdef() -> str:
    text = (CSRC / "baldr_memcap.h").read_text() if (CSRC / "baldr_memcap.h").exists() else ""
    m = re.search(r"/\* cffi-begin \*/(.*)/\* cffi-end \*/", text, re.S)
    if not m:
        raise UserError("csrc/baldr_memcap.h is missing its cffi section", hint="restore it from git")
    return m.group(1)


def _lib():
    """The shim loaded as a library (it stays passive: no hooks act in this process)."""
    global _loaded
    with _lock:
        if _loaded is None:
            import cffi

            path = library_path(build=True)
            ffi = cffi.FFI()
            ffi.cdef(_cdef())
            try:
                lib = ffi.dlopen(str(path))
            except OSError as exc:
                raise UserError(f"cannot load the memory-cap shim {path}: {exc}", hint="rebuild it with 'make shim'") from exc
            _loaded = (ffi, lib, path)
        return _loaded[0], _loaded[1]


# ---- sizes ------------------------------------------------------------------------------------------

class SizeSpec(BaseModel):
    text: str
    bytes: int | None = None  # set for an absolute size
    percent: float | None = None  # set for a percentage of the device total

    def resolve(self, total: int | None) -> int:
        if self.bytes is not None:
            return self.bytes
        if total is None:
            raise UserError(f"{self.text}: a percentage needs the device total", hint="give an absolute size such as 100G")
        return int(total * round(self.percent * 100) // 10000)


def parse_spec(text: str, what: str = "size", allow_percent: bool = True) -> SizeSpec:
    """Parse a size exactly as the shim will (C parser via cffi); UserError on bad input."""
    text = str(text).strip()
    try:
        ffi, lib = _lib()
    except UserError:
        return _parse_spec_py(text, what, allow_percent)
    b = ffi.new("unsigned long long *")
    cp = ffi.new("unsigned int *")
    err = ffi.new("char[256]")
    if lib.baldr_memcap_parse_size(text.encode(), int(allow_percent), b, cp, err, 256) != 0:
        raise UserError(f"bad {what}: {ffi.string(err).decode()}",
                        hint="sizes are bytes or binary K/M/G/T (e.g. 100G, 1.5T)" + (", or a percentage such as 90%" if allow_percent else ""))
    if cp[0]:
        return SizeSpec(text=text, percent=cp[0] / 100)
    return SizeSpec(text=text, bytes=int(b[0]))


_SIZE_RE = re.compile(r"^(\d+)(?:\.(\d+))?(?:([KMGTkmgt])(?:[iI])?[bB]?|[bB])?$")
_PCT_RE = re.compile(r"^(\d+)(?:\.(\d{1,2}))?%$")


def _parse_spec_py(text: str, what: str, allow_percent: bool) -> SizeSpec:
    """Fallback where the shim cannot be built (no compiler): the same grammar, checked against the
    C parser by tests/shim/test_python.py."""
    hint = "sizes are bytes or binary K/M/G/T (e.g. 100G, 1.5T)"
    m = _PCT_RE.match(text)
    if m and allow_percent:
        cp = int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))
        if 0 < cp <= 10000:
            return SizeSpec(text=text, percent=cp / 100)
    m = _SIZE_RE.match(text)
    if m and not (m.group(2) and not m.group(3)):
        shift = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[(m.group(3) or "").upper()]
        frac = m.group(2) or ""
        value = (int(m.group(1)) << shift) + ((int(frac[:12] or "0") << shift) // 10 ** len(frac[:12]))
        if value < NO_CAP:
            return SizeSpec(text=text, bytes=value)
    raise UserError(f"bad {what}: {text!r}", hint=hint)


def parse_size(text: str, total: int | None = None) -> int:
    """Bytes for a size such as 8G, 512M, 1.5T or (given the total) 90%."""
    return parse_spec(text).resolve(total)


def check_budget(name: str) -> str:
    ffi, lib = _lib()
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
    lib = str(library_path(build=True))
    preload = [p for p in re.split(r"[: ]", base.get("LD_PRELOAD", "")) if p and p != lib]
    env["LD_PRELOAD"] = ":".join([lib, *preload])
    return env


# ---- reading ----------------------------------------------------------------------------------------

def ledger_path(budget: str = DEFAULT_BUDGET) -> str:
    ffi, lib = _lib()
    out = ffi.new("char[512]")
    lib.baldr_memcap_ledger_path(check_budget(budget).encode(), out, 512)
    return ffi.string(out).decode()


def read_ledger(budget: str = DEFAULT_BUDGET) -> LedgerState | None:
    """The budget's ledger now, or None if no process has used this budget since boot."""
    ffi, lib = _lib()
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


class MemInfo(BaseModel):
    mem_total: int
    mem_free: int
    mem_available: int
    hugepages_total: int
    hugepages_free: int
    hugepage_size: int
    available_eff: int  # what the shim counts as available: MemAvailable, or free hugepages


def read_meminfo(path: str | None = None) -> MemInfo:
    ffi, lib = _lib()
    m = ffi.new("struct baldr_memcap_meminfo *")
    rc = lib.baldr_memcap_meminfo_read((path or "").encode(), m)
    if rc != 0:
        raise UserError(f"cannot read {path or '/proc/meminfo'} ({os.strerror(-rc)})")
    return MemInfo(**{k: int(getattr(m, k)) for k in MemInfo.model_fields})


def free_figure(cap: int | None, committed: int, available: int, floor: int, total: int) -> int:
    """The shim's free-memory formula: min(cap - committed, available - floor), clamped to [0, total]."""
    _, lib = _lib()
    return int(lib.baldr_memcap_free_figure(NO_CAP if cap is None else cap, committed, available, floor, total))


def planning_free_bytes(env: dict[str, str] | os._Environ | None = None) -> int:
    """The free figure the shim reports on unified memory, computed without CUDA from the shim's
    environment (default: this process's), meminfo and the live ledger. MemTotal stands in for the
    device total, as the integrated GPU's total is about that."""
    env = os.environ if env is None else env
    info = read_meminfo(env.get(ENV_MEMINFO) or None)
    total = info.mem_total
    cap = parse_spec(env[ENV_LIMIT], "limit").resolve(total) if env.get(ENV_LIMIT) else None
    floor = parse_spec(env[ENV_FLOOR], "floor").resolve(total) if env.get(ENV_FLOOR) else 0
    ledger = read_ledger(env.get(ENV_BUDGET) or DEFAULT_BUDGET)
    committed = ledger.committed - ledger.dead_used if ledger else 0
    shown_total = total if cap is None else min(cap, total)
    return free_figure(cap, max(committed, 0), info.available_eff, floor, shown_total)
