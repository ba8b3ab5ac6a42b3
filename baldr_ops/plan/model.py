"""The planning layer's types: what the user asked for, and what preflight decided."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from baldr_ops.engines.max.command import EngineOptions
from baldr_ops.plan.canary import Canary
from baldr_ops.plan.guard import GuardDecision
from baldr_ops.plan.memguard import MemGuardPlan


class Supervision(BaseModel):
    """How to watch and restart (the supervision policy, set from the CLI)."""

    model_config = ConfigDict(extra="forbid")

    startup_timeout_s: float = Field(default=1800, gt=0)
    grace_s: float = Field(default=30, ge=0)
    liveness_interval_s: float = Field(default=10, gt=0)
    liveness_failures: int = Field(default=3, ge=1)
    max_restarts: int = Field(default=5, ge=0)
    backoff_initial_s: float = Field(default=5, ge=0)
    backoff_max_s: float = Field(default=300, ge=0)
    healthy_reset_s: float = Field(default=600, ge=0)
    canary: bool = True                      # --no-canary: ready at /v1/models
    canaries: list[Canary] = []              # the canary set (planned: the demo's, the operator's, a file's)
    canary_every_s: float | None = None      # re-ask the set while serving (None: never)
    on_canary_failure: Literal["warn", "restart"] = "warn"
    sampling_selftest: bool = False          # one sampled request before ready (SM 12.x, guard not greedy)


class LaunchRequest(BaseModel):
    """What the user asked for (`baldr-ops launch` / `compile` options)."""

    model_config = ConfigDict(extra="forbid")

    model: Path | None = None            # None: the embedded demo model
    served_name: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    devices: str | None = None           # None: gpu when one is present, else cpu
    quantization_encoding: str | None = None
    max_length: int | None = None
    max_batch_size: int | None = None
    cap: str | None = None               # shim limit (BALDR_MEMCAP_LIMIT syntax); None: leave the floor
    floor: str = "8G"                    # OS headroom the shim and the fit check keep free
    guard: str = "auto"
    shim: str = "auto"                   # auto (with a GPU) | on | off
    force: bool = False
    precompiled: Path | None = None      # a `baldr-ops compile --export` bundle to start from
    telemetry: bool = False              # MAX's usage telemetry to Modular (off unless asked)
    canary_prompt: str | None = None     # the canary's prompt (default: the demo's question, or a generic one)
    canary_expect: str | None = None     # a regular expression the canary's answer must contain
    canary_file: Path | None = None      # a JSON canary set (prompts with expectations), for CI
    canary_every: str | None = None      # a duration: re-ask the canary set while serving
    memguard: str = "auto"               # auto | on | off | dry-run
    load_floor: str | None = None        # MemFree floor while loading (default: scaled to the machine)
    serve_floor: str | None = None       # MemAvailable floor while serving
    memguard_hz: str | None = None       # LOAD:SERVE samples a second (default 4:1)
    extra_args: list[str] = Field(default_factory=list)
    supervision: Supervision = Supervision()


class Hardware(BaseModel):
    gpu: bool
    name: str | None = None
    compute_capability: tuple[int, int] | None = None
    unified: bool | None = None
    detail: str = ""


class LaunchPlan(BaseModel):
    """Everything preflight decided: what to run, with which environment, watched how."""

    model_config = ConfigDict(extra="forbid")

    command: list[str]
    options: EngineOptions           # what MAX is asked to compile and serve (compile reuses it)
    env: dict[str, str]
    host: str
    port: int
    served_name: str
    model: str
    guard: GuardDecision
    shim: str | None = None
    memory_cap: str | None = None
    memguard: MemGuardPlan | None = None
    supervision: Supervision = Supervision()

    def with_guard(self, guard: GuardDecision) -> LaunchPlan:
        """The same plan under another sampling guard's environment (the fallback to greedy after
        the sampling kernel failed). MAX's command line stays as it was, so the compiled graphs are
        the same and the restart is a warm start: greedy decoding is enforced by the entry point's
        patch, which the environment turns on."""
        env = {k: v for k, v in self.env.items() if k != "BALDR_GUARD"} | guard.env
        supervision = self.supervision.model_copy(update={"sampling_selftest": False})
        return self.model_copy(update={"env": env, "guard": guard, "supervision": supervision})
