"""Run every benchmark (or those named on the command line): `python -m bench [name ...]`."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    wanted = [n if n.startswith("bench_") else f"bench_{n}" for n in argv] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    failed = 0
    for name in wanted:
        print(f"\n== {name} ==", flush=True)
        start = time.monotonic()
        rc = importlib.import_module(f"bench.{name}").main()
        failed += bool(rc)
        print(f"-- {name}: {'FAILED' if rc else 'done'} in {time.monotonic() - start:.1f} s", flush=True)
    return 1 if failed else 0


sys.exit(main(sys.argv[1:]))
