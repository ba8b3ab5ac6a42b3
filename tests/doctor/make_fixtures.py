"""Writes the fixture trees under tests/doctor/fixtures/ (run it to regenerate; the trees are committed).

Each tree is a root as `doctor --root` reads it: proc/, sys/, etc/ files in the kernel's formats, the
second sample under .baldr/sample2/, and captured answers (.baldr/nvml.json, kernel.log, platform.json,
statvfs.json, meta.json). Figures are modelled on the field reports in ../shared/research/doctor.md.

    python tests/doctor/make_fixtures.py
"""

from __future__ import annotations

import json
import os
import shutil

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
GIB_KB = 1024 * 1024

MEMINFO_ORDER = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapCached", "Active", "Inactive",
                 "Unevictable", "Mlocked", "SwapTotal", "SwapFree", "Zswap", "Zswapped", "Dirty", "Writeback",
                 "AnonPages", "Mapped", "Shmem", "KReclaimable", "Slab", "CommitLimit", "Committed_AS",
                 "HugePages_Total", "HugePages_Free", "HugePages_Rsvd", "HugePages_Surp", "Hugepagesize", "Hugetlb")


def meminfo(**kb) -> str:
    lines = []
    for key in MEMINFO_ORDER:
        if key in kb:
            unit = "" if key.startswith("HugePages_") else " kB"
            lines.append(f"{key + ':':<16}{kb[key]:>10}{unit}")
    return "\n".join(lines) + "\n"


def psi(some=(0.0, 0.0, 0.0, 0), full=(0.0, 0.0, 0.0, 0)) -> str:
    return "".join(f"{k} avg10={a:.2f} avg60={b:.2f} avg300={c:.2f} total={t}\n"
                   for k, (a, b, c, t) in (("some", some), ("full", full)))


def vmstat(**counters) -> str:
    base = {"nr_free_pages": 1000, "pgmajfault": 100, "pswpin": 0, "pswpout": 0, "allocstall_dma": 0,
            "allocstall_dma32": 0, "allocstall_normal": 0, "allocstall_movable": 0, "pgscan_kswapd": 0,
            "pgscan_direct": 0, "pgsteal_direct": 0, "workingset_refault_anon": 0, "workingset_refault_file": 0,
            "oom_kill": 0, "compact_stall": 0, "compact_fail": 0, "thp_fault_fallback": 0}
    base.update(counters)
    return "".join(f"{k} {v}\n" for k, v in base.items())


def buddy(normal: list[int]) -> str:
    dma = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 3]
    return (f"Node 0, zone      DMA {' '.join(f'{n:6d}' for n in dma)} \n"
            f"Node 0, zone   Normal {' '.join(f'{n:6d}' for n in normal)} \n")


MOUNTS_UNIFIED = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
25 24 0:23 / /dev/shm rw,nosuid,nodev - tmpfs tmpfs rw,size={shm}k
26 27 0:24 / /run rw,nosuid,nodev - tmpfs tmpfs rw,size={run}k,mode=755
27 1 259:2 / / rw,relatime - ext4 /dev/nvme0n1p2 rw
31 23 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""

MOUNTS_LEGACY = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
25 24 0:23 / /dev/shm rw,nosuid,nodev - tmpfs tmpfs rw,size={shm}k
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
"""

VM_DEFAULTS = {"overcommit_memory": 0, "overcommit_ratio": 50, "overcommit_kbytes": 0, "swappiness": 60,
               "min_free_kbytes": 67584, "watermark_scale_factor": 10, "panic_on_oom": 0, "zone_reclaim_mode": 0}

GB10_NVML = {"available": True, "error": None, "driver_version": "580.95.05", "cuda_driver_version": 13000,
             "devices": [{"index": 0, "name": "NVIDIA GB10", "uuid": "GPU-00000000-0000-0000-0000-000000000010",
                          "memory_status": "not_supported", "memory_total": None, "memory_used": None,
                          "memory_free": None, "compute_capability": [12, 1], "processes_status": "ok",
                          "processes": []}]}

GB10_OS = 'PRETTY_NAME="Ubuntu 24.04.3 LTS"\nNAME="Ubuntu"\nVERSION="24.04.3 LTS (Noble Numbat)"\n'
GB10_DGX = 'DGX_NAME="DGX Spark"\nDGX_PRETTY_NAME="NVIDIA DGX Spark"\nDGX_SWBUILD_VERSION="7.2.3"\n'
GB10_TOTAL_KB = 125_513_000   # about 119.7 GiB, as GB10 reports


def write_tree(name: str, files: dict[str, str | dict]) -> None:
    root = os.path.join(HERE, name)
    shutil.rmtree(root, ignore_errors=True)
    for rel, content in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(content, indent=1) if isinstance(content, dict) else content)


def common(kernel: str, arch: str, hostname: str, vm: dict | None = None) -> dict:
    files = {"proc/sys/kernel/osrelease": kernel + "\n", "proc/sys/kernel/arch": arch + "\n",
             "proc/sys/kernel/hostname": hostname + "\n", "proc/uptime": "86400.25 170000.10\n",
             "proc/swaps": "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
             "sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never\n",
             "sys/module/zswap/parameters/enabled": "N\n", "sys/module/zswap/parameters/compressor": "lzo\n",
             "sys/module/zswap/parameters/max_pool_percent": "20\n",
             ".baldr/platform.json": {"page_size": 4096, "arch": arch}}
    for key, value in {**VM_DEFAULTS, **(vm or {})}.items():
        files[f"proc/sys/vm/{key}"] = f"{value}\n"
    return files


def gb10(name: str, mem: dict, kernel_log: str = "", extra: dict | None = None, vm2: dict | None = None,
         psi1: tuple | None = None) -> None:
    files = common("6.11.0-1016-nvidia", "aarch64", "spark-01")
    shm_kb, run_kb = GB10_TOTAL_KB // 2, GB10_TOTAL_KB // 10
    files.update({
        "proc/meminfo": meminfo(**mem),
        "proc/pressure/memory": psi(*(psi1 or ())),
        "proc/vmstat": vmstat(),
        "proc/buddyinfo": buddy([5120, 3000, 2500, 2000, 1800, 1500, 1200, 900, 700, 600, 24000]),
        "proc/self/mountinfo": MOUNTS_UNIFIED.format(shm=shm_kb, run=run_kb),
        "proc/self/cgroup": "0::/user.slice/user-1000.slice/session-3.scope\n",
        "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
        "sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/memory.current": "2147483648\n",
        "sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/memory.max": "max\n",
        "sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/memory.high": "max\n",
        "sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/memory.events":
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        "sys/fs/cgroup/user.slice/memory.max": "max\n",
        "sys/block/zram0/disksize": "0\n",
        "sys/block/zram0/mm_stat": "       0        0        0        0        0        0        0        0        0\n",
        "etc/os-release": GB10_OS, "etc/dgx-release": GB10_DGX,
        ".baldr/nvml.json": GB10_NVML,
        ".baldr/kernel.log": "# source=kmsg scanned=2048\n" + kernel_log,
        ".baldr/statvfs.json": {"/dev/shm": {"size_bytes": shm_kb * 1024, "used_bytes": 0},
                                "/run": {"size_bytes": run_kb * 1024, "used_bytes": 3 * 1024**2}},
        ".baldr/meta.json": {"tool": "baldr-ops", "time": 1795400000.0, "interval_s": 1.0, "format": 1},
        ".baldr/sample2/proc/vmstat": vmstat(**(vm2 or {})),
        ".baldr/sample2/proc/pressure/memory": psi(*(psi1 or ())),
        ".baldr/sample2/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/memory.events":
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    })
    files.update(extra or {})
    write_tree(name, files)


def main() -> None:
    kb = GB10_TOTAL_KB
    healthy = dict(MemTotal=kb, MemFree=100 * GIB_KB, MemAvailable=112 * GIB_KB, Buffers=200_000,
                   Cached=12 * GIB_KB, SwapCached=0, Unevictable=30_000, Mlocked=30_000, SwapTotal=16 * GIB_KB,
                   SwapFree=16 * GIB_KB, Zswap=0, Zswapped=0, Dirty=1_000, AnonPages=4 * GIB_KB, Shmem=300_000,
                   CommitLimit=kb // 2 + 16 * GIB_KB, Committed_AS=9 * GIB_KB, HugePages_Total=0, HugePages_Free=0,
                   HugePages_Rsvd=0, HugePages_Surp=0, Hugepagesize=2048, Hugetlb=0)
    gb10("gb10_healthy", healthy,
         "[    2.104512] nvidia: loading out-of-tree module taints kernel.\n"
         "[    3.000001] NVRM: loading NVIDIA UNIX Open Kernel Module for aarch64  580.95.05\n")

    # MemFree low, MemAvailable high: page cache holds the pool (xr-ai troubleshooting pattern)
    cache = dict(healthy, MemFree=3 * GIB_KB, MemAvailable=104 * GIB_KB, Cached=99 * GIB_KB, Dirty=2 * GIB_KB)
    gb10("gb10_cache_pressure", cache)

    # NV_ERR_NO_MEMORY before a wedge, plus a reset-class Xid (open-gpu-kernel-modules#1358)
    gb10("gb10_nvrm_oom", healthy,
         "[ 5012.118822] NVRM: nvCheckOkFailedNoLog: Check failed: Out of memory [NV_ERR_NO_MEMORY] (0x00000051) "
         "returned from _memdescAllocInternal(pMemDesc) @ mem_desc.c:1359\n"
         "[ 5012.118901] NVRM: nvCheckOkFailedNoLog: Check failed: Out of memory [NV_ERR_NO_MEMORY] (0x00000051) "
         "returned from _memdescAllocInternal(pMemDesc) @ mem_desc.c:1359\n"
         "[ 5013.002211] NVRM: Xid (PCI:000f:01:00): 79, pid=4242, name=python3, GPU has fallen off the bus.\n")

    # A box thrashing: PSI full high, swap nearly full, direct reclaim, OOM kills since boot
    total = 64 * GIB_KB
    files = common("6.8.0-45-generic", "x86_64", "build-07", vm={"swappiness": 60})
    files.update({
        "proc/meminfo": meminfo(MemTotal=total, MemFree=300_000, MemAvailable=1_500_000, Buffers=10_000,
                                Cached=1_400_000, SwapCached=900_000, Unevictable=20_000, Mlocked=20_000,
                                SwapTotal=8 * GIB_KB, SwapFree=200_000, Dirty=50_000, AnonPages=60 * GIB_KB,
                                Shmem=400_000, CommitLimit=40 * GIB_KB, Committed_AS=80 * GIB_KB, HugePages_Total=0,
                                HugePages_Free=0, Hugepagesize=2048, Hugetlb=0),
        "proc/pressure/memory": psi((85.10, 70.22, 40.01, 9_000_000_000), (72.44, 55.90, 30.12, 7_000_000_000)),
        "proc/vmstat": vmstat(oom_kill=3, allocstall_normal=50_000, pgscan_direct=9_000_000, pgmajfault=4_000_000,
                              pswpin=2_000_000, pswpout=2_500_000, workingset_refault_file=3_000_000),
        "proc/buddyinfo": buddy([800, 200, 50, 10, 2, 0, 0, 0, 0, 0, 0]),
        "proc/self/mountinfo": MOUNTS_LEGACY.format(shm=total // 2),
        "proc/self/cgroup": "5:memory:/\n1:name=systemd:/user.slice\n0::/\n",
        "sys/fs/cgroup/memory/memory.usage_in_bytes": str(63 * 1024**3) + "\n",
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        "sys/fs/cgroup/memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        "sys/fs/cgroup/memory/memory.failcnt": "0\n",
        "etc/os-release": 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\n',
        ".baldr/kernel.log": "# source=dmesg scanned=900\n"
            "[80001.000100] python3 invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, "
            "oom_score_adj=0\n"
            "[80001.000300] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,"
            "global_oom,task_memcg=/user.slice,task=python3,pid=7001,uid=1000\n"
            "[80001.000400] Out of memory: Killed process 7001 (python3) total-vm:70123456kB, anon-rss:60000000kB, "
            "file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:120000kB oom_score_adj:0\n",
        ".baldr/statvfs.json": {"/dev/shm": {"size_bytes": total // 2 * 1024, "used_bytes": 0}},
        ".baldr/meta.json": {"tool": "baldr-ops", "time": 1795400000.0, "interval_s": 2.0, "format": 1},
        ".baldr/sample2/proc/vmstat": vmstat(oom_kill=3, allocstall_normal=50_400, pgscan_direct=9_080_000,
                                             pgmajfault=4_006_000, pswpin=2_004_000, pswpout=2_005_000,
                                             workingset_refault_file=3_003_000),
        ".baldr/sample2/proc/pressure/memory": psi((85.3, 70.3, 40.1, 9_001_700_000),
                                                   (72.6, 56.0, 30.2, 7_001_450_000)),
    })
    write_tree("thrashing", files)

    # A cgroup v2 service near memory.max with oom_kill events, still happening during the sample
    total = 128 * GIB_KB
    svc = "sys/fs/cgroup/system.slice/max-serve.service"
    files = common("6.8.0-45-generic", "x86_64", "gpu-03")
    files.update({
        "proc/meminfo": meminfo(MemTotal=total, MemFree=60 * GIB_KB, MemAvailable=80 * GIB_KB, Cached=25 * GIB_KB,
                                Unevictable=10_000, Mlocked=10_000, SwapTotal=0, SwapFree=0, AnonPages=40 * GIB_KB,
                                Shmem=200_000, CommitLimit=64 * GIB_KB, Committed_AS=50 * GIB_KB, HugePages_Total=0,
                                HugePages_Free=0, Hugepagesize=2048, Hugetlb=0),
        "proc/pressure/memory": psi((4.0, 2.0, 1.0, 50_000_000), (1.0, 0.5, 0.2, 9_000_000)),
        "proc/vmstat": vmstat(oom_kill=2),
        "proc/buddyinfo": buddy([5000, 3000, 2000, 1000, 800, 600, 400, 300, 200, 100, 9000]),
        "proc/self/mountinfo": MOUNTS_UNIFIED.format(shm=total // 2, run=total // 10),
        "proc/self/cgroup": "0::/user.slice/user-0.slice/session-1.scope\n",
        "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory hugetlb pids\n",
        "sys/fs/cgroup/system.slice/memory.max": "max\n",
        f"{svc}/memory.current": str(int(30.5 * 1024**3)) + "\n",
        f"{svc}/memory.peak": str(32 * 1024**3) + "\n",
        f"{svc}/memory.max": str(32 * 1024**3) + "\n",
        f"{svc}/memory.high": "max\n",
        f"{svc}/memory.swap.current": "0\n",
        f"{svc}/memory.swap.max": "max\n",
        f"{svc}/memory.events": "low 0\nhigh 0\nmax 57\noom 2\noom_kill 2\noom_group_kill 0\n",
        f"{svc}/memory.stat": "anon 31138512896\nfile 1073741824\nshmem 0\npgscan 1200000\npgsteal 1100000\n",
        "etc/os-release": 'PRETTY_NAME="Ubuntu 22.04.5 LTS"\n',
        ".baldr/kernel.log": "# source=kmsg scanned=4000\n"
            "[ 9000.100000] Memory cgroup out of memory: Killed process 8123 (max-serve) total-vm:40000000kB, "
            "anon-rss:31000000kB, file-rss:0kB, shmem-rss:0kB, UID:999 pgtables:70000kB oom_score_adj:0\n",
        ".baldr/statvfs.json": {"/dev/shm": {"size_bytes": total // 2 * 1024, "used_bytes": 0},
                                "/run": {"size_bytes": total // 10 * 1024, "used_bytes": 0}},
        ".baldr/meta.json": {"tool": "baldr-ops", "time": 1795400000.0, "interval_s": 1.0, "format": 1,
                             "cgroup": "/system.slice/max-serve.service"},
        ".baldr/sample2/proc/vmstat": vmstat(oom_kill=2),
        ".baldr/sample2/proc/pressure/memory": psi((4.0, 2.0, 1.0, 50_040_000), (1.0, 0.5, 0.2, 9_010_000)),
        f".baldr/sample2/{svc}/memory.events": "low 0\nhigh 0\nmax 60\noom 3\noom_kill 3\noom_group_kill 0\n",
    })
    write_tree("cgroup_v2_limit", files)

    # A kernel without PSI (CONFIG_PSI off, or CONFIG_PSI_DEFAULT_DISABLED without psi=1), v1 cgroups
    total = 32 * GIB_KB
    files = common("5.4.0-200-generic", "x86_64", "old-01")
    files.update({
        "proc/meminfo": meminfo(MemTotal=total, MemFree=20 * GIB_KB, MemAvailable=26 * GIB_KB, Cached=6 * GIB_KB,
                                Unevictable=0, Mlocked=0, SwapTotal=2 * GIB_KB, SwapFree=2 * GIB_KB,
                                AnonPages=4 * GIB_KB, Shmem=100_000, CommitLimit=18 * GIB_KB, Committed_AS=6 * GIB_KB,
                                HugePages_Total=0, HugePages_Free=0, Hugepagesize=2048),
        "proc/vmstat": vmstat(),
        "proc/buddyinfo": buddy([100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 1000]),
        "proc/self/mountinfo": MOUNTS_LEGACY.format(shm=total // 2),
        "proc/self/cgroup": "5:memory:/user.slice\n1:name=systemd:/user.slice/session-2.scope\n",
        "sys/fs/cgroup/memory/user.slice/memory.usage_in_bytes": str(5 * 1024**3) + "\n",
        "sys/fs/cgroup/memory/user.slice/memory.limit_in_bytes": "9223372036854771712\n",
        "sys/fs/cgroup/memory/user.slice/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        "etc/os-release": 'PRETTY_NAME="Ubuntu 20.04.6 LTS"\n',
        ".baldr/kernel.log": "# source=dmesg scanned=500\n",
        ".baldr/meta.json": {"tool": "baldr-ops", "time": 1795400000.0, "interval_s": 1.0, "format": 1},
        ".baldr/sample2/proc/vmstat": vmstat(),
    })
    write_tree("no_psi", files)


if __name__ == "__main__":
    main()
