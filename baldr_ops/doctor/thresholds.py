"""THE threshold table: every check's id, title, WARN/CRIT levels, hint and source.

The checks in ``checks.py`` read their numbers from here, and docs/doctor.md's checks table is
generated from here (``python -m baldr_ops.doctor.thresholds``; a test keeps them equal). Levels are
from ../shared/research/doctor.md section (a); "heuristic" marks a baldr-ops choice resting on field
reports rather than a tool default.
"""

from __future__ import annotations

GIB = 1024**3

# id -> rule. "warn"/"crit": numbers the code compares against (None: no such level);
# "warn_text"/"crit_text": the rule in words for people.
RULES: dict[str, dict] = {
    "mem.available": dict(
        title="Memory headroom", unit="%", warn=10.0, crit=5.0,
        how="MemAvailable / (MemAvailable + AnonPages)",
        warn_text="<= 10 %", crit_text="<= 5 %",
        hint="free memory: stop idle model servers or containers; see `ps aux --sort=-rss | head`",
        source="earlyoom SIGTERM/SIGKILL defaults and its user-mem-total (MANPAGE.md, main.c)"),
    "mem.available.vs_plan": dict(
        title="Headroom vs the planned model", unit="GiB", warn=None, crit=None,
        how="footprint (weights + KV + overhead) + floor vs MemFree, MemAvailable, SwapFree",
        warn_text="plan > MemFree (cache must be reclaimed), or plan + floor > MemAvailable",
        crit_text="plan + floor > MemAvailable + SwapFree",
        hint="free memory or pick a smaller model/context; on UMA `sync; echo 3 > /proc/sys/vm/drop_caches` "
             "is a diagnostic, not a routine step",
        source="NVIDIA xr-ai troubleshooting (MemAvailable >> MemFree = cache pressure); vllm#35313"),
    "swap.used": dict(
        title="Swap exhaustion", unit="%", warn=90.0, crit=95.0,
        how="1 - SwapFree/SwapTotal (only when SwapTotal > 0)",
        warn_text=">= 90 % used", crit_text=">= 95 % used and mem.available <= 5 %",
        hint="swap is nearly full: find the largest users with `smem -s swap` or `top -o SWAP`",
        source="systemd-oomd SwapUsedLimit=90%; oomd desktop swap_free 10; earlyoom -s 10,5"),
    "swap.absent": dict(
        title="No swap", unit="", warn=None, crit=None, how="SwapTotal == 0",
        warn_text="INFO (oomd-style killers need swap)", crit_text="-",
        hint="without swap the box livelocks faster under pressure; consider a swapfile or zram",
        source="systemd-oomd.service(8): swap highly recommended; oomd production_setup.md"),
    "psi.available": dict(
        title="PSI readable", unit="", warn=None, crit=None, how="/proc/pressure/memory exists",
        warn_text="-", crit_text="UNKNOWN when absent",
        hint="boot with `psi=1` (kernel built with CONFIG_PSI_DEFAULT_DISABLED) or use a 4.20+ kernel",
        source="kernel Documentation/accounting/psi.rst; distro CONFIG_PSI_DEFAULT_DISABLED"),
    "psi.some": dict(
        title="Memory contention (PSI some)", unit="%", warn=10.0, crit=None, how="some avg10, avg60",
        warn_text="avg10 >= 10 %", crit_text="-",
        hint="tasks are stalling on memory: look for a process growing (`top -o RES`) or heavy page cache churn",
        source="systemd MemoryPressureWatch default some 200ms/2s (psi-util.h); lmkd some 70ms/1s"),
    "psi.full": dict(
        title="Thrashing (PSI full)", unit="%", warn=10.0, crit=50.0,
        how="full avg10, avg60; stall share from the total between two samples",
        warn_text="avg10 >= 10 % or avg60 >= 5 % or sampled stall >= 10 % (heuristic)",
        crit_text="avg10 >= 50 %",
        hint="the box is thrashing: stop the largest memory user now; systemd-oomd kills at 50-60 %",
        source="Ubuntu systemd-oomd 50 %/20 s; systemd-oomd 60 %/30 s; oomd desktop; lmkd full 700ms/1s",
        warn_avg60=5.0),
    "oom.kernel": dict(
        title="Kernel OOM kills", unit="kills", warn=1, crit=1,
        how="/proc/vmstat oom_kill; kernel log 'Out of memory: Killed process', 'invoked oom-killer'",
        warn_text="any since boot", crit_text="a kill during the sample interval",
        hint="see `dmesg | grep -i -A3 'out of memory'` for the victim; leave headroom before loading models",
        source="vmstat oom_kill; mm/oom_kill.c message formats"),
    "cgroup.mode": dict(
        title="cgroup hierarchy", unit="", warn=None, crit=None,
        how="mount table: cgroup2 on /sys/fs/cgroup (unified), v1 + cgroup2 (hybrid), v1 only (legacy)",
        warn_text="INFO for hybrid or legacy (systemd-oomd needs unified)", crit_text="-",
        hint="boot with `systemd.unified_cgroup_hierarchy=1` for memory.pressure, memory.events and systemd-oomd",
        source="systemd-oomd.service(8); oomd production_setup.md"),
    "cgroup.limit": dict(
        title="cgroup memory limit", unit="%", warn=90.0, crit=None,
        how="v2 memory.current vs memory.max (tightest on the path), memory.events; v1 usage vs limit, oom_control",
        warn_text=">= 90 % of max (heuristic), or memory.events high/max rising, or oom_kill > 0 in its life",
        crit_text="memory.events oom/oom_kill/oom_group_kill rising; v1 oom_control oom_kill > 0 or under_oom",
        hint="raise MemoryMax= of the unit (`systemctl set-property UNIT MemoryMax=...`) or shrink the model",
        source="kernel admin-guide/cgroup-v2.rst (high throttles; max invokes the OOM killer)"),
    "reclaim.direct": dict(
        title="Direct reclaim", unit="/s", warn=0.0, crit=None,
        how="rate of allocstall_*, pgscan_direct, pgmajfault, workingset_refault_file over the interval",
        warn_text="direct reclaim > 0/s together with psi.some avg10 >= 10 % (heuristic)", crit_text="-",
        hint="allocations are reclaiming synchronously: free memory or lower the page cache the workload churns",
        source="psi.rst; cgroup-v2 pgscan; systemd-oomd ranks victims by pgscan rate"),
    "frag.highorder": dict(
        title="Large free blocks (fragmentation)", unit="GiB >=4MiB", warn=None, crit=None,
        how="/proc/buddyinfo Normal zone: free bytes in blocks >= 4 MiB and >= 32 MiB; compact_fail/compact_stall",
        warn_text="INFO: no free block >= 4 MiB while MemFree > 8 GiB, or compact_fail/stall > 0.5 with stalls rising",
        crit_text="below a launch profile's requirement (not set by default)",
        hint="try `echo 1 > /proc/sys/vm/compact_memory`; after long uptime a reboot may be needed (sparkring#173)",
        source="sparkring#173 and PR #202; MiaAI-Lab/DeepSeek-v4.1#23 (heuristic)",
        memfree_min=8 * GIB, compact_ratio=0.5),
    "cache.gap": dict(
        title="Reclaimable cache vs free", unit="GiB", warn=25.0, crit=None,
        how="MemAvailable - MemFree (and Cached - Shmem, Dirty)",
        warn_text="gap > 25 % of MemTotal and the planned model exceeds MemFree (INFO without a plan)", crit_text="-",
        hint="CUDA on UMA may not see page cache as free; prefetch+sync weights, drop caches only as a diagnostic",
        source="NVIDIA xr-ai troubleshooting; DGX Spark playbooks"),
    "shmem.tmpfs": dict(
        title="Shared memory and tmpfs", unit="%", warn=10.0, crit=None,
        how="meminfo Shmem; tmpfs mounts (statvfs)",
        warn_text="Shmem >= 10 % of MemTotal (the limits: tmpfs.limits)", crit_text="-",
        hint="tmpfs and /dev/shm come out of the same pool: clean them (`du -sh /dev/shm /tmp /run`) or cap size=",
        source="proc.rst (Cached includes shmem); tonyd2wild#31 (heuristic)"),
    "tmpfs.limits": dict(
        title="tmpfs and /dev/shm limits", unit="%", warn=50.0, crit=None,
        how="tmpfs mounts' size= limits (statvfs) against MemTotal",
        warn_text="one tmpfs limit > 50 % of MemTotal (above the kernel default), or the limits sum >= 100 %",
        crit_text="-",
        hint="tmpfs pages are not reclaimable without swap and come out of the pool the GPU uses: cap them "
             "(mount -o remount,size=16G /dev/shm; docker --shm-size) to what the workload needs",
        source="tmpfs.rst (default 50 % of RAM); tonyd2wild#31 (shm_size 64gb suspected in hard power-offs); "
               "issue 13 (heuristic)"),
    "vm.min_free": dict(
        title="vm.min_free_kbytes against the floor", unit="GiB", warn=25.0, crit=None,
        how="/proc/sys/vm/min_free_kbytes against the planned OS floor (--floor, default 8G)",
        warn_text=">= 25 % of the floor (MemAvailable loses about as much: the floor is paid twice)",
        crit_text="-",
        hint="raising vm.min_free_kbytes lowers MemAvailable by about its size and trips start-up checks; "
             "keep it near the kernel's default and let the floor (--floor) hold the headroom",
        source="sysctl/vm.rst (min_free_kbytes, watermarks); tonyd2wild GLM-5.3 PR #19 (the min_free_kbytes trap); "
               "issue 13"),
    "launch.unclean": dict(
        title="Unclean previous run (memory guard black box)", unit="", warn=None, crit=None,
        how="black boxes under $XDG_STATE_HOME/baldr-ops/blackbox (or --blackbox DIR) without their end marker",
        warn_text="a run ended without its end marker (wedge, power loss, kill -9)", crit_text="-",
        hint="the last minute is in the evidence; `baldr-ops doctor --blackbox DIR --json` shows it whole",
        source="issue 13 (a wedged GB10 leaves nothing else to read: open-gpu-kernel-modules#1358)"),
    "mem.pinned": dict(
        title="Unevictable / mlocked memory", unit="%", warn=25.0, crit=None,
        how="meminfo Unevictable, Mlocked",
        warn_text=">= 25 % of MemTotal (heuristic)", crit_text="-",
        hint="find the holder: `grep -l VmLck /proc/*/status | xargs grep VmLck | sort -k2 -n | tail`",
        source="proc.rst; MiaAI-Lab/GLM-5.3#193 (61.5 GiB mlocked)"),
    "hugetlb": dict(
        title="Reserved hugepages", unit="GiB", warn=None, crit=None,
        how="HugePages_Total x Hugepagesize, HugePages_Free",
        warn_text="INFO when reserved > 0", crit_text="-",
        hint="reserved hugepages are not available to normal allocations; `sysctl vm.nr_hugepages=0` if unused",
        source="llama.cpp UMA logic (free hugepages count as available when hugetlb is configured)"),
    "overcommit": dict(
        title="Commit policy", unit="%", warn=90.0, crit=None,
        how="vm.overcommit_memory, CommitLimit, Committed_AS",
        warn_text="INFO for mode 1; mode 2 with Committed_AS >= 90 % of CommitLimit",
        crit_text="mode 2 and Committed_AS + plan > CommitLimit",
        hint="with vm.overcommit_memory=2 large mmaps fail early; raise vm.overcommit_ratio or use mode 0",
        source="kernel mm/overcommit-accounting.rst"),
    "zram.zswap": dict(
        title="Compressed swap (zram, zswap)", unit="%", warn=10.0, crit=None,
        how="zram mm_stat mem_used_total; zswap parameters; meminfo Zswap",
        warn_text="zram mem_used_total > 10 % of MemTotal (heuristic); INFO when in use", crit_text="-",
        hint="zram/zswap compress into the same pool the GPU draws from on UMA",
        source="kernel blockdev/zram.rst; zswap module parameters"),
    "gpu.nvml": dict(
        title="NVML usable", unit="", warn=None, crit=None, how="nvmlInit, driver version, devices",
        warn_text="-", crit_text="UNKNOWN when NVML is missing",
        hint="install the NVIDIA driver and `pip install nvidia-ml-py`; check `nvidia-smi`",
        source="nvidia-ml-py"),
    "gpu.memory_model": dict(
        title="GPU memory model", unit="", warn=None, crit=None,
        how="NVML memory NOT_SUPPORTED, total 0 or within 10 % of MemTotal, or GB10/Thor/Orin name",
        warn_text="INFO 'unified: GPU memory = host memory' (never a failure)", crit_text="-",
        hint="on unified memory judge GPU headroom by MemAvailable, not by NVML or cudaMemGetInfo",
        source="NVML header text (quoted in nvtop); DGX Spark known issues; nvitop/nvtop/all-smi/gpud fallbacks"),
    "gpu.proc_mem": dict(
        title="GPU memory by process", unit="GiB", warn=90.0, crit=None,
        how="sum of nvmlDeviceGetComputeRunningProcesses usedGpuMemory",
        warn_text="sum >= 90 % of MemAvailable + sum (UMA) or of the framebuffer (heuristic)", crit_text="-",
        hint="list them with `nvidia-smi --query-compute-apps=pid,used_memory --format=csv`",
        source="vLLM PR #55828 comment; nvtop PR #511; pynvml#63 (managed memory not counted)"),
    "gpu.nvrm_oom": dict(
        title="NVIDIA RM out of memory", unit="lines", warn=None, crit=1,
        how="kernel log NV_ERR_NO_MEMORY, _memdescAllocInternal (current boot)",
        warn_text="any on a dedicated-memory GPU", crit_text="any on a unified-memory device",
        hint="NV_ERR_NO_MEMORY has preceded whole-host wedges on GB10: reboot before the next large load",
        source="open-gpu-kernel-modules#1358; dgx-spark-playbooks#97; vllm#56824"),
    "gpu.xid": dict(
        title="Xid errors", unit="errors", warn=1, crit=None,
        how="kernel log 'NVRM: Xid'",
        warn_text="any", crit_text="an Xid NVIDIA lists as needing a GPU reset or reboot",
        hint="look the code up in NVIDIA's Xid catalogue (docs.nvidia.com/deploy/xid-errors)",
        source="NVIDIA Xid catalogue",
        reset_xids=(48, 62, 64, 74, 79, 95, 119, 120, 154)),
    "platform.versions": dict(
        title="Platform versions", unit="", warn=None, crit=None,
        how="/etc/dgx-release, /etc/os-release, kernel release, NVML driver, MAX",
        warn_text="INFO; WARN on versions with known issues (table KNOWN_ISSUES, empty so far)", crit_text="-",
        hint="compare with the DGX Spark release notes", source="xr-ai doc; DGX Spark release notes"),
}

# (check field, substring, note): versions with known memory issues. Empty until one is confirmed.
KNOWN_ISSUES: tuple[tuple[str, str, str], ...] = ()

ORDER = tuple(RULES)


def rule(check_id: str) -> dict:
    return RULES[check_id]


def markdown_table() -> str:
    """The checks table of docs/doctor.md, generated from RULES."""
    rows = ["| id | check | how | WARN | CRIT | source |", "|---|---|---|---|---|---|"]
    for cid, r in RULES.items():
        cells = [f"`{cid}`", r["title"], r["how"], r["warn_text"], r["crit_text"], r["source"]]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table(), end="")
