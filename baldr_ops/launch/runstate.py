"""Run directory of one launch (one per port): state file, supervisor lock, server log, post-mortems.

The lock is an flock held by the supervisor for its whole life: the kernel drops it when the
process dies, however it dies, so a second launch on the same port is refused and `status` can
tell a live run from a stale state file.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from baldr_ops.atomic import atomic_write
from baldr_ops.errors import UserError
from baldr_ops.launch.exits import ExitVerdict
from baldr_ops.memguard.runtime import MemGuardStatus
from baldr_ops.paths import RUN_ENV, runs_root
from baldr_ops.schema import Document

RunState = Literal["preflight", "starting", "loading", "compiling", "warming", "ready", "draining",
                   "restarting", "stopped", "failed"]


class GuardInfo(BaseModel):
    mode: str
    reason: str


class CanaryStatus(BaseModel):
    """The canary in `status`: what it asks, what it got at ready, how the checks since went."""

    prompts: list[str]
    expect: list[str | None] = []
    every_s: float | None = None
    ready_answers: list[str] = []
    ready_latency_s: float | None = None
    checks: int = 0                   # checks while serving
    failures: int = 0
    last_check_at: float | None = None
    last_latency_s: float | None = None
    last_failure: str | None = None


class RunStatus(Document):
    """`baldr-ops status --json`: one launch, as its supervisor last wrote it."""

    port: int
    host: str
    url: str
    model: str
    served_name: str
    state: RunState = "starting"
    phase: str = "starting"
    phase_detail: str = ""
    compile_elapsed_s: float | None = None
    supervisor_pid: int | None = None
    server_pid: int | None = None
    started_at: float = Field(default_factory=time.time)
    ready_at: float | None = None
    restarts: int = 0
    guard: GuardInfo | None = None
    shim: str | None = None          # preloaded library, or None
    memory_cap: str | None = None
    log_path: str = ""
    last_exit: str | None = None
    alive: bool = True               # filled in by readers: is the supervisor still running?
    compile_cache: str | None = None  # filled in by readers: is MAX's compile cache warm for the model?
    memguard: MemGuardStatus | None = None
    canary: CanaryStatus | None = None


class PostMortem(Document):
    """Written to the run directory after every unexpected exit of the server."""

    kind: Literal["postmortem"] = "postmortem"
    verdict: ExitVerdict
    returncode: int | None
    uptime_s: float
    phase: str                       # MAX's last start-up phase
    errors: list[str]                # MAX's error lines
    evidence: dict                   # kernel-side: OOM kills since start, NVRM/oomd lines
    log_tail: list[str]
    command: list[str]
    blackbox: dict | None = None     # the memory guard's last minute (after a guard stop)
    canary_failures: int = 0         # canary checks failed while serving, this supervisor's life


class RunDir:
    def __init__(self, port: int, root: Path | None = None):
        self.port = port
        self.path = (root or runs_root()) / f"port-{port}"
        self._lock_fd: int | None = None

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def log_file(self) -> Path:
        return self.path / "server.log"

    @property
    def lock_file(self) -> Path:
        return self.path / "supervisor.lock"

    def acquire(self) -> None:
        """Take the port's lock for this process's lifetime, or say who holds it."""
        self.ensure()
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._unusable(exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self.held_error() from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def check_usable(self) -> None:
        """Whether the directory could be made and written, without writing anything (preflight)."""
        probe = self.path
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
        if not probe.is_dir():
            raise self._unusable(NotADirectoryError(20, "Not a directory"))
        if not os.access(probe, os.W_OK | os.X_OK):
            raise self._unusable(PermissionError(13, "Permission denied"))

    def ensure(self) -> None:
        """The directory exists and is ours to write, or one line says why not."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise self._unusable(exc) from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise self._unusable(PermissionError(13, "Permission denied"))

    def _unusable(self, exc: OSError) -> UserError:
        return UserError(f"cannot use the run directory {self.path}: {exc.strerror or exc}",
                         hint=f"{RUN_ENV} (or XDG_RUNTIME_DIR) must name a directory this user can write")

    def held_error(self) -> UserError:
        """What to say when another supervisor holds the port's lock: who, and what to do."""
        holder = self.read()
        who = f" (supervisor pid {holder.supervisor_pid})" if holder and holder.supervisor_pid else ""
        return UserError(f"another baldr-ops launch already runs on port {self.port}{who}",
                         hint=f"baldr-ops stop --port {self.port}, or choose another --port")

    def held_by_someone(self) -> bool:
        """True when a live supervisor holds the lock (False for us if we hold it ourselves)."""
        if not self.lock_file.exists():
            return False
        fd = os.open(self.lock_file, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def write(self, status: RunStatus) -> None:
        atomic_write(self.state_file, status.model_dump_json(indent=2))

    def read(self) -> RunStatus | None:
        try:
            return RunStatus.model_validate(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return None

    def write_postmortem(self, report: PostMortem) -> Path:
        now = time.time()
        path = self.path / f"postmortem-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{int(now * 1000) % 1000:03d}.json"
        atomic_write(path, report.to_json())
        return path


def all_runs(root: Path | None = None) -> list[RunDir]:
    base = root or runs_root()
    if not base.is_dir():
        return []
    runs = []
    for entry in sorted(base.iterdir()):
        if entry.name.startswith("port-") and entry.name[5:].isdigit():
            runs.append(RunDir(int(entry.name[5:]), base))
    return runs


class AskResult(Document):
    """`baldr-ops launch --ask Q --json`: the question, the served model and its answer."""

    question: str
    model: str
    answer: str | None = None
    error: str | None = None
