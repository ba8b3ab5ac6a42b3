"""MAX's console log lines turned into start-up phases (MAX 26.x, `HH:MM:SS.mmm LEVEL: msg`).

The patterns are data: one table, matched in order, so a new MAX wording is a one-line change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Phases in the order a healthy start passes through them.
PHASES = ("starting", "configuring", "worker", "compiling", "sampler", "warmup", "ready")

_LINE = re.compile(r"^(?:\d\d:\d\d:\d\d\.\d+\s+)?(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL):\s?(?P<msg>.*)$")

# (phase, pattern on the message). The first match wins.
PHASE_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("configuring", re.compile(r"^Auto-detected pipeline task")),
    ("worker", re.compile(r"^(Starting worker|Waiting for model worker readiness|Worker process startup took)")),
    ("compiling", re.compile(r"^(Initializing model pipeline|Building, compiling, and initializing model)")),
    ("compiling", re.compile(r"^Still compiling model \((?P<elapsed>[\d.]+)s elapsed\)")),
    ("sampler", re.compile(r"^Building, compiling, and initializing sampler")),
    ("warmup", re.compile(r"^(Model pipeline initialized|Device graph capture warmup)")),
    ("ready", re.compile(r"^(Model worker ready)")),
)
_SERVER_READY = re.compile(r"Server ready on (?P<url>http://\S+)")
_COMPILE_TOOK = re.compile(r"^Compiling (?P<what>model|sampler) took (?P<secs>[\d.]+) seconds")
_ERROR_HINTS = (
    (re.compile(r"Model size exceeds available memory"), "plan-oom"),
    (re.compile(r"CUDA_ERROR_OUT_OF_MEMORY|out of memory", re.I), "oom"),
    (re.compile(r"CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"), "topk-kernel"),
    (re.compile(r"is not supported on this device|Cannot cast from"), "encoding"),
    (re.compile(r"HFValidationError|Model path does not exist|not found while HF_HUB_OFFLINE"), "model-path"),
    (re.compile(r"address already in use|validate_port_is_free|Port \d+ is (already )?in use", re.I), "port"),
    (re.compile(r"Architecture '[^']*' not found in registry|No architecture found for"), "architecture"),
    (re.compile(r"exceeds the model's max_position_embeddings"), "max-length"),
    (re.compile(r"^Error: (No such option|Invalid value|Missing option|Got unexpected extra argument)"), "usage"),
)


@dataclass
class PhaseState:
    phase: str = "starting"
    detail: str = ""
    compile_elapsed_s: float | None = None
    compile_times: dict[str, float] = field(default_factory=dict)
    server_url: str | None = None
    errors: list[str] = field(default_factory=list)
    error_kinds: list[str] = field(default_factory=list)

    def feed(self, line: str) -> bool:
        """Update from one log line; True when the phase changed."""
        line = line.rstrip("\n")
        ready = _SERVER_READY.search(line)
        if ready:
            self.server_url = ready.group("url")
            return self._advance("ready", "server ready")
        match = _LINE.match(line.strip())
        message = match.group("msg").strip() if match else line.strip()
        level = match.group("level") if match else ""
        if level in ("ERROR", "CRITICAL") or message.startswith(("Traceback", "RuntimeError", "ValueError", "Error:")):
            self.errors = (self.errors + [message])[-20:]
        for pattern, kind in _ERROR_HINTS:
            if pattern.search(line) and kind not in self.error_kinds:
                self.error_kinds.append(kind)
        took = _COMPILE_TOOK.match(message)
        if took:
            self.compile_times[took.group("what")] = float(took.group("secs"))
        for phase, pattern in PHASE_PATTERNS:
            found = pattern.match(message)
            if found:
                if "elapsed" in pattern.groupindex:
                    self.compile_elapsed_s = float(found.group("elapsed"))
                return self._advance(phase, message)
        return False

    def _advance(self, phase: str, detail: str) -> bool:
        # Phases only move forward within one start; a restart makes a new PhaseState.
        if PHASES.index(phase) < PHASES.index(self.phase):
            return False
        changed = phase != self.phase
        self.phase, self.detail = phase, detail
        return changed
