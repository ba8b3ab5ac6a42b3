"""A CUDA program for tests/shim/test_gpu.py, run in a child process (under the shim or not).

Each step prints one JSON line; where the parent must look at the ledger while memory is held, the
child then waits for a line on stdin. Modes:
  fill BLOCK   [ready; wait] allocate BLOCK-byte tensors until OOM; report; [wait] free all; report;
               [wait] fill again
  hold BYTES   allocate BYTES; report; [wait]
  query        cuMemGetInfo, the device's total, NVML's memory info and MemAvailable, side by side
  compute      a matrix product on the GPU against the same on the CPU
  driver KIND  the driver API itself (ctypes: dlopen + dlsym, as MAX finds it): 1 GiB at a time of
               KIND (device, managed, host, pitch) until refused; report; [wait] free all; report; [wait]
  jax          a small JAX computation (JAX sizes its pool from the driver's figures); report; [wait]
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's package, installed or not
from baldr_ops.system.meminfo import read_meminfo  # noqa: E402 - the project's one /proc/meminfo reader


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def wait() -> None:
    sys.stdin.readline()


def mem_available() -> int:
    return read_meminfo().mem_available


def nvml_memory() -> dict:
    """nvmlDeviceGetMemoryInfo for device 0, as any NVML client (nvitop, DCGM) would call it."""
    nvml = ctypes.CDLL("libnvidia-ml.so.1")
    nvml.nvmlInit_v2()
    dev = ctypes.c_void_p()
    nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(dev))
    mem = (ctypes.c_ulonglong * 3)()  # total, free, used
    rc = nvml.nvmlDeviceGetMemoryInfo(dev, mem)
    return {"nvml_rc": rc, "nvml_total": mem[0], "nvml_free": mem[1]}


def cuda_figures(torch) -> dict:
    free, total = torch.cuda.mem_get_info()
    return {"free": free, "total": total}


def fill(torch, block: int) -> list:
    blocks = []
    try:
        while True:
            blocks.append(torch.empty(block, dtype=torch.uint8, device="cuda"))
    except torch.OutOfMemoryError:
        pass
    torch.cuda.synchronize()
    return blocks


def driver_families(kind: str) -> None:
    c = ctypes
    cu = c.CDLL("libcuda.so.1")
    dev, ctx = c.c_int(), c.c_void_p()
    for rc in (cu.cuInit(0), cu.cuDeviceGet(c.byref(dev), 0), cu.cuDevicePrimaryCtxRetain(c.byref(ctx), dev),
               cu.cuCtxSetCurrent(ctx)):
        assert rc == 0, rc
    gib, held, error = 1 << 30, [], 0
    while not error and len(held) < 16:
        if kind in ("device", "managed", "pitch"):
            ptr = c.c_ulonglong()
            if kind == "device":
                error = cu.cuMemAlloc_v2(c.byref(ptr), c.c_size_t(gib))
            elif kind == "managed":
                error = cu.cuMemAllocManaged(c.byref(ptr), c.c_size_t(gib), c.c_uint(1))  # ATTACH_GLOBAL
            else:
                pitch = c.c_size_t()
                error = cu.cuMemAllocPitch_v2(c.byref(ptr), c.byref(pitch), c.c_size_t(64 << 10),
                                              c.c_size_t(gib // (64 << 10)), c.c_uint(16))
            release = lambda p=ptr.value: cu.cuMemFree_v2(c.c_ulonglong(p))  # noqa: E731
        else:
            ptr = c.c_void_p()
            error = cu.cuMemAllocHost_v2(c.byref(ptr), c.c_size_t(gib))
            release = lambda p=ptr.value: cu.cuMemFreeHost(c.c_void_p(p))  # noqa: E731
        if not error:
            held.append(release)
    emit(allocated=len(held) * gib, error=error)
    wait()
    emit(free_errors=[rc for rc in (release() for release in held) if rc])
    wait()


def main(mode: str, arg: str | None) -> None:
    if mode == "driver":
        driver_families(arg)
        return
    if mode == "jax":
        import jax
        import jax.numpy as jnp

        x = jnp.arange(1 << 20, dtype=jnp.float32)
        emit(sum=float((x + 1).sum()), platform=jax.devices()[0].platform)
        wait()
        return
    import torch

    torch.cuda.mem_get_info()  # a context before any figure is read, without allocating (the cap may be reached)
    if mode == "fill":
        block = int(arg)
        emit(ready=True)  # context made: racers start filling together
        wait()
        blocks = fill(torch, block)
        emit(allocated=len(blocks) * block, **cuda_figures(torch))
        wait()
        del blocks
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        emit(**cuda_figures(torch))
        wait()
        blocks = fill(torch, block)
        emit(allocated=len(blocks) * block, **cuda_figures(torch))
        wait()
    elif mode == "hold":
        held = torch.empty(int(arg), dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
        emit(held=held.numel(), pid=os.getpid())
        wait()
    elif mode == "query":
        props = torch.cuda.get_device_properties(0)
        before = mem_available()  # MemAvailable moves: bracket the figures between two readings
        figures = {**cuda_figures(torch), **nvml_memory()}
        emit(**figures, device_total=props.total_memory, integrated=bool(props.is_integrated),
             mem_available_before=before, mem_available_after=mem_available(), name=props.name)
    elif mode == "compute":
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(1024, 1024, generator=gen, dtype=torch.float64)
        b = torch.randn(1024, 1024, generator=gen, dtype=torch.float64)
        on_gpu = (a.cuda() @ b.cuda()).cpu()
        emit(max_error=float((on_gpu - a @ b).abs().max()))
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
