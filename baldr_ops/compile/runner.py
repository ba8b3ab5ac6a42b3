"""Run MAX's ahead-of-time compile (`max warm-cache` through our entry point) with live phases.

The command comes from `warm_cache_command(plan.options)` and the environment from the launch plan,
so the graphs compiled here are the ones `launch` asks for.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

from baldr_ops.engines.max.logphases import PhaseState
from baldr_ops.process import end_session

GRACE_S = 15  # SIGTERM to SIGKILL when a compile is interrupted

# MAX log phase -> the state shown while compiling (launch's reporter renders it).
_STATE = {"starting": "starting", "configuring": "loading", "worker": "loading", "compiling": "compiling",
          "sampler": "compiling", "warmup": "compiling", "ready": "compiling"}


class CompileRun(SimpleNamespace):
    """Outcome of one warm-cache run."""

    returncode: int
    seconds: float
    compile_times: dict
    errors: list
    tail: list
    log: str


def run_compile(command: list[str], env: dict[str, str], reporter=None, log_path: Path | None = None,
                tick_s: float = 1.0) -> CompileRun:
    """Run `command`, feed its log to PhaseState, report phases (with elapsed compile time) as it goes."""
    phases = PhaseState()
    tail: deque[str] = deque(maxlen=40)
    status = SimpleNamespace(state="starting", phase="starting", phase_detail="process started",
                             compile_elapsed_s=None)
    compile_started: list[float] = []
    lock = threading.Lock()
    log = open(log_path, "w", buffering=1, encoding="utf-8", errors="replace") if log_path else None
    if log:
        log.write(f"===== baldr-ops compile: {' '.join(command)} at {time.ctime()} =====\n")
    start = time.monotonic()
    proc = subprocess.Popen(command, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True, encoding="utf-8",
                            errors="replace", bufsize=1)
    done = threading.Event()

    def show() -> None:
        if reporter is not None:
            reporter.phase(status)

    def ticker() -> None:  # elapsed time between MAX's once-a-minute "Still compiling" lines
        while not done.wait(tick_s):
            with lock:
                if status.state == "compiling" and compile_started:
                    status.compile_elapsed_s = max(phases.compile_elapsed_s or 0.0,
                                                   time.monotonic() - compile_started[0])
                    show()

    threading.Thread(target=ticker, daemon=True, name="compile-ticker").start()
    try:
        for line in proc.stdout:
            if log:
                log.write(line)
            text = line.rstrip("\n")
            tail.append(text)
            if reporter is not None and hasattr(reporter, "line"):
                reporter.line(text)
            with lock:
                changed = phases.feed(line)
                if changed:
                    status.phase, status.phase_detail = phases.phase, phases.detail
                    status.state = _STATE.get(phases.phase, "loading")
                    if status.state == "compiling" and not compile_started:
                        compile_started.append(time.monotonic())
                    show()
        proc.wait()
    except BaseException:
        end_session(proc, GRACE_S)
        raise
    finally:
        done.set()
        if log:
            log.close()
    end_session(proc, GRACE_S)  # anything MAX left behind in its session
    return CompileRun(returncode=proc.returncode, seconds=time.monotonic() - start,
                      compile_times=dict(phases.compile_times), errors=list(phases.errors), tail=list(tail),
                      log=str(log_path) if log_path else "")
