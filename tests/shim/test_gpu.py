"""The shim against a real NVIDIA driver (any GPU; skipped without one): PyTorch's three allocators
stop at the cap and get their memory back, one budget spans processes and a killed holder's share
is reclaimed, every memory query reports the cap, results are unchanged, and the unified-memory
rule (`BALDR_MEMCAP_UNIFIED=on`, automatic on GB10) reports MemAvailable.

Each check runs tests/shim/gpu_child.py in a child process; the shim must be built (`make shim`)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import select
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from baldr_ops import shim
from baldr_ops.native import LibraryMissing, library_path

pytestmark = pytest.mark.gpu

CHILD = Path(__file__).with_name("gpu_child.py")
MIB, GIB = 1 << 20, 1 << 30
CAP = 4 * GIB
BLOCK = 256 * MIB
# How far short of its share a fill may stop: the last block that did not fit, plus room for small
# allocations a library makes on its own (none are expected from these children).
SLACK = BLOCK + 64 * MIB
WAIT_S = 300  # a child that says nothing for this long is stuck (a driver hang): fail, do not hang the run


@pytest.fixture(scope="module", autouse=True)
def needs_torch_and_shim():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("needs PyTorch with CUDA")
    try:
        library_path()
    except LibraryMissing as e:
        pytest.fail(f"{e} (run 'make shim' before the GPU tests)")


_budgets: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def remove_ledgers():
    yield
    for name in _budgets:
        Path(shim.ledger_path(name)).unlink(missing_ok=True)


def budget() -> str:
    _budgets.append(f"gpu{uuid.uuid4().hex[:12]}")
    return _budgets[-1]


class Child:
    """gpu_child.py in a process of its own: read its JSON lines, let it go on, kill it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, preload: bool = True, **shim_settings):
        # Plain means plain: nothing of the shim inherited from this process.
        full = {k: v for k, v in os.environ.items() if not k.startswith("BALDR_MEMCAP_") and k != "LD_PRELOAD"}
        if preload:
            full.update(shim.child_env(**shim_settings))
        for name, value in (env or {}).items():  # None: not set at all
            if value is None:
                full.pop(name, None)
            else:
                full[name] = value
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, so a chatty child never blocks on a pipe
        self.proc = subprocess.Popen([sys.executable, str(CHILD), *args], env=full, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)

    def _failed(self, why: str) -> AssertionError:
        self.proc.kill()
        rc = self.proc.wait()
        self.stderr.seek(0)
        return AssertionError(f"child {why} (rc {rc}): {self.stderr.read()[-3000:]}")

    def next(self) -> dict:
        if not select.select([self.proc.stdout], [], [], WAIT_S)[0]:
            raise self._failed(f"said nothing for {WAIT_S} s")
        line = self.proc.stdout.readline()
        if not line:
            raise self._failed("ended")
        return json.loads(line)

    def go(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def started(self) -> Child:
        """A fill child past its context, told to fill."""
        assert self.next() == {"ready": True}
        self.go()
        return self

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)


def run_child(*args: str, **kwargs) -> dict:
    child = Child(*args, **kwargs)
    try:
        return child.next()
    finally:
        child.end()


def committed(name: str) -> int:
    state = shim.read_ledger(name)
    assert state is not None, f"budget {name} has no ledger: the shim never joined it"
    return state.committed


ALLOCATORS = {
    "native": "",  # cudaMalloc -> cuMemAlloc, reached through cuGetProcAddress
    "expandable": "expandable_segments:True",  # cuMemCreate + cuMemMap (the VMM route MAX takes)
    "async": "backend:cudaMallocAsync",  # the driver's stream-ordered pool
}


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_torch_stops_at_the_cap_and_gets_its_memory_back(allocator):
    name = budget()
    child = Child("fill", str(BLOCK), env={"PYTORCH_CUDA_ALLOC_CONF": ALLOCATORS[allocator]},
                  limit=str(CAP), budget=name).started()
    try:
        full = child.next()
        held = committed(name)
        assert CAP - SLACK <= full["allocated"] <= CAP, full
        assert full["allocated"] <= held <= CAP, (full, held)
        assert full["total"] == CAP
        assert abs(full["free"] - (CAP - held)) <= 2 * MIB, (full, held)

        child.go()
        emptied = child.next()
        assert committed(name) <= 64 * MIB
        assert emptied["free"] >= CAP - 64 * MIB, emptied

        child.go()
        again = child.next()
        assert abs(again["allocated"] - full["allocated"]) <= SLACK, (full, again)
    finally:
        child.end()


@pytest.mark.parametrize("kind", ["device", "managed", "host", "pitch"])
def test_driver_families_are_capped_and_given_back(kind):
    name = budget()
    child = Child("driver", kind, limit=str(CAP), budget=name)
    try:
        full = child.next()
        assert full["allocated"] == CAP and full["error"] == 2, full  # CUDA_ERROR_OUT_OF_MEMORY
        assert committed(name) == CAP
        child.go()
        assert child.next()["free_errors"] == []
        assert committed(name) == 0
    finally:
        child.end()


def test_processes_racing_to_the_cap_never_exceed_it():
    name, racers = budget(), 4
    children = [Child("fill", str(BLOCK), limit=str(CAP), budget=name) for _ in range(racers)]
    try:
        for child in children:  # every context first, then all fill at once
            assert child.next() == {"ready": True}
        for child in children:
            child.go()
        got = [child.next()["allocated"] for child in children]
        assert CAP - racers * SLACK <= sum(got) <= CAP, got
        assert committed(name) <= CAP
    finally:
        for child in children:
            child.end()


def test_every_query_reports_the_cap():
    plain = run_child("query", preload=False)
    assert plain["total"] > CAP, "this check needs a GPU larger than its cap"
    capped = run_child("query", limit=str(CAP), budget=budget())
    assert capped["total"] == CAP
    assert capped["device_total"] == CAP  # cudaGetDeviceProperties -> cuDeviceTotalMem
    assert CAP - 64 * MIB <= capped["free"] <= CAP
    assert capped["nvml_rc"] == 0 and capped["nvml_total"] == CAP, capped
    assert abs(capped["nvml_free"] - capped["free"]) <= 64 * MIB, capped


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs nvidia-smi")
def test_nvidia_smi_under_the_shim_shows_the_cap():
    env = {**os.environ, **shim.child_env(limit=str(CAP), budget=budget())}
    out = subprocess.run(["nvidia-smi", "--id=0", "--query-gpu=memory.total,memory.free",
                          "--format=csv,noheader,nounits"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    total_mib, free_mib = (int(v) for v in out.stdout.split(","))
    assert total_mib == CAP // MIB, out.stdout
    assert free_mib <= total_mib


def test_one_budget_spans_processes_and_a_killed_holder_is_reclaimed():
    name, hold = budget(), 3 * GIB
    holder = Child("hold", str(hold), limit=str(CAP), budget=name)
    try:
        holding = holder.next()
        ledger = shim.read_ledger(name)
        mine = [p for p in ledger.processes if p.pid == holding["pid"]]
        assert mine and mine[0].alive and mine[0].used >= hold, ledger

        squeezed = Child("fill", str(BLOCK), limit=str(CAP), budget=name).started()
        try:
            got = squeezed.next()
            assert CAP - hold - SLACK <= got["allocated"] <= CAP - hold, got
            assert committed(name) <= CAP
        finally:
            squeezed.end()

        holder.proc.send_signal(signal.SIGKILL)  # no chance to free: the ledger must notice the death
        holder.proc.wait(timeout=60)
        after = Child("fill", str(BLOCK), limit=str(CAP), budget=name).started()
        try:
            got = after.next()
            assert got["allocated"] >= CAP - SLACK, got
        finally:
            after.end()
    finally:
        holder.end()


def test_results_are_unchanged_under_the_shim():
    out = run_child("compute", limit=str(CAP), budget=budget())
    assert out["max_error"] < 1e-9, out


@pytest.mark.parametrize("setting", ["on", "auto"])
def test_unified_rule_reports_memavailable(setting):
    """Forced on (any GPU), or automatic (an integrated GPU such as GB10's, where NVML has no memory
    figures of its own): free is MemAvailable, read between two readings of it, through CUDA and NVML."""
    plain = run_child("query", preload=False)
    if setting == "auto" and not plain["integrated"]:
        pytest.skip("the automatic rule applies to an integrated GPU only")
    out = run_child("query", unified=setting, budget=budget())
    total = plain["total"]
    assert out["total"] == total  # no cap: the device's own total
    low = min(out["mem_available_before"], out["mem_available_after"], total)
    high = min(max(out["mem_available_before"], out["mem_available_after"]), total)
    for figure in ("free", "nvml_free"):
        assert 0.995 * low <= out[figure] <= 1.005 * high, (figure, out)
    assert out["nvml_rc"] == 0


def test_jax_sizes_its_pool_from_the_capped_figures():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("needs JAX with CUDA")
    name = budget()
    # On the GPU or not at all (a refused pool must fail here, not fall back to the CPU), with JAX's
    # default preallocation whatever this process's environment says.
    xla = {k: None for k in os.environ if k.startswith("XLA_PYTHON_CLIENT_")}
    child = Child("jax", env={"JAX_PLATFORMS": "cuda", **xla}, limit=str(CAP), budget=name)
    try:
        out = child.next()
        assert out["platform"] == "gpu", out
        assert out["sum"] == pytest.approx((1 << 20) * ((1 << 20) + 1) / 2, rel=1e-5)
        # JAX preallocates a fraction (75 % by default) of what the driver says it has.
        assert CAP // 2 <= committed(name) <= CAP
    finally:
        child.end()
