"""The shim library as a plain shared library: where it is, and its C API loaded through cffi.

`make shim` builds ``shims/libbaldr_memcap.so`` and, beside it, ``_baldr_memcap_cffi.py`` (cffi's
out-of-line ABI module, generated from ``csrc/baldr_memcap.h``), so loading costs a dlopen and no C
parsing. Nothing here builds anything: a missing library is :class:`LibraryMissing`, and callers
decide whether that is an error (the shim commands) or a reason to use a pure-Python twin (sizes).
Dlopen'ed rather than preloaded, the library stays passive: no hook acts in this process.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from baldr_ops.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = REPO_ROOT / "shims"
DEFAULT_LIBRARY = BUILD_DIR / "libbaldr_memcap.so"
FFI_MODULE = BUILD_DIR / "_baldr_memcap_cffi.py"
ENV_PATH = "BALDR_SHIM_PATH"
NO_CAP = (1 << 64) - 1

_lock = threading.Lock()
_loaded: tuple | None = None  # (ffi, lib)


class LibraryMissing(UserError):
    """The shim is not built (or not where $BALDR_SHIM_PATH says)."""


def library_path() -> Path:
    """$BALDR_SHIM_PATH, else shims/libbaldr_memcap.so in this checkout; never builds."""
    explicit = os.environ.get(ENV_PATH)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise LibraryMissing(f"{ENV_PATH}={explicit} does not exist",
                                 hint=f"unset {ENV_PATH} or point it at the built library")
        return path.resolve()
    if not DEFAULT_LIBRARY.is_file():
        raise LibraryMissing(f"the memory-cap shim is not built ({DEFAULT_LIBRARY})", hint="run 'make shim'")
    return DEFAULT_LIBRARY


def _load_ffi():
    if not FFI_MODULE.is_file():
        raise LibraryMissing(f"the shim's cffi module is not generated ({FFI_MODULE})", hint="run 'make shim'")
    import importlib.util

    spec = importlib.util.spec_from_file_location("_baldr_memcap_cffi", FFI_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi


def load():
    """``(ffi, lib)`` for the shim's C API; LibraryMissing if it is not built, UserError if broken."""
    global _loaded
    with _lock:
        if _loaded is None:
            path = library_path()
            ffi = _load_ffi()
            try:
                lib = ffi.dlopen(str(path))
            except OSError as exc:
                raise UserError(f"cannot load the memory-cap shim {path}: {exc}",
                                hint="rebuild it with 'make shim'") from exc
            _loaded = (ffi, lib)
        return _loaded


def available() -> bool:
    try:
        load()
    except LibraryMissing:
        return False
    return True
