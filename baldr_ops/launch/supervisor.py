"""Start `max serve`, gate its readiness, keep it alive, stop it clean.

One writer: the main loop alone owns :class:`RunStatus`, writes the state file, talks to systemd
and to the reporter, and starts and ends the server. Other threads only put events on a queue:
the log pump (one per server start, the single writer of server.log) parses MAX's lines and
queues what changed; the prober asks the server over HTTP (the readiness gate, then liveness) so
a slow answer never blocks the loop; the work asked for after ready (--ask) runs beside it;
signal handlers queue the signal. The loop is a state machine over one server start at a time:

    start -> await ready -> watch -> judge the exit -> restart policy -> (start again | end)

States shown to users: starting -> loading/compiling/warming (from MAX's log) -> ready (canary
passed) -> draining -> stopped | failed, with restarting between starts.
"""

from __future__ import annotations

import enum
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from baldr_ops.engines.max.logphases import PhaseState
from baldr_ops.launch import readiness
from baldr_ops.launch.exits import MEMORY_CLASSES, ExitEvidence, ExitVerdict, classify_exit
from baldr_ops.launch.runstate import CanaryStatus, GuardInfo, PostMortem, RunDir, RunStatus
from baldr_ops.launch.sdnotify import Notifier
from baldr_ops.memguard.blackbox import BlackBox, read_box
from baldr_ops.memguard.reclaim import may_write_vm
from baldr_ops.memguard.runtime import GuardRuntime, ReclaimDone, SampleTaken
from baldr_ops.paths import blackbox_root
from baldr_ops.plan.canary import CanaryCheck
from baldr_ops.plan.guard import decide_guard
from baldr_ops.plan.model import LaunchPlan
from baldr_ops.process import LogLine, PumpEnded, SignalReceived, end_session
from baldr_ops.system.ports import port_open

# MAX log phase -> run state shown to users.
_PHASE_STATE = {"starting": "starting", "configuring": "loading", "worker": "loading",
                "compiling": "compiling", "sampler": "compiling", "warmup": "warming", "ready": "warming"}
TAIL_LINES = 200


class Outcome(enum.Enum):
    """Why one server start ended."""

    STOP = "stop"                          # SIGTERM/SIGINT to the supervisor
    RESTART = "restart"                    # SIGHUP: restart on request
    EXITED = "exited"                      # the server exited on its own
    UNHEALTHY = "unhealthy"                # liveness failed too often
    STARTUP_TIMEOUT = "startup-timeout"    # not ready in time
    DONE = "done"                          # the work asked for after ready (--ask) is done
    MEMGUARD = "memguard"                  # the memory guard found the host in danger
    CANARY = "canary"                      # the canary's answer is wrong (at ready, or since ready)
    SAMPLING = "sampling"                  # the sampling self-test failed before ready


# -- events: the only thing other threads hand to the main loop ---------------------------------

@dataclass(frozen=True)
class PhaseChange:
    phase: str
    detail: str
    compile_elapsed_s: float | None


@dataclass(frozen=True)
class GateChecked:
    run: object                     # the ServerRun it is about: results of an ended start are ignored
    result: readiness.GateResult


@dataclass(frozen=True)
class LivenessChecked:
    run: object
    ok: bool


@dataclass(frozen=True)
class CanaryChecked:
    run: object
    check: CanaryCheck


@dataclass(frozen=True)
class WorkDone:
    run: object
    code: int | None
    error: str | None = None


@dataclass(eq=False)
class ServerRun:
    """One start of the server. ``phases`` and ``tail`` belong to the pump thread until it is joined."""

    proc: subprocess.Popen
    pump: threading.Thread
    phases: PhaseState
    tail: deque
    started: float = field(default_factory=time.time)
    ended: threading.Event = field(default_factory=threading.Event)   # tells the prober to stop
    gate: readiness.GateResult | None = None                            # the last gate result
    liveness_failures: int = 0
    canary_failed: str | None = None                                    # why the canary failed while serving


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Capped exponential backoff: initial, 2x, 4x, ... never above cap (attempt counts from 1)."""
    return min(cap, initial * (2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    attempt: int              # the restart count after this decision (reset after a healthy run)
    delay_s: float = 0.0
    reason: str | None = None  # why not, beyond the verdict itself


def decide_restart(verdict: ExitVerdict, attempt: int, uptime_s: float, policy,
                   memory_blocker: str | None = None) -> RestartDecision:
    """The restart policy: configuration errors and clean exits never restart; memory deaths only
    when the memory preflight passes again (``memory_blocker`` is None); crashes with capped
    exponential backoff, the count reset after ``healthy_reset_s`` of uptime, at most ``max_restarts``."""
    restart = verdict.restart
    if verdict.kind in MEMORY_CLASSES:
        if memory_blocker:
            return RestartDecision(False, attempt, reason=f"not restarting into an out-of-memory condition: {memory_blocker}")
        restart = True
    if not restart:
        return RestartDecision(False, attempt)
    attempt = 1 if uptime_s >= policy.healthy_reset_s else attempt + 1
    if attempt > policy.max_restarts:
        return RestartDecision(False, attempt, reason=f"giving up after {policy.max_restarts} restarts")
    return RestartDecision(True, attempt, backoff_delay(attempt, policy.backoff_initial_s, policy.backoff_max_s))


class Reporter:
    """Progress sink; the CLI renders these. Called from the main loop only. Default: silent."""

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
        self.events: queue.SimpleQueue = queue.SimpleQueue()  # put() is safe from signal handlers
        self.stop_signal: int | None = None
        self.restart_requested = False
        self.done_code: int | None = None
        self.current: ServerRun | None = None
        self.memguard = self._make_memguard(plan)
        self.guard_stop: str | None = None     # the guard's reason to drain the server
        self.guard_kill: str | None = None     # the guard's reason not to wait for the drain
        self._guard_written = (None, 0.0)       # (level, time) of the last state write for the guard
        self.status = RunStatus(
            port=plan.port, host=plan.host, url=readiness.base_url(plan.host, plan.port), model=plan.model,
            served_name=plan.served_name, supervisor_pid=os.getpid(), log_path=str(rundir.log_file),
            guard=GuardInfo(mode=plan.guard.mode, reason=plan.guard.reason), shim=plan.shim,
            memory_cap=plan.memory_cap, state="starting",
            canary=CanaryStatus(prompts=[c.prompt for c in plan.supervision.canaries],
                                expect=[c.expect for c in plan.supervision.canaries],
                                every_s=plan.supervision.canary_every_s) if plan.supervision.canaries else None)

    def _make_memguard(self, plan: LaunchPlan) -> GuardRuntime | None:
        mg = plan.memguard
        if mg is None or mg.mode == "off":
            return None
        return GuardRuntime(mg.config(drop_caches_permitted=may_write_vm()), mg.weight_files, deliver=self.events.put,
                            blackbox=BlackBox(blackbox_root() / f"port-{plan.port}"), reason=mg.reason,
                            log=lambda text: self.reporter.message(text), rates=(mg.load_hz, mg.serve_hz))

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.current.proc if self.current else None

    # -- state: written here only ------------------------------------------------------------
    def _set(self, **changes) -> None:
        for key, value in changes.items():
            setattr(self.status, key, value)
        self.rundir.write(self.status)
        if "state" in changes or "phase" in changes:
            self.notifier.status(f"{self.status.state}: {self.status.phase_detail or self.status.phase}")
            self.reporter.phase(self.status)

    # -- events ------------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        self.events.put(SignalReceived(signum))

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _handle(self, event) -> None:
        if isinstance(event, LogLine):
            self.reporter.line(event.text)
        elif isinstance(event, PhaseChange):
            if self.status.state not in ("ready", "draining"):
                self._set(phase=event.phase, phase_detail=event.detail, compile_elapsed_s=event.compile_elapsed_s,
                          state=_PHASE_STATE.get(event.phase, "loading"))
        elif isinstance(event, (SampleTaken, ReclaimDone)):
            if self.memguard is not None:
                self._guard_event(event)
        elif isinstance(event, SignalReceived):
            if event.signum == signal.SIGHUP:
                self.restart_requested = True
            else:
                self.stop_signal = event.signum
        elif getattr(event, "run", None) is not self.current:
            return  # a probe or work result from a start that has ended
        elif isinstance(event, GateChecked):
            event.run.gate = event.result
        elif isinstance(event, LivenessChecked):
            if event.ok:
                event.run.liveness_failures = 0
            else:
                event.run.liveness_failures += 1
                self.reporter.message(f"liveness check failed ({event.run.liveness_failures}/"
                                      f"{self.plan.supervision.liveness_failures})")
        elif isinstance(event, WorkDone):
            if event.error:
                self.reporter.message(f"the work after ready failed: {event.error}")
            self.done_code = event.code
        elif isinstance(event, CanaryChecked):
            self._canary_checked(event.run, event.check)

    def _canary_checked(self, run: ServerRun, check: CanaryCheck) -> None:
        canary = self.status.canary.model_copy()
        canary.checks += 1
        canary.last_check_at, canary.last_latency_s = check.at, check.latency_s
        if not check.ok:
            canary.failures += 1
            canary.last_failure = check.reason
            self.reporter.message(f"canary failed while serving: {check.reason}")
            if self.plan.supervision.on_canary_failure == "restart":
                run.canary_failed = check.reason
        self._set(canary=canary)
    def _guard_event(self, event) -> None:
        decision = self.memguard.handle_event(event)
        if decision is not None and self.memguard.config.mode == "on":
            if "drain" in decision.actions and self.guard_stop is None:
                self.guard_stop = decision.reason
            if "kill" in decision.actions:
                self.guard_kill = f"memory guard: {decision.reason}"
        status = self.memguard.status
        level, written = self._guard_written
        # The state file follows the guard when its level changes or it acts, else every 5 s.
        if status.level != level or (decision is not None and decision.actions) or time.monotonic() - written >= 5:
            self._guard_written = (status.level, time.monotonic())
            self._set(memguard=status)
            if status.level in ("warn", "act", "unknown") or level in ("warn", "act", "unknown"):
                self.notifier.status(f"{self.status.state}: {status.line()}")

    def _wait(self, seconds: float) -> None:
        """Handle events for up to ``seconds``; return early once one asks the loop to look up (a
        signal, the server's output closing, a probe or work result)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                first = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if self._handle_all([first, *self._pending()]):
                return

    def _drain_events(self) -> None:
        self._handle_all(self._pending())

    def _pending(self) -> list:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def _handle_all(self, events: list) -> bool:
        """Handle events in order; True if one asks the loop to look up (a signal, end of output).
        Successive phase changes within one state are coalesced to the last: a flood of progress
        lines must not become a flood of state-file writes."""
        superseded = set()  # phase changes followed by a later one into the same state
        later_state = None
        for i in range(len(events) - 1, -1, -1):
            if isinstance(events[i], PhaseChange):
                state = _PHASE_STATE.get(events[i].phase)
                if state == later_state:
                    superseded.add(i)
                later_state = state
        wake = False
        for i, event in enumerate(events):
            if i not in superseded:
                self._handle(event)
                wake = wake or isinstance(event, WAKE_EVENTS) or (self.guard_stop or self.guard_kill) is not None
        return wake

    # -- start -------------------------------------------------------------------------------
    def _start(self) -> ServerRun:
        log = open(self.rundir.log_file, "a", buffering=1, encoding="utf-8", errors="replace")
        log.write(f"\n===== baldr-ops: starting {' '.join(self.plan.command)} at {time.ctime()} =====\n")
        proc = subprocess.Popen(self.plan.command, env={**os.environ, **self.plan.env}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True,
                                encoding="utf-8", errors="replace", bufsize=1)
        phases, tail = PhaseState(), deque(maxlen=TAIL_LINES)
        pump = threading.Thread(target=_pump, args=(proc.stdout, log, phases, tail, self.events),
                                daemon=True, name="max-log")
        run = ServerRun(proc=proc, pump=pump, phases=phases, tail=tail)
        pump.start()
        self.current = run
        self.guard_stop = self.guard_kill = None
        if self.memguard is not None:
            self.memguard.set_phase("loading")
        threading.Thread(target=_probe, args=(run, self.plan, self.events), daemon=True, name="prober").start()
        self._set(server_pid=proc.pid, state="starting", phase="starting", phase_detail="process started",
                  compile_elapsed_s=None, ready_at=None)
        return run

    # -- await ready ---------------------------------------------------------------------------
    def _await_ready(self, run: ServerRun) -> readiness.GateResult | Outcome:
        sup = self.plan.supervision
        deadline = time.monotonic() + sup.startup_timeout_s
        while True:
            if self.stop_signal:
                return Outcome.STOP
            if run.proc.poll() is not None:
                return Outcome.EXITED
            if run.gate is not None and run.gate.ok:
                return run.gate
            if run.gate is not None and run.gate.final:   # the answers are wrong: asking again will not help
                self.reporter.message(f"not ready: {run.gate.detail}")
                return Outcome.SAMPLING if run.gate.stage == "sampling" else Outcome.CANARY
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # systemd's watchdog runs during start-up too: the server is alive and the startup
            # timeout (not the watchdog) bounds a compile that never ends.
            if self.notifier.watchdog_interval_s:
                self.notifier.send("WATCHDOG=1")
            self._wait(min(remaining, self.notifier.watchdog_interval_s or 1.0))
        last = run.gate.detail if run.gate else "port closed"
        self.reporter.message(f"not ready after {sup.startup_timeout_s:.0f} s (last: {last})")
        return Outcome.STARTUP_TIMEOUT

    def _became_ready(self, gate: readiness.GateResult) -> None:
        if self.memguard is not None:
            self.memguard.set_phase("serving")
        if gate.check is not None:
            canary = self.status.canary.model_copy()
            canary.ready_answers = [a.text for a in gate.check.answers]
            canary.ready_latency_s = gate.check.latency_s
            self._set(canary=canary)
        self._set(state="ready", phase="ready", ready_at=time.time(), phase_detail=gate.detail)
        self.notifier.send("READY=1", f"STATUS=ready: {self.status.url} serves {self.plan.served_name}")
        self.reporter.ready(self.status, gate)
        if self.after_ready:
            run = self.current

            def work():
                try:
                    self.events.put(WorkDone(run, self.after_ready(self)))
                except Exception as exc:  # noqa: BLE001 - the work failing ends the run, it must not hang it
                    self.events.put(WorkDone(run, 1, f"{type(exc).__name__}: {exc}"))

            threading.Thread(target=work, daemon=True, name="after-ready").start()
        return None

    # -- watch ---------------------------------------------------------------------------------
    def _watch(self, run: ServerRun) -> Outcome:
        """While ready: react to events (liveness results from the prober, signals, the work
        asked for finishing), ping systemd's watchdog."""
        sup = self.plan.supervision
        while True:
            if self.stop_signal:
                return Outcome.STOP
            if self.restart_requested:
                return Outcome.RESTART
            if self.done_code is not None:
                return Outcome.DONE
            if self.guard_stop is not None:
                return Outcome.MEMGUARD
            if run.canary_failed is not None:
                return Outcome.CANARY
            if run.proc.poll() is not None:
                return Outcome.EXITED
            if run.liveness_failures >= sup.liveness_failures:
                return Outcome.UNHEALTHY
            if self.notifier.watchdog_interval_s and run.liveness_failures == 0:
                self.notifier.send("WATCHDOG=1")
            self._wait(self.notifier.watchdog_interval_s or 1.0)

    # -- end a start -----------------------------------------------------------------------------
    def _end(self, run: ServerRun, outcome: Outcome) -> int:
        """End the server's whole session (also after it exited: its workers may live on) and
        join the pump, so the last lines (often the error) are read before judging."""
        grace = self.plan.supervision.grace_s
        if outcome in (Outcome.STOP, Outcome.DONE, Outcome.MEMGUARD):
            self._set(state="draining", phase_detail=f"SIGTERM to the server, {grace:.0f} s grace")
            self.notifier.send("STOPPING=1")
        elif outcome in (Outcome.RESTART, Outcome.UNHEALTHY, Outcome.STARTUP_TIMEOUT):
            self.reporter.message(f"restarting the server ({outcome.value})")
        elif outcome in (Outcome.CANARY, Outcome.SAMPLING):
            self._set(state="draining", phase_detail=f"canary: SIGTERM to the server, {grace:.0f} s grace")
        if outcome == Outcome.MEMGUARD:
            self.reporter.message(f"memory guard: draining the server: {self.guard_stop}")
        if self.memguard is not None:
            self.memguard.set_phase("draining", drain_deadline=time.monotonic() + grace)
        run.ended.set()
        # Time passes in the loop, so the guard keeps sampling and can cut the drain short.
        code = end_session(run.proc, grace, on_kill=self.reporter.message, wait=self._wait,
                           kill_now=lambda: self.guard_kill)
        run.pump.join(timeout=5)
        self._drain_events()
        return code

    def _judge(self, run: ServerRun, outcome: Outcome) -> tuple[ExitVerdict, str | None]:
        evidence = self.evidence(run.started)
        if outcome in (Outcome.UNHEALTHY, Outcome.STARTUP_TIMEOUT):
            verdict = ExitVerdict(kind="crash", restart=True, summary=f"{outcome.value.replace('-', ' ')}; killed")
        elif outcome == Outcome.MEMGUARD:
            verdict = ExitVerdict(kind="memguard", restart=False, summary=f"stopped by the memory guard: {self.guard_stop}")
        elif outcome == Outcome.CANARY:
            drift = run.canary_failed is not None   # since ready: a restart may bring the right answers back
            verdict = ExitVerdict(kind="canary", restart=drift,
                                  summary=f"canary: {run.canary_failed or (run.gate.detail if run.gate else '?')}")
        elif outcome == Outcome.SAMPLING and "topk-kernel" not in run.phases.error_kinds:
            verdict = ExitVerdict(kind="sampling-kernel", restart=False,
                                  summary=f"the sampling self-test failed: {run.gate.detail if run.gate else '?'}")
        else:
            verdict = classify_exit(ExitEvidence(returncode=run.proc.returncode, log_error_kinds=run.phases.error_kinds,
                                                 last_error=run.phases.errors[-1] if run.phases.errors else None,
                                                 stopping=outcome == Outcome.RESTART, **evidence))
        postmortem = None
        if verdict.kind not in ("stopped", "clean"):
            report = PostMortem(verdict=verdict, returncode=run.proc.returncode,
                                uptime_s=round(time.time() - run.started, 1), phase=run.phases.phase,
                                errors=run.phases.errors, evidence=evidence, log_tail=list(run.tail)[-50:],
                                command=self.plan.command, blackbox=self._blackbox_summary(),
                                canary_failures=self.status.canary.failures if self.status.canary else 0)
            postmortem = str(self.rundir.write_postmortem(report))
        self._set(last_exit=verdict.summary)
        self.reporter.exited(verdict, postmortem)
        return verdict, postmortem

    def _fall_back_to_greedy(self, verdict: ExitVerdict) -> None:
        """Sampled decoding broke the worker: serve greedily instead of crashing in a loop."""
        greedy = decide_guard("greedy", None, False)
        greedy = greedy.model_copy(update={"reason": f"fallback after the sampling self-test: {verdict.summary}; "
                                                     "every request decodes greedily"})
        self.plan = self.plan.with_guard(greedy)
        self.reporter.message(f"{verdict.summary}: falling back to --guard greedy and starting again")
        self._set(guard=GuardInfo(mode=greedy.mode, reason=greedy.reason), restarts=self.status.restarts + 1)

    def _blackbox_summary(self) -> dict | None:
        if self.memguard is None or self.memguard.blackbox is None:
            return None
        self.memguard.blackbox.flush()
        return read_box(self.memguard.blackbox.directory).summary()

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until stopped or given up; returns the exit code for baldr-ops."""
        if self.memguard is not None:
            self.memguard.blackbox.start(port=self.plan.port, model=self.plan.model, mode=self.memguard.config.mode,
                                         load_floor=self.memguard.config.load_floor,
                                         serve_floor=self.memguard.config.serve_floor)
            self.memguard.start()
            self._set(memguard=self.memguard.status)
        try:
            return self._supervise()
        finally:
            if self.memguard is not None:
                self.memguard.stop()
                self.memguard.blackbox.end(state=self.status.state, last_exit=self.status.last_exit)

    def _supervise(self) -> int:
        attempt = 0
        while True:
            run = self._start()
            gate = self._await_ready(run)
            if not isinstance(gate, Outcome):
                self._became_ready(gate)
            outcome = gate if isinstance(gate, Outcome) else self._watch(run)
            code = self._end(run, outcome)
            if outcome == Outcome.DONE:
                self._set(state="stopped", last_exit="stopped after the requested work",
                          phase_detail="stopped after the requested work")
                return self.done_code
            if outcome == Outcome.STOP or self.stop_signal:
                why = f"stopped by {signal.Signals(self.stop_signal).name}"
                self._set(state="stopped", last_exit=why, phase_detail=why)
                return _exit_code(code)
            verdict, _ = self._judge(run, outcome)
            if outcome == Outcome.RESTART:
                self.restart_requested = False
                continue
            if verdict.kind == "sampling-kernel" and self.plan.guard.mode != "greedy":
                self._fall_back_to_greedy(verdict)
                continue
            if verdict.kind == "canary" and not verdict.restart:
                self._set(state="failed", phase_detail=verdict.summary)
                return 2   # the server answers, wrongly: like bad input, not a crash to retry
            blocker = None
            if verdict.kind in MEMORY_CLASSES:
                blocker = self.memory_recheck() if self.memory_recheck else "memory cannot be re-checked here"
            decision = decide_restart(verdict, attempt, time.time() - run.started, self.plan.supervision, blocker)
            attempt = decision.attempt
            if not decision.restart:
                if decision.reason:
                    self.reporter.message(decision.reason)
                self._set(state="stopped" if verdict.kind == "clean" else "failed", phase_detail=verdict.summary)
                if outcome in ENDED_BY_US:   # its status is our SIGTERM's, not its own: say "failed"
                    return 1
                return _exit_code(code) or (0 if verdict.kind == "clean" else 1)
            self._set(state="restarting", restarts=self.status.restarts + 1)
            self.reporter.message(f"restart {attempt}/{self.plan.supervision.max_restarts} in {decision.delay_s:.0f} s")
            self._wait(decision.delay_s)
            if self.stop_signal:
                self._set(state="stopped")
                return _exit_code(code)


def _pump(stream, log, phases: PhaseState, tail: deque, events: queue.SimpleQueue) -> None:
    """The log pump: the single writer of server.log and of this start's PhaseState. It must never
    stop reading (MAX blocks once the pipe fills), so it only writes the log and queues events."""
    try:
        for line in stream:
            log.write(line)
            text = line.rstrip("\n")
            tail.append(text)
            events.put(LogLine(text))
            before = phases.compile_elapsed_s
            if phases.feed(line) or phases.compile_elapsed_s != before:
                events.put(PhaseChange(phases.phase, phases.detail, phases.compile_elapsed_s))
    finally:
        log.close()
        events.put(PumpEnded())


def _probe(run: ServerRun, plan: LaunchPlan, events: queue.SimpleQueue) -> None:
    """The prober: the readiness gate every 0.2 s until it passes or the answers fail it (MAX binds
    its port only once the model worker is up), then liveness every interval and the canary set
    every ``canary_every_s``, until the start ends. HTTP waits happen here, never in the main loop."""
    import requests

    sup = plan.supervision
    gate = None
    while not run.ended.is_set():
        if port_open(plan.host, plan.port):
            gate = readiness.check_once(plan.host, plan.port, plan.served_name, canaries=sup.canaries,
                                        sampling_selftest=sup.sampling_selftest)
            events.put(GateChecked(run, gate))
            if gate.ok or gate.final:
                break
        # Poll often: every second spent here is start-up time the user waits for.
        run.ended.wait(0.2)
    if gate is None or not gate.ok:
        return
    recorded = gate.check.answers if gate.check else None
    now = time.monotonic()
    next_alive = now + sup.liveness_interval_s
    next_canary = now + sup.canary_every_s if sup.canary_every_s and sup.canaries else None
    while not run.ended.wait(max(0.0, min(t for t in (next_alive, next_canary) if t is not None) - time.monotonic())):
        now = time.monotonic()
        if now >= next_alive:
            events.put(LivenessChecked(run, readiness.alive(plan.host, plan.port)))
            next_alive = now + sup.liveness_interval_s
        if next_canary is not None and now >= next_canary:
            try:
                check = readiness.run_set(plan.host, plan.port, plan.served_name, sup.canaries, recorded)
            except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
                check = CanaryCheck(ok=False, reason=f"canary request failed: {type(exc).__name__}: {exc}")
            events.put(CanaryChecked(run, check))
            next_canary = time.monotonic() + sup.canary_every_s


# Starts the supervisor itself ended because something was wrong (not on request).
ENDED_BY_US = (Outcome.UNHEALTHY, Outcome.STARTUP_TIMEOUT, Outcome.MEMGUARD, Outcome.CANARY, Outcome.SAMPLING)
WAKE_EVENTS = (SignalReceived, PumpEnded, GateChecked, LivenessChecked, WorkDone, CanaryChecked)


def _exit_code(returncode: int | None) -> int:
    """The child's status as a shell would report it (128 + signal when signalled)."""
    if returncode is None:
        return 1
    return 128 - returncode if returncode < 0 else returncode
