"""Warm start to ready: `baldr-ops launch` (canary passed) vs bare `max serve` (first /health 200).

Same model (the demo), same options, same run, alternating, after one warm-up start so both hit
MAX's compile cache. Target: launch at most 1.10x bare.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROUNDS = int(os.environ.get("BENCH_LAUNCH_ROUNDS", "2"))
TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def bare_max(model: str) -> float:
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OTEL_SDK_DISABLED": "true",
           "MAX_SERVE_METRICS_ENDPOINT_PORT": str(_free_port())}
    max_bin = os.path.join(os.path.dirname(sys.executable), "max")
    start = time.monotonic()
    proc = subprocess.Popen([max_bin, "serve", "--model-path", model, "--devices", "cpu", "--host", "127.0.0.1",
                             "--port", str(port), "--served-model-name", "smollm2-135m-instruct"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        while not _health(port):
            if proc.poll() is not None or time.monotonic() - start > TIMEOUT_S:
                raise RuntimeError(f"bare max serve did not become healthy (exit {proc.returncode})")
            time.sleep(0.2)
        return time.monotonic() - start
    finally:
        _stop(proc)


def under_launch() -> float:
    port = _free_port()
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "baldr_ops", "launch", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "BALDR_RUN_DIR": os.environ.get("BALDR_RUN_DIR", "/tmp/baldr-bench-runs")})
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

    model = str(ensure_demo_model(print))
    print("warm-up start (fills MAX's compile cache if it is cold)...", flush=True)
    bare_max(model)
    bare, launched = [], []
    for i in range(ROUNDS):
        bare.append(bare_max(model))
        launched.append(under_launch())
        print(f"round {i + 1}: bare max serve -> /health {bare[-1]:.1f} s; "
              f"baldr-ops launch -> canary passed {launched[-1]:.1f} s", flush=True)
    b, lt = statistics.median(bare), statistics.median(launched)
    print(f"median warm start: bare {b:.1f} s, launch {lt:.1f} s, ratio {lt / b:.3f}x (target <= 1.10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
