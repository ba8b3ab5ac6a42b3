"""Preflight: read the machine and the request, judge them, and decide the launch plan.

Every failure is a UserError with a one-line reason and a fix, raised before anything heavy
starts. The memory judgement is :func:`baldr_ops.plan.fit.judge_fit` over the footprint estimate,
the one doctor renders as `mem.available.vs_plan`, so `doctor --model` and `launch` never
disagree about whether a model fits. `compile` plans here too (``check_ports=False``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import ValidationError

from baldr_ops import native, shim
from baldr_ops.durations import parse_duration
from baldr_ops.engines.max.bundle import plan_with_bundle
from baldr_ops.engines.max.command import EngineOptions, ServeBinding, serve_command
from baldr_ops.engines.max.quirks import require_max
from baldr_ops.engines.max.registry import serve_options, supported_architectures
from baldr_ops.errors import UserError, first_invalid_field
from baldr_ops.models.demo import DEMO_NAME, ensure_demo_model
from baldr_ops.models.footprint import estimate_footprint, read_model_config
from baldr_ops.plan import validate
from baldr_ops.plan.canary import DEMO_CANARY, GENERIC_PROMPT, Canary, load_canary_file
from baldr_ops.plan.fit import floor_bytes, judge_fit
from baldr_ops.plan.guard import decide_guard, is_affected
from baldr_ops.plan.memguard import decide_memguard, guard_floors, sample_rates
from baldr_ops.plan.model import Hardware, LaunchPlan, LaunchRequest
from baldr_ops.system.meminfo import read_meminfo
from baldr_ops.system.nvml import read_gpu_summary
from baldr_ops.system.ports import port_free

# MAX on CPU computes in float32 (or GGUF q4/q6); bf16/f16 weights are GPU-only there.
CPU_UNSUPPORTED_DTYPES = {"BF16", "F16", "F8_E4M3", "F8_E5M2"}


def detect_hardware() -> Hardware:
    summary = read_gpu_summary()
    return Hardware(gpu=summary.present, name=summary.name, compute_capability=summary.compute_capability,
                    unified=summary.unified, detail=summary.detail)


def resolve_model(request: LaunchRequest, progress) -> tuple[Path, str, bool]:
    """The model directory, the name to serve it under, and whether it is the demo."""
    if request.model is None:
        return ensure_demo_model(progress), request.served_name or DEMO_NAME, True
    path = request.model.expanduser()
    if not path.exists():
        raise UserError(f"model path {path} does not exist",
                        hint="give a local model directory (config.json + *.safetensors or a .gguf)")
    if not path.is_dir():
        raise UserError(f"model path {path} is not a directory",
                        hint="give the directory that holds config.json and the weights")
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a model MAX can load: config.json is missing",
                        hint="a Hugging Face model directory has config.json beside its weights")
    return path.resolve(), request.served_name or path.name, False


def check_against_max(request: LaunchRequest, config: dict, served_name: str, progress) -> None:
    """What MAX would refuse after tens of seconds, refused now: an architecture it does not
    serve, a --max-length beyond the model's context, an option `max serve` does not take."""
    validate.model_architecture(config, supported_architectures(), served_name)
    validate.max_length(request.max_length, config, served_name)
    if any(a.startswith("--") for a in request.extra_args):
        progress("reading max serve's options (once per MAX version)")
        validate.engine_args(request.extra_args, serve_options())


def check_encoding(devices: str, dtypes: set[str], encoding: str | None) -> None:
    if not devices.startswith("cpu"):
        return
    if encoding and encoding not in ("float32", "q4_k", "q4_0", "q6_k"):
        raise UserError(f"--quantization-encoding {encoding} is not supported on CPU by MAX",
                        hint="on CPU use float32 (or GGUF q4_k/q4_0/q6_k), or serve on a GPU")
    bad = sorted(dtypes & CPU_UNSUPPORTED_DTYPES)
    if bad and encoding is None:
        raise UserError(f"the model's weights are {', '.join(bad)}, which MAX cannot serve on CPU",
                        hint="convert the weights to float32, or serve on a GPU (--devices gpu)")


def check_memory(meminfo, footprint, floor: str, force: bool) -> str:
    """The shared fit judgement; CRIT stops the launch unless --force."""
    verdict = judge_fit(meminfo, footprint, floor_bytes(floor, meminfo))
    if verdict.status == "CRIT" and not force:
        raise UserError(f"the model does not fit in memory (headroom {verdict.headroom_text()})", hint=verdict.hint)
    return f"{verdict.status}: {verdict.headroom_text()} headroom after the model and a {floor} floor"


def free_metrics_port(host: str, port: int, wanted: int | None) -> int:
    if wanted is not None:
        if not port_free(host, wanted):
            raise UserError(f"metrics port {wanted} is already in use", hint="choose another --metrics-port")
        return wanted
    for candidate in (port + 1, port + 2, port + 3):
        if candidate <= 65535 and port_free(host, candidate):
            return candidate
    raise UserError(f"no free metrics port near {port}", hint="set --metrics-port")


def plan_launch(request: LaunchRequest, progress=lambda _msg: None,
                check_ports: bool = True) -> tuple[LaunchPlan, list[str]]:
    """Run every preflight check; return the plan and the notes to show the user.

    `check_ports=False` plans for `baldr-ops compile`, which binds nothing: no port checks."""
    notes: list[str] = []
    meminfo = read_meminfo()
    floors = guard_floors(request.memguard, meminfo.total if meminfo.available else None, request.load_floor,
                          request.serve_floor)
    floor_bytes(request.floor, meminfo)   # a bad --floor is found before anything slow
    rates = sample_rates(request.memguard_hz)
    canaries = plan_canaries(request)    # a bad canary file, regex or duration too
    canary_every = parse_duration(request.canary_every, "--canary-every") if request.canary_every else None
    quirks = require_max()
    notes.append(f"MAX {quirks.version}")
    if check_ports and not port_free(request.host, request.port):
        raise UserError(f"port {request.port} on {request.host} is already in use",
                        hint="stop what listens there (baldr-ops status) or choose another --port")
    model_path, served_name, is_demo = resolve_model(request, progress)
    config = read_model_config(model_path) or {}   # resolve_model made sure there is one
    check_against_max(request, config, served_name, progress)
    hardware = detect_hardware()
    notes.append(f"hardware: {hardware.detail or ('GPU ' + (hardware.name or '?')) if hardware.gpu else 'no GPU'}")
    devices = request.devices or ("gpu" if hardware.gpu else "cpu")
    footprint = estimate_footprint(model_path, context_length=request.max_length, config=config)   # the KV cache MAX will size
    check_encoding(devices, set(footprint.dtypes), request.quantization_encoding)
    notes.append(f"model {served_name}: {footprint.summary()}")
    notes.append("memory " + check_memory(meminfo, footprint, request.floor, request.force))
    memguard = decide_memguard(request.memguard, bool(hardware.gpu and hardware.unified and devices.startswith("gpu")),
                               floors, model_path, rates)
    notes.append(memguard.note())

    guard = decide_guard(request.guard, hardware.compute_capability if devices.startswith("gpu") else None,
                         quirks.has_sample_on_host)
    notes.append(f"sampling guard: {guard.mode} ({guard.reason})")
    selftest = devices.startswith("gpu") and is_affected(hardware.compute_capability) and guard.mode != "greedy"
    supervision = request.supervision.model_copy(update={
        "canaries": canaries if request.supervision.canary else [], "canary_every_s": canary_every,
        "sampling_selftest": selftest and request.supervision.canary})
    if supervision.canaries:
        expects = [c.expect for c in supervision.canaries if c.expect]
        notes.append(f"canary: {len(supervision.canaries)} prompt(s)"
                     + (f", expecting /{'/, /'.join(expects)}/" if expects else ", no expectation (degeneracy checks)")
                     + (f", again every {canary_every:g} s" if canary_every else "")
                     + ("; sampling self-test before ready" if supervision.sampling_selftest else ""))

    options = EngineOptions(model_path=model_path, served_name=served_name, devices=devices,
                            quantization_encoding=request.quantization_encoding, max_length=request.max_length,
                            max_batch_size=request.max_batch_size, extra_args=request.extra_args,
                            **guard.serve_args)
    if request.precompiled:
        use = plan_with_bundle(request.precompiled, options, quirks)
        options.extra_args += use.serve_args
        notes.append(use.note)
        bundle_env = use.env
    else:
        bundle_env = {}
    metrics_port = (free_metrics_port(request.host, request.port, request.metrics_port) if check_ports
                    else request.metrics_port or request.port + 1)
    env = {"MAX_SERVE_METRICS_ENDPOINT_PORT": str(metrics_port), "PYTHONUNBUFFERED": "1", **guard.env, **bundle_env}
    if not request.telemetry:
        # MAX exports usage metrics to Modular by default; keep a private server private. /metrics stays.
        env["OTEL_SDK_DISABLED"] = "true"
    if model_path.is_dir():
        env["HF_HUB_OFFLINE"] = "1"  # a local directory: never wait on a hub

    shim_path = None
    want_shim = request.shim == "on" or (request.shim == "auto" and hardware.gpu and devices.startswith("gpu"))
    if want_shim:
        shim_path = str(native.library_path())
        env.update(shim.child_env(limit=request.cap, floor=request.floor, budget=f"launch-{request.port}",
                                  base_env=os.environ))
        notes.append(f"memory cap: {request.cap or 'none (queries corrected, floor ' + request.floor + ')'}"
                     f" via {shim_path}")
    elif request.cap:
        raise UserError("--cap needs the shim, which is only preloaded with a GPU",
                        hint="drop --cap on CPU, or pass --shim on")

    plan = LaunchPlan(
        command=serve_command(options, ServeBinding(host=request.host, port=request.port), python=sys.executable),
        options=options,
        env=env, host=request.host, port=request.port, served_name=served_name, model=str(model_path),
        guard=guard, shim=shim_path, memory_cap=request.cap, memguard=memguard, supervision=supervision)
    return plan, notes


def plan_canaries(request: LaunchRequest) -> list[Canary]:
    """The canary set: a file's, or one prompt (the operator's, the demo's question, a generic
    one) with the operator's expectation (the demo expects Paris)."""
    if request.canary_file is not None:
        if request.canary_prompt or request.canary_expect:
            raise UserError("--canary-file sets prompts and expectations: drop --canary-prompt/--canary-expect")
        return load_canary_file(request.canary_file)
    if request.canary_prompt is not None:
        prompt, expect = request.canary_prompt, request.canary_expect
    elif request.model is None:
        prompt, expect = DEMO_CANARY[0], request.canary_expect or DEMO_CANARY[1]
    else:
        prompt, expect = GENERIC_PROMPT, request.canary_expect
    try:
        return [Canary(prompt=prompt, expect=expect)]
    except ValidationError as exc:
        field, message = first_invalid_field(exc)
        what = {"prompt": "--canary-prompt", "expect": "--canary-expect"}.get(field.partition(".")[0], "canary")
        raise UserError(f"{what}: {message}") from None
