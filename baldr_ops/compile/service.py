"""`baldr-ops compile`: plan like launch, compile ahead of time, export or import a bundle, check warmth."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from baldr_ops.compile.runner import run_compile
from baldr_ops.engines.max.bundle import (
    MANIFEST_NAME,
    PAYLOAD_DIRS,
    check_bundle,
    device_identity,
    export_bundle,
    plan_with_bundle,
    read_manifest,
    seed_cache,
)
from baldr_ops.engines.max.command import warm_cache_command
from baldr_ops.engines.max.quirks import require_max
from baldr_ops.engines.max.warmth import MEF_CACHE_GLOB, cache_entries_for_mefs, cache_warm, record_compiled
from baldr_ops.errors import UserError
from baldr_ops.memguard.blackbox import BlackBox
from baldr_ops.memguard.reclaim import may_write_vm
from baldr_ops.memguard.runtime import GuardRuntime, MemGuardStatus
from baldr_ops.paths import blackbox_root, compile_log_path, modular_cache_dir
from baldr_ops.plan.guard import decide_guard
from baldr_ops.plan.planner import plan_launch
from baldr_ops.schema import Document


class CompileReport(Document):
    """What `baldr-ops compile` did (`--json`)."""

    action: Literal["compiled", "imported", "checked"]
    model: str
    served_name: str
    max_version: str
    options: dict
    cache_dir: str
    cache_warm_before: bool | None = None
    cache_warm: bool | None = None
    seconds: float | None = None              # the whole MAX run (imports, weights, compile)
    compile_times: dict[str, float] = Field(default_factory=dict)   # MAX's own "Compiling X took" figures
    bundle: str | None = None                 # exported (--export) or imported (--import) directory
    bundle_payload: str | None = None
    bundle_used: bool | None = None
    bundle_files: int | None = None
    bundle_bytes: int | None = None
    mismatches: list[dict] = Field(default_factory=list)
    preflight: list[str] = Field(default_factory=list)   # launch's preflight notes, shown as it goes
    notes: list[str] = Field(default_factory=list)       # what compile found and did
    log: str | None = None
    memguard: MemGuardStatus | None = None    # the load guard while MAX loaded the weights and compiled


@contextlib.contextmanager
def _load_guard(plan, say, report: CompileReport):
    """Compiling loads the weights: the load guard watches it as it watches a launch's start."""
    mg = plan.memguard
    if mg is None or mg.mode == "off":
        yield
        return
    box = BlackBox(blackbox_root() / "compile")
    guard = GuardRuntime(mg.config(drop_caches_permitted=may_write_vm()), mg.weight_files, blackbox=box,
                         reason=mg.reason, log=say)
    box.start(command="compile", model=plan.model, mode=mg.mode, load_floor=mg.load_floor)
    guard.run_alone()
    try:
        yield
    finally:
        guard.stop()
        box.end()
        report.memguard = guard.status


def check_export_destination(dest: Path) -> None:
    """--export DIR must be new or an empty directory, and its parent a directory."""
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--export {dest} is a file", hint="give a new directory for the bundle")
    if dest.is_dir() and any(dest.iterdir()):
        raise UserError(f"--export {dest} already exists and is not empty", hint="remove it or choose another --export DIR")
    parent = dest.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--export {dest}: {parent} is a file, not a directory", hint="give a path under a directory")


def _log_path() -> Path:
    path = compile_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _failed(run) -> UserError:
    last = run.errors[-1] if run.errors else (run.tail[-1] if run.tail else "no output")
    return UserError(f"MAX's compile failed (exit {run.returncode}): {last}", hint=f"full log: {run.log}")


def parse_target(target: str) -> tuple[str, tuple[int, int]]:
    """`cuda:sm_121` -> ("sm_121", (12, 1)): a GPU architecture for MAX's virtual-device compile."""
    match = re.fullmatch(r"cuda:sm_(\d+)(\d)", target.strip())
    if not match:
        raise UserError(f"--target {target!r} is not a CUDA target baldr-ops can describe in a bundle",
                        hint="use cuda:sm_XY, e.g. cuda:sm_121 for GB10 (DGX Spark), cuda:sm_90 for H100/GH200")
    return f"sm_{match.group(1)}{match.group(2)}", (int(match.group(1)), int(match.group(2)))


def _for_target(request, target: str, export: Path | None, import_dir: Path | None, check: bool):
    """The request and guard for a cross-compile: the options launch will use on the target GPU."""
    arch, capability = parse_target(target)
    if export is None or import_dir is not None or check:
        raise UserError("--target cross-compiles for another machine: use it with --export DIR only")
    if request.max_batch_size is None:
        raise UserError("--target needs --max-batch-size: MAX derives the batch size from device memory, which a "
                        "virtual device does not have, and the graphs must match what launch builds there",
                        hint="pass the same --max-batch-size here and to launch on the target machine")
    # The shim and the fit check belong to the machine that serves; the guard to the target GPU.
    return request.model_copy(update={"devices": request.devices or "gpu", "shim": "off"}), arch, capability


def compile_model(request, export: Path | None = None, import_dir: Path | None = None, check: bool = False,
                  payload: str = "auto", reporter=None, target: str | None = None) -> CompileReport:
    """Plan exactly as `launch` would (ports aside), then compile / export / import / check.

    `target` (cuda:sm_XY) cross-compiles for a GPU this machine lacks, with MAX's virtual devices."""
    say = reporter.message if reporter is not None else (lambda _m: None)
    device = None
    # Destination and source first: a compile takes minutes, a wrong path is known now.
    if export is not None:
        check_export_destination(Path(export).expanduser())
    if import_dir is not None:
        read_manifest(Path(import_dir).expanduser())
    if target:
        request, arch, capability = _for_target(request, target, export, import_dir, check)
    plan, notes = plan_launch(request.model_copy(update={"precompiled": None}), progress=say, check_ports=False)
    quirks = require_max()
    options = plan.options
    env = dict(plan.env)
    if target:
        guard = decide_guard(request.guard, capability, quirks.has_sample_on_host)
        options = options.model_copy(update={"sample_on_host": False, "default_temperature": None,
                                             "default_top_k": None, **guard.serve_args})
        env.update(guard.env)
        device = device_identity("gpu", gpu_arch=arch, gpu_name=f"virtual device ({target})")
        notes = [n for n in notes if not n.startswith("sampling guard")]
        notes.append(f"cross-compiling for {target} (MAX virtual devices); sampling guard there: {guard.mode} "
                     f"({guard.reason})")
    for note in notes:
        say(f"  {note}")
    env.pop("MAX_SERVE_METRICS_ENDPOINT_PORT", None)   # compile serves nothing
    cache_dir = modular_cache_dir({**os.environ, **env})
    warm_before = cache_warm(options.model_path, options, cache_dir, quirks.version)
    report = CompileReport(action="checked", model=str(options.model_path), served_name=plan.served_name,
                           max_version=quirks.version, options=options.compile_identity(), cache_dir=str(cache_dir),
                           cache_warm_before=warm_before, cache_warm=warm_before, preflight=notes)

    if check:
        if import_dir is not None:
            manifest, mismatches = check_bundle(import_dir, options, quirks)
            report.bundle, report.bundle_payload = str(Path(import_dir).resolve()), manifest.payload
            report.bundle_used = not mismatches
            report.mismatches = [m.model_dump() for m in mismatches]
            report.notes.append("bundle verified (every file hashed); "
                                + ("matches this machine and request" if not mismatches else
                                   "does not match: " + "; ".join(m.text() for m in mismatches)))
        return report

    if import_dir is not None:
        use = plan_with_bundle(import_dir, options, quirks)
        report.notes.append(use.note)
        say(f"  {use.note}")
        report.bundle, report.bundle_payload = str(Path(import_dir).resolve()), use.payload
        report.bundle_used = use.used
        report.mismatches = [m.model_dump() for m in use.mismatches]
        if use.used:
            say("loading the bundle's graphs (no compile expected)")
            command = warm_cache_command(options.model_copy(update={"extra_args": options.extra_args + use.serve_args}))
            with _load_guard(plan, say, report):
                run = run_compile(command, {**env, **use.env}, reporter, _log_path())
            if run.returncode != 0:
                raise _failed(run)
            report.action, report.seconds, report.compile_times, report.log = \
                "imported", round(run.seconds, 1), run.compile_times, run.log
            if use.payload == "cache":  # the seeded entries are this model's: remember them
                payload = Path(import_dir).expanduser().resolve() / PAYLOAD_DIRS["cache"]
                record_compiled(options, quirks.version, sorted(
                    p.relative_to(payload).as_posix() for p in payload.glob(MEF_CACHE_GLOB)), cache_dir)
            report.cache_warm = cache_warm(options.model_path, options, cache_dir, quirks.version)
            return report

    kind = None
    if export is not None:
        if payload == "mefs" and not quirks.has_mef_export:
            raise UserError(f"MAX {quirks.version} cannot export compiled graphs (--export-mefs needs 26.7)",
                            hint="use --payload cache (or auto)")
        kind = "mefs" if payload in ("auto", "mefs") and quirks.has_mef_export else "cache"
    scratch = Path(tempfile.mkdtemp(prefix="baldr-compile-"))
    try:
        mefs_dir = scratch / "mefs" if quirks.has_mef_export and kind != "cache" else None
        compile_cache = None
        if kind == "cache":
            # The relevant part of the cache is what a compile into an empty cache writes.
            compile_cache = scratch / "cache"
            compile_cache.mkdir()
            env["MODULAR_CACHE_DIR"] = str(compile_cache)
            say(f"compiling into an empty cache ({compile_cache}) so the bundle holds only this model")
        extra = ["--export-mefs", str(mefs_dir)] if mefs_dir else []
        if target:
            if kind != "mefs":
                raise UserError("--target needs a MEF bundle (MAX >= 26.7, --payload auto or mefs)")
            extra += ["--target", target]
        command = warm_cache_command(options.model_copy(update={"extra_args": options.extra_args + extra}))
        with _load_guard(plan, say, report):
            run = run_compile(command, env, reporter, _log_path())
        if run.returncode != 0:
            raise _failed(run)
        report.action, report.seconds, report.compile_times, report.log = \
            "compiled", round(run.seconds, 1), run.compile_times, run.log
        if compile_cache is not None:
            seed_cache(compile_cache, cache_dir)
            entries = sorted(p.relative_to(compile_cache).as_posix() for p in compile_cache.glob(MEF_CACHE_GLOB))
        else:  # a virtual device's graphs say nothing about this machine's warmth
            entries = cache_entries_for_mefs(mefs_dir, cache_dir) if mefs_dir and not target else []
        record_compiled(options, quirks.version, entries, cache_dir)
        report.cache_warm = cache_warm(options.model_path, options, cache_dir, quirks.version)
        if export is not None:
            manifest = export_bundle(export, kind, compile_cache or mefs_dir, options, quirks.version,
                                     compile_seconds=round(sum(run.compile_times.values()), 1),
                                     model_name=plan.served_name, device=device)
            report.bundle, report.bundle_payload = str(Path(export).expanduser().resolve()), kind
            report.bundle_files = len(manifest.files)
            report.bundle_bytes = sum(f.size for f in manifest.files.values())
            report.notes.append(f"bundle written: {report.bundle}/{MANIFEST_NAME} + {kind}/ "
                                f"({report.bundle_files} files, {report.bundle_bytes / 1e6:.1f} MB)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report
