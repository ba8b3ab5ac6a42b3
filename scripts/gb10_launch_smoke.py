#!/usr/bin/env python3
"""GB10 hardware smoke test for `baldr-ops launch` (run on a DGX Spark; exits 77 = skipped elsewhere).

Serves a real model with the memory-cap shim and the sampling guard, then checks that:
  1. the server becomes ready (canary passed) with the shim preloaded and the guard active;
  2. a request with temperature > 0 does not crash the server (modular#6488) and returns text;
  3. `baldr-ops status --json` shows the guard and the shim;
  4. `baldr-ops stop` leaves nothing running.

usage: scripts/gb10_launch_smoke.py --model /models/SOME-MODEL [--cap 100G] [--port 8400]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SKIP = 77


def is_gb10() -> bool:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "GB10" in out or " 12.1" in out


def cli(*args: str, timeout: float = 2400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "baldr_ops", *args], capture_output=True, text=True, timeout=timeout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("BALDR_SMOKE_MODEL"), help="model directory on the runner")
    parser.add_argument("--cap", default="100G")
    parser.add_argument("--port", type=int, default=8400)
    args = parser.parse_args()
    if not is_gb10():
        print("SKIP: not a GB10 machine")
        return SKIP
    if not args.model:
        print("SKIP: no --model (or BALDR_SMOKE_MODEL) given")
        return SKIP
    failures = []
    started = time.monotonic()
    up = cli("launch", "--model", args.model, "--cap", args.cap, "--port", str(args.port), "--detach", "--json")
    if up.returncode != 0:
        print(up.stderr[-4000:])
        return 1
    print(f"ready after {time.monotonic() - started:.0f} s")
    try:
        status = json.loads(cli("status", "--port", str(args.port), "--json").stdout)[0]
        if not status.get("shim"):
            failures.append("shim not preloaded")
        if status["guard"]["mode"] == "off":
            failures.append("guard is off on SM 12.x")
        import requests

        url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
        for temperature in (0.0, 0.9):
            reply = requests.post(url, timeout=300, json={
                "model": status["served_name"], "temperature": temperature, "top_p": 0.95, "max_tokens": 32,
                "messages": [{"role": "user", "content": "Name three colours."}]})
            if reply.status_code != 200 or not reply.json()["choices"][0]["message"]["content"]:
                failures.append(f"temperature {temperature}: HTTP {reply.status_code} {reply.text[:200]}")
        if json.loads(cli("status", "--port", str(args.port), "--json").stdout)[0]["restarts"] != 0:
            failures.append("the server restarted during sampling requests")
    finally:
        stop = cli("stop", "--port", str(args.port))
        if stop.returncode != 0:
            failures.append(f"stop failed: {stop.stderr.strip()}")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("OK" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
