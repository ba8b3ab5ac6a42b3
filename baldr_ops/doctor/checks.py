"""Judges: pure functions from a Snapshot to Checks. No I/O here.

Each check reads its levels from ``thresholds.RULES``. A signal that could not be read gives
UNKNOWN with the reason, never OK. ``check_plan_fit`` renders the fit judgement that
``doctor --model``, ``launch`` and ``compile`` share (``baldr_ops.plan.fit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from baldr_ops.doctor.thresholds import GIB, KNOWN_ISSUES, RULES
from baldr_ops.plan.fit import CHECK_ID as FIT_CHECK_ID
from baldr_ops.plan.fit import judge_fit

OK, INFO, WARN, CRIT, UNKNOWN = "OK", "INFO", "WARN", "CRIT", "UNKNOWN"
STATUSES = (OK, INFO, WARN, CRIT, UNKNOWN)
# Which status "wins" a summary: a real finding outranks an unknown one.
RANK = {OK: 0, INFO: 1, UNKNOWN: 2, WARN: 3, CRIT: 4}
DOC_URL = "docs/doctor.md#{anchor}"


@dataclass
class Check:
    """One verdict: a check id, its status and value, the evidence and what to do."""

    id: str
    status: str
    value: float | int | str | None = None
    unit: str = ""
    evidence: dict = field(default_factory=dict)
    hint: str | None = None
    title: str = ""
    thresholds: dict = field(default_factory=dict)
    source: str = ""
    doc_url: str = ""

    def value_text(self) -> str:
        if self.value is None:
            return "n/a"
        if isinstance(self.value, float):
            text = f"{self.value:.1f}"
        else:
            text = str(self.value)
        return f"{text} {self.unit}".strip() if self.unit and not isinstance(self.value, str) else text

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "status": self.status, "value": self.value,
                "unit": self.unit, "thresholds": self.thresholds, "evidence": self.evidence,
                "hint": self.hint, "doc_url": self.doc_url, "source": self.source}


def make(cid: str, status: str, value=None, evidence: dict | None = None, hint: str | None = None,
         unit: str | None = None) -> Check:
    r = RULES[cid]
    if hint is None and status not in (OK,):
        hint = r["hint"]
    return Check(id=cid, status=status, value=value, unit=r["unit"] if unit is None else unit,
                 evidence=evidence or {}, hint=hint, title=r["title"],
                 thresholds={"warn": r["warn_text"], "crit": r["crit_text"]}, source=r["source"],
                 doc_url=DOC_URL.format(anchor=cid.replace(".", "")))


def unknown(cid: str, why: str, hint: str | None = None) -> Check:
    return make(cid, UNKNOWN, None, {"reason": why}, hint)


def gib(n: int | float | None) -> float | None:
    return None if n is None else round(n / GIB, 2)


def pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def fmt_gib(n: int | float | None) -> str:
    return "n/a" if n is None else f"{n / GIB:.1f} GiB"


# ---------------------------------------------------------------- memory

def check_mem_available(snap) -> Check:
    mi = snap.meminfo
    avail, anon = mi.get("MemAvailable"), mi.get("AnonPages")
    if not mi.available or avail is None:
        return unknown("mem.available", mi.error or "MemAvailable missing (kernel < 3.14?)")
    r = RULES["mem.available"]
    denom = avail + (anon or 0)
    share = pct(avail, denom) if denom else 0.0
    ev = {"MemAvailable_GiB": gib(avail), "AnonPages_GiB": gib(anon), "MemTotal_GiB": gib(mi.total),
          "MemFree_GiB": gib(mi.free)}
    status = CRIT if share <= r["crit"] else WARN if share <= r["warn"] else OK
    return make("mem.available", status, round(share, 1), ev,
                None if status == OK else f"only {fmt_gib(avail)} available; " + r["hint"])


def _swap(snap) -> tuple[int | None, int | None]:
    return snap.meminfo.get("SwapTotal"), snap.meminfo.get("SwapFree")


def check_swap_used(snap, mem_available_pct: float | None) -> Check:
    total, free = _swap(snap)
    if not snap.meminfo.available or total is None or free is None:
        return unknown("swap.used", snap.meminfo.error or "SwapTotal/SwapFree missing")
    if total == 0:
        return make("swap.used", OK, 0.0, {"SwapTotal_GiB": 0.0, "note": "no swap configured (see swap.absent)"})
    r = RULES["swap.used"]
    used = pct(total - free, total)   # both levels are % used
    ev = {"SwapTotal_GiB": gib(total), "SwapFree_GiB": gib(free), "mem_available_pct": mem_available_pct}
    if used >= r["crit"] and mem_available_pct is not None and mem_available_pct <= RULES["mem.available"]["crit"]:
        status = CRIT
    elif used >= r["warn"]:
        status = WARN
    else:
        status = OK
    return make("swap.used", status, round(used, 1), ev)


def check_swap_absent(snap) -> Check:
    total, _ = _swap(snap)
    if not snap.meminfo.available or total is None:
        return unknown("swap.absent", snap.meminfo.error or "SwapTotal missing")
    if total == 0:
        return make("swap.absent", INFO, "no swap", {"SwapTotal": 0})
    return make("swap.absent", OK, f"{fmt_gib(total)} swap", {"SwapTotal_GiB": gib(total)})


# ---------------------------------------------------------------- PSI

def check_psi_available(snap) -> Check:
    if snap.psi.available:
        return make("psi.available", OK, "yes", {"source": snap.psi.source})
    return unknown("psi.available", snap.psi.error or "no PSI")


def check_psi_some(snap) -> Check:
    p = snap.psi
    if not p.available or p.some is None:
        return unknown("psi.some", p.error or "no PSI some line", RULES["psi.available"]["hint"])
    r = RULES["psi.some"]
    ev = {"avg10": p.some.avg10, "avg60": p.some.avg60, "avg300": p.some.avg300, "total_us": p.some.total_us}
    if snap.rates and snap.rates.psi_some_stall_pct is not None:
        ev["sampled_stall_pct"] = round(snap.rates.psi_some_stall_pct, 2)
    status = WARN if p.some.avg10 >= r["warn"] else OK
    return make("psi.some", status, p.some.avg10, ev)


def check_psi_full(snap) -> Check:
    p = snap.psi
    if not p.available:
        return unknown("psi.full", p.error or "no PSI", RULES["psi.available"]["hint"])
    if p.full is None:
        return unknown("psi.full", "no 'full' line in memory pressure (kernel < 5.x?)")
    r = RULES["psi.full"]
    ev = {"avg10": p.full.avg10, "avg60": p.full.avg60, "avg300": p.full.avg300, "total_us": p.full.total_us}
    sampled = snap.rates.psi_full_stall_pct if snap.rates else None
    if sampled is not None:
        ev["sampled_stall_pct"] = round(sampled, 2)
    if p.full.avg10 >= r["crit"]:
        status = CRIT
    elif p.full.avg10 >= r["warn"] or p.full.avg60 >= r["warn_avg60"] or (sampled or 0) >= r["warn"]:
        status = WARN
    else:
        status = OK
    return make("psi.full", status, p.full.avg10, ev)


# ---------------------------------------------------------------- OOM

def check_oom_kernel(snap) -> Check:
    vm = snap.vmstat
    log = snap.kernel_log
    count = vm.get("oom_kill") if vm else None
    lines = log.oom_lines() if log.available else []
    if count is None and not log.available:
        return unknown("oom.kernel", "neither /proc/vmstat oom_kill nor the kernel log is readable"
                       f" ({log.error})")
    ev: dict = {"vmstat_oom_kill": count, "kernel_log": log.source if log.available else f"unavailable: {log.error}",
                "lines": [ln.render() for ln in lines[-5:]]}
    rising = None
    if snap.rates and snap.rates.vmstat and "oom_kill" in snap.rates.vmstat:
        rising = snap.rates.vmstat["oom_kill"] * snap.rates.interval_s
        ev["kills_during_sample"] = round(rising)
    kills = count if count is not None else len([ln for ln in lines if "Killed process" in ln.text])
    if rising:
        status = CRIT
    elif kills or lines:
        status = WARN
    else:
        status = OK
    return make("oom.kernel", status, kills, ev)


# ---------------------------------------------------------------- cgroups

def check_cgroup_mode(snap) -> Check:
    cg = snap.cgroup
    ev = dict(cg.evidence)
    if cg.mode in ("unknown", "none"):
        return unknown("cgroup.mode", cg.error or f"cgroup mode {cg.mode}")
    ev["memory_controller_v2"] = cg.memory_v2
    if cg.mode == "unified":
        if not cg.memory_v2:
            return make("cgroup.mode", INFO, cg.mode, ev,
                        "the memory controller is not enabled in cgroup v2 (cgroup.controllers)")
        return make("cgroup.mode", OK, cg.mode, ev)
    return make("cgroup.mode", INFO, cg.mode, ev)


def check_cgroup_limit(snap) -> Check:
    cg = snap.cgroup
    mem = cg.memory
    if mem is None:
        return unknown("cgroup.limit", cg.error or "no memory cgroup found")
    r = RULES["cgroup.limit"]
    ev: dict = {"version": mem.version, "cgroup": mem.path, "current_GiB": gib(mem.current),
                "max_GiB": gib(mem.max), "max_set_by": mem.max_at, "high_GiB": gib(mem.high),
                "peak_GiB": gib(mem.peak)}
    if mem.current is None:
        why = f"memory usage of {mem.path} is not readable under {mem.fs_path}"
        if cg.evidence.get("unreachable_path"):
            why += " (cgroup namespace or container: pass --cgroup)"
        return unknown("cgroup.limit", why)
    status = OK
    reasons = []
    used = pct(mem.current, mem.max) if mem.max else None
    if used is not None and used >= r["warn"]:
        status = WARN
        reasons.append(f"{used:.0f} % of its limit")
    if mem.version == 2:
        ev["events"] = mem.events
        rising = snap.rates.cgroup_events if snap.rates else {}
        if rising:
            ev["events_during_sample"] = rising
        if any(rising.get(k, 0) > 0 for k in ("oom", "oom_kill", "oom_group_kill")):
            status = CRIT
            reasons.append("OOM events during the sample")
        elif any(rising.get(k, 0) > 0 for k in ("high", "max")):
            status = max(status, WARN, key=RANK.get)
            reasons.append("hitting memory.high/max")
        elif mem.events.get("oom_kill", 0) > 0 or mem.events.get("oom_group_kill", 0) > 0:
            status = max(status, WARN, key=RANK.get)
            reasons.append(f"{mem.events.get('oom_kill', 0)} OOM kills in this cgroup's life")
    else:
        ev["oom_control"] = mem.oom_control
        ev["failcnt"] = mem.failcnt
        if mem.oom_control.get("oom_kill", 0) > 0 or mem.oom_control.get("under_oom", 0) > 0:
            status = CRIT
            reasons.append(f"v1 oom_control oom_kill={mem.oom_control.get('oom_kill', 0)} "
                           f"under_oom={mem.oom_control.get('under_oom', 0)}")
    value = round(used, 1) if used is not None else "no limit"
    hint = None if status == OK else (f"{mem.path}: " + "; ".join(reasons) + ". " + r["hint"])
    return make("cgroup.limit", status, value, ev, hint)


# ---------------------------------------------------------------- reclaim, fragmentation, cache

DIRECT_KEYS = ("allocstall_dma", "allocstall_dma32", "allocstall_normal", "allocstall_movable", "allocstall_device",
               "pgscan_direct")


def check_reclaim_direct(snap) -> Check:
    if snap.vmstat is None:
        return unknown("reclaim.direct", "/proc/vmstat is not readable")
    if snap.rates is None or not snap.rates.vmstat:
        return unknown("reclaim.direct", "single sample (--interval 0): rates not available",
                       "run with --interval 1 (or more) to measure reclaim rates")
    v = snap.rates.vmstat
    direct = sum(v.get(k, 0.0) for k in DIRECT_KEYS)
    ev = {"interval_s": round(snap.rates.interval_s, 2), "direct_reclaim_per_s": round(direct, 1),
          "allocstall_per_s": round(sum(v.get(k, 0.0) for k in DIRECT_KEYS[:-1]), 1),
          "pgscan_direct_per_s": round(v.get("pgscan_direct", 0.0), 1),
          "pgmajfault_per_s": round(v.get("pgmajfault", 0.0), 1),
          "workingset_refault_file_per_s": round(v.get("workingset_refault_file", 0.0), 1),
          "pswpin_per_s": round(v.get("pswpin", 0.0), 1), "pswpout_per_s": round(v.get("pswpout", 0.0), 1)}
    some = snap.psi.some.avg10 if snap.psi.available and snap.psi.some else None
    ev["psi_some_avg10"] = some
    if direct > RULES["reclaim.direct"]["warn"] and some is not None and some >= RULES["psi.some"]["warn"]:
        status = WARN
    elif direct > 0:
        status = INFO
    else:
        status = OK
    return make("reclaim.direct", status, round(direct, 1), ev)


def check_frag_highorder(snap) -> Check:
    bi = snap.buddyinfo
    if not bi.available:
        return unknown("frag.highorder", bi.error or "no buddyinfo")
    r = RULES["frag.highorder"]
    page = snap.platform.page_size or 4096
    zone = "Normal" if any(z.zone == "Normal" for z in bi.zones) else None
    ge4 = bi.free_bytes_at_least(4 << 20, page, zone)
    ge32 = bi.free_bytes_at_least(32 << 20, page, zone)
    ev = {"zone": zone or "all", "page_size": page, "free_ge_4MiB_GiB": gib(ge4), "free_ge_32MiB_GiB": gib(ge32),
          "blocks_32MiB_equiv": ge32 // (32 << 20)}
    if snap.platform.page_size is None:
        ev["page_size_assumed"] = True
    vm = snap.vmstat or {}
    stall, fail = vm.get("compact_stall"), vm.get("compact_fail")
    ev.update({"compact_stall": stall, "compact_fail": fail})
    stalls_rising = bool(snap.rates and snap.rates.vmstat.get("compact_stall", 0) > 0)
    memfree = snap.meminfo.free
    notes = []
    if ge4 == 0 and memfree is not None and memfree > r["memfree_min"]:
        notes.append(f"no free block >= 4 MiB while MemFree is {fmt_gib(memfree)}")
    if stall and fail is not None and fail / stall > r["compact_ratio"] and stalls_rising:
        notes.append(f"compaction failing ({fail}/{stall}) and stalls rising")
    status = INFO if notes else OK
    return make("frag.highorder", status, gib(ge4), ev, ("; ".join(notes) + ". " + r["hint"]) if notes else None)


def check_cache_gap(snap, plan_bytes: int | None = None) -> Check:
    mi = snap.meminfo
    avail, free, total = mi.get("MemAvailable"), mi.free, mi.total
    if not mi.available or avail is None or free is None or not total:
        return unknown("cache.gap", mi.error or "MemAvailable/MemFree missing")
    r = RULES["cache.gap"]
    gap = max(0, avail - free)
    cached, shmem = mi.get("Cached") or 0, mi.get("Shmem") or 0
    ev = {"gap_GiB": gib(gap), "gap_pct_of_total": round(pct(gap, total), 1), "MemFree_GiB": gib(free),
          "MemAvailable_GiB": gib(avail), "file_cache_GiB": gib(max(0, cached - shmem)), "Dirty_GiB": gib(mi.get("Dirty"))}
    if plan_bytes is not None:
        ev["plan_GiB"] = gib(plan_bytes)
    big = pct(gap, total) > r["warn"]
    if big and plan_bytes is not None and plan_bytes > free:
        status = WARN
    elif big:
        status = INFO
    else:
        status = OK
    return make("cache.gap", status, gib(gap), ev)


def check_shmem_tmpfs(snap) -> Check:
    mi = snap.meminfo
    shmem, total = mi.get("Shmem"), mi.total
    if not mi.available or shmem is None or not total:
        return unknown("shmem.tmpfs", mi.error or "Shmem missing")
    r = RULES["shmem.tmpfs"]
    ev: dict = {"Shmem_GiB": gib(shmem)}
    if snap.tmpfs is not None:
        ev["tmpfs"] = {t.mount_point: {"size_GiB": gib(t.size_bytes), "used_GiB": gib(t.used_bytes)}
                       for t in _tmpfs_pool(snap)[:12]}
    else:
        ev["tmpfs"] = "mount table not readable"
    share = pct(shmem, total)
    return make("shmem.tmpfs", WARN if share >= r["warn"] else OK, round(share, 1), ev)


def _tmpfs_pool(snap) -> list:
    return [t for t in snap.tmpfs if not t.mount_point.startswith(("/sys/", "/proc/"))]


def check_tmpfs_limits(snap) -> Check:
    """The size= limits: how much of the pool files in memory may claim (unreclaimable without swap)."""
    total = snap.meminfo.total
    if not snap.meminfo.available or not total:
        return unknown("tmpfs.limits", snap.meminfo.error or "MemTotal missing")
    if snap.tmpfs is None:
        return unknown("tmpfs.limits", "the mount table is not readable")
    pool = [t for t in _tmpfs_pool(snap) if t.size_bytes]
    if not pool:
        return make("tmpfs.limits", OK, 0.0, {"tmpfs": "no tmpfs mount with a size limit"})
    largest = max(pool, key=lambda t: t.size_bytes)
    share, summed = pct(largest.size_bytes, total), pct(sum(t.size_bytes for t in pool), total)
    ev = {"largest": largest.mount_point, "largest_GiB": gib(largest.size_bytes), "sum_pct_of_total": round(summed, 1),
          "limits_GiB": {t.mount_point: gib(t.size_bytes) for t in pool[:12]}, "MemTotal_GiB": gib(total)}
    limit = RULES["tmpfs.limits"]["warn"]
    if share > limit or summed >= 100.0:
        status = WARN
    elif share >= limit:
        status = INFO
    else:
        status = OK
    hint = None if status != WARN else (f"{largest.mount_point} may hold {fmt_gib(largest.size_bytes)} "
                                        f"({share:.0f} % of MemTotal); " + RULES["tmpfs.limits"]["hint"])
    return make("tmpfs.limits", status, round(share, 1), ev, hint)


def check_min_free(snap, floor_bytes: int) -> Check:
    value = snap.sysctl_vm.get("min_free_kbytes")
    if value is None:
        return unknown("vm.min_free", "/proc/sys/vm/min_free_kbytes is not readable")
    reserve = value * 1024
    ev = {"min_free_kbytes": value, "floor_GiB": gib(floor_bytes), "MemTotal_GiB": gib(snap.meminfo.total)}
    share = pct(reserve, floor_bytes) if floor_bytes else None
    ev["pct_of_floor"] = None if share is None else round(share, 1)
    if share is not None and share >= RULES["vm.min_free"]["warn"]:
        hint = (f"vm.min_free_kbytes reserves {fmt_gib(reserve)}, {share:.0f} % of the {fmt_gib(floor_bytes)} floor: "
                + RULES["vm.min_free"]["hint"])
        return make("vm.min_free", WARN, gib(reserve), ev, hint)
    return make("vm.min_free", OK, gib(reserve), ev)


def check_blackboxes(readings: list, source: str) -> Check:
    """``launch.unclean``: black boxes (memguard.blackbox.BoxReading) whose run ended without its
    end marker and whose writer is gone; the last minute of the latest one as evidence."""
    if readings is None:
        return unknown("launch.unclean", f"{source} cannot be read")
    boxes = [r for r in readings if r.error is None]
    unclean = [r for r in boxes if r.unclean]
    ev: dict = {"source": source, "boxes": len(boxes), "unclean": [r.directory for r in unclean]}
    if not unclean:
        running = sum(1 for r in boxes if r.started is not None and r.ended is None)
        ev["running"] = running
        return make("launch.unclean", OK, f"{len(boxes)} box(es), none unclean", ev)
    latest = max(unclean, key=lambda r: r.records[-1]["t"])
    ev["last_minute"] = latest.summary(60.0)
    ev["last_record_at"] = latest.records[-1]["t"]
    return make("launch.unclean", WARN, f"{len(unclean)} unclean", ev,
                f"the run in {latest.directory} ended without its end marker; " + RULES["launch.unclean"]["hint"])


def check_mem_pinned(snap) -> Check:
    mi = snap.meminfo
    unevictable, total = mi.get("Unevictable"), mi.total
    if not mi.available or unevictable is None or not total:
        return unknown("mem.pinned", mi.error or "Unevictable missing")
    share = pct(unevictable, total)
    status = WARN if share >= RULES["mem.pinned"]["warn"] else OK
    return make("mem.pinned", status, round(share, 1),
                {"Unevictable_GiB": gib(unevictable), "Mlocked_GiB": gib(mi.get("Mlocked"))})


def check_hugetlb(snap) -> Check:
    mi = snap.meminfo
    n, size = mi.get("HugePages_Total"), mi.get("Hugepagesize")
    if not mi.available or n is None:
        return unknown("hugetlb", mi.error or "HugePages_Total missing")
    reserved = mi.get("Hugetlb")
    if reserved is None:
        reserved = n * (size or 0)
    ev = {"HugePages_Total": n, "HugePages_Free": mi.get("HugePages_Free"), "Hugepagesize_KiB": (size or 0) // 1024,
          "reserved_GiB": gib(reserved)}
    return make("hugetlb", INFO if reserved > 0 else OK, gib(reserved), ev)


def check_overcommit(snap, plan_bytes: int | None = None) -> Check:
    mode = snap.sysctl_vm.get("overcommit_memory")
    if mode is None:
        return unknown("overcommit", "/proc/sys/vm/overcommit_memory is not readable")
    limit, committed = snap.meminfo.get("CommitLimit"), snap.meminfo.get("Committed_AS")
    ev = {"overcommit_memory": mode, "overcommit_ratio": snap.sysctl_vm.get("overcommit_ratio"),
          "CommitLimit_GiB": gib(limit), "Committed_AS_GiB": gib(committed)}
    if mode == 1:
        return make("overcommit", INFO, "mode 1 (always)", ev, "vm.overcommit_memory=1: allocations never fail "
                    "up front, the OOM killer decides later")
    if mode != 2:
        return make("overcommit", OK, f"mode {mode} (heuristic)", ev)
    if limit is None or committed is None or not limit:
        return unknown("overcommit", "mode 2 but CommitLimit/Committed_AS missing from meminfo")
    used = pct(committed, limit)
    if plan_bytes is not None and committed + plan_bytes > limit:
        status = CRIT
    elif used >= RULES["overcommit"]["warn"]:
        status = WARN
    else:
        status = OK
    return make("overcommit", status, round(used, 1), ev)


def check_zram_zswap(snap) -> Check:
    cs = snap.compressed_swap
    total = snap.meminfo.total
    used = sum(d.mm_stat.get("mem_used_total", 0) for d in cs.zram)
    orig = sum(d.mm_stat.get("orig_data_size", 0) for d in cs.zram)
    compr = sum(d.mm_stat.get("compr_data_size", 0) for d in cs.zram)
    zswap_on = cs.zswap.get("enabled", "").upper() in ("Y", "1")
    ev = {"zram_devices": [d.name for d in cs.zram if d.disksize], "zram_mem_used_GiB": gib(used),
          "zram_ratio": round(orig / compr, 2) if compr else None, "zswap": cs.zswap,
          "Zswap_GiB": gib(snap.meminfo.get("Zswap"))}
    if not cs.zram and not cs.zswap and cs.swaps is None:
        return unknown("zram.zswap", "no zram, zswap or /proc/swaps information readable")
    share = pct(used, total) if total else 0.0
    if share > RULES["zram.zswap"]["warn"]:
        status = WARN
    elif used > 0 or zswap_on or any(d.disksize for d in cs.zram):
        status = INFO
    else:
        status = OK
    return make("zram.zswap", status, round(share, 1), ev)


# ---------------------------------------------------------------- GPU

def check_gpu_nvml(snap) -> Check:
    n = snap.nvml
    if not n.available:
        return unknown("gpu.nvml", n.error or "NVML not available")
    ev = {"driver": n.driver_version, "cuda_driver": n.cuda_driver_version,
          "devices": [d.name for d in n.devices]}
    if not n.devices:
        return make("gpu.nvml", WARN, "no devices", ev, "NVML initialised but sees no GPU: check `nvidia-smi`")
    return make("gpu.nvml", OK, n.driver_version or "ok", ev)


def check_gpu_memory_model(snap) -> Check:
    from baldr_ops.system.nvml import memory_model

    n = snap.nvml
    if not n.available or not n.devices:
        return unknown("gpu.memory_model", n.error or "no NVML devices")
    models = []
    for d in n.devices:
        unified, why = memory_model(d, snap.meminfo.total)
        models.append({"index": d.index, "name": d.name, "unified": unified, "why": why,
                       "nvml_memory": d.memory_status})
    ev = {"devices": models}
    first = models[0]["unified"]
    if first is True:
        return make("gpu.memory_model", INFO, "unified", ev,
                    "unified: GPU memory = host memory; headroom is MemAvailable (see mem.available)")
    if first is False:
        return make("gpu.memory_model", OK, "dedicated", ev)
    return unknown("gpu.memory_model", models[0]["why"])


def check_gpu_proc_mem(snap) -> Check:
    from baldr_ops.system.nvml import memory_model

    n = snap.nvml
    if not n.available or not n.devices:
        return unknown("gpu.proc_mem", n.error or "no NVML devices")
    bad = [d for d in n.devices if d.processes_status != "ok"]
    if len(bad) == len(n.devices):
        return unknown("gpu.proc_mem", f"per-process memory {bad[0].processes_status}")
    total_used = 0
    procs = []
    status = INFO
    for d in n.devices:
        used = sum(p.used_bytes or 0 for p in d.processes)
        total_used += used
        procs += [{"gpu": d.index, "pid": p.pid, "used_GiB": gib(p.used_bytes)} for p in d.processes]
        unified, _ = memory_model(d, snap.meminfo.total)
        if unified:
            capacity = (snap.meminfo.mem_available or 0) + used
        else:
            capacity = d.memory_total or 0
        if capacity and pct(used, capacity) >= RULES["gpu.proc_mem"]["warn"]:
            status = WARN
    ev = {"processes": procs[:20], "process_count": len(procs)}
    if not procs:
        status = OK
    return make("gpu.proc_mem", status, gib(total_used), ev)


def check_gpu_nvrm_oom(snap) -> Check:
    from baldr_ops.system.nvml import memory_model

    log = snap.kernel_log
    if not log.available:
        return unknown("gpu.nvrm_oom", log.error or "kernel log not readable",
                       "run as root (kernel.dmesg_restrict=1) or give journal access")
    lines = log.nvrm_oom_lines()
    ev = {"kernel_log": log.source, "lines": [ln.render() for ln in lines[-5:]], "count": len(lines)}
    if not lines:
        return make("gpu.nvrm_oom", OK, 0, ev)
    unified = any(memory_model(d, snap.meminfo.total)[0] for d in snap.nvml.devices) if snap.nvml.available else None
    ev["unified"] = unified
    # no NVML answer: still CRIT, NV_ERR_NO_MEMORY only happens where the driver runs
    status = WARN if unified is False else CRIT
    return make("gpu.nvrm_oom", status, len(lines), ev)


def check_gpu_xid(snap) -> Check:
    log = snap.kernel_log
    if not log.available:
        return unknown("gpu.xid", log.error or "kernel log not readable",
                       "run as root (kernel.dmesg_restrict=1) or give journal access")
    xids = log.xids()
    codes = sorted({code for code, _ in xids})
    ev = {"kernel_log": log.source, "codes": codes, "lines": [ln.render() for _, ln in xids[-5:]]}
    if not xids:
        return make("gpu.xid", OK, 0, ev)
    reset = [c for c in codes if c in RULES["gpu.xid"]["reset_xids"]]
    status = CRIT if reset else WARN
    return make("gpu.xid", status, len(xids), ev)


def check_platform_versions(snap) -> Check:
    p = snap.platform
    ev = {"hostname": p.hostname, "kernel": p.kernel, "arch": p.arch, "os": p.os_release, "dgx": p.dgx_release,
          "driver": snap.nvml.driver_version, "cuda_driver": snap.nvml.cuda_driver_version,
          "max": p.max_version, "python": p.python, "baldr_ops": p.baldr_ops_version, "uptime_s": p.uptime_s}
    if p.kernel is None and p.os_release is None:
        return unknown("platform.versions", "neither kernel release nor os-release is readable")
    value = ", ".join(x for x in (p.dgx_release or p.os_release, f"kernel {p.kernel}" if p.kernel else None,
                                  f"driver {snap.nvml.driver_version}" if snap.nvml.driver_version else None,
                                  f"MAX {p.max_version}" if p.max_version else None) if x)
    for key, needle, note in KNOWN_ISSUES:
        if needle in str(ev.get(key) or ""):
            return make("platform.versions", WARN, value, {**ev, "known_issue": note}, note)
    return make("platform.versions", INFO, value, ev, None)


# ---------------------------------------------------------------- the plan

def check_plan_fit(source, footprint, floor_bytes: int = 0) -> Check:
    """``mem.available.vs_plan``: the shared fit judgement (:func:`baldr_ops.plan.fit.judge_fit`)
    as a check. ``source`` is a Snapshot or a MemInfo."""
    verdict = judge_fit(getattr(source, "meminfo", source), footprint, floor_bytes)
    if verdict.status == UNKNOWN:
        return unknown(FIT_CHECK_ID, verdict.evidence["reason"])
    return make(FIT_CHECK_ID, verdict.status, gib(verdict.headroom), verdict.evidence, verdict.hint)


# ---------------------------------------------------------------- all of them

def run_checks(snap, footprint=None, floor_bytes: int = 0, extra: list[Check] | None = None,
               blackboxes: Check | None = None) -> list[Check]:
    """Every check over ``snap`` in table order; ``mem.available.vs_plan`` only with a footprint."""
    plan = int(footprint.total_bytes) if footprint is not None else None
    mem = check_mem_available(snap)
    mem_pct = mem.value if isinstance(mem.value, float) else None
    by_id = {
        "mem.available": lambda: mem,
        "mem.available.vs_plan": lambda: check_plan_fit(snap, footprint, floor_bytes) if footprint is not None else None,
        "swap.used": lambda: check_swap_used(snap, mem_pct),
        "swap.absent": lambda: check_swap_absent(snap),
        "psi.available": lambda: check_psi_available(snap),
        "psi.some": lambda: check_psi_some(snap),
        "psi.full": lambda: check_psi_full(snap),
        "oom.kernel": lambda: check_oom_kernel(snap),
        "cgroup.mode": lambda: check_cgroup_mode(snap),
        "cgroup.limit": lambda: check_cgroup_limit(snap),
        "reclaim.direct": lambda: check_reclaim_direct(snap),
        "frag.highorder": lambda: check_frag_highorder(snap),
        "cache.gap": lambda: check_cache_gap(snap, plan),
        "shmem.tmpfs": lambda: check_shmem_tmpfs(snap),
        "tmpfs.limits": lambda: check_tmpfs_limits(snap),
        "vm.min_free": lambda: check_min_free(snap, floor_bytes),
        "launch.unclean": lambda: blackboxes,
        "mem.pinned": lambda: check_mem_pinned(snap),
        "hugetlb": lambda: check_hugetlb(snap),
        "overcommit": lambda: check_overcommit(snap, plan),
        "zram.zswap": lambda: check_zram_zswap(snap),
        "gpu.nvml": lambda: check_gpu_nvml(snap),
        "gpu.memory_model": lambda: check_gpu_memory_model(snap),
        "gpu.proc_mem": lambda: check_gpu_proc_mem(snap),
        "gpu.nvrm_oom": lambda: check_gpu_nvrm_oom(snap),
        "gpu.xid": lambda: check_gpu_xid(snap),
        "platform.versions": lambda: check_platform_versions(snap),
    }
    out = []
    for cid in RULES:
        try:
            check = by_id[cid]()
        except Exception as exc:  # a judge bug must not hide the other verdicts
            check = unknown(cid, f"internal error in check: {type(exc).__name__}: {exc}")
        if check is not None:
            out.append(check)
    return out + list(extra or [])


def summarize(checks: list[Check]) -> dict[str, int]:
    counts = {s.lower(): 0 for s in STATUSES}
    for c in checks:
        counts[c.status.lower()] += 1
    return counts


def worst(checks: list[Check]) -> str:
    return max((c.status for c in checks), key=RANK.get, default=OK)


def exit_code(checks: list[Check], fail_on: str = "warn") -> int:
    """Nagios codes: 0 OK/INFO, 1 WARN, 2 CRIT, 3 UNKNOWN. ``fail_on`` crit: only CRIT fails; never: 0."""
    status = worst(checks)
    if fail_on == "never":
        return 0
    if fail_on == "crit":
        return 2 if status == CRIT else 0
    return {OK: 0, INFO: 0, WARN: 1, CRIT: 2, UNKNOWN: 3}[status]
