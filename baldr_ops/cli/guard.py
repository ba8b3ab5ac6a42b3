"""`baldr-ops guard -- CMD`: argument parsing; the work is in baldr_ops.memguard.watch."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Run any command (vLLM, llama.cpp, a training job) under the memory guard that `launch` uses.

Load guard (until the command's output matches --ready-regex, or --ready-after seconds): when
MemFree falls under the load floor while the page cache is large, drop the --weights files from
the cache (fadvise), then drop caches and compact memory if permitted. Serve guard (after): when
MemAvailable stays under the serve floor and there is evidence (memory PSI, an NVRM/Xid kernel
line, or MemAvailable falling to zero soon), reclaim, then drain the command's whole process
tree (SIGTERM, --grace, SIGKILL). A black box of samples and decisions survives a reboot.

exit status: the command's (128 + signal when signalled); 128 + the signal when SIGTERM or SIGINT
stopped the guard (the command's whole tree drained first); 2 for bad input.
"""

EPILOG = """\
examples:
  baldr-ops guard --weights /models/glm/*.safetensors --ready-regex "Application startup complete" -- vllm serve /models/glm
  baldr-ops guard --memguard dry-run -- python train.py     # log what it would do, do nothing
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("guard", help="run any command under the memory guard",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memguard", default="auto", choices=("auto", "on", "dry-run"),
                   help="on acts; dry-run logs what it would do (default auto: on with a unified-memory GPU)")
    p.add_argument("--load-floor", metavar="SIZE", help="MemFree floor while loading (default scaled to the machine)")
    p.add_argument("--serve-floor", metavar="SIZE", help="MemAvailable floor while serving (default scaled)")
    p.add_argument("--memguard-hz", metavar="LOAD:SERVE",
                   help="samples a second while loading and while serving (default 4:1)")
    p.add_argument("--weights", nargs="+", default=[], metavar="PATH",
                   help="weight files or model directories the command loads (what fadvise drops)")
    p.add_argument("--ready-regex", metavar="REGEX", help="output line that means loading is over")
    p.add_argument("--ready-after", type=float, default=600, metavar="S",
                   help="seconds of loading before the serve guard takes over (default 600)")
    p.add_argument("--grace", type=float, default=30, metavar="S", help="seconds between SIGTERM and SIGKILL (30)")
    p.add_argument("--name", help="black box name (default guard-<command>-<pid>)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command to run")
    p.set_defaults(func=run)


def run(args) -> int:
    import re
    from pathlib import Path

    from baldr_ops.errors import UserError
    from baldr_ops.memguard.blackbox import BlackBox
    from baldr_ops.memguard.reclaim import may_write_vm
    from baldr_ops.memguard.watch import default_box_name, exit_code, run_guarded
    from baldr_ops.paths import blackbox_root
    from baldr_ops.plan.memguard import decide_memguard, guard_floors, sample_rates, weight_files
    from baldr_ops.system.meminfo import read_meminfo
    from baldr_ops.system.nvml import read_gpu_summary

    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        raise UserError("no command to guard", hint="baldr-ops guard [options] -- CMD ARGS")
    import shutil

    if shutil.which(argv[0]) is None:
        raise UserError(f"command not found: {argv[0]}", hint="give a program on PATH, or its path")
    if args.ready_regex is not None:
        try:
            re.compile(args.ready_regex)
        except re.error as exc:
            raise UserError(f"--ready-regex {args.ready_regex!r} is not a regular expression: {exc}") from None
    for name in ("ready_after", "grace"):
        value = getattr(args, name)
        if not (0 <= value <= 86400):
            raise UserError(f"--{name.replace('_', '-')} {value:g} is out of range", hint="give 0 to 86400 seconds")
    files = []
    for item in args.weights:
        path = Path(item)
        if not path.exists():
            raise UserError(f"--weights {item} does not exist", hint="give the weight files or model directories")
        files += weight_files(path)
    meminfo = read_meminfo()
    gpu = read_gpu_summary()
    floors = guard_floors(args.memguard, meminfo.total if meminfo.available else None, args.load_floor,
                          args.serve_floor)
    rates = sample_rates(args.memguard_hz)
    plan = decide_memguard(args.memguard, bool(gpu.present and gpu.unified), floors, Path("."), rates)
    plan = plan.model_copy(update={"weight_files": files})
    name = args.name or default_box_name(argv)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,80}", name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' or '-'")
    box = BlackBox(blackbox_root() / name)
    import sys

    print(f"baldr-ops guard: {plan.note()}; black box {box.directory}", file=sys.stderr, flush=True)
    try:
        result = run_guarded(argv, plan.config(drop_caches_permitted=may_write_vm()), files, box,
                             ready_regex=args.ready_regex, ready_after_s=args.ready_after, grace_s=args.grace,
                             reason=plan.reason, rates=(plan.load_hz, plan.serve_hz))
    except FileNotFoundError:
        raise UserError(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise UserError(f"command not executable: {argv[0]}") from None
    if result.guard_stop:
        print(f"baldr-ops guard: the command was stopped by the memory guard: {result.guard_stop}",
              file=sys.stderr, flush=True)
    if result.signal is not None:   # stopped on request: the shell's status for that signal
        return 128 + result.signal
    return exit_code(result.returncode)
