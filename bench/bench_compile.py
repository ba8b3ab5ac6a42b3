"""Launch to ready from an empty compile cache: with a precompiled bundle against without (issue 7).

Same run, same model (the demo), same options. Each start gets a fresh, empty MODULAR_CACHE_DIR, so
"without" pays MAX's full compile and "with" loads the bundle's graphs (`--precompiled-mefs`).
Ready = `baldr-ops launch` reports ready (canary answered). Target: with the bundle >= 5x faster.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_launch import _free_port, _stop

ROUNDS = int(os.environ.get("BENCH_COMPILE_ROUNDS", "1"))
TIMEOUT_S = 1500
TARGET = 5.0


def launch_to_ready(cache_dir: Path, bundle: Path | None, run_dir: Path) -> float:
    """Seconds from `baldr-ops launch` to its "ready" line, with MODULAR_CACHE_DIR = cache_dir."""
    port = _free_port()
    args = [sys.executable, "-m", "baldr_ops", "launch", "--port", str(port)]
    if bundle:
        args += ["--precompiled", str(bundle)]
    env = {**os.environ, "MODULAR_CACHE_DIR": str(cache_dir), "BALDR_RUN_DIR": str(run_dir),
           "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        for line in proc.stderr:
            if "] ready " in line:
                return time.monotonic() - start
            if time.monotonic() - start > TIMEOUT_S:
                break
        raise RuntimeError(f"launch did not become ready (exit {proc.poll()})")
    finally:
        _stop(proc)


def main() -> int:
    from baldr_ops.models.demo import ensure_demo_model

    ensure_demo_model(print)
    work = Path(tempfile.mkdtemp(prefix="baldr-bench-compile-"))
    try:
        bundle = work / "bundle"
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "baldr_ops", "compile", "--export", str(bundle)], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"compile --export (this machine's own cache): {time.monotonic() - start:.1f} s; bundle "
              f"{sum(p.stat().st_size for p in bundle.rglob('*') if p.is_file()) / 1e6:.1f} MB", flush=True)
        without, with_bundle = [], []
        for i in range(ROUNDS):
            for label, use in (("without", None), ("with", bundle)):
                cache = work / f"cache-{label}-{i}"
                cache.mkdir()
                seconds = launch_to_ready(cache, use, work / "runs")
                (with_bundle if use else without).append(seconds)
                print(f"round {i + 1}: empty cache, {label} bundle -> ready in {seconds:.1f} s", flush=True)
                shutil.rmtree(cache, ignore_errors=True)
        w, b = statistics.median(without), statistics.median(with_bundle)
        ratio = w / b
        print(f"median launch to ready from an empty cache: without bundle {w:.1f} s, with bundle {b:.1f} s, "
              f"{ratio:.1f}x faster (target >= {TARGET:.0f}x): {'met' if ratio >= TARGET else 'NOT met'}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
