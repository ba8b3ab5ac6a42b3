"""The shim against the fake GB10 driver: lookup routes, each allocation family, queries, floor,
races across processes and threads, SIGKILL, fork, and bad configuration."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from baldr_ops import shim

from .conftest import GIB, compile_c, write_meminfo

MIB = 1 << 20
ROUTES = ["link", "dlsym", "gpa", "gpa_v2", "gpa_ptds", "gpa_legacy"]
KINDS = ["dev", "pitch", "managed", "host", "hostalloc", "register", "async", "pool", "vmm"]


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_reaches_the_wrappers(kit, route):
    r = kit.run(route, "init", "where", "cuMemAlloc", "where", "cuMemAllocAsync", "where", "nvmlDeviceGetMemoryInfo",
                "alloc", "dev", "3G", "alloc", "dev", "2G", "alloc", "vmm", "1G", "info", BALDR_MEMCAP_LIMIT="4G")
    assert r.rc == 0, r.stderr
    wheres = {w["args"][0]: w for w in r.steps("where")}
    assert wheres["cuMemAlloc"]["lib"] == "libbaldr_memcap.so"
    assert wheres["cuMemAlloc"]["sym"] == "cuMemAlloc_v2"
    assert wheres["nvmlDeviceGetMemoryInfo"]["lib"] == "libbaldr_memcap.so"
    # The per-thread-default-stream flag must give the _ptsz wrapper, and only that route does.
    expect = "cuMemAllocAsync_ptsz" if route == "gpa_ptds" else "cuMemAllocAsync"
    assert (wheres["cuMemAllocAsync"]["lib"], wheres["cuMemAllocAsync"]["sym"]) == ("libbaldr_memcap.so", expect)
    allocs = r.steps("alloc")
    assert [a["rc"] for a in allocs] == [0, 2, 0]  # 3G fits, 2G more does not, 1G does
    assert r.step("info")["free"] == 0


def test_route_without_shim_is_the_fake(kit):
    r = kit.run("dlsym", "init", "where", "cuMemAlloc", "alloc", "dev", "5G", preload=None, BALDR_MEMCAP_LIMIT="4G")
    assert r.step("where")["lib"] == "libcuda.so.1"
    assert r.step("alloc")["rc"] == 0  # nothing caps it: the test above is not vacuous


@pytest.mark.parametrize("symbol,version,flags,lib,sym", [
    ("cuMemAlloc", 3000, 0, "libcuda.so.1", "cuMemAlloc"),         # v1 ABI: not ours to wrap
    ("cuMemAlloc", 12000, 0, "libbaldr_memcap.so", "cuMemAlloc_v2"),
    ("cuMemAlloc", 12000, 2, "libbaldr_memcap.so", "cuMemAlloc_v2"),
    ("cuMemAllocAsync", 11020, 0, "libbaldr_memcap.so", "cuMemAllocAsync"),
    ("cuMemAllocAsync", 11020, 2, "libbaldr_memcap.so", "cuMemAllocAsync_ptsz"),
    ("cuMemAllocFromPoolAsync", 12000, 2, "libbaldr_memcap.so", "cuMemAllocFromPoolAsync_ptsz"),
    ("cuMemGetInfo", 3020, 0, "libbaldr_memcap.so", "cuMemGetInfo_v2"),
    ("cuGetProcAddress", 12000, 0, "libbaldr_memcap.so", "cuGetProcAddress_v2"),
    ("cuGetProcAddress", 11030, 0, "libbaldr_memcap.so", "cuGetProcAddress"),
    ("cuInit", 12000, 0, "libcuda.so.1", "cuInit"),                # unwrapped names pass untouched
    ("cuNoSuchThing", 12000, 0, "NULL", "NULL"),
])
def test_get_proc_address_keeps_version_and_flags(kit, symbol, version, flags, lib, sym):
    r = kit.run("gpa_v2", "gpacheck", symbol, str(version), str(flags))
    g = r.step("gpacheck")
    assert (g["rc"], g["lib"], g["sym"]) == (0, lib, sym)
    assert g["status"] == (1 if lib == "NULL" else 0)  # the driver's symbolStatus is passed on


@pytest.mark.parametrize("kind", KINDS)
def test_each_family_is_capped_and_freed(kit, kind):
    b = kit.budget()
    r = kit.run("dlsym", "init", "live", "alloc", kind, "600M", "live", "alloc", kind, "600M", "live", "info",
                "free", "0", "alloc", kind, "600M", "info", budget=b, BALDR_MEMCAP_LIMIT="1G")
    assert r.rc == 0, r.stderr
    first, over, again = r.steps("alloc")
    lives = [x["bytes"] for x in r.steps("live")]
    assert first["rc"] == 0
    assert over["rc"] == 2 and over["untouched"] == 1  # CUDA_ERROR_OUT_OF_MEMORY, output left alone
    assert lives[2] == lives[1] > lives[0]  # the refused call never reached the driver
    assert r.step("info", 0)["free"] == GIB - 600 * MIB
    assert r.step("free")["rc"] == 0
    assert again["rc"] == 0  # the free gave the room back (pools keep theirs: the reserve is reused)
    assert r.step("info", 1)["free"] == GIB - 600 * MIB


def test_pool_is_trimmed_before_refusing(kit):
    r = kit.run("dlsym", "init", "alloc", "async", "600M", "free", "0", "alloc", "vmm", "300M", "live",
                "alloc", "async", "600M", "live", "info", BALDR_MEMCAP_LIMIT="1G")
    a = r.steps("alloc")
    assert [x["rc"] for x in a] == [0, 0, 0]
    trims = [x["trims"] for x in r.steps("live")]
    assert trims[1] == trims[0] + 1  # the third allocation only fit after trimming the unused reserve
    assert r.step("info")["free"] == GIB - 900 * MIB


def test_unknown_free_passes_through(kit):
    r = kit.run("dlsym", "init", "alloc", "dev", "100M", "freebogus", "info", BALDR_MEMCAP_LIMIT="1G")
    assert r.step("freebogus")["rc"] == 1  # the fake's own CUDA_ERROR_INVALID_VALUE, not ours
    assert r.step("info")["free"] == GIB - 100 * MIB


def test_queries_agree_on_unified_memory(kit, tmp_path):
    mi = write_meminfo(tmp_path / "meminfo", free=30 * GIB, available=100 * GIB)
    env = dict(BALDR_MEMCAP_MEMINFO=str(mi), FAKE_CUDA_MEMINFO=str(mi))
    capped = kit.run("link", "init", "info", "alloc", "dev", "1G", "info", BALDR_MEMCAP_LIMIT="4G", **env)
    before, after = capped.steps("info")
    for info, free in ((before, 4 * GIB), (after, 3 * GIB)):
        assert (info["free"], info["total"], info["dtotal"]) == (free, 4 * GIB, 4 * GIB)
        assert (info["nvml"], info["nfree"], info["ntotal"], info["nused"]) == (0, free, 4 * GIB, 4 * GIB - free)
        assert (info["nvml2"], info["n2free"], info["n2total"]) == (0, free, 4 * GIB)
        assert info["version"] == (40 | 2 << 24)
        assert info["free1"] == min(free, 2**32 - 1)  # the 32-bit v1 calls are clamped, not wrapped
    # No cap: the GB10 fix alone. The fake driver says free = MemFree (30G); the shim MemAvailable.
    free = kit.run("link", "init", "info", **env).step("info")
    assert (free["free"], free["total"], free["nfree"]) == (100 * GIB, 128 * GIB, 100 * GIB)
    unpreloaded = kit.run("link", "init", "info", preload=None, **env).step("info")
    assert (unpreloaded["free"], unpreloaded["nvml"]) == (30 * GIB, 3)  # what the shim corrects
    floor = kit.run("link", "init", "info", BALDR_MEMCAP_FLOOR="8G", **env).step("info")
    assert floor["free"] == floor["nfree"] == 92 * GIB
    off = kit.run("link", "init", "info", BALDR_MEMCAP_UNIFIED="off", **env).step("info")
    assert off["free"] == 30 * GIB and off["nvml"] == 3  # treated as discrete: driver figures, no synthesis


def test_hugepages_count_as_available(kit, tmp_path):
    mi = write_meminfo(tmp_path / "meminfo", available=100 * GIB, huge_total=64, huge_free=10, huge_size_kb=1 << 20)
    info = kit.run("link", "init", "info", BALDR_MEMCAP_MEMINFO=str(mi)).step("info")
    assert info["free"] == 10 * GIB


def test_percent_limit_resolves_against_device_total(kit):
    r = kit.run("dlsym", "init", "alloc", "dev", "5G", "alloc", "dev", "4G", "info",
                BALDR_MEMCAP_LIMIT="50%", FAKE_CUDA_TOTAL=str(8 * GIB))
    assert [a["rc"] for a in r.steps("alloc")] == [2, 0]
    assert r.step("info")["total"] == 4 * GIB


def test_discrete_gpu_keeps_driver_free(kit):
    info = kit.run("link", "init", "info", BALDR_MEMCAP_LIMIT="100G", FAKE_CUDA_INTEGRATED="0", FAKE_NVML_MEMORY="1",
                   FAKE_NVML_FREE=str(50 * GIB)).step("info")
    assert (info["free"], info["total"]) == (30 * GIB, 100 * GIB)  # MemFree of the fake = its device free
    assert (info["nfree"], info["ntotal"]) == (50 * GIB, 100 * GIB)


def test_floor_refuses_what_would_starve_the_os(kit, tmp_path):
    mi = write_meminfo(tmp_path / "meminfo", available=10 * GIB)
    r = kit.run("dlsym", "init", "alloc", "dev", "3G", "alloc", "dev", "2G",
                "setavail", str(mi), "8G",  # the kernel now sees our 2G gone
                "alloc", "dev", "1G", "setavail", str(mi), "12G", "alloc", "dev", "1G",
                BALDR_MEMCAP_FLOOR="8G", BALDR_MEMCAP_MEMINFO=str(mi))
    assert [(a["rc"], a["untouched"]) for a in r.steps("alloc")] == [(2, 1), (0, 0), (2, 1), (0, 0)]
    off = kit.run("dlsym", "init", "alloc", "dev", "3G", BALDR_MEMCAP_FLOOR="8G", BALDR_MEMCAP_MEMINFO=str(mi),
                  BALDR_MEMCAP_UNIFIED="off")
    assert off.step("alloc")["rc"] == 0  # the floor protects the OS's DRAM: only on unified memory


def test_processes_racing_at_the_cap_never_exceed_it(kit, tmp_path):
    b, go, done = kit.budget(), tmp_path / "go", tmp_path / "done"
    env = kit.env(budget=b, BALDR_MEMCAP_LIMIT="1G")
    procs = [kit.popen("dlsym", "init", "waitfile", str(go), "threadfill", "2", "dev", "16M", "waitfile", str(done),
                       env=env) for _ in range(6)]
    time.sleep(0.3)
    go.touch()
    deadline = time.time() + 30
    while time.time() < deadline:
        state = shim.read_ledger(b)
        if state and len([p for p in state.processes if p.used]) and state.committed >= GIB:
            break
        time.sleep(0.05)
    state = shim.read_ledger(b)
    done.touch()
    outs = [p.communicate(timeout=30)[0] for p in procs]
    got = [int(line.split("bytes=")[1].split()[0]) for out in outs for line in out.splitlines() if line.startswith("threads")]
    assert len(got) == 6
    assert sum(got) == GIB  # never above the cap, and every byte of it used
    assert state.committed == GIB and state.cap == GIB
    assert sum(p.used for p in state.processes) == GIB


def test_sigkill_returns_the_share(kit):
    b = kit.budget()
    env = kit.env(budget=b, BALDR_MEMCAP_LIMIT="1G")
    holder = kit.popen("dlsym", "init", "alloc", "dev", "768M", "hold", env=env)
    assert holder.stdout.readline().startswith("init")
    assert "rc=0" in holder.stdout.readline()
    assert holder.stdout.readline().startswith("holding")
    blocked = kit.run("dlsym", "init", "alloc", "dev", "512M", env=env)
    assert blocked.step("alloc")["rc"] == 2  # the holder is alive: its share stands
    os.kill(holder.pid, signal.SIGKILL)
    time.sleep(0.1)  # a zombie now (not reaped): its memory is gone, so it counts as dead
    state = shim.read_ledger(b)
    dead = [p for p in state.processes if p.pid == holder.pid]
    assert dead and not dead[0].alive and state.dead_used == 768 * MIB
    after = kit.run("dlsym", "init", "alloc", "dev", "512M", "info", env=env)
    assert after.step("alloc")["rc"] == 0
    assert after.step("info")["free"] == 512 * MIB
    holder.wait()
    assert all(p.pid != holder.pid for p in shim.read_ledger(b).processes)


def test_fork_child_has_its_own_share(kit):
    b = kit.budget()
    r = kit.run("dlsym", "init", "alloc", "dev", "512M", "forkalloc", "dev", "400M", "alloc", "dev", "400M", "info",
                budget=b, BALDR_MEMCAP_LIMIT="1G")
    child = r.step("child")
    assert (child["rc"], child["rc2"]) == (0, 2)  # 512 + 400 fit; another 400 does not
    assert child["pid"] != 0
    # The child exited holding 400M; the parent's next allocation reclaims it.
    assert r.step("alloc", 1)["rc"] == 0
    assert r.step("info")["free"] == GIB - 912 * MIB
    # The parent exited holding 912M: reading does not reclaim, it reports the share as dead.
    state = shim.read_ledger(b)
    assert state.committed == state.dead_used == 912 * MIB
    assert len(state.processes) == 1 and not state.processes[0].alive


def test_threads_share_one_process_slot(kit):
    b = kit.budget()
    r = kit.run("dlsym", "init", "threads", "4", "dev", "1M", "20000", "threads", "4", "vmm", "2M", "5000", "info",
                "threadfill", "4", "dev", "16M", "info", budget=b, BALDR_MEMCAP_LIMIT="1G")
    churn, vmm, fill = r.steps("threads")
    assert churn["errors"] == 0 and vmm["errors"] == 0
    assert r.step("info", 0)["free"] == GIB  # every byte of 80000 allocations came back
    assert fill["bytes"] == GIB and r.step("info", 1)["free"] == 0


def test_ledger_file_is_private(kit):
    b = kit.budget()
    kit.run("dlsym", "init", "alloc", "dev", "1M", budget=b, BALDR_MEMCAP_LIMIT="1G")
    st = Path(shim.ledger_path(b)).stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()


def test_ledger_owned_by_someone_else_is_refused(kit):
    b = kit.budget()
    path = Path(shim.ledger_path(b))
    path.write_bytes(b"\0" * 64)
    path.chmod(0o644)  # not private: might be someone else's
    r = kit.run("dlsym", "init", "alloc", "dev", "600M", "alloc", "dev", "600M", budget=b, BALDR_MEMCAP_LIMIT="1G")
    assert "ledger unavailable" in r.stderr and "applies to this process" in r.stderr
    assert [a["rc"] for a in r.steps("alloc")] == [0, 2]  # open: the cap still holds in-process
    closed = kit.run("dlsym", "init", "alloc", "dev", "1M", budget=b, BALDR_MEMCAP_LIMIT="1G",
                     BALDR_MEMCAP_ON_ERROR="closed")
    assert closed.step("alloc")["rc"] == 2


@pytest.mark.parametrize("env,message,capped", [
    ({"BALDR_MEMCAP_LIMIT": "12Q"}, 'BALDR_MEMCAP_LIMIT: "12Q": unknown suffix "Q"', False),
    ({"BALDR_MEMCAP_LIMIT": "0"}, "BALDR_MEMCAP_LIMIT: \"0\" would refuse every allocation", False),
    ({"BALDR_MEMCAP_LIMIT": "150%"}, "at most 100%", False),
    ({"BALDR_MEMCAP_LIMIT": "0x10G"}, 'unknown suffix "x10G"', False),
    ({"BALDR_MEMCAP_LIMIT": "1.5"}, "a byte count must be a whole number", False),
    ({"BALDR_MEMCAP_LIMIT": "99999999999T"}, "is too large", False),
    ({"BALDR_MEMCAP_LIMIT": "1G", "BALDR_MEMCAP_FLOOR": "-1"}, 'BALDR_MEMCAP_FLOOR: "-1" is not a size', True),
    ({"BALDR_MEMCAP_LIMIT": "1G", "BALDR_MEMCAP_BUDGET": "a/b"}, "only letters, digits", True),
    ({"BALDR_MEMCAP_LIMIT": "1G", "BALDR_MEMCAP_UNIFIED": "maybe"}, "expected auto, on or off; using auto", True),
    ({"BALDR_MEMCAP_LIMIT": "1G", "BALDR_MEMCAP_ON_ERROR": "sometimes"}, "expected open or closed; using closed", True),
    ({"BALDR_MEMCAP_LIMIT": "12Q", "BALDR_MEMCAP_ON_ERROR": "closed"}, "capped allocations will be refused", True),
])
def test_bad_configuration(kit, env, message, capped):
    r = kit.run("dlsym", "init", "alloc", "dev", "2G", **env)
    assert r.rc == 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("baldr-memcap:")]
    assert any(message in line for line in errors), r.stderr
    assert len(errors) <= 2  # one line per problem (a bad budget also reports the private ledger)
    assert r.step("alloc")["rc"] == (2 if capped else 0)


def test_no_limit_means_no_cap(kit):
    r = kit.run("dlsym", "init", "alloc", "dev", "200G", "info")
    assert r.step("alloc")["rc"] == 0 and r.stderr == ""


def test_rtld_next_lookups_keep_their_caller(kit, tmp_path):
    """dlsym(RTLD_NEXT) is relative to its caller: our dlsym must not stand in as the caller."""
    (tmp_path / "a.c").write_text(
        '#define _GNU_SOURCE\n#include <dlfcn.h>\nconst char *probe_who(void) { return "A"; }\n'
        'const char *probe_next(void) { const char *(*f)(void) = (const char *(*)(void))dlsym(RTLD_NEXT, "probe_who");'
        ' return f ? f() : "none"; }\n')
    (tmp_path / "b.c").write_text('const char *probe_who(void) { return "B"; }\n')
    (tmp_path / "main.c").write_text(
        '#include <dlfcn.h>\n#include <stdio.h>\nint main(void) { const char *(*f)(void) = '
        '(const char *(*)(void))dlsym(RTLD_DEFAULT, "probe_next"); puts(f ? f() : "missing"); return 0; }\n')
    compile_c(["-fPIC", "-shared", "-o", str(tmp_path / "liba.so"), str(tmp_path / "a.c"), "-ldl"])
    compile_c(["-fPIC", "-shared", "-o", str(tmp_path / "libb.so"), str(tmp_path / "b.c")])
    compile_c(["-o", str(tmp_path / "main"), str(tmp_path / "main.c"), "-ldl"])
    import subprocess

    env = kit.env(preload=f"{kit.shim}:{tmp_path / 'liba.so'}:{tmp_path / 'libb.so'}")
    out = subprocess.run([str(tmp_path / "main")], env=env, capture_output=True, text=True).stdout.strip()
    assert out == "B"
