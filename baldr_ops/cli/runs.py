"""`status`, `stop`, `logs`, `systemd-unit`: the runs `launch` left in its run directory."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="show launched servers and whether they are ready",
                              description="Show each launch (one per port): state, phase, guard, restarts, log.")
    p.add_argument("--port", type=int, help="only this port")
    p.add_argument("--json", action="store_true", help="print JSON (a list of run states)")
    p.add_argument("--prometheus", metavar="FILE", help="also write launch metrics for node_exporter's textfile "
                   "collector (atomically): readiness, restarts, canary latency and failures, guard modes")
    p.set_defaults(func=run_status)

    p = subparsers.add_parser("stop", help="stop a launched server cleanly",
                              description="Send SIGTERM to the supervisor of a launch, which drains the server "
                                          "(TERM, grace period, KILL) and exits; waits for it.")
    p.add_argument("--port", type=int, help="port of the launch (default: the one launch running, else 8000)")
    p.add_argument("--timeout", type=float, default=90, help="seconds to wait for the supervisor to exit (90)")
    p.set_defaults(func=run_stop)

    p = subparsers.add_parser("logs", help="print a launch's server log",
                              description="Print the tail of the server log that launch keeps for a port.")
    p.add_argument("--port", type=int, help="port of the launch (default: the one launch running, else 8000)")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines to print (50)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until interrupted")
    p.set_defaults(func=run_logs)

    p = subparsers.add_parser("systemd-unit", help="print a systemd unit file for launch",
                              description="Print a Type=notify unit that runs `baldr-ops launch` with the given "
                                          "arguments (READY=1 after the canary, watchdog, STATUS lines).",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="example:\n  baldr-ops systemd-unit --user llm -- --model /models/gemma "
                                     "--cap 100G > /etc/systemd/system/baldr-max.service")
    p.add_argument("--user", help="User= of the service")
    p.add_argument("--description", help="Description= of the unit")
    p.add_argument("launch_args", nargs=argparse.REMAINDER, help="after --: arguments for baldr-ops launch")
    p.set_defaults(func=run_unit)


def _runs(port):
    from pathlib import Path

    from baldr_ops.engines.max.warmth import cache_warm, describe_warmth
    from baldr_ops.launch.runstate import RunDir, all_runs

    runs = [RunDir(port)] if port else all_runs()
    states = []
    for rundir in runs:
        status = rundir.read()
        if status is None:
            continue
        status.alive = rundir.held_by_someone()
        status.compile_cache = describe_warmth(cache_warm(Path(status.model)))
        if not status.alive and status.state not in ("stopped", "failed"):
            status.state = "failed"
            status.last_exit = status.last_exit or "supervisor is gone (killed?)"
        states.append(status)
    return states


def _check_port(args) -> None:
    from baldr_ops.plan import validate

    if args.port is not None:
        validate.port(args.port)


def run_status(args) -> int:
    from pydantic import TypeAdapter

    from baldr_ops.errors import UserError
    from baldr_ops.launch.runstate import RunStatus

    _check_port(args)
    states = _runs(args.port)
    if args.prometheus:
        from baldr_ops.atomic import atomic_write
        from baldr_ops.launch.metrics import exposition

        try:
            atomic_write(args.prometheus, exposition(states))
        except OSError as exc:
            raise UserError(f"cannot write {args.prometheus}: {exc.strerror or exc}",
                            hint="the directory must exist and be writable (node_exporter textfile directory)") from None
    if args.json:
        print(TypeAdapter(list[RunStatus]).dump_json(states, indent=2).decode())
        return 0
    if not states:
        if args.port:
            raise UserError(f"no launch has run on port {args.port}", exit_code=1)
        print("no launches")
        return 0
    for s in states:
        up = f"up {time.time() - s.started_at:.0f} s" if s.alive else "not running"
        print(f"port {s.port}: {s.state} ({up}) {s.url} serves {s.served_name!r}")
        print(f"  model    {s.model}")
        print(f"  phase    {s.phase}: {s.phase_detail}")
        if s.guard:
            print(f"  guard    {s.guard.mode}: {s.guard.reason}")
        print(f"  shim     {s.shim or 'not preloaded'}{'; cap ' + s.memory_cap if s.memory_cap else ''}")
        if s.canary:
            c = s.canary
            every = f", every {c.every_s:g} s: {c.checks} checks, {c.failures} failed" if c.every_s else ""
            answers = "; ".join(repr(a) for a in c.ready_answers) or "not asked yet"
            print(f"  canary   at ready: {answers}{every}")
            if c.last_failure:
                print(f"           last failure: {c.last_failure}")
        if s.memguard:
            print(f"  memguard {s.memguard.line().removeprefix('memguard ')}")
            if s.memguard.last_decision:
                print(f"           last: {s.memguard.last_decision}")
        print(f"  pids     supervisor {s.supervisor_pid}, server {s.server_pid}; restarts {s.restarts}")
        if s.last_exit:
            print(f"  last     {s.last_exit}")
        print(f"  cache    {s.compile_cache}")
        print(f"  log      {s.log_path}")
    return 0


def _chosen_run(port: int | None):
    """The launch a command without --port means: the only one running, else port 8000's."""
    from baldr_ops.errors import UserError
    from baldr_ops.launch.runstate import RunDir, all_runs

    if port is not None:
        return RunDir(port)
    live = [r for r in all_runs() if r.held_by_someone()]
    if len(live) > 1:
        ports = ", ".join(str(r.port) for r in live)
        raise UserError(f"{len(live)} launches are running (ports {ports})", hint="choose one with --port")
    return live[0] if live else RunDir(8000)


def run_stop(args) -> int:
    from baldr_ops.errors import UserError
    from baldr_ops.plan import validate

    _check_port(args)
    validate.seconds(args.timeout, "--timeout", allow_zero=False)
    rundir = _chosen_run(args.port)
    args.port = rundir.port
    status = rundir.read()
    if status is None or not rundir.held_by_someone():
        raise UserError(f"nothing is running on port {args.port}", exit_code=1,
                        hint="baldr-ops status lists the launches")
    os.kill(status.supervisor_pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while rundir.held_by_someone():
        if time.monotonic() > deadline:
            raise UserError(f"supervisor {status.supervisor_pid} still running after {args.timeout:.0f} s",
                            hint=f"kill -KILL {status.supervisor_pid}", exit_code=1)
        time.sleep(0.2)
    print(f"stopped the launch on port {args.port}")
    return 0


def run_logs(args) -> int:
    from baldr_ops.errors import UserError
    from baldr_ops.plan import validate

    _check_port(args)
    validate.count(args.lines, "--lines")
    rundir = _chosen_run(args.port)
    args.port = rundir.port
    path = rundir.log_file
    if not path.exists():
        raise UserError(f"no server log for port {args.port}", exit_code=1, hint="baldr-ops status lists the launches")
    with open(path, errors="replace") as fh:
        lines = fh.readlines()
        sys.stdout.writelines(lines[-args.lines:] if args.lines > 0 else lines)
        while args.follow:
            line = fh.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.5)
    return 0


def run_unit(args) -> int:
    from baldr_ops.cli import UsageError, build_parser
    from baldr_ops.cli.launch import _request
    from baldr_ops.errors import UserError
    from baldr_ops.launch.sdnotify import unit_file
    from baldr_ops.plan import validate

    # Only the first `--` ends systemd-unit's own options; a later one is launch's (MAX's arguments).
    launch_args = args.launch_args[1:] if args.launch_args[:1] == ["--"] else list(args.launch_args)
    if args.user is not None:
        validate.unix_user(args.user)
    if args.description is not None:
        validate.unit_text(args.description, "--description")
    for arg in launch_args:
        validate.unit_text(arg, "a launch argument")
    # The arguments are launch's: parsed and checked by launch's own parser now, not at boot.
    try:
        parsed = build_parser("launch").parse_args(["launch", *launch_args])
    except UsageError as exc:
        raise UserError(f"the launch arguments would fail at boot: {exc.message}",
                        hint="check them with: baldr-ops launch --help") from None
    if parsed.detach:
        raise UserError("a systemd unit runs launch in the foreground; drop --detach")
    _request(parsed)
    sys.stdout.write(unit_file(launch_args, user=args.user, description=args.description))
    return 0
