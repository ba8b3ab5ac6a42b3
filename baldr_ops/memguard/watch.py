"""`baldr-ops guard -- CMD`: any command (vLLM, llama.cpp, a training job) under the load and serve
guards. The command runs in its own session; this loop owns the guard and the command's life:
the sampler and the output pump only queue events. Load phase until the command's output matches
``ready_regex`` or ``ready_after_s`` pass; serve phase after. A drain is SIGTERM to the whole
session, the grace, then SIGKILL (sooner when memory would run out first).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from baldr_ops.memguard.blackbox import BlackBox
from baldr_ops.memguard.policy import DEFAULT_HZ, GuardConfig
from baldr_ops.memguard.runtime import GuardRuntime, MemGuardStatus
from baldr_ops.process import LogLine, PumpEnded, SignalReceived, end_session


@dataclass
class WatchResult:
    returncode: int
    guard_stop: str | None
    status: MemGuardStatus
    signal: int | None = None       # the signal that stopped us, if one did


def run_guarded(argv: list[str], config: GuardConfig, weight_files: list[str], blackbox: BlackBox,
                ready_regex: str | None = None, ready_after_s: float = 600.0, grace_s: float = 30.0,
                say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
                reason: str = "", rates: tuple[float, float] = DEFAULT_HZ) -> WatchResult:
    events: queue.SimpleQueue = queue.SimpleQueue()
    guard = GuardRuntime(config, weight_files, deliver=events.put, blackbox=blackbox, reason=reason,
                         log=lambda text: say(f"baldr-ops guard: {text}"), rates=rates)
    pattern = re.compile(ready_regex) if ready_regex else None
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                            stdout=subprocess.PIPE if pattern else None,
                            stderr=subprocess.STDOUT if pattern else None,
                            **({"text": True, "errors": "replace", "bufsize": 1} if pattern else {}))
    if pattern:
        def pump():
            for line in proc.stdout:
                sys.stdout.write(line)
                events.put(LogLine(line))
            events.put(PumpEnded())

        threading.Thread(target=pump, daemon=True, name="guard-output").start()
    previous = {sig: signal.signal(sig, lambda signum, _frame: events.put(SignalReceived(signum)))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    blackbox.start(command=argv, mode=config.mode, load_floor=config.load_floor, serve_floor=config.serve_floor)
    guard.start()
    started = time.monotonic()
    stop: dict = {"drain": None, "kill": None, "signal": None}

    def handle(event) -> None:
        if isinstance(event, SignalReceived):
            stop["signal"] = event.signum
        elif isinstance(event, LogLine):
            if guard.phase == "loading" and pattern.search(event.text):
                say("baldr-ops guard: ready (output matched); serve guard from now on")
                guard.set_phase("serving")
        elif not isinstance(event, PumpEnded):
            decision = guard.handle_event(event)
            if decision is not None and config.mode == "on":
                if "drain" in decision.actions and stop["drain"] is None:
                    stop["drain"] = decision.reason
                if "kill" in decision.actions:
                    stop["kill"] = f"memory guard: {decision.reason}"

    def wait(seconds: float) -> None:
        try:
            handle(events.get(timeout=seconds))
            while True:
                handle(events.get_nowait())
        except queue.Empty:
            pass

    try:
        while proc.poll() is None and stop["drain"] is None and stop["signal"] is None:
            if guard.phase == "loading" and time.monotonic() - started >= ready_after_s:
                say(f"baldr-ops guard: {ready_after_s:.0f} s passed; serve guard from now on")
                guard.set_phase("serving")
            wait(0.2)
        if proc.poll() is None:
            why = (f"memory guard: draining: {stop['drain']}" if stop["drain"]
                   else f"{signal.Signals(stop['signal']).name}: stopping the command")
            say(f"baldr-ops guard: {why}")
            guard.set_phase("draining", drain_deadline=time.monotonic() + grace_s)
        code = end_session(proc, grace_s, on_kill=lambda text: say(f"baldr-ops guard: {text}"), wait=wait,
                           kill_now=lambda: stop["kill"])
    finally:
        guard.stop()
        blackbox.end(returncode=proc.returncode, guard_stop=stop["drain"])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return WatchResult(returncode=code, guard_stop=stop["drain"], status=guard.status, signal=stop["signal"])


def exit_code(returncode: int) -> int:
    """A child's status as a shell reports it (128 + signal when signalled)."""
    return 128 - returncode if returncode < 0 else returncode


def default_box_name(argv: list[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(argv[0]) if argv else "command")[:40]
    return f"guard-{base}-{os.getpid()}"
