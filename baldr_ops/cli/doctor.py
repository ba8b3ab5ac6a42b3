"""`baldr-ops doctor`: argument parsing only; the work is in baldr_ops.system and baldr_ops.doctor."""

from __future__ import annotations

import argparse

from baldr_ops.cli.signals import end_on_sigterm

DESCRIPTION = """\
Read this machine's memory signals (meminfo, PSI, vmstat, cgroups, buddyinfo, tmpfs, zram/zswap,
kernel log, NVML), judge them against the thresholds in docs/doctor.md and say what to do.
Unified-memory aware: on a DGX Spark (GB10) GPU memory is host memory.

exit codes: 0 all OK/INFO, 1 worst is WARN, 2 worst is CRIT, 3 UNKNOWN (a signal could not be read)
or bad input/internal error. --fail-on crit makes only CRIT fail; --fail-on never always exits 0.
"""

EPILOG = """\
examples:
  baldr-ops doctor                          # table, 1 s sample for rates
  baldr-ops doctor --json --interval 0      # one sample, machine-readable
  baldr-ops doctor --model /models/gemma-4-31b-it   # does this model fit now?
  baldr-ops doctor --snapshot sick.tar.gz   # bundle what was read, for a bug report
  baldr-ops doctor --replay sick.tar.gz     # same verdicts, on another machine
  baldr-ops doctor --prometheus /var/lib/node_exporter/textfile/baldr.prom --fail-on never
"""

def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="diagnose memory pressure and GPU memory on this machine",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.bad_input_exit = 3   # Nagios: bad input is UNKNOWN
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the report as JSON (schema: --json-schema)")
    out.add_argument("--json-schema", action="store_true", help="print the JSON schema of the report and exit")
    out.add_argument("--prometheus", metavar="FILE",
                     help="also write a node_exporter textfile (atomically: temp file + rename)")
    out.add_argument("--fail-on", choices=("warn", "crit", "never"), default="warn",
                     help="which verdicts give a non-zero exit (default warn: Nagios codes 0/1/2/3)")
    src = p.add_argument_group("what to read")
    src.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                     help="seconds between the two samples for rates (default 1; 0 = one sample, rates unknown)")
    src.add_argument("--watch", action="store_true", help="re-run every interval until interrupted")
    src.add_argument("--root", metavar="DIR",
                     help="read /proc, /sys, /etc under DIR (a fixture or an extracted snapshot; a .tar.gz works too)")
    src.add_argument("--replay", metavar="FILE.tar.gz", help="judge a snapshot bundle instead of this machine")
    src.add_argument("--snapshot", metavar="FILE.tar.gz",
                     help="write the files read, kernel-log lines and NVML answers to a bundle for replay")
    src.add_argument("--cgroup", metavar="PATH",
                     help="judge this cgroup (e.g. /system.slice/max.service) instead of doctor's own")
    src.add_argument("--blackbox", metavar="DIR",
                     help="judge this memory-guard black box (or a directory of them) for an unclean end; "
                          "default on this machine: every box under ~/.local/state/baldr-ops/blackbox")
    plan = p.add_argument_group("model fit")
    plan.add_argument("--model", metavar="PATH",
                      help="a safetensors/GGUF model directory or file: estimate its footprint and add mem.available.vs_plan")
    plan.add_argument("--context", type=int, metavar="TOKENS",
                      help="context length for the KV-cache estimate (default: the model's, capped at 8192)")
    plan.add_argument("--floor", default="8G", metavar="SIZE",
                      help="memory to leave to the OS on top of the model: a size or a %% of MemTotal (default 8G, as launch)")
    p.set_defaults(func=run, sigterm_when_needed=True)


def run(args) -> int:
    from baldr_ops.errors import UserError

    try:
        return _run(args)
    except UserError as exc:
        exc.exit_code = 3   # doctor: bad input is UNKNOWN (Nagios)
        raise


def _resolve_root(args, stack) -> str:
    import os

    from baldr_ops.errors import UserError
    from baldr_ops.system.snapshot import extract_bundle

    if args.root and args.replay:
        raise UserError("give either --root or --replay, not both", exit_code=3)
    source = args.replay or args.root
    if not source:
        return "/"
    if not os.path.exists(source):
        raise UserError(f"{source} does not exist",
                        hint="--root takes a directory tree (proc/, sys/, etc/) or a snapshot .tar.gz", exit_code=3)
    if os.path.isdir(source):
        if args.replay:
            raise UserError(f"--replay takes a .tar.gz bundle, {source} is a directory", hint=f"use --root {source}")
        return source
    import tempfile  # only here: a live run needs no temporary directory

    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="baldr-replay-"))
    try:
        return extract_bundle(source, tmp)
    except ValueError as exc:
        raise UserError(str(exc), hint="give a bundle written by `baldr-ops doctor --snapshot`") from None


def _run(args) -> int:
    import contextlib
    import sys

    from baldr_ops.errors import UserError

    if args.json_schema:
        import json

        from baldr_ops.doctor.report import json_schema

        print(json.dumps(json_schema(), indent=2))
        return 0
    if not (args.interval >= 0) or args.interval > 3600:
        raise UserError(f"--interval {args.interval} is out of range", hint="use 0 to 3600 seconds")
    if args.context is not None and args.context <= 0:
        raise UserError(f"--context {args.context} must be positive")
    from baldr_ops.sizes import parse_spec

    floor = parse_spec(args.floor, "--floor")  # a percentage is of MemTotal, resolved per sample
    if args.blackbox and not __import__("os").path.isdir(args.blackbox):
        raise UserError(f"--blackbox {args.blackbox} is not a directory",
                        hint="give a black box directory (or the directory holding several)")
    if args.snapshot and args.watch:
        raise UserError("--snapshot writes one bundle; it cannot be combined with --watch")
    if args.snapshot or args.prometheus or args.replay or args.root:
        end_on_sigterm()   # scratch to remove on SIGTERM: an extracted bundle, a temp file before its rename

    footprint = None
    if args.model:
        from baldr_ops.models.footprint import estimate_footprint

        footprint = estimate_footprint(args.model, context_length=args.context)

    with contextlib.ExitStack() as stack:
        root = _resolve_root(args, stack)
        if not args.watch:
            return _once(args, root, footprint, floor, sys.stdout)
        # --watch: an interrupt ends the loop after the round in progress, so the last report
        # (one JSON document per line) is never torn in the middle of a write.
        import signal
        import time

        stop: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, _frame: stop.append(signum))
        period = args.interval or 1.0
        while True:
            started = time.monotonic()
            # Signals wait until the round is written: an interrupted pipe write can be left partial.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                code = _once(args, root, footprint, floor, sys.stdout)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            # A live sample already took `interval`; a replayed root takes no time at all.
            remaining = period - (time.monotonic() - started)
            if not stop and remaining > 0:
                time.sleep(remaining)
            if stop:
                return code


def _blackbox_check(args, root: str):
    """``launch.unclean`` over the boxes asked for (--blackbox), or this machine's. A snapshot keeps
    the verdict (.baldr/blackbox.json) so that a replay gives the same one."""
    import json
    import os

    from baldr_ops.doctor.checks import Check, check_blackboxes
    from baldr_ops.paths import blackbox_root
    from baldr_ops.system import _io

    if not args.blackbox and not _io.is_live(root):
        captured = _io.read_captured(root, "blackbox.json")
        return Check(**json.loads(captured)) if captured else None
    base = args.blackbox or str(blackbox_root())
    if not os.path.isdir(base):  # never launched with a guard here: nothing to read, cheaply
        check = check_blackboxes([], base)
    else:
        from baldr_ops.memguard.blackbox import find_boxes, read_box

        try:
            check = check_blackboxes([read_box(d) for d in find_boxes(base)], base)
        except OSError:
            check = check_blackboxes(None, base)
    _io.capture("blackbox.json", json.dumps(check.to_dict()))
    return check


def _once(args, root: str, footprint, floor, stream) -> int:
    from baldr_ops.atomic import atomic_write
    from baldr_ops.doctor import render
    from baldr_ops.doctor.checks import run_checks
    from baldr_ops.errors import UserError
    from baldr_ops.plan.fit import floor_bytes
    from baldr_ops.system import _io
    from baldr_ops.system.snapshot import take_snapshot, write_bundle

    recorder = _io.Recorder() if args.snapshot else None
    try:
        if recorder is not None:
            with recorder:
                snap = take_snapshot(root, args.interval, cgroup=args.cgroup, recorder=recorder)
                blackboxes = _blackbox_check(args, root)
        else:
            snap = take_snapshot(root, args.interval, cgroup=args.cgroup)
            blackboxes = _blackbox_check(args, root)
    except KeyboardInterrupt:
        raise
    checks = run_checks(snap, footprint=footprint, floor_bytes=floor_bytes(floor.text, snap.meminfo),
                        blackboxes=blackboxes)
    doc = render.report_dict(snap, checks, args.fail_on, footprint)
    if args.snapshot:
        try:
            write_bundle(args.snapshot, recorder, snap, extra={"report.json": render.to_json(doc)})
        except OSError as exc:
            raise UserError(f"cannot write snapshot {args.snapshot}: {exc.strerror or exc}") from None
    if args.prometheus:
        try:
            atomic_write(args.prometheus, render.prometheus_text(doc, snap))
        except OSError as exc:
            raise UserError(f"cannot write {args.prometheus}: {exc.strerror or exc}",
                            hint="the directory must exist and be writable (node_exporter textfile directory)") from None
    if args.json:
        text = render.to_json(doc) if not args.watch else __import__("json").dumps(doc)
        stream.write(text + "\n")
    else:
        if args.watch and stream.isatty():
            stream.write("\033[H\033[2J")
        render.render_table(doc, stream)
        if footprint is not None:
            stream.write(f"model: {footprint.summary()}\n")
        if args.snapshot:
            stream.write(f"snapshot written to {args.snapshot} (replay: baldr-ops doctor --replay {args.snapshot})\n")
    stream.flush()
    return doc["exit_code"]

