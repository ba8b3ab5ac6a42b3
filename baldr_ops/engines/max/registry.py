"""What the installed MAX accepts, read without starting a server: the architectures it serves and
the options `max serve` takes, so preflight can refuse a model or a flag MAX would fail on after
tens of seconds.

* Architectures: the ``SupportedArchitecture(name="...")`` declarations in the installed wheel's
  ``max/pipelines/architectures/*/arch.py``, read as text (importing MAX takes seconds).
* Options: `max serve --help`, parsed once per MAX version (about 8 s) and cached in the cache
  directory.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from baldr_ops.atomic import atomic_write
from baldr_ops.engines.max.quirks import installed_version, max_package_dir
from baldr_ops.paths import cache_root

_ARCH_NAME = re.compile(r'^\s*name\s*=\s*"([A-Za-z0-9_]+)"', re.M)
_OPTION = re.compile(r"--[A-Za-z0-9][A-Za-z0-9-]*")


def supported_architectures(package_dir: str | None = None) -> set[str] | None:
    """The names MAX's registry serves, or None when they cannot be read."""
    base = package_dir or max_package_dir()
    if base is None:
        return None
    names: set[str] = set()
    for arch_file in Path(base, "pipelines", "architectures").glob("*/arch.py"):
        try:
            names.update(_ARCH_NAME.findall(arch_file.read_text(errors="replace")))
        except OSError:
            continue
    return names or None


def parse_help_options(text: str) -> set[str]:
    """Every ``--option`` (and its ``--no-option`` twin) at the start of a help line."""
    options: set[str] = set()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-"):
            head = stripped.split("  ")[0]        # the option column, before the description
            options.update(_OPTION.findall(head))
    return options


def serve_options(python: str | None = None) -> set[str] | None:
    """The options `max serve` takes (cached per MAX version), or None when they cannot be read."""
    version = installed_version()
    if version is None:
        return None
    cache = cache_root() / f"max-serve-options-{version}.json"
    try:
        return set(json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    try:
        proc = subprocess.run([python or sys.executable, "-m", "max._entrypoints.pipelines", "serve", "--help"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    options = parse_help_options(proc.stdout)
    if proc.returncode != 0 or "--model-path" not in options:
        return None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, json.dumps(sorted(options)))
    except OSError:
        pass
    return options
