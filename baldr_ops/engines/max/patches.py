"""Patches applied inside the MAX process before MAX's own CLI runs (see entry.py).

Each patch decides from the installed MAX whether it is needed, logs once what it did or why it
was skipped, and never raises: a patch that cannot apply must not stop the server from starting.
Settings come from the environment that `launch` computes (names below), read once here.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import sys
import time
from dataclasses import dataclass

ENV_ESTIMATOR = "BALDR_PATCH_ESTIMATOR"  # auto | on | off
ENV_PLAN_FREE = "BALDR_PLAN_FREE_BYTES"  # explicit figure for the planner (tests, overrides)
ENV_GUARD = "BALDR_GUARD"                # greedy | host-sampling | off (the decided mode)
ENV_REBUILD = "BALDR_PATCH_PYDANTIC"      # auto | off
CONFIG_MODULES = ("max.pipelines.lib.config.config", "max.pipelines.lib.config.model_config")


def log(message: str, level: str = "INFO") -> None:
    """One line in MAX's own console format, so the supervisor's log parser sees it in order."""
    stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
    print(f"{stamp} {level}: baldr-ops: {message}", file=sys.stderr, flush=True)


@dataclass
class PatchResult:
    name: str
    applied: bool
    note: str


def unified_free_bytes() -> int:
    """What a unified-memory device can really take: the figure the shim reports too."""
    explicit = os.environ.get(ENV_PLAN_FREE)
    if explicit:
        return int(explicit)
    from baldr_ops.shim import planning_free_bytes

    return planning_free_bytes()


def _is_unified_gpu(device) -> bool:
    try:
        return device.label == "gpu" and bool(getattr(device, "is_host_unified", False))
    except Exception:
        return False


def patch_estimator(quirks) -> PatchResult:
    """Make MAX's memory planner use the unified-memory figure (MemAvailable-based, capped)."""
    mode = os.environ.get(ENV_ESTIMATOR, "auto")
    if mode == "off":
        return PatchResult("memory-estimator", False, "disabled by BALDR_PATCH_ESTIMATOR=off")
    try:
        from max.pipelines.lib import memory_estimation
    except Exception as exc:
        return PatchResult("memory-estimator", False, f"MAX estimator not importable ({exc})")
    estimator = memory_estimation.MemoryEstimator
    attr = quirks.estimator_attr
    if not hasattr(estimator, attr):
        return PatchResult("memory-estimator", False, f"MemoryEstimator.{attr} not found in MAX {quirks.version}")
    original = getattr(estimator, attr).__func__
    announced = []

    @functools.wraps(original)
    def free_memory(cls, devices):
        if mode == "on" or any(_is_unified_gpu(d) for d in devices):
            figure = unified_free_bytes()
            if not announced:
                announced.append(True)
                log(f"memory planner uses the unified-memory figure {figure} bytes "
                    f"({figure / 2**30:.2f} GiB) instead of the driver's free memory")
            return figure
        return original(cls, devices)

    setattr(estimator, attr, classmethod(free_memory))
    when = "always" if mode == "on" else "on unified-memory GPUs"
    return PatchResult("memory-estimator", True, f"MemoryEstimator.{attr} reads the unified figure {when}")


def patch_device_stats(quirks) -> PatchResult:
    """Other readers of Device.stats['free_memory'] (Qwen3.5, GLM configs) get the same figure."""
    if os.environ.get(ENV_ESTIMATOR, "auto") == "off":
        return PatchResult("device-stats", False, "disabled by BALDR_PATCH_ESTIMATOR=off")
    if not quirks.has_is_host_unified:
        return PatchResult("device-stats", False, f"MAX {quirks.version} has no Device.is_host_unified")
    try:
        from max._core import driver
    except Exception as exc:
        return PatchResult("device-stats", False, f"max._core.driver not importable ({exc})")
    original = driver.Device.stats

    def stats(self):
        values = original.__get__(self)
        if _is_unified_gpu(self):
            values = {**values, "free_memory": min(int(values.get("free_memory", 0)) or 2**63,
                                                   unified_free_bytes())}
        return values

    try:
        driver.Device.stats = property(stats)
    except (AttributeError, TypeError) as exc:
        return PatchResult("device-stats", False, f"Device.stats is read-only here ({exc})")
    return PatchResult("device-stats", True, "Device.stats['free_memory'] capped by the unified figure on unified GPUs")


def force_greedy(params):
    """Turn any sampling request into greedy decoding (the SM 12.x top-k kernel never runs)."""
    params.top_k = 1
    params.temperature = 0.0
    params.top_p = 1.0
    params.min_p = 0.0
    if hasattr(params, "thinking_temperature"):
        params.thinking_temperature = None
    return params


def patch_greedy_guard(quirks) -> PatchResult:
    if os.environ.get(ENV_GUARD) != "greedy":
        return PatchResult("sampling-guard", False, f"guard mode is {os.environ.get(ENV_GUARD, 'off')!r}")
    try:
        from max.pipelines.context.sampling_params import SamplingParams
    except Exception as exc:
        return PatchResult("sampling-guard", False, f"SamplingParams not importable ({exc})")
    original = SamplingParams.from_input_and_generation_config.__func__

    @functools.wraps(original)
    def from_input_and_generation_config(cls, *args, **kwargs):
        return force_greedy(original(cls, *args, **kwargs))

    SamplingParams.from_input_and_generation_config = classmethod(from_input_and_generation_config)
    return PatchResult("sampling-guard", True,
                       "every request decodes greedily (temperature 0, top_k 1), whatever it asks for")


def _torch_namespace() -> dict:
    try:
        import torch  # noqa: F401  (optional: only the name `torch.dtype` must resolve)

        return {"torch": torch}
    except Exception:
        import types

        return {"torch": types.SimpleNamespace(dtype=type("dtype", (), {}))}


def rebuild_incomplete(models) -> list[str]:
    """`model_rebuild` each pydantic model that is not fully defined, with a torch namespace.

    transformers 5 configs are dataclasses with `"torch.dtype"` annotations that pydantic cannot
    resolve without torch imported; a MAX config model holding one fails at first validation.
    """
    rebuilt = []
    for model in models:
        if getattr(model, "__pydantic_complete__", True):
            continue
        try:
            model.model_rebuild(_types_namespace=_torch_namespace())
            rebuilt.append(model.__name__)
        except Exception as exc:
            log(f"pydantic rebuild of {model.__name__} failed: {exc}", "WARNING")
    return rebuilt


def _max_config_models() -> list:
    """MAX's pydantic config models among the modules imported so far (never imports: this runs
    inside an import hook, where pulling in more of MAX could close an import cycle)."""
    from pydantic import BaseModel

    found = []
    for name in CONFIG_MODULES:
        module = sys.modules.get(name)
        if module is None:
            continue
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == module.__name__:
                found.append(value)
    return found


def patch_pydantic_rebuild(quirks) -> PatchResult:
    if os.environ.get(ENV_REBUILD, "auto") == "off":
        return PatchResult("pydantic-rebuild", False, "disabled by BALDR_PATCH_PYDANTIC=off")
    models = _max_config_models()
    rebuilt = rebuild_incomplete(models)
    if not rebuilt:
        return PatchResult("pydantic-rebuild", False,
                           f"not needed: all {len(models)} MAX config models are fully defined")
    return PatchResult("pydantic-rebuild", True, f"rebuilt {', '.join(rebuilt)} with a torch namespace")


# Each patch runs right after MAX itself imports the module it changes. Importing those modules up
# front would cost ~10 s of start-up: MAX imports `max.pipelines` while its model worker spawns,
# and an eager import here serialises that (measured: +7-10 s to /health on the demo model).
PATCH_POINTS = (
    ("max.pipelines.lib.config.config", patch_pydantic_rebuild),
    ("max.pipelines.lib.memory_estimation", patch_estimator),
    ("max.driver", patch_device_stats),
    ("max.pipelines.context.sampling_params", patch_greedy_guard),
)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a hook once, right after a named module has been executed by its normal loader."""

    def __init__(self, hooks: dict):
        self.hooks = hooks

    def find_spec(self, name, path=None, target=None):
        hook = self.hooks.pop(name, None)  # one-shot; popping first also stops recursion
        if hook is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            hook()

        spec.loader.exec_module = exec_module
        return spec


def _run_patch(patch, quirks) -> PatchResult:
    try:
        result = patch(quirks)
    except Exception as exc:  # a broken patch must not keep the server down
        result = PatchResult(patch.__name__.removeprefix("patch_"), False, f"failed: {exc}")
    log(f"patch {result.name}: {'applied' if result.applied else 'skipped'} ({result.note})")
    return result


def apply_all() -> list[PatchResult]:
    """Arm every patch; each applies (and logs) when MAX imports its module, or now if it already has."""
    from baldr_ops.engines.max.quirks import require_max

    quirks = require_max()
    results: list[PatchResult] = []
    pending = {}
    for module, patch in PATCH_POINTS:
        if module in sys.modules:
            results.append(_run_patch(patch, quirks))
        else:
            pending[module] = functools.partial(lambda p: results.append(_run_patch(p, quirks)), patch)
    if pending:
        sys.meta_path.insert(0, _AfterImport(pending))
        log(f"patches armed for MAX {quirks.version}: " + ", ".join(pending))
    return results
