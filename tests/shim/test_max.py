"""Real MAX 26.7 as a client: its own driver loading (dlopen + ~110 eager dlsym lookups) against the
fake GB10 driver, with the shim preloaded.

How MAX fixes its device budget (../shared/research/max-fake-driver.md): NVML memory info first (the
shim synthesises it on GB10, where the driver says NOT_SUPPORTED); on an integrated device MAX then
reads the real /proc/meminfo itself, and if the reported total is >= 0.8 x MemTotal it budgets
0.9 x min(total, MemAvailable) -- the host's figure, which we cannot redirect. Below that it budgets
0.9 x the reported free, rounded up to 256 MiB. So each case keeps the cap under 0.8 x the real
MemTotal, and the expected free_memory is 0.9 x the shim's free figure: computable from the fake
meminfo (BALDR_MEMCAP_MEMINFO), the floor and what another process holds in the same budget."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from .conftest import GIB, write_meminfo

pytestmark = pytest.mark.max
MIB = 1 << 20

PROBE = """
import json, os
from max.driver import Accelerator, Buffer
from max.dtype import DType
d = Accelerator()
before = dict(d.stats)
out = {"stats": before}
if os.environ.get("BALDR_MEMCAP_LIMIT"):
    from baldr_ops import shim
    b = Buffer(shape=(1 << 28,), dtype=DType.float32, device=d)  # 1 GiB: MAX maps it as 4 x 256 MiB cuMemCreate
    ledger = shim.read_ledger(os.environ["BALDR_MEMCAP_BUDGET"])
    out["mine"] = sum(p.used for p in ledger.processes if p.pid == os.getpid())
    out["after"] = dict(d.stats)
print(json.dumps(out))
"""


def real_memtotal() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


def run_max(env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cap,floor,available,held", [
    (6 * GIB, 1 * GIB, 5 * GIB, 0),              # MemAvailable - floor is the binding term: 4 GiB
    (4 * GIB, 0, 100 * GIB, 1536 * MIB),         # another process's share is: 2.5 GiB
])
def test_max_device_budget_is_the_shims_figure(kit, tmp_path, cap, floor, available, held):
    if cap >= 0.8 * real_memtotal():
        pytest.skip("this machine's MemTotal is too small to keep MAX on the reported-free rule")
    budget = kit.budget()
    mi = write_meminfo(tmp_path / "meminfo", free=30 * GIB, available=available)
    env = kit.env(budget=budget, BALDR_MEMCAP_LIMIT=str(cap), BALDR_MEMCAP_FLOOR=str(floor),
                  BALDR_MEMCAP_MEMINFO=str(mi), FAKE_CUDA_MEMINFO=str(mi))
    holder = None
    if held:
        holder = kit.popen("dlsym", "init", "alloc", "dev", str(held), "hold", env=env)
        assert holder.stdout.readline().startswith("init") and "rc=0" in holder.stdout.readline()
    try:
        out = run_max(env)
    finally:
        if holder:
            holder.kill()
            holder.wait()
    shim_free = min(cap - held, available - floor)
    expected = math.ceil(0.9 * shim_free / (256 * MIB)) * 256 * MIB
    assert out["stats"]["free_memory"] == expected
    # MAX's 1 GiB buffer went through our cuMemCreate wrapper: the ledger saw it.
    assert out["mine"] == GIB
    assert out["after"]["free_memory"] == expected - GIB


def test_max_without_the_shim_sees_something_else(kit, tmp_path):
    mi = write_meminfo(tmp_path / "meminfo", free=30 * GIB, available=5 * GIB)
    env = kit.env(preload=None, FAKE_CUDA_MEMINFO=str(mi))
    out = run_max(env)
    assert out["stats"]["free_memory"] != math.ceil(0.9 * 4 * GIB / (256 * MIB)) * 256 * MIB
