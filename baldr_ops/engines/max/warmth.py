"""Is MAX's compile cache warm for a model? (for `status`, `doctor` and `compile --check`)

MAX names its cache entries by opaque keys, so the cache alone cannot say which model an entry
belongs to. `baldr-ops compile` learns it: it exports the graphs it compiles (`--export-mefs` into a
scratch directory), and each cache entry under `.max_cache/mof/mef/<version>/` is that MEF plus a
16-byte trailer (measured on MAX 26.7), so the entries are found by content. They are recorded in an
index keyed by MAX version, device, model (config sha256 and weight file sizes and mtimes) and the
compile options. The answer is then cheap: all recorded entries still there -> warm.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from baldr_ops.engines.max.bundle import (
    device_identity,
    read_json_dict,
    sha256_file,
    weight_files,
    write_json_quietly,
)
from baldr_ops.engines.max.command import EngineOptions
from baldr_ops.paths import cache_root, modular_cache_dir

INDEX_NAME = "compile-index.json"
MEF_TRAILER = 16          # bytes MAX 26.7 appends to an exported MEF when it stores it in its cache
MEF_CACHE_GLOB = ".max_cache/mof/mef/*/*"


def _index_path() -> Path:
    return cache_root() / INDEX_NAME


def _read_index() -> dict:
    return read_json_dict(_index_path())


def model_fingerprint(model_dir: Path) -> dict:
    """Cheap model identity for the index: config sha256 plus weight names, sizes and mtimes."""
    model_dir = Path(model_dir).expanduser().resolve()
    config = model_dir / "config.json"
    weights = weight_files(model_dir) if model_dir.is_dir() else []
    return {"path": str(model_dir),
            "config_sha256": sha256_file(config) if config.is_file() else None,
            "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights]}


def warmth_key(options: EngineOptions, max_version: str) -> str:
    device = device_identity(options.devices)
    body = {"max_version": max_version, "device": device.model_dump(exclude={"name"}),
            "model": model_fingerprint(options.model_path), "options": options.compile_identity()}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def cache_entries_for_mefs(mefs_dir: Path, cache_dir: Path) -> list[str]:
    """The cache entries (paths relative to cache_dir) holding the graphs exported into mefs_dir."""
    mefs = [p for p in Path(mefs_dir).glob("*.mef") if p.is_file()]
    candidates = [p for p in Path(cache_dir).glob(MEF_CACHE_GLOB) if p.is_file()]
    found: list[str] = []
    for mef in mefs:
        size = mef.stat().st_size
        body = None
        for entry in candidates:
            if entry.stat().st_size != size + MEF_TRAILER:
                continue
            body = body if body is not None else mef.read_bytes()
            with open(entry, "rb") as handle:
                if handle.read(size) == body:
                    found.append(entry.relative_to(cache_dir).as_posix())
                    break
    return sorted(found)


def record_compiled(options: EngineOptions, max_version: str, entries: list[str],
                    cache_dir: Path | None = None) -> None:
    """Remember which cache entries hold this model's graphs for these options (after a compile)."""
    if not entries:
        return
    cache_dir = Path(cache_dir) if cache_dir else modular_cache_dir()
    index = _read_index()
    index[warmth_key(options, max_version)] = {
        "model": str(Path(options.model_path).resolve()), "cache_dir": str(cache_dir.resolve()),
        "fingerprint": model_fingerprint(options.model_path),
        "options": options.compile_identity(), "max_version": max_version, "entries": entries}
    write_json_quietly(_index_path(), index)


def cache_warm(model_dir: Path, options: EngineOptions | None = None, cache_dir: Path | None = None,
               max_version: str | None = None) -> bool | None:
    """True: the compile cache holds this model's graphs (for these options, or for any recorded
    options when `options` is None). False: the cache is empty or missing, or the recorded entries
    are gone. None: unknown (never compiled through `baldr-ops compile` against this cache, or MAX is
    not installed). Cheap: no MAX import; the weights are not hashed (sizes and mtimes only).
    """
    cache_dir = Path(cache_dir) if cache_dir else modular_cache_dir()
    if not cache_dir.is_dir() or not any(cache_dir.glob(MEF_CACHE_GLOB)):
        return False
    if max_version is None:
        from baldr_ops.engines.max.quirks import installed_version

        max_version = installed_version()
        if max_version is None:
            return None
    model_dir = Path(model_dir).expanduser().resolve()
    index = _read_index()
    resolved_cache = str(cache_dir.resolve())
    if options is not None:
        records = [index.get(warmth_key(options, max_version))]
    else:
        records = [r for r in index.values() if isinstance(r, dict) and r.get("model") == str(model_dir)
                   and r.get("max_version") == max_version]
    records = [r for r in records if isinstance(r, dict) and r.get("cache_dir") == resolved_cache]
    if not records:
        return None
    if options is None:
        # Without options the key is not checked: make sure the model has not changed since.
        fingerprint = model_fingerprint(model_dir)
        records = [r for r in records if r.get("fingerprint") == fingerprint]
        if not records:
            return None
    return any(all((cache_dir / rel).is_file() for rel in r.get("entries", [])) and r.get("entries")
               for r in records)


def describe_warmth(value: bool | None) -> str:
    """The words status, doctor and compile --check all use for a cache_warm() answer."""
    if value is True:
        return "warm"
    if value is False:
        return "cold (the next start compiles; baldr-ops compile does it ahead of time)"
    return "unknown (not compiled through baldr-ops compile against this cache)"
