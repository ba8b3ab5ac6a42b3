"""What each MAX release needs and offers, in one table that code and docs both read.

The installed version is read from package metadata, never by importing MAX (that takes seconds).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata

from baldr_ops.errors import UserError

SUPPORTED = "26.4 - 26.7"


@dataclass(frozen=True)
class MaxQuirks:
    version: str
    # Name of MemoryEstimator's free-memory classmethod: public in 26.4, private from 26.5.
    estimator_attr: str
    # `--sample-on-host` runs the token sampler on the CPU: the cleanest way around modular#6488.
    has_sample_on_host: bool
    # `--export-mefs` / `--precompiled-mefs`: reuse compiled graphs across machines.
    has_mef_export: bool
    # Device.is_host_unified exists in the driver API.
    has_is_host_unified: bool


def _release(version: str) -> tuple[int, int]:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise UserError(f"cannot parse the MAX version {version!r}") from None


def quirks_for(version: str) -> MaxQuirks:
    release = _release(version)
    return MaxQuirks(
        version=version,
        estimator_attr="free_memory" if release <= (26, 4) else "_free_memory",
        has_sample_on_host=release >= (26, 7),
        has_mef_export=release >= (26, 7),
        has_is_host_unified=release >= (26, 7),
    )


def installed_version() -> str | None:
    for dist in ("max", "modular"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def require_max() -> MaxQuirks:
    version = installed_version()
    if version is None:
        raise UserError("MAX is not installed in this Python environment",
                        hint="pip install 'baldr-ops[max]'  (MAX 26.7, about 2 GB)")
    if _release(version) < (26, 4):
        raise UserError(f"MAX {version} is older than supported ({SUPPORTED})",
                        hint="pip install 'modular==26.7.*'")
    check_install_path(max_package_dir())
    return quirks_for(version)


def max_package_dir() -> str | None:
    """Where the `max` package lies, found without importing it."""
    spec = importlib.util.find_spec("max")
    return next(iter(spec.submodule_search_locations), None) if spec and spec.submodule_search_locations else None


def check_install_path(path: str | None) -> None:
    """MAX's Mojo runtime takes its import path as a comma-separated list, so an installation whose
    path has a comma fails only once the model graph is built, tens of seconds in ("unable to locate
    module 'std'"; 26.7 through a symlinked venv here: "failed to import kernels from ''")."""
    if path and "," in path:
        raise UserError(f"MAX cannot start from {path}: the path contains a comma, which MAX's Mojo "
                        "import path cannot hold", hint="recreate the virtual environment under a path without commas")
