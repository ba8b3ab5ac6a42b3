"""MAX patches, checked against the installed MAX (skipped where MAX is absent)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import BaseModel, ConfigDict

from baldr_ops.engines.max.patches import force_greedy, rebuild_incomplete

pytestmark = pytest.mark.max


def run_py(code: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_greedy_guard_overrides_a_sampling_request():
    code = """
from baldr_ops.engines.max.patches import apply_all
apply_all()
from max.pipelines.context.sampling_params import (SamplingParams, SamplingParamsInput,
    SamplingParamsGenerationConfigDefaults)
p = SamplingParams.from_input_and_generation_config(
    SamplingParamsInput(temperature=0.9, top_k=50, top_p=0.8), SamplingParamsGenerationConfigDefaults())
print("RESULT", p.temperature, p.top_k, p.top_p)
"""
    guarded = run_py(code, {"BALDR_GUARD": "greedy"})
    assert "RESULT 0.0 1 1.0" in guarded.stdout, guarded.stderr
    assert "patch sampling-guard: applied" in guarded.stderr
    unguarded = run_py(code, {"BALDR_GUARD": "off"})
    assert "RESULT 0.9 50 0.8" in unguarded.stdout, unguarded.stderr
    assert "patch sampling-guard: skipped" in unguarded.stderr


def test_estimator_patch_is_what_max_plans_with():
    code = """
from baldr_ops.engines.max.patches import apply_all
apply_all()
from max.pipelines.lib.memory_estimation import MemoryEstimator
from max.driver import CPU
print("FREE", MemoryEstimator._free_memory([CPU()]))
"""
    forced = run_py(code, {"BALDR_PATCH_ESTIMATOR": "on", "BALDR_PLAN_FREE_BYTES": "12345678"})
    assert "FREE 12345678" in forced.stdout, forced.stderr
    # auto: only unified-memory GPUs get the figure; a CPU device keeps MAX's own number.
    auto = run_py(code, {"BALDR_PATCH_ESTIMATOR": "auto", "BALDR_PLAN_FREE_BYTES": "12345678"})
    assert "FREE " in auto.stdout and "FREE 12345678" not in auto.stdout, auto.stderr
    off = run_py(code, {"BALDR_PATCH_ESTIMATOR": "off"})
    assert "patch memory-estimator: skipped (disabled" in off.stderr


@pytest.mark.slow
def test_max_serve_refuses_a_model_bigger_than_our_figure(demo_model):
    """MAX's planner, run through our entry point, plans with our 1 MiB figure and refuses the model."""
    proc = subprocess.run(
        [sys.executable, "-m", "baldr_ops.engines.max.entry", "serve", "--model-path", str(demo_model),
         "--devices", "cpu", "--port", "18999", "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "BALDR_PATCH_ESTIMATOR": "on", "BALDR_PLAN_FREE_BYTES": str(2**20),
             "HF_HUB_OFFLINE": "1", "OTEL_SDK_DISABLED": "true"})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Model size exceeds available memory" in output and "1.00 MiB" in output, output[-3000:]


def test_pydantic_rebuild_completes_a_model_with_torch_annotations():
    class NeedsTorch(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True, defer_build=True)
        dtype: torch.dtype | str | None = None  # noqa: F821 - resolved by the rebuild

    assert NeedsTorch.__pydantic_complete__ is False
    assert rebuild_incomplete([NeedsTorch]) == ["NeedsTorch"]
    assert NeedsTorch(dtype="float32").dtype == "float32"
    assert rebuild_incomplete([NeedsTorch]) == []  # complete now: nothing to do


def test_pydantic_rebuild_is_skipped_where_max_does_not_need_it():
    out = run_py("from baldr_ops.engines.max.patches import apply_all; apply_all()\n"
                 "import max.pipelines.lib.config.config")
    line = next(ln for ln in out.stderr.splitlines() if "pydantic-rebuild" in ln)
    assert "skipped (not needed: all" in line


def test_force_greedy_sets_every_sampling_knob():
    class P:
        top_k, temperature, top_p, min_p, thinking_temperature = 50, 0.9, 0.5, 0.1, 0.7

    p = force_greedy(P())
    assert (p.top_k, p.temperature, p.top_p, p.min_p, p.thinking_temperature) == (1, 0.0, 1.0, 0.0, None)


def test_patches_wait_for_max_to_import_their_modules():
    """Arming costs nothing: no MAX module is imported until MAX itself asks for it."""
    out = run_py("import sys\nfrom baldr_ops.engines.max.patches import apply_all\napply_all()\n"
                 "print('LOADED', sorted(m for m in sys.modules if m.startswith('max.pipelines')))")
    assert "LOADED []" in out.stdout, out.stderr
    assert "patches armed" in out.stderr
