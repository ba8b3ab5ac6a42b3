"""Launch metrics for Prometheus (`baldr-ops status --prometheus FILE`): readiness, restarts, the
canary's latency and failures, the sampling guard, the memory guard. Named per Prometheus
conventions (base units, `_total` counters, `_info` for labelled constants)."""

from __future__ import annotations

import time

from baldr_ops.launch.runstate import RunStatus
from baldr_ops.prometheus import Exposition


def exposition(states: list[RunStatus], now: float | None = None) -> str:
    out = Exposition()

    def each(fn):
        return [({"port": s.port, "served_name": s.served_name}, fn(s)) for s in states if fn(s) is not None]

    out.metric("baldr_launch_up", "gauge", "1 while the launch's supervisor runs.", each(lambda s: int(s.alive)))
    out.metric("baldr_launch_ready", "gauge", "1 while the server is ready (canary passed).",
               each(lambda s: int(s.alive and s.state == "ready")))
    out.metric("baldr_launch_restarts_total", "counter", "Server restarts by the supervisor.",
               each(lambda s: s.restarts))
    out.metric("baldr_launch_canary_latency_seconds", "gauge", "Latency of the last canary set (at ready or since).",
               each(lambda s: s.canary and (s.canary.last_latency_s if s.canary.last_latency_s is not None
                                            else s.canary.ready_latency_s)))
    out.metric("baldr_launch_canary_checks_total", "counter", "Canary checks while serving.",
               each(lambda s: s.canary and s.canary.checks))
    out.metric("baldr_launch_canary_failures_total", "counter", "Canary checks that failed while serving.",
               each(lambda s: s.canary and s.canary.failures))
    out.metric("baldr_launch_sampling_guard_info", "gauge", "The sampling guard's mode (modular#6488), as a label.",
               [({"port": s.port, "served_name": s.served_name, "mode": s.guard.mode}, 1) for s in states if s.guard])
    out.metric("baldr_launch_memguard_actions_total", "counter", "Memory-guard actions taken, by action.",
               [({"port": s.port, "served_name": s.served_name, "action": action}, count)
                for s in states if s.memguard for action, count in sorted(s.memguard.actions.items())])
    out.metric("baldr_launch_status_timestamp_seconds", "gauge", "When this file was written (Unix time).",
               [({}, round(now if now is not None else time.time(), 3))])
    return out.text()
