"""Start `max serve`, gate its readiness, keep it alive, stop it clean.

States: starting -> loading/compiling/warming (from MAX's log) -> ready (canary passed) ->
draining -> stopped | failed. The child runs in its own session so the whole tree (MAX's metrics
and model workers included) is signalled together and nothing is orphaned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable

from baldr_ops.engines.max.logphases import PhaseState
from baldr_ops.launch import readiness
from baldr_ops.launch.exits import MEMORY_CLASSES, ExitEvidence, ExitVerdict, classify_exit
from baldr_ops.launch.runstate import GuardInfo, RunDir, RunStatus
from baldr_ops.launch.sdnotify import Notifier
from baldr_ops.plan.model import LaunchPlan
from baldr_ops.system.ports import port_open

# MAX log phase -> run state shown to users.
_PHASE_STATE = {"starting": "starting", "configuring": "loading", "worker": "loading",
                "compiling": "compiling", "sampler": "compiling", "warmup": "warming", "ready": "warming"}


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Capped exponential backoff: initial, 2x, 4x, ... never above cap (attempt counts from 1)."""
    return min(cap, initial * (2 ** max(0, attempt - 1)))


class Reporter:
    """Progress sink; the CLI renders these. Default: silent."""

    def phase(self, status: RunStatus) -> None: ...
    def line(self, text: str) -> None: ...
    def ready(self, status: RunStatus, gate: readiness.GateResult) -> None: ...
    def exited(self, verdict: ExitVerdict, postmortem: str | None) -> None: ...
    def message(self, text: str) -> None: ...


class Supervisor:
    def __init__(self, plan: LaunchPlan, rundir: RunDir, reporter: Reporter | None = None,
                 memory_recheck: Callable[[], str | None] | None = None,
                 evidence: Callable[[float], dict] | None = None,
                 after_ready: Callable[[Supervisor], int | None] | None = None):
        self.plan = plan
        self.rundir = rundir
        self.reporter = reporter or Reporter()
        # Returns None when memory is fine again, else the reason not to restart.
        self.memory_recheck = memory_recheck
        # Kernel-side evidence since a time: {"oom_kills_delta": int, "kernel_lines": [...]}.
        self.evidence = evidence or (lambda since: {})
        # Called once the server is ready; a non-None return ends the run with that code.
        self.after_ready = after_ready
        self.notifier = Notifier()
        self.proc: subprocess.Popen | None = None
        self.stop_signal: int | None = None
        self.restart_requested = False
        self._wake = threading.Event()
        self.tail: deque[str] = deque(maxlen=200)
        self.status = RunStatus(
            port=plan.port, host=plan.host, url=readiness.base_url(plan.host, plan.port), model=plan.model,
            served_name=plan.served_name, supervisor_pid=os.getpid(), log_path=str(rundir.log_file),
            guard=GuardInfo(mode=plan.guard.mode, reason=plan.guard.reason), shim=plan.shim,
            memory_cap=plan.memory_cap, state="starting")

    # -- state -------------------------------------------------------------------------------
    def _set(self, **changes) -> None:
        for key, value in changes.items():
            setattr(self.status, key, value)
        self.rundir.write(self.status)
        if "state" in changes or "phase" in changes:
            self.notifier.status(f"{self.status.state}: {self.status.phase_detail or self.status.phase}")
            self.reporter.phase(self.status)

    # -- signals -----------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self.restart_requested = True
        else:
            self.stop_signal = signum
        self._wake.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on a signal."""
        self._wake.wait(seconds)
        self._wake.clear()

    # -- child -------------------------------------------------------------------------------
    def _start_child(self) -> PhaseState:
        phases = PhaseState()
        log = open(self.rundir.log_file, "a", buffering=1, encoding="utf-8", errors="replace")
        log.write(f"\n===== baldr-ops: starting {' '.join(self.plan.command)} at {time.ctime()} =====\n")
        env = {**os.environ, **self.plan.env}
        self.proc = subprocess.Popen(self.plan.command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True, text=True,
                                     encoding="utf-8", errors="replace", bufsize=1)
        self._set(server_pid=self.proc.pid, state="starting", phase="starting", phase_detail="process started",
                  compile_elapsed_s=None, ready_at=None)

        def pump(stream, proc=self.proc):
            for line in stream:
                log.write(line)
                self.tail.append(line.rstrip("\n"))
                self.reporter.line(line.rstrip("\n"))
                if phases.feed(line) or phases.compile_elapsed_s != self.status.compile_elapsed_s:
                    if self.status.state not in ("ready", "draining"):
                        self._set(phase=phases.phase, phase_detail=phases.detail,
                                  compile_elapsed_s=phases.compile_elapsed_s,
                                  state=_PHASE_STATE.get(phases.phase, "loading"))
            log.close()

        self._pump = threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True, name="max-log")
        self._pump.start()
        return phases

    def _session_pids(self, sid: int) -> list[int]:
        """Processes still in the child's session (MAX's workers), found via /proc."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    if os.getsid(int(entry)) != sid:
                        continue
                    with open(f"/proc/{entry}/stat") as fh:
                        if fh.read().rsplit(")", 1)[1].split()[0] != "Z":  # zombies wait for init, not us
                            pids.append(int(entry))
                except (OSError, IndexError):
                    continue
        return pids

    def _signal_tree(self, sig: int) -> None:
        if not self.proc:
            return
        for pid in self._session_pids(self.proc.pid):
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    def drain(self) -> int | None:
        """Stop on request: mark draining, then end the server's whole process tree."""
        if not self.proc:
            return None
        self._set(state="draining", phase_detail=f"SIGTERM to the server, {self.plan.supervision.grace_s:.0f} s grace")
        self.notifier.send("STOPPING=1")
        return self._end_session()

    def _end_session(self) -> int:
        """TERM every process in the server's session, wait the grace period, KILL the rest, reap.

        Also after the server died on its own: MAX's model and metrics workers outlive a killed
        parent, and a restart must not leave them running beside the new server.
        """
        self._signal_tree(signal.SIGTERM)
        deadline = time.monotonic() + self.plan.supervision.grace_s
        while time.monotonic() < deadline and self._session_pids(self.proc.pid):
            if self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.2)
        if self._session_pids(self.proc.pid):
            self.reporter.message(f"still running after {self.plan.supervision.grace_s:.0f} s grace: SIGKILL")
            self._signal_tree(signal.SIGKILL)
            deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously
            while self._session_pids(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        return self.proc.wait()

    # -- main loop -----------------------------------------------------------------------------
    def _wait_ready(self, phases: PhaseState) -> readiness.GateResult | None:
        sup = self.plan.supervision
        deadline = time.monotonic() + sup.startup_timeout_s
        last = None
        while time.monotonic() < deadline:
            if self.stop_signal or self.proc.poll() is not None:
                return None
            # systemd's watchdog runs during start-up too: the server is alive and the startup
            # timeout (not the watchdog) bounds a compile that never ends.
            if self.notifier.watchdog_interval_s:
                self.notifier.send("WATCHDOG=1")
            if port_open(self.plan.host, self.plan.port):
                last = readiness.check_once(self.plan.host, self.plan.port, self.plan.served_name, canary=sup.canary)
                if last.ok:
                    return last
            # Poll often: every second spent here is start-up time the user waits for.
            self._sleep(0.2)
        self.reporter.message(f"not ready after {sup.startup_timeout_s:.0f} s (last: {last.detail if last else 'port closed'})")
        return None

    def _watch_alive(self) -> str:
        """While ready: liveness every interval, watchdog pings. Returns why watching ended."""
        sup = self.plan.supervision
        failures = 0
        last_ping = 0.0
        while True:
            if self.stop_signal:
                return "stop"
            if self.restart_requested:
                return "restart"
            if self.proc.poll() is not None:
                return "exited"
            if readiness.alive(self.plan.host, self.plan.port):
                failures = 0
                if self.notifier.watchdog_interval_s and time.monotonic() - last_ping >= self.notifier.watchdog_interval_s:
                    self.notifier.send("WATCHDOG=1")
                    last_ping = time.monotonic()
            else:
                failures += 1
                self.reporter.message(f"liveness check failed ({failures}/{sup.liveness_failures})")
                if failures >= sup.liveness_failures:
                    return "unhealthy"
            interval = sup.liveness_interval_s
            if self.notifier.watchdog_interval_s:
                interval = min(interval, self.notifier.watchdog_interval_s)
            self._sleep(interval)

    def _postmortem(self, verdict: ExitVerdict, evidence: dict, phases: PhaseState, started: float) -> str:
        report = {
            "schema_version": "1.0", "tool": "baldr-ops", "kind": "postmortem",
            "verdict": verdict.model_dump(), "returncode": self.proc.returncode if self.proc else None,
            "uptime_s": round(time.time() - started, 1), "phase": phases.phase,
            "errors": phases.errors, "evidence": evidence, "log_tail": list(self.tail)[-50:],
            "command": self.plan.command,
        }
        return str(self.rundir.write_postmortem(report))

    def run(self) -> int:
        """Supervise until stopped or given up; returns the exit code for baldr-ops."""
        sup = self.plan.supervision
        attempt = 0
        while True:
            started = time.time()
            phases = self._start_child()
            gate = self._wait_ready(phases)
            outcome = "exited"
            if gate is not None:
                self._set(state="ready", phase="ready", ready_at=time.time(), phase_detail=gate.detail)
                self.notifier.send("READY=1", f"STATUS=ready: {self.status.url} serves {self.plan.served_name}")
                self.reporter.ready(self.status, gate)
                if self.after_ready:
                    code = self.after_ready(self)
                    if code is not None:
                        self.stop_signal = self.stop_signal or signal.SIGTERM
                        self.drain()
                        self._set(state="stopped", last_exit="stopped after the requested work",
                                  phase_detail="stopped after the requested work")
                        return code
                outcome = self._watch_alive()
            elif self.stop_signal:
                outcome = "stop"
            elif self.proc.poll() is None:
                outcome = "startup-timeout"

            if outcome == "stop" or self.stop_signal:
                code = self.drain()
                why = f"stopped by {signal.Signals(self.stop_signal).name}"
                self._set(state="stopped", last_exit=why, phase_detail=why)
                return _exit_code(code)
            if outcome in ("restart", "unhealthy", "startup-timeout"):
                self.reporter.message(f"restarting the server ({outcome})")
                self.restart_requested = False
                self.drain()
            else:
                self.proc.wait()
                self._end_session()

            # The last lines (often the error) may still be in the pipe: read them before judging.
            self._pump.join(timeout=5)
            evidence = self.evidence(started)
            verdict = classify_exit(ExitEvidence(
                returncode=self.proc.returncode, log_error_kinds=phases.error_kinds,
                stopping=outcome == "restart", **evidence))
            if outcome in ("unhealthy", "startup-timeout"):
                verdict = ExitVerdict(kind="crash", restart=True, summary=f"{outcome.replace('-', ' ')}; killed")
            postmortem = None if verdict.kind in ("stopped", "clean") else self._postmortem(verdict, evidence, phases, started)
            self._set(last_exit=verdict.summary)
            self.reporter.exited(verdict, postmortem)

            if outcome == "restart":
                continue
            if verdict.kind in MEMORY_CLASSES and self.memory_recheck:
                blocker = self.memory_recheck()
                if blocker:
                    self.reporter.message(f"not restarting into an out-of-memory condition: {blocker}")
                    self._set(state="failed")
                    return 1
                verdict = verdict.model_copy(update={"restart": True})
            if not verdict.restart:
                self._set(state="failed" if verdict.kind != "clean" else "stopped")
                return _exit_code(self.proc.returncode) or (1 if verdict.kind != "clean" else 0)
            if time.time() - started >= sup.healthy_reset_s:
                attempt = 0
            attempt += 1
            if attempt > sup.max_restarts:
                self.reporter.message(f"giving up after {sup.max_restarts} restarts")
                self._set(state="failed")
                return _exit_code(self.proc.returncode) or 1
            delay = backoff_delay(attempt, sup.backoff_initial_s, sup.backoff_max_s)
            self._set(state="restarting", restarts=self.status.restarts + 1)
            self.reporter.message(f"restart {attempt}/{sup.max_restarts} in {delay:.0f} s")
            self._sleep(delay)
            if self.stop_signal:
                self._set(state="stopped")
                return _exit_code(self.proc.returncode)


def _exit_code(returncode: int | None) -> int:
    """The child's status as a shell would report it (128 + signal when signalled)."""
    if returncode is None:
        return 1
    return 128 - returncode if returncode < 0 else returncode
