"""The memory guard at work: a sampler thread, the policy, reclaim on a worker thread, the black box.

The guard's state has one owner. Under `launch`, the supervisor's main loop owns it: the sampler
thread only queues :class:`SampleTaken` events, the loop calls :meth:`GuardRuntime.handle` and
performs drain and kill itself (it owns the server's life). Reclaim actions (dropping caches can
take seconds) run on a worker thread and come back as :class:`ReclaimDone` events with the
figures before and after. Where nothing else owns a loop (`compile`), :meth:`GuardRuntime.run_alone`
makes the sampler thread the owner.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from baldr_ops.memguard.blackbox import BlackBox
from baldr_ops.memguard.policy import DEFAULT_HZ, GIB, RECLAIM, Decision, GuardConfig, MemGuard, Phase, Sample
from baldr_ops.memguard.reclaim import ActionResult, compact_memory, drop_caches, fadvise_dontneed
from baldr_ops.memguard.sample import Sampler



@dataclass(frozen=True)
class SampleTaken:
    sample: Sample


@dataclass(frozen=True)
class ReclaimDone:
    results: tuple[ActionResult, ...]
    before: Sample
    after: Sample


class MemGuardStatus(BaseModel):
    """The guard in `status --json` (part of the run state)."""

    mode: str                                  # on | dry-run | off
    reason: str = ""                           # why this mode (auto picks it)
    phase: str = "loading"
    load_floor: int
    serve_floor: int
    level: str = "ok"                          # ok | warn | act | unknown
    mem_free: int | None = None
    mem_available: int | None = None
    psi_full_avg10: float | None = None
    free_2m_bytes: int | None = None
    unknown: list[str] = []                    # signals it cannot read (it never acts on them)
    last_decision: str | None = None
    actions: dict[str, int] = {}               # action -> times taken (dry-run: would have taken)
    blackbox: str | None = None

    def line(self) -> str:
        def gib(v):
            return "?" if v is None else f"{v / GIB:.1f}"
        text = (f"memguard {self.mode} ({self.phase}): {self.level}, MemFree {gib(self.mem_free)} GiB, "
                f"MemAvailable {gib(self.mem_available)} GiB")
        if self.unknown:
            text += f", UNKNOWN: {', '.join(self.unknown)}"
        return text


class GuardRuntime:
    def __init__(self, config: GuardConfig, weight_files: list[str] | None = None,
                 deliver: Callable[[object], None] | None = None, blackbox: BlackBox | None = None,
                 root: str = "/", reason: str = "", clock=time.monotonic, log: Callable[[str], None] | None = None,
                 rates: tuple[float, float] = DEFAULT_HZ):
        self.config = config
        self.policy = MemGuard(config)
        self.weight_files = list(weight_files or [])
        self.deliver = deliver
        self.blackbox = blackbox
        self.root = root
        self.clock = clock
        self.log = log or (lambda _text: None)
        self.phase: Phase = "loading"
        self.load_period_s, self.serve_period_s = 1 / rates[0], 1 / rates[1]
        self.counts: Counter = Counter()
        self.status = MemGuardStatus(mode=config.mode, reason=reason, load_floor=config.load_floor,
                                     serve_floor=config.serve_floor,
                                     blackbox=str(blackbox.directory) if blackbox else None)
        self._sampler = Sampler(root, clock=clock)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._reclaiming = threading.Lock()
        self._inbox: queue.SimpleQueue | None = None   # run_alone: the sampler thread's own events
        self.last_latency_s: float | None = None   # sample taken -> action started, for the bench
        self.last_action_at: float | None = None
        self.sample_error: str | None = None

    # -- the sampler thread ----------------------------------------------------------------------
    def period(self) -> float:
        return self.load_period_s if self.phase == "loading" else self.serve_period_s

    def start(self) -> None:
        if self.config.mode == "off" or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._sample_loop, daemon=True, name="memguard")
        self._thread.start()

    def run_alone(self) -> None:
        """No owner loop: the sampler thread owns the guard and handles its own events (`compile`:
        the load guard's reclaim only)."""
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.deliver = inbox.put
        self._inbox = inbox
        self.start()

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            try:
                event = SampleTaken(self._sampler.read())
            except Exception as exc:  # noqa: BLE001 - a reader bug must not end the guard: all UNKNOWN
                self.sample_error = f"{type(exc).__name__}: {exc}"
                event = SampleTaken(Sample(t=started))
            self.deliver(event)
            while self._inbox is not None and not self._inbox.empty():
                self.handle_event(self._inbox.get_nowait())
            self._wake.wait(max(0.0, self.period() - (self.clock() - started)))
            self._wake.clear()

    def set_phase(self, phase: Phase, drain_deadline: float | None = None) -> None:
        self.phase = phase
        self.status.phase = phase
        self.policy.drain_deadline = drain_deadline
        self._wake.set()  # take the new period at once

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sampler.close()

    # -- the owner's side ------------------------------------------------------------------------
    def handle_event(self, event) -> Decision | None:
        if isinstance(event, SampleTaken):
            return self.handle(event.sample)
        if isinstance(event, ReclaimDone):
            self._reclaim_done(event)
        return None

    def handle(self, sample: Sample) -> Decision:
        """Judge one sample; start reclaim (unless dry-run); return the decision so the owner can
        drain or kill. Every sample and every decision that says something goes to the black box."""
        decision = self.policy.observe(sample, self.phase)
        s = self.status
        s.level, s.mem_free, s.mem_available = decision.level, sample.mem_free, sample.mem_available
        s.psi_full_avg10, s.free_2m_bytes, s.unknown = sample.psi_full_avg10, sample.free_2m_bytes, list(decision.unknown)
        if self.blackbox is not None:
            self.blackbox.record("sample", phase=self.phase, mono=round(sample.t, 3), mem_total=sample.mem_total,
                                 mem_free=sample.mem_free, mem_available=sample.mem_available,
                                 reclaimable_cache=sample.reclaimable_cache, psi_full_avg10=sample.psi_full_avg10,
                                 psi_some_avg10=sample.psi_some_avg10, free_2m_bytes=sample.free_2m_bytes,
                                 kernel_lines=list(sample.kernel_lines), level=decision.level)
        if decision.actions or decision.reason:
            s.last_decision = ("would " if self.config.mode == "dry-run" and decision.acts else "") + \
                (f"{'+'.join(decision.actions)}: " if decision.actions else "") + decision.reason
            if self.blackbox is not None:
                self.blackbox.record("decision", phase=self.phase, actions=list(decision.actions),
                                     reason=decision.reason, dry_run=self.config.mode == "dry-run",
                                     time_to_exhaustion_s=decision.time_to_exhaustion_s)
            if decision.actions:
                self.log(s.last_decision)
        reclaim = [a for a in decision.actions if a in RECLAIM]
        taken = [a for a in decision.actions if a not in RECLAIM or self.config.mode != "on"]
        if reclaim and self.config.mode == "on":
            if self._start_reclaim(reclaim, sample):
                self.last_action_at = self.clock()
                self.last_latency_s = self.last_action_at - sample.t
                taken += reclaim
            else:
                self.log("memguard: the previous reclaim is still running; skipped " + "+".join(reclaim))
        if taken:
            self.counts.update(taken)
            s.actions = dict(self.counts)
        return decision

    def _start_reclaim(self, actions: list[str], before: Sample) -> bool:
        if not self._reclaiming.acquire(blocking=False):
            return False

        def work():
            try:
                results = []
                for action in actions:
                    if action == "fadvise":
                        results.append(fadvise_dontneed(self.weight_files))
                    elif action == "drop_caches":
                        results.append(drop_caches(self.root))
                    elif action == "compact":
                        results.append(compact_memory(self.root))
                after = self._sampler.read() if not self._stop.is_set() else before
                self.deliver(ReclaimDone(tuple(results), before, after))
            finally:
                self._reclaiming.release()

        threading.Thread(target=work, daemon=True, name="memguard-reclaim").start()
        return True

    def _reclaim_done(self, event: ReclaimDone) -> None:
        def gib(v):
            return "?" if v is None else f"{v / GIB:.2f}"
        b, a = event.before, event.after
        figures = (f"MemFree {gib(b.mem_free)} -> {gib(a.mem_free)} GiB, cache {gib(b.reclaimable_cache)} -> "
                   f"{gib(a.reclaimable_cache)} GiB, MemAvailable {gib(b.mem_available)} -> {gib(a.mem_available)} GiB")
        for result in event.results:
            self.log(f"memguard {result.action}: {result.detail} in {result.seconds:.2f} s; {figures}")
            if self.blackbox is not None:
                self.blackbox.record("action", action=result.action, ok=result.ok, detail=result.detail,
                                     seconds=round(result.seconds, 3), before_mem_free=b.mem_free,
                                     after_mem_free=a.mem_free, before_cache=b.reclaimable_cache,
                                     after_cache=a.reclaimable_cache, before_mem_available=b.mem_available,
                                     after_mem_available=a.mem_available)
