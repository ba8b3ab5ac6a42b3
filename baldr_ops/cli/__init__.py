"""`baldr-ops` command line: argument parsing and dispatch only.

Each sub-command lives in its own module here with ``register(subparsers)``; those modules import
nothing heavy at module level. A command line that names its command registers that command's
module alone (``doctor`` never imports the research CLIs); ``--help``, no command or an unknown
one registers them all. The work itself is done by the library layers the command's ``run``
imports when it is called.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from baldr_ops import __version__
from baldr_ops.cli.signals import end_on_sigterm
from baldr_ops.errors import Terminated, UserError

# Order is the order shown in --help.
COMMAND_MODULES = ("doctor", "shim", "launch", "runs", "compile", "guard", "sae", "memory")
# The commands a module registers, where they are not the module's own name.
MODULE_OF = {"status": "runs", "stop": "runs", "logs": "runs", "systemd-unit": "runs"}


class UsageError(Exception):
    """A mistake argparse found on the command line (an unknown option, a choice not offered)."""

    def __init__(self, message: str, parser: argparse.ArgumentParser):
        super().__init__(message)
        self.message, self.parser = message, parser


class Parser(argparse.ArgumentParser):
    """argparse, with its mistakes said in one line (its usage block is for --help) and each
    command's documented exit code for bad input (``bad_input_exit``: 2, doctor's 3)."""

    bad_input_exit = 2

    def error(self, message: str):
        raise UsageError(message, self)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="baldr-ops",
        description=(
            "Run big open models with MAX on unified-memory NVIDIA machines (DGX Spark / GB10, "
            "Jetson Thor, GH200): diagnose memory pressure, cap CUDA memory, serve, supervise."
        ),
        epilog="Run 'baldr-ops COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"baldr-ops {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (only,) if only else COMMAND_MODULES:
        importlib.import_module(f"baldr_ops.cli.{name}").register(subparsers)
    return parser


def _module_for(argv: list[str]) -> str | None:
    """The module of the command named on the line, when the line names one."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None or argv[:argv.index(first)]:   # options before the command (--version, -h)
        return None
    module = MODULE_OF.get(first, first)
    return module if module in COMMAND_MODULES else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_module_for(argv))
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"baldr-ops: error: {exc.message}", file=sys.stderr)
        print(f"  hint: see '{exc.parser.prog} --help'", file=sys.stderr)
        return exc.parser.bad_input_exit
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    # A command that holds nothing on a plain run (doctor) calls end_on_sigterm itself when it does.
    if not getattr(args, "sigterm_when_needed", False):
        end_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"baldr-ops: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Terminated as exc:
        return 128 + exc.signum
    except Exception as exc:  # last resort: one line, the traceback only on request
        if os.environ.get("BALDR_DEBUG"):
            raise
        print(f"baldr-ops: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("  hint: rerun with BALDR_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
