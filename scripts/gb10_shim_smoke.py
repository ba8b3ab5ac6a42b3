#!/usr/bin/env python3
"""Hardware smoke test of the memory-cap shim on a GB10 (DGX Spark) runner.

Checks, each in a child process with the shim preloaded:
  1. PyTorch allocations (CUDA runtime -> cuGetProcAddress route) hit OOM at the cap, not before;
  2. cuMemGetInfo's free matches MemAvailable (within 1%) with no cap, where raw CUDA reports MemFree;
  3. NVML memory info, NOT_SUPPORTED on GB10, is synthesised and agrees with cuMemGetInfo.
Exits 0 on success, 1 on a failed check, 77 (skip) without an NVIDIA GPU or PyTorch with CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SKIP = 77
GIB = 1 << 30

CHILD = r"""
import ctypes, json, sys
import torch
mode = sys.argv[1]
out = {}
if mode == "cap":
    blocks = []
    try:
        while True:
            blocks.append(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"))
    except torch.OutOfMemoryError:
        pass
    out["allocated"] = len(blocks) * (256 << 20)
    del blocks
    torch.cuda.empty_cache()
else:
    free, total = torch.cuda.mem_get_info()
    avail = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemAvailable:"))
    out.update(free=free, total=total, mem_available=avail)
    nvml = ctypes.CDLL("libnvidia-ml.so.1")
    nvml.nvmlInit_v2()
    dev = ctypes.c_void_p()
    nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(dev))
    mem = (ctypes.c_ulonglong * 3)()
    out["nvml_rc"] = nvml.nvmlDeviceGetMemoryInfo(dev, mem)
    out["nvml_total"], out["nvml_free"] = mem[0], mem[1]
print(json.dumps(out))
"""


def child(mode: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")):
        print("skip: no NVIDIA GPU")
        return SKIP
    try:
        import torch
    except ImportError:
        print("skip: PyTorch is not installed")
        return SKIP
    if not torch.cuda.is_available():
        print("skip: PyTorch has no CUDA device")
        return SKIP
    if not torch.cuda.get_device_properties(0).is_integrated:
        print("note: not an integrated GPU; checks 2-3 are GB10-specific and may not hold")
    from baldr_ops import shim

    failures = []
    cap = 8 * GIB
    env = {**os.environ, **shim.child_env(limit=str(cap), budget=f"gb10-smoke-{os.getpid()}")}
    capped = child("cap", env)
    # PyTorch's context and allocator overhead are not ours to count: allow one block of slack.
    if not cap - (512 << 20) <= capped["allocated"] <= cap:
        failures.append(f"cap: allocated {capped['allocated']} bytes under a {cap}-byte cap")
    print(f"1. cap {cap / GIB:.0f} GiB: PyTorch got {capped['allocated'] / GIB:.2f} GiB before OOM")

    env = {**os.environ, **shim.child_env(budget=f"gb10-smoke-{os.getpid()}-q")}
    q = child("query", env)
    drift = abs(q["free"] - q["mem_available"]) / q["mem_available"]
    print(f"2. cuMemGetInfo free {q['free'] / GIB:.2f} GiB, MemAvailable {q['mem_available'] / GIB:.2f} GiB "
          f"({drift:.2%} apart)")
    if drift > 0.01:
        failures.append(f"query: cuMemGetInfo free {q['free']} vs MemAvailable {q['mem_available']}")
    print(f"3. NVML rc={q['nvml_rc']} total {q['nvml_total'] / GIB:.2f} GiB free {q['nvml_free'] / GIB:.2f} GiB")
    if q["nvml_rc"] != 0 or q["nvml_total"] != q["total"] or abs(q["nvml_free"] - q["free"]) > 0.01 * q["total"]:
        failures.append(f"nvml: rc={q['nvml_rc']} total={q['nvml_total']} free={q['nvml_free']} vs CUDA {q}")
    for f in failures:
        print(f"FAIL {f}")
    print("ok" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
