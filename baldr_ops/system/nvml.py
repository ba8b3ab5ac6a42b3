"""NVML through pynvml (nvidia-ml-py): devices, memory model, per-process GPU memory.

An absent library or driver, or an NVML_ERROR_NOT_SUPPORTED answer, becomes an explicit value, never
a zero and never an exception (as nvitop does). On GB10 ``nvmlDeviceGetMemoryInfo`` is NOT_SUPPORTED
because the GPU has no framebuffer: GPU memory is host memory (see docs/doctor.md).

pynvml is imported only when a driver is present (/proc/driver/nvidia or /dev/nvidia*), because the
import alone costs tens of milliseconds. On a snapshot root the captured ``.baldr/nvml.json`` is read.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field

from baldr_ops.system._io import capture, is_live, read_captured

UMA_NAME_RE = re.compile(r"GB10|Thor|Orin|Tegra|Jetson|Xavier", re.IGNORECASE)


@dataclass
class GpuProcess:
    """A process with GPU memory, as NVML lists it."""

    pid: int
    used_bytes: int | None      # None: NVML gave no figure (N/A)


@dataclass
class NvmlDevice:
    """One GPU as NVML answers; ``*_status`` says ok, not_supported or the error."""

    index: int
    name: str | None = None
    uuid: str | None = None
    memory_status: str = "unknown"     # ok | not_supported | error: ...
    memory_total: int | None = None
    memory_used: int | None = None
    memory_free: int | None = None
    compute_capability: tuple[int, int] | None = None
    processes_status: str = "unknown"  # ok | not_supported | error: ...
    processes: list[GpuProcess] = field(default_factory=list)


@dataclass
class NvmlInfo:
    """NVML's answers (live or captured); ``available`` False with ``error`` when none."""

    available: bool = False
    error: str | None = None
    driver_version: str | None = None
    cuda_driver_version: int | None = None
    devices: list[NvmlDevice] = field(default_factory=list)


@dataclass
class GpuSummary:
    """What launch needs for hardware detection. ``unified`` None means "cannot tell"."""

    present: bool
    nvml: bool
    count: int = 0
    name: str | None = None
    compute_capability: tuple[int, int] | None = None
    unified: bool | None = None
    driver_version: str | None = None
    detail: str = ""


def driver_present() -> bool:
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0"))


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _nvml_error(pynvml, exc) -> str:
    if isinstance(exc, getattr(pynvml, "NVMLError_NotSupported", ())):
        return "not_supported"
    return f"error: {exc}"


def _query_live() -> NvmlInfo:
    if not driver_present():
        return NvmlInfo(error="no NVIDIA driver (no /proc/driver/nvidia, /dev/nvidiactl or /dev/nvidia0)")
    try:
        import pynvml
    except ImportError:
        return NvmlInfo(error="pynvml is not installed (pip install nvidia-ml-py)")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return NvmlInfo(error=f"nvmlInit failed: {type(exc).__name__}: {exc}")
    info = NvmlInfo(available=True)
    try:
        try:
            info.driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
        except Exception:
            pass
        try:
            info.cuda_driver_version = int(pynvml.nvmlSystemGetCudaDriverVersion())
        except Exception:
            pass
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except Exception as exc:
            info.error = f"nvmlDeviceGetCount failed: {exc}"
            count = 0
        for i in range(count):
            dev = NvmlDevice(index=i)
            info.devices.append(dev)
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            except Exception as exc:
                dev.memory_status = dev.processes_status = _nvml_error(pynvml, exc)
                continue
            for attr, fn in (("name", "nvmlDeviceGetName"), ("uuid", "nvmlDeviceGetUUID")):
                try:
                    setattr(dev, attr, _text(getattr(pynvml, fn)(handle)))
                except Exception:
                    pass
            try:
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                dev.compute_capability = (int(major), int(minor))
            except Exception:
                pass
            try:
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                dev.memory_total, dev.memory_used, dev.memory_free = int(mem.total), int(mem.used), int(mem.free)
                dev.memory_status = "ok"
            except Exception as exc:
                dev.memory_status = _nvml_error(pynvml, exc)
            try:
                procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                for p in procs:
                    used = getattr(p, "usedGpuMemory", None)
                    # NVML_VALUE_NOT_AVAILABLE is 2**64-1
                    used = int(used) if isinstance(used, int) and 0 <= used < (1 << 63) else None
                    dev.processes.append(GpuProcess(pid=int(p.pid), used_bytes=used))
                dev.processes_status = "ok"
            except Exception as exc:
                dev.processes_status = _nvml_error(pynvml, exc)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return info


def nvml_from_json(text: str | None) -> NvmlInfo:
    """Rebuild a captured answer; anything malformed is "not available", never an exception."""
    if text is None:
        return NvmlInfo(error="no captured NVML answers (.baldr/nvml.json) in this snapshot")
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        devices = []
        for d in data.get("devices") or []:
            cc = d.get("compute_capability")
            devices.append(NvmlDevice(
                index=int(d.get("index", len(devices))), name=d.get("name"), uuid=d.get("uuid"),
                memory_status=str(d.get("memory_status", "unknown")),
                memory_total=_opt_int(d.get("memory_total")), memory_used=_opt_int(d.get("memory_used")),
                memory_free=_opt_int(d.get("memory_free")),
                compute_capability=(int(cc[0]), int(cc[1])) if isinstance(cc, list) and len(cc) == 2 else None,
                processes_status=str(d.get("processes_status", "unknown")),
                processes=[GpuProcess(pid=int(p["pid"]), used_bytes=_opt_int(p.get("used_bytes")))
                           for p in d.get("processes") or []]))
        return NvmlInfo(available=bool(data.get("available")), error=data.get("error"),
                        driver_version=data.get("driver_version"),
                        cuda_driver_version=_opt_int(data.get("cuda_driver_version")), devices=devices)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        return NvmlInfo(error=f"captured nvml.json is malformed: {exc}")


def _opt_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def read_nvml(root: str = "/") -> NvmlInfo:
    if not is_live(root):
        return nvml_from_json(read_captured(root, "nvml.json"))
    info = _query_live()
    capture("nvml.json", json.dumps(asdict(info), indent=1))
    return info


def memory_model(dev: NvmlDevice, host_total: int | None) -> tuple[bool | None, str]:
    """(unified?, why) for one device: NOT_SUPPORTED, total 0 or ~host RAM, or an iGPU name."""
    if dev.memory_status == "not_supported":
        return True, "NVML memory info NOT_SUPPORTED (no framebuffer: GPU memory is host memory)"
    if dev.memory_status == "ok" and dev.memory_total == 0:
        return True, "NVML reports 0 bytes of framebuffer"
    if (dev.memory_status == "ok" and host_total and dev.memory_total
            and 0.9 * host_total <= dev.memory_total <= 1.1 * host_total):
        # "about equal", not just ">= 90 %": a dGPU may have more memory than a small host
        return True, "NVML memory total is about host MemTotal"
    if dev.name and UMA_NAME_RE.search(dev.name):
        return True, f"integrated/unified GPU by name ({dev.name})"
    if dev.memory_status == "ok" and dev.memory_total:
        return False, "dedicated framebuffer"
    return None, f"memory info {dev.memory_status}"


def summarize(info: NvmlInfo, host_total: int | None) -> GpuSummary:
    if not info.available:
        return GpuSummary(present=False, nvml=False, detail=f"no GPU via NVML ({info.error})")
    if not info.devices:
        return GpuSummary(present=False, nvml=True, driver_version=info.driver_version,
                          detail="NVML works but reports no devices")
    first = info.devices[0]
    unified, why = memory_model(first, host_total)
    cc = f" sm_{first.compute_capability[0]}{first.compute_capability[1]}" if first.compute_capability else ""
    kind = {True: "unified memory", False: "dedicated memory", None: "memory model unknown"}[unified]
    more = f" (+{len(info.devices) - 1} more)" if len(info.devices) > 1 else ""
    return GpuSummary(present=True, nvml=True, count=len(info.devices), name=first.name,
                      compute_capability=first.compute_capability, unified=unified,
                      driver_version=info.driver_version,
                      detail=f"{first.name or 'GPU'}{cc}, {kind}: {why}{more}")


def read_gpu_summary(root: str = "/") -> GpuSummary:
    """NVML present?, device name, compute capability, unified memory yes/no/unknown. Never raises."""
    from baldr_ops.system.meminfo import read_meminfo

    return summarize(read_nvml(root), read_meminfo(root).total)
