"""Start-up cost of `baldr-ops doctor --json --interval 0` against `python -c pass`, same interpreter, same run.

Both commands run alternately, several rounds each after one warm-up, and the medians are compared.
Two environments are measured:

* ``pyc``: bytecode cached (PYTHONDONTWRITEBYTECODE unset, caches under a temporary
  PYTHONPYCACHEPREFIX), as an installed package runs. The target (at most 3x) applies here.
* ``no-pyc``: PYTHONDONTWRITEBYTECODE=1 (this dev VM's default), so every run also compiles
  baldr-ops' sources: shown for information.

Target: ratio <= 3.0 for both entry points (`python -m baldr_ops` and the console script).
``python -m baldr_ops --help`` (every command's parser registered) is shown for information.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = int(os.environ.get("BENCH_DOCTOR_ROUNDS", "15"))
TARGET = 3.0
HELP = "python -m baldr_ops --help"   # shown, not part of the target


def _time(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1, 2, 3):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return elapsed


def measure(env: dict) -> dict[str, float]:
    script = os.path.join(os.path.dirname(sys.executable), "baldr-ops")
    cmds = {"python -c pass": [sys.executable, "-c", "pass"],
            "python -m baldr_ops doctor --json --interval 0": [sys.executable, "-m", "baldr_ops", "doctor", "--json",
                                                               "--interval", "0"]}
    if os.path.exists(script):
        cmds["baldr-ops doctor --json --interval 0"] = [script, "doctor", "--json", "--interval", "0"]
    cmds[HELP] = [sys.executable, "-m", "baldr_ops", "--help"]
    samples: dict[str, list[float]] = {k: [] for k in cmds}
    for cmd in cmds.values():   # warm-up: page cache, bytecode cache
        _time(cmd, env)
    for _ in range(ROUNDS):
        for name, cmd in cmds.items():
            samples[name].append(_time(cmd, env))
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> int:
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="baldr-bench-pyc-") as pyc:
        for label, env in (("pyc", {**base_env, "PYTHONPYCACHEPREFIX": pyc}),
                           ("no-pyc", {**base_env, "PYTHONDONTWRITEBYTECODE": "1"})):
            medians = measure(env)
            anchor = medians["python -c pass"]
            print(f"[{label}] median of {ROUNDS} runs, {os.cpu_count()} CPUs, {sys.executable}")
            for name, value in medians.items():
                ratio = value / anchor
                if label == "pyc" and name not in ("python -c pass", HELP):
                    worst = max(worst, ratio)
                print(f"  {name:<50} {value * 1000:7.1f} ms  {ratio:4.2f}x")
    verdict = "meets" if worst <= TARGET else "MISSES"
    print(f"doctor start-up ratio (bytecode cached): {worst:.2f}x python -c pass; {verdict} the {TARGET:.0f}x target")
    return 0
