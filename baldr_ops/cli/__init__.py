"""`baldr-ops` command line: argument parsing and dispatch only.

Each sub-command lives in its own module here with ``register(subparsers)``; those modules import
nothing heavy at module level, so ``--help`` and ``doctor`` stay fast. The work itself is done by the
library layers the command's ``run`` imports when it is called.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from baldr_ops import __version__
from baldr_ops.errors import UserError

# Order is the order shown in --help.
COMMAND_MODULES = ("doctor", "shim", "launch", "runs", "compile", "guard", "sae", "memory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baldr-ops",
        description=(
            "Run big open models with MAX on unified-memory NVIDIA machines (DGX Spark / GB10, "
            "Jetson Thor, GH200): diagnose memory pressure, cap CUDA memory, serve, supervise."
        ),
        epilog="Run 'baldr-ops COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"baldr-ops {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"baldr_ops.cli.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != f"baldr_ops.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"baldr-ops: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: one line, the traceback only on request
        if os.environ.get("BALDR_DEBUG"):
            raise
        print(f"baldr-ops: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("  hint: rerun with BALDR_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
