"""`baldr-ops shim`: the memory-cap shim's library, a child's environment, and a budget's ledger."""

from __future__ import annotations

import argparse
import shlex


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "shim", help="the memory-cap shim: library path, environment for a child, live ledger",
        description="The LD_PRELOAD library that caps CUDA memory across a process tree and corrects "
                    "memory queries on unified memory (docs/shim.md).")
    sub = p.add_subparsers(dest="shim_command", metavar="SUBCOMMAND")

    q = sub.add_parser("path", help="print the library's path (build it with 'make shim')")
    q.add_argument("--json", action="store_true", help="print a JSON document")
    q.set_defaults(func=run_path)

    q = sub.add_parser("build", help="(re)build shims/libbaldr_memcap.so: runs 'make shim' in the checkout")
    q.add_argument("--force", action="store_true", help="rebuild even if up to date")
    q.set_defaults(func=run_build)

    q = sub.add_parser("env", help="print the environment that runs a command under the shim",
                       description="Prints shell 'export' lines: eval \"$(baldr-ops shim env --limit 90%%)\".")
    q.add_argument("--limit", help="cap: bytes, K/M/G/T (binary) or a percentage of the device total, e.g. 100G or 90%%")
    q.add_argument("--floor", help="OS headroom kept free on unified memory, same units (e.g. 8G)")
    q.add_argument("--budget", help="processes with the same budget name share one cap (default: default)")
    q.add_argument("--unified", choices=("auto", "on", "off"), help="treat the GPU as unified memory (default auto)")
    q.add_argument("--on-error", choices=("open", "closed"),
                   help="if the ledger is unavailable: open = cap per process, closed = refuse (default open)")
    q.add_argument("--meminfo", help="read this file instead of /proc/meminfo (tests)")
    q.add_argument("--json", action="store_true", help="print a JSON document")
    q.set_defaults(func=run_env)

    q = sub.add_parser("ledger", help="show a budget's live ledger: cap, committed, per-process use")
    q.add_argument("--budget", default="default", help="budget name (default: default)")
    q.add_argument("--json", action="store_true", help="print a JSON document")
    q.set_defaults(func=run_ledger)

    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _docs():
    from baldr_ops import shim
    from baldr_ops.schema import Document

    class ShimPath(Document):
        path: str

    class ShimEnv(Document):
        library: str
        env: dict[str, str]

    class ShimLedger(Document):
        budget: str
        ledger: shim.LedgerState | None

    return ShimPath, ShimEnv, ShimLedger


def run_path(args: argparse.Namespace) -> int:
    from baldr_ops import shim

    path = shim.library_path()
    if args.json:
        print(_docs()[0](path=str(path)).to_json())
    else:
        print(path)
    return 0


def run_build(args: argparse.Namespace) -> int:
    from baldr_ops import shim

    print(shim.build_library(force=args.force))
    return 0


def run_env(args: argparse.Namespace) -> int:
    from baldr_ops import shim

    env = shim.child_env(limit=args.limit, floor=args.floor, budget=args.budget, unified=args.unified,
                         on_error=args.on_error, meminfo=args.meminfo)
    if args.json:
        print(_docs()[1](library=str(shim.library_path()), env=env).to_json())
        return 0
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def run_ledger(args: argparse.Namespace) -> int:
    from baldr_ops import shim

    state = shim.read_ledger(args.budget)
    if args.json:
        print(_docs()[2](budget=args.budget, ledger=state).to_json())
        return 0
    if state is None:
        print(f"budget {args.budget}: no ledger (no process has run under the shim with this budget)")
        return 0
    cap = "none" if state.cap is None else _gib(state.cap)
    print(f"budget {state.budget}  ({state.path})")
    print(f"  cap        {cap}")
    print(f"  committed  {_gib(state.committed)}" + (f"  (of which {_gib(state.dead_used)} held by dead processes, "
                                                     "returned at the next allocation failure or query)" if state.dead_used else ""))
    if not state.processes:
        print("  processes  none")
    for p in state.processes:
        print(f"  pid {p.pid:<8} {_gib(p.used):>12}  {'alive' if p.alive else 'dead'}")
    return 0
