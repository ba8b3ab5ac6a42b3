"""Writes the recorded trajectories under tests/memguard/trajectories/ (run it to regenerate; the
trees are committed). Each trajectory is a directory of step roots (``step-000/proc/meminfo``,
``proc/pressure/memory``, ``proc/buddyinfo``, ``.baldr/kernel.log`` with the kernel lines new at
that step) and ``trajectory.json`` (the fake clock and the phase of each step, and the source).

Figures follow the GB10 field reports that issue 13 cites (the research notes in
../shared/research/doctor.md §2.3 quote them); each trajectory names its source.

    python tests/memguard/make_trajectories.py
"""

from __future__ import annotations

import json
import os
import shutil

from tests.doctor.make_fixtures import buddy, meminfo, psi

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trajectories")
GIB_KB = 1024 * 1024
# DGX Spark (GB10): MemTotal is 121.69-121.7 GiB in every field report (NemoClaw#3251 and others).
GB10_TOTAL_KB = int(121.69 * GIB_KB)
NVRM_LINE = ("NVRM: nvCheckOkFailedNoLog: Check failed: Out of memory [NV_ERR_NO_MEMORY] (0x00000051) returned "
             "from _memdescAllocInternal(pMemDesc) @ mem_desc.c:1359")


def gb10_meminfo(free_gib: float, available_gib: float, cached_gib: float, shmem_gib: float = 0.5) -> str:
    kb = lambda g: int(g * GIB_KB)  # noqa: E731
    anon = max(0.0, 121 - free_gib - cached_gib - 2.0)
    return meminfo(MemTotal=GB10_TOTAL_KB, MemFree=kb(free_gib), MemAvailable=kb(available_gib), Buffers=kb(0.1),
                   Cached=kb(cached_gib), SwapCached=0, AnonPages=kb(anon), Shmem=kb(shmem_gib),
                   SwapTotal=0, SwapFree=0, KReclaimable=kb(0.8), Slab=kb(1.5), Mapped=kb(0.6))


def normal_zone(free_gib: float, big_share: float) -> list[int]:
    """Buddy counts (4 KiB pages, orders 0-10) holding ``free_gib``, ``big_share`` of it in 4 MiB blocks."""
    pages = free_gib * GIB_KB / 4
    big = int(pages * big_share / 1024)
    small = int(pages * (1 - big_share))
    return [small // 2, small // 8, small // 16, small // 32, 64, 32, 16, 8, 4, 0, big]


def write(name: str, source: str, steps: list[dict]) -> None:
    root = os.path.join(HERE, name)
    shutil.rmtree(root, ignore_errors=True)
    for i, step in enumerate(steps):
        base = os.path.join(root, f"step-{i:03d}")
        files = {"proc/meminfo": step["meminfo"], "proc/pressure/memory": step["psi"],
                 "proc/buddyinfo": step["buddy"], ".baldr/kernel.log": "".join(f"[{1000 + step['t']:12.6f}] {line}\n"
                                                                              for line in step.get("kernel", []))}
        for rel, text in files.items():
            path = os.path.join(base, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as fh:
                fh.write(text)
    meta = {"source": source, "page_size": 4096, "mem_total_kb": GB10_TOTAL_KB,
            "steps": [{"t": s["t"], "phase": s["phase"], "note": s.get("note", "")} for s in steps]}
    with open(os.path.join(root, "trajectory.json"), "w") as fh:
        json.dump(meta, fh, indent=1)


def load_flood() -> None:
    """A 60 GiB checkpoint streamed at ~3 GiB/s: MemFree falls from 100 GiB toward ~1 GiB while the
    page cache grows to 60 GiB and MemAvailable stays high (tonyd2wild/GLM-5.3-Flash-NVFP4-DFlash2-2x-DGX-Spark
    PR #19; NVIDIA/open-gpu-kernel-modules#1358). 4 Hz samples, as the load guard takes them."""
    steps = []
    for i in range(40):
        t = i * 0.25
        cached = min(60.0, 2.0 + 0.75 * i * 2)           # +1.5 GiB per sample
        free = max(1.0, 100.0 - 3.0 * i)                 # and as much again in driver allocations
        big = 0.5 if free > 20 else 0.02                  # large blocks run out as the cache fills
        steps.append({"t": t, "phase": "loading", "meminfo": gb10_meminfo(free, free + cached - 1.0, cached),
                      "psi": psi(), "buddy": buddy(normal_zone(free, big))})
    write("load_flood", "GB10 load flood: MemFree to ~1 GiB under 60 GiB of page cache (tonyd2wild PR #19, "
          "open-gpu-kernel-modules#1358)", steps)


def false_positive() -> None:
    """Serving, MemFree under 2 GiB for 5 s while MemAvailable sits at 7 GiB of reclaimable cache, no
    pressure, no NVRM line: a watchdog that killed here killed a healthy server and its request.
    The five samples are the watchdog's own log lines, 22:29:26-22:29:30 (MiaAI-Lab/Qwen3.8-Flash-
    Next-Single-DGX-Spark PR #54): MemFree / MemAvailable in MiB. 1 Hz samples."""
    logged = [(1466, 7071), (1362, 6969), (1423, 7055), (1311, 7023), (1222, 7039)]
    mib = 1 / 1024
    samples = [(3600, 7100)] * 3 + logged + [(3500, 7080)] * 4
    steps = []
    for i, (free_mib, avail_mib) in enumerate(samples):
        free, avail = free_mib * mib, avail_mib * mib
        steps.append({"t": float(i), "phase": "serving", "meminfo": gb10_meminfo(free, avail, avail - free + 0.5),
                      "psi": psi(some=(0.4, 0.2, 0.1, 1000)), "buddy": buddy(normal_zone(free, 0.3))})
    write("false_positive", "MemFree 1222-1466 MiB for 5 samples while MemAvailable stayed 6969-7071 MiB, no NVRM "
          "line (the watchdog's log in MiaAI-Lab/Qwen3.8-Flash-Next-Single-DGX-Spark PR #54)", steps)


def real_exhaustion() -> None:
    """Serving, a runaway allocation: MemAvailable falls 0.5 GiB/s through the 4 GiB floor while
    memory PSI full climbs; the server is drained, then memory keeps falling faster than the drain
    can finish. 1 Hz samples."""
    steps = []
    for i in range(26):
        avail = max(0.3, 12.0 - 0.5 * i)
        full = 0.0 if avail > 6 else min(60.0, (6 - avail) * 9)
        steps.append({"t": float(i), "phase": "serving", "meminfo": gb10_meminfo(max(0.3, avail - 2), avail, 2.0),
                      "psi": psi(some=(full * 1.5, full, full / 2, 10 ** 6), full=(full, full / 2, full / 4, 10 ** 5)),
                      "buddy": buddy(normal_zone(max(0.3, avail - 2), 0.05))})
    write("real_exhaustion", "MemAvailable falling through the serve floor, PSI full rising (the failure mode of "
          "open-gpu-kernel-modules#1358 while serving)", steps)


def nvrm_line() -> None:
    """Serving with 22 GiB MemAvailable when the driver logs NV_ERR_NO_MEMORY (vllm#56824 saw it at
    about 22 GiB available; the line format is from open-gpu-kernel-modules#1358)."""
    steps = []
    for i in range(8):
        steps.append({"t": float(i), "phase": "serving", "meminfo": gb10_meminfo(1.5, 22.0, 21.0),
                      "psi": psi(), "buddy": buddy(normal_zone(1.5, 0.0)),
                      "kernel": [NVRM_LINE] if i == 4 else []})
    write("nvrm_line", "NV_ERR_NO_MEMORY at 22 GiB MemAvailable (vllm#56824; line format "
          "open-gpu-kernel-modules#1358)", steps)


if __name__ == "__main__":
    load_flood()
    false_positive()
    real_exhaustion()
    nvrm_line()
