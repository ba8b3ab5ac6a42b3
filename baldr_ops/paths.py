"""Where baldr-ops keeps things, in one place: cache, run state and configuration directories.

Each honours an explicit ``BALDR_*`` variable first (tests and services set it), then the XDG
variable, then the XDG default. Nothing here creates a directory: the writer that needs one does.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "BALDR_CACHE_DIR"
RUN_ENV = "BALDR_RUN_DIR"
STATE_ENV = "BALDR_STATE_DIR"


def cache_root() -> Path:
    """Converted models, file hashes, compile records: ``$BALDR_CACHE_DIR`` or ``$XDG_CACHE_HOME/baldr-ops``."""
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "baldr-ops")
    return Path(base)


def runs_root() -> Path:
    """One folder per launch (port): ``$BALDR_RUN_DIR``, else ``$XDG_RUNTIME_DIR/baldr-ops``, else
    ``~/.local/state/baldr-ops/runs`` (a user without a runtime directory, e.g. cron)."""
    explicit = os.environ.get(RUN_ENV)
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "baldr-ops"
    return Path(os.path.expanduser("~/.local/state/baldr-ops/runs"))


def state_root() -> Path:
    """What must survive a reboot (the memory guard's black boxes): ``$BALDR_STATE_DIR``, else
    ``$XDG_STATE_HOME/baldr-ops`` (``~/.local/state/baldr-ops``). Not the runtime directory,
    which is a tmpfs that a reboot empties."""
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")) / "baldr-ops"


def blackbox_root() -> Path:
    return state_root() / "blackbox"


def config_root(env: dict[str, str] | os._Environ | None = None) -> Path:
    """Operator configuration (the memory key): ``$XDG_CONFIG_HOME/baldr-ops``."""
    env = os.environ if env is None else env
    return Path(env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")) / "baldr-ops"


def modular_cache_dir(env: dict[str, str] | os._Environ | None = None) -> Path:
    """Where MAX keeps its compile cache: ``MODULAR_CACHE_DIR``, else ``~/.cache/modular``."""
    value = (os.environ if env is None else env).get("MODULAR_CACHE_DIR")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "modular"


def compile_log_path() -> Path:
    return cache_root() / "compile.log"
