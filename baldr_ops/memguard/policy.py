"""The memory guard's judgement: from one sample (and the ones before it) to actions. Pure: no I/O,
no clock of its own, so recorded trajectories replay with a fake clock and give the same decisions.

Two guards, one per phase of a server's life (docs/launch.md, "Memory guard"):

* **Load guard** (start -> ready). Streaming tens of GiB of weights floods the page cache: MemFree
  falls to ~1 GiB while MemAvailable looks fine, large free blocks run out, the GB10 driver fails an
  internal allocation and the kernel livelocks. When MemFree is under the load floor and reclaimable
  cache is large: drop the weight files' pages (``fadvise``, no root needed); if MemFree is still
  low and dropping caches is permitted, ``drop_caches``; ``compact`` when blocks of 2 MiB and more
  are scarce. Each action has its own rate limit.
* **Serve guard** (ready -> stop). Never one signal alone, and never MemFree (reclaimable cache is
  not danger): act only when MemAvailable stays under the serve floor for N samples AND there is
  evidence (memory PSI ``full`` avg10 over its threshold, a new NV_ERR_NO_MEMORY/Xid kernel line, or
  the MemAvailable trend reaching zero within the horizon). The ladder: reclaim, then (if the danger
  persists past the settle time) drain, then kill when exhaustion would come before the drain ends.

A signal that cannot be read is None: it is reported UNKNOWN and no rule fires on it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

GIB = 1 << 30
DEFAULT_HZ = (4.0, 1.0)   # samples a second: 4 from start to ready (a load flood moves fast), 1 while serving
Phase = Literal["loading", "serving", "draining"]
Mode = Literal["on", "dry-run", "off"]
ACTIONS = ("warn", "fadvise", "drop_caches", "compact", "drain", "kill")
RECLAIM = ("fadvise", "drop_caches", "compact")


@dataclass(frozen=True)
class Sample:
    """One reading of the memory signals. None: the signal could not be read (UNKNOWN)."""

    t: float                                  # seconds, monotonic (or a fixture's clock)
    mem_total: int | None = None
    mem_free: int | None = None
    mem_available: int | None = None
    reclaimable_cache: int | None = None      # page cache the kernel can drop: Cached - Shmem
    psi_full_avg10: float | None = None       # memory pressure, % of time all tasks stalled
    psi_some_avg10: float | None = None
    free_2m_bytes: int | None = None          # free memory in blocks of 2 MiB and more
    kernel_lines: tuple[str, ...] = ()        # new NVRM / Xid / OOM kernel-log lines since the last sample
    kernel_log_readable: bool | None = None   # None/False: new kernel lines cannot be seen (UNKNOWN)


def default_load_floor(mem_total: int) -> int:
    """8 GiB on machines of 64 GiB and more (fleets got through every GB10 load with it); scaled
    down in proportion below that (3 GiB on a 24 GiB machine)."""
    return 8 * GIB if mem_total >= 64 * GIB else int(8 * GIB * mem_total / (64 * GIB))


def default_serve_floor(mem_total: int) -> int:
    """4 GiB on machines of 64 GiB and more, in proportion below (1.5 GiB on 24 GiB): above the
    point where reclaim starts to livelock, below what a healthy server ever runs at."""
    return 4 * GIB if mem_total >= 64 * GIB else int(4 * GIB * mem_total / (64 * GIB))


@dataclass(frozen=True)
class GuardConfig:
    mode: Mode = "on"
    load_floor: int = 8 * GIB                 # MemFree floor while loading
    serve_floor: int = 4 * GIB                # MemAvailable floor while serving
    warn_factor: float = 1.5                  # warn when MemAvailable < serve_floor x this
    sustain_samples: int = 3                  # N samples under the serve floor before acting
    psi_full_threshold: float = 10.0          # memory PSI full avg10, % (oomd's default limit is 60)
    trend_horizon_s: float = 60.0             # act if MemAvailable would reach zero within this
    trend_window_s: float = 10.0              # samples the trend is fitted over
    large_cache: int = 1 * GIB                # reclaimable cache worth acting on
    scarce_2m: int = 1 * GIB                  # free memory in >= 2 MiB blocks below this is scarce
    fadvise_every_s: float = 2.0              # rate limits
    fadvise_settle_s: float = 1.0             # drop_caches only once fadvise has had this long
    drop_caches_every_s: float = 10.0
    compact_every_s: float = 30.0
    settle_s: float = 3.0                     # after a serve reclaim, wait this long before draining
    drop_caches_permitted: bool = True        # writing /proc/sys/vm/drop_caches needs root
    has_weight_files: bool = True             # something to fadvise

    @classmethod
    def for_machine(cls, mem_total: int, **overrides) -> GuardConfig:
        base = {"load_floor": default_load_floor(mem_total), "serve_floor": default_serve_floor(mem_total)}
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass(frozen=True)
class Decision:
    """What the guard decided at one sample: actions (in order) and why."""

    t: float
    phase: Phase
    actions: tuple[str, ...] = ()
    reason: str = ""
    level: Literal["ok", "warn", "act", "unknown"] = "ok"
    unknown: tuple[str, ...] = ()             # signals that could not be read at this sample
    time_to_exhaustion_s: float | None = None

    @property
    def acts(self) -> bool:
        return bool(set(self.actions) - {"warn"})


@dataclass
class MemGuard:
    config: GuardConfig
    _history: deque = field(default_factory=lambda: deque(maxlen=512))   # (t, MemAvailable)
    _last: dict = field(default_factory=dict)                              # action -> time last taken
    _under: int = 0                                                        # samples under the serve floor in a row
    _reclaimed_at: float | None = None                                     # serve-guard reclaim of this episode
    _warned: bool = False
    drain_deadline: float | None = None                                    # set by the actor when it drains

    # -- signals -------------------------------------------------------------------------------
    def _trend(self, sample: Sample) -> float | None:
        """Seconds until MemAvailable reaches zero at the rate of the last window; None if not falling."""
        if sample.mem_available is None:
            return None
        self._history.append((sample.t, sample.mem_available))
        points = [(t, a) for t, a in self._history if sample.t - t <= self.config.trend_window_s]
        if len(points) < 3 or points[-1][0] - points[0][0] <= 0:
            return None
        n = len(points)
        mean_t = sum(t for t, _ in points) / n
        mean_a = sum(a for _, a in points) / n
        var = sum((t - mean_t) ** 2 for t, _ in points)
        slope = sum((t - mean_t) * (a - mean_a) for t, a in points) / var   # bytes per second
        if slope >= 0:
            return None
        return max(0.0, sample.mem_available / -slope)

    @staticmethod
    def _unknown(sample: Sample) -> tuple[str, ...]:
        names = ("mem_free", "mem_available", "reclaimable_cache", "psi_full_avg10", "free_2m_bytes")
        missing = [n for n in names if getattr(sample, n) is None]
        if not sample.kernel_log_readable:
            missing.append("kernel_log")
        return tuple(missing)

    def _due(self, action: str, now: float, every: float) -> bool:
        last = self._last.get(action)
        return last is None or now - last >= every

    def _take(self, actions: list[str], now: float) -> None:
        for action in actions:
            self._last[action] = now

    def _reclaim_actions(self, sample: Sample, now: float, first_only: bool) -> list[str]:
        """fadvise first; drop_caches once fadvise has had its chance; compact when big blocks are scarce."""
        c = self.config
        out = []
        if c.has_weight_files and self._due("fadvise", now, c.fadvise_every_s):
            out.append("fadvise")
        elif c.drop_caches_permitted and self._due("drop_caches", now, c.drop_caches_every_s) and \
                (not first_only or not c.has_weight_files or now - self._last["fadvise"] >= c.fadvise_settle_s):
            out.append("drop_caches")
        if (sample.free_2m_bytes is not None and sample.free_2m_bytes < c.scarce_2m
                and c.drop_caches_permitted and self._due("compact", now, c.compact_every_s)):
            out.append("compact")
        return out

    # -- the judgement ---------------------------------------------------------------------------
    def observe(self, sample: Sample, phase: Phase) -> Decision:
        c = self.config
        now = sample.t
        unknown = self._unknown(sample)
        ttz = self._trend(sample)
        if c.mode == "off":
            return Decision(now, phase, unknown=unknown, time_to_exhaustion_s=ttz)
        if phase == "loading":
            return self._load(sample, unknown, ttz)
        if phase == "draining":
            return self._draining(sample, unknown, ttz)
        return self._serve(sample, unknown, ttz)

    def _load(self, s: Sample, unknown, ttz) -> Decision:
        c = self.config
        level = "unknown" if "mem_free" in unknown else "ok"
        if s.mem_free is None or s.mem_free >= c.load_floor:
            return Decision(s.t, "loading", level=level, unknown=unknown, time_to_exhaustion_s=ttz)
        low = f"MemFree {s.mem_free / GIB:.1f} GiB < load floor {c.load_floor / GIB:.1f} GiB"
        if s.reclaimable_cache is None or s.reclaimable_cache < c.large_cache:
            cache = "unknown" if s.reclaimable_cache is None else f"{s.reclaimable_cache / GIB:.1f} GiB"
            return Decision(s.t, "loading", level="warn", unknown=unknown, time_to_exhaustion_s=ttz,
                            reason=f"{low}, but reclaimable cache is {cache}: nothing to reclaim")
        actions = self._reclaim_actions(s, s.t, first_only=True)
        self._take(actions, s.t)
        return Decision(s.t, "loading", tuple(actions), level="act" if actions else "warn", unknown=unknown,
                        time_to_exhaustion_s=ttz,
                        reason=f"{low} with {s.reclaimable_cache / GIB:.1f} GiB reclaimable cache"
                               + ("" if actions else " (actions rate-limited)"))

    def _evidence(self, s: Sample, ttz: float | None) -> list[str]:
        c = self.config
        found = []
        if s.psi_full_avg10 is not None and s.psi_full_avg10 >= c.psi_full_threshold:
            found.append(f"memory PSI full avg10 {s.psi_full_avg10:.1f} % >= {c.psi_full_threshold:g} %")
        gpu = [line for line in s.kernel_lines if "NV_ERR_NO_MEMORY" in line or "Xid" in line]
        if gpu:
            found.append(f"kernel: {gpu[-1][:160]}")
        if ttz is not None and ttz <= c.trend_horizon_s:
            found.append(f"MemAvailable reaches zero in {ttz:.0f} s at the current rate")
        return found

    def _serve(self, s: Sample, unknown, ttz) -> Decision:
        c = self.config
        if s.mem_available is None:
            self._under = 0
            return Decision(s.t, "serving", level="unknown", unknown=unknown, time_to_exhaustion_s=ttz,
                            reason="MemAvailable cannot be read: the serve guard cannot judge")
        avail = f"MemAvailable {s.mem_available / GIB:.1f} GiB"
        evidence = self._evidence(s, ttz)
        nvrm_now = any("NV_ERR_NO_MEMORY" in line for line in s.kernel_lines)
        under = s.mem_available < c.serve_floor
        self._under = self._under + 1 if under else 0
        if not under:
            self._reclaimed_at = None
            if nvrm_now:  # the driver failed an allocation while memory looks fine: fragmentation or cache
                actions = self._reclaim_actions(s, s.t, first_only=False)
                self._take(actions, s.t)
                return Decision(s.t, "serving", tuple(actions), level="act" if actions else "warn", unknown=unknown,
                                time_to_exhaustion_s=ttz, reason=f"{evidence[-1] if evidence else 'NVRM'} ({avail})")
            if s.mem_available < c.serve_floor * c.warn_factor:
                first = not self._warned
                self._warned = True
                return Decision(s.t, "serving", ("warn",) if first else (), level="warn", unknown=unknown,
                                time_to_exhaustion_s=ttz,
                                reason=f"{avail} nears the serve floor {c.serve_floor / GIB:.1f} GiB")
            self._warned = False
            return Decision(s.t, "serving", unknown=unknown, time_to_exhaustion_s=ttz)
        floor = f"{avail} < serve floor {c.serve_floor / GIB:.1f} GiB"
        if not evidence or (self._under < c.sustain_samples and not nvrm_now):
            why = "no evidence of danger yet" if not evidence else f"{self._under}/{c.sustain_samples} samples"
            return Decision(s.t, "serving", level="warn", unknown=unknown, time_to_exhaustion_s=ttz,
                            reason=f"{floor}; {why}")
        reason = f"{floor} for {self._under} samples; " + "; ".join(evidence)
        if self._reclaimed_at is None:
            actions = self._reclaim_actions(s, s.t, first_only=False)
            self._take(actions, s.t)
            self._reclaimed_at = s.t
            if actions:
                return Decision(s.t, "serving", tuple(actions), "reclaim: " + reason, "act", unknown, ttz)
        fatal_wait = ttz is not None and ttz < c.settle_s   # memory would run out while we wait
        if s.t - self._reclaimed_at < c.settle_s and not nvrm_now and not fatal_wait:
            return Decision(s.t, "serving", level="warn", unknown=unknown, time_to_exhaustion_s=ttz,
                            reason=f"waiting {c.settle_s:g} s for the reclaim to show; " + reason)
        return Decision(s.t, "serving", ("drain",), "drain: " + reason, "act", unknown, ttz)

    def _draining(self, s: Sample, unknown, ttz) -> Decision:
        """While the server drains: kill at once if memory would run out before the drain ends."""
        if self.drain_deadline is None or ttz is None:
            return Decision(s.t, "draining", level="warn", unknown=unknown, time_to_exhaustion_s=ttz)
        remaining = self.drain_deadline - s.t
        if ttz < remaining:
            return Decision(s.t, "draining", ("kill",), level="act", unknown=unknown, time_to_exhaustion_s=ttz,
                            reason=f"MemAvailable reaches zero in {ttz:.0f} s, before the drain ends in {remaining:.0f} s")
        return Decision(s.t, "draining", level="warn", unknown=unknown, time_to_exhaustion_s=ttz)
