"""The live NVML path against a stand-in pynvml (no GPU here): GB10-like NOT_SUPPORTED, and a dGPU."""

from __future__ import annotations

import json
import sys
import types

import pytest

from baldr_ops.system import _io, nvml


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's name
    pass


def fake_pynvml(memory: tuple[int, int, int] | None, name: str = "NVIDIA GB10", cc=(12, 1)):
    m = types.ModuleType("pynvml")
    m.NVMLError, m.NVMLError_NotSupported = NVMLError, NVMLError_NotSupported
    m.nvmlInit = m.nvmlShutdown = lambda: None
    m.nvmlSystemGetDriverVersion = lambda: "580.95.05"
    m.nvmlSystemGetCudaDriverVersion = lambda: 13000
    m.nvmlDeviceGetCount = lambda: 1
    m.nvmlDeviceGetHandleByIndex = lambda i: object()
    m.nvmlDeviceGetName = lambda h: name.encode()          # old bindings return bytes
    m.nvmlDeviceGetUUID = lambda h: "GPU-1"
    m.nvmlDeviceGetCudaComputeCapability = lambda h: cc

    def meminfo(h):
        if memory is None:
            raise NVMLError_NotSupported("Not Supported")
        return types.SimpleNamespace(total=memory[0], used=memory[1], free=memory[2])

    m.nvmlDeviceGetMemoryInfo = meminfo
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: [types.SimpleNamespace(pid=42, usedGpuMemory=2 << 30),
                                                        types.SimpleNamespace(pid=43, usedGpuMemory=None)]
    return m


@pytest.fixture
def with_pynvml(monkeypatch):
    def install(module):
        monkeypatch.setitem(sys.modules, "pynvml", module)
        monkeypatch.setattr(nvml, "driver_present", lambda: True)
    return install


def test_gb10_not_supported_is_unified(with_pynvml):
    with_pynvml(fake_pynvml(None))
    with _io.Recorder() as rec:
        info = nvml.read_nvml("/")
    dev = info.devices[0]
    assert info.available and info.driver_version == "580.95.05"
    assert (dev.name, dev.memory_status, dev.memory_total, dev.compute_capability) == \
        ("NVIDIA GB10", "not_supported", None, (12, 1))
    assert [(p.pid, p.used_bytes) for p in dev.processes] == [(42, 2 << 30), (43, None)]
    s = nvml.read_gpu_summary("/")
    assert (s.present, s.unified, s.compute_capability) == (True, True, (12, 1))
    # the captured answer replays to the same values
    again = nvml.nvml_from_json(rec.captured[".baldr/nvml.json"])
    assert again.devices[0].memory_status == "not_supported" and again.devices[0].compute_capability == (12, 1)
    assert json.loads(rec.captured[".baldr/nvml.json"])["devices"][0]["memory_total"] is None


def test_dedicated_gpu(with_pynvml):
    with_pynvml(fake_pynvml((80 << 30, 1 << 30, 79 << 30), name="NVIDIA H100 80GB HBM3", cc=(9, 0)))
    s = nvml.read_gpu_summary("/")
    assert (s.present, s.unified, s.name, s.compute_capability) == (True, False, "NVIDIA H100 80GB HBM3", (9, 0))


def test_init_failure_is_not_available(with_pynvml):
    m = fake_pynvml(None)

    def boom():
        raise NVMLError("Driver Not Loaded")

    m.nvmlInit = boom
    with_pynvml(m)
    info = nvml.read_nvml("/")
    assert not info.available and "Driver Not Loaded" in info.error
    assert nvml.read_gpu_summary("/").present is False
