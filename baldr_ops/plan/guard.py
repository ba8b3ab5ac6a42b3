"""Sampling guard for the SM 12.x top-k kernel bug (modular#6488).

On compute capability 12.x (GB10 = 12.1, RTX PRO 6000 = 12.0) MAX's fused top-k/top-p sampling
kernel fails with CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES on the first request with temperature > 0.
Greedy decoding never reaches that kernel; `--sample-on-host` moves the sampler to the CPU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from baldr_ops.errors import UserError

GuardMode = Literal["auto", "host-sampling", "greedy", "off"]
GUARD_MODES = ("auto", "host-sampling", "greedy", "off")
AFFECTED_MAJOR = 12
ISSUE = "modular#6488"


class GuardDecision(BaseModel):
    requested: str
    mode: Literal["host-sampling", "greedy", "off"]
    reason: str
    serve_args: dict = {}   # EngineOptions fields to set
    env: dict[str, str] = {}


def is_affected(compute_capability: tuple[int, int] | None) -> bool:
    return compute_capability is not None and compute_capability[0] == AFFECTED_MAJOR


def decide_guard(requested: str, compute_capability: tuple[int, int] | None,
                 has_sample_on_host: bool) -> GuardDecision:
    """Pick the guard from the request, the GPU and what the installed MAX can do."""
    if requested not in GUARD_MODES:
        raise UserError(f"unknown --guard {requested!r}", hint=f"choose one of: {', '.join(GUARD_MODES)}")
    where = f"SM {compute_capability[0]}.{compute_capability[1]}" if compute_capability else "no GPU"
    if requested == "off":
        return GuardDecision(requested=requested, mode="off", reason="guard turned off (--guard off)")
    if requested == "auto" and not is_affected(compute_capability):
        return GuardDecision(requested=requested, mode="off",
                             reason=f"not needed on {where}: {ISSUE} affects SM 12.x only")
    if requested == "host-sampling" or (requested == "auto" and has_sample_on_host):
        if not has_sample_on_host:
            raise UserError("--guard host-sampling needs MAX 26.7 or newer (--sample-on-host)",
                            hint="use --guard greedy, or upgrade MAX")
        return GuardDecision(requested=requested, mode="host-sampling",
                             reason=f"{where}: sampler runs on the CPU (--sample-on-host) to avoid {ISSUE}",
                             serve_args={"sample_on_host": True})
    return GuardDecision(
        requested=requested, mode="greedy",
        reason=f"{where}: every request decodes greedily, temperature > 0 included, to avoid {ISSUE}",
        serve_args={"default_temperature": 0.0, "default_top_k": 1},
        env={"BALDR_GUARD": "greedy"},
    )
