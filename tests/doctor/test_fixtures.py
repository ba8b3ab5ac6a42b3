"""Each fixture tree gives its expected verdicts (in-process and through the CLI)."""

from __future__ import annotations

import pytest

from baldr_ops.doctor.checks import check_plan_fit, exit_code, run_checks
from baldr_ops.system.kernel import memory_kill_evidence
from baldr_ops.system.meminfo import read_meminfo
from baldr_ops.system.nvml import read_gpu_summary
from baldr_ops.system.snapshot import take_snapshot
from tests.doctor.helpers import cli_json, fixture, statuses

GIB = 1024**3

EXPECTED = {
    "gb10_healthy": ({"mem.available": "OK", "swap.used": "OK", "swap.absent": "OK", "psi.available": "OK",
                      "psi.some": "OK", "psi.full": "OK", "oom.kernel": "OK", "cgroup.mode": "OK",
                      "cgroup.limit": "OK", "reclaim.direct": "OK", "frag.highorder": "OK", "cache.gap": "OK",
                      "mem.pinned": "OK", "hugetlb": "OK", "overcommit": "OK", "zram.zswap": "OK",
                      "gpu.nvml": "OK", "gpu.memory_model": "INFO", "gpu.proc_mem": "OK", "gpu.nvrm_oom": "OK",
                      "gpu.xid": "OK", "platform.versions": "INFO"}, 0),
    "gb10_cache_pressure": ({"mem.available": "OK", "cache.gap": "INFO", "gpu.memory_model": "INFO",
                             "psi.full": "OK"}, 0),
    "gb10_nvrm_oom": ({"gpu.nvrm_oom": "CRIT", "gpu.xid": "CRIT", "oom.kernel": "OK", "mem.available": "OK"}, 2),
    "thrashing": ({"mem.available": "CRIT", "swap.used": "CRIT", "psi.some": "WARN", "psi.full": "CRIT",
                   "oom.kernel": "WARN", "reclaim.direct": "WARN", "cgroup.mode": "INFO", "cgroup.limit": "OK",
                   "gpu.nvml": "UNKNOWN", "gpu.memory_model": "UNKNOWN"}, 2),
    "cgroup_v2_limit": ({"cgroup.mode": "OK", "cgroup.limit": "CRIT", "oom.kernel": "WARN", "swap.absent": "INFO",
                         "mem.available": "OK", "psi.full": "OK"}, 2),
    "no_psi": ({"psi.available": "UNKNOWN", "psi.some": "UNKNOWN", "psi.full": "UNKNOWN", "cgroup.mode": "INFO",
                "cgroup.limit": "OK", "mem.available": "OK", "oom.kernel": "OK"}, 3),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_verdicts(name):
    expected, code = EXPECTED[name]
    snap = take_snapshot(fixture(name))
    checks = run_checks(snap)
    got = statuses(checks)
    assert {k: got[k] for k in expected} == expected
    assert exit_code(checks) == code
    # nothing a judge could not handle
    assert not [c for c in checks if "internal error" in str(c.evidence.get("reason", ""))]
    # every non-OK verdict carries an actionable hint
    assert all(c.hint for c in checks if c.status in ("WARN", "CRIT", "UNKNOWN")), [c.id for c in checks if not c.hint]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_verdicts_through_cli(name):
    expected, code = EXPECTED[name]
    rc, doc = cli_json("--root", fixture(name))
    assert rc == code == doc["exit_code"]
    got = statuses(doc)
    assert {k: got[k] for k in expected} == expected


def test_unknown_never_ok_without_psi():
    snap = take_snapshot(fixture("no_psi"))
    assert not snap.psi.available and "PSI" in snap.psi.error
    checks = {c.id: c for c in run_checks(snap)}
    assert checks["psi.full"].value is None
    assert "psi=1" in checks["psi.available"].hint


def test_thrashing_rates_from_second_sample():
    snap = take_snapshot(fixture("thrashing"))
    assert snap.rates is not None and snap.rates.interval_s == 2.0
    assert snap.rates.vmstat["allocstall_normal"] == 200.0
    assert snap.rates.psi_full_stall_pct == pytest.approx(72.5)
    checks = {c.id: c for c in run_checks(snap)}
    assert checks["reclaim.direct"].evidence["allocstall_per_s"] == 200.0
    assert any("Out of memory: Killed process 7001" in ln for ln in checks["oom.kernel"].evidence["lines"])


def test_cgroup_v2_limit_detail():
    snap = take_snapshot(fixture("cgroup_v2_limit"))
    mem = snap.cgroup.memory
    assert (mem.version, mem.path, mem.max, mem.max_at) == (2, "/system.slice/max-serve.service", 32 * GIB,
                                                            "/system.slice/max-serve.service")
    check = {c.id: c for c in run_checks(snap)}["cgroup.limit"]
    assert check.value == pytest.approx(95.3, abs=0.1)
    assert check.evidence["events_during_sample"]["oom_kill"] == 1


def test_cgroup_v2_limit_without_second_sample_is_warn(tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(fixture("cgroup_v2_limit"), root)
    shutil.rmtree(root / ".baldr" / "sample2")
    checks = {c.id: c for c in run_checks(take_snapshot(str(root)))}
    assert checks["cgroup.limit"].status == "WARN"          # 95 % of max and kills in its life
    assert checks["reclaim.direct"].status == "UNKNOWN"     # no rates: unknown, never OK


def test_cgroup_override_picks_another_cgroup():
    snap = take_snapshot(fixture("cgroup_v2_limit"), cgroup="/user.slice")
    assert snap.cgroup.memory.path == "/user.slice"
    assert {c.id: c.status for c in run_checks(snap)}["cgroup.limit"] == "UNKNOWN"   # no files there


def test_cache_pressure_with_a_plan_warns():
    snap = take_snapshot(fixture("gb10_cache_pressure"))
    checks = {c.id: c for c in run_checks(snap, footprint=_Plan(20 * GIB), floor_bytes=8 * GIB)}
    assert checks["cache.gap"].status == "WARN"
    assert checks["mem.available.vs_plan"].status == "WARN"
    assert "MemFree" in checks["mem.available.vs_plan"].hint


class _Plan:
    def __init__(self, total):
        self.total_bytes = total


@pytest.mark.parametrize("plan_gib,floor_gib,status", [(10, 8, "OK"), (101, 8, "WARN"), (105, 8, "WARN"),
                                                        (110, 20, "CRIT"), (200, 0, "CRIT")])
def test_plan_fit_levels(plan_gib, floor_gib, status):
    # healthy GB10: MemFree 100 GiB, MemAvailable 112 GiB, SwapFree 16 GiB
    mi = read_meminfo(fixture("gb10_healthy"))
    check = check_plan_fit(mi, _Plan(plan_gib * GIB), floor_gib * GIB)
    assert check.id == "mem.available.vs_plan"
    assert check.status == status
    assert check.value_text().endswith("GiB")
    assert (check.hint is None) == (status == "OK")


def test_plan_fit_unreadable_meminfo_is_unknown(tmp_path):
    check = check_plan_fit(read_meminfo(str(tmp_path)), 1 * GIB, 0)
    assert check.status == "UNKNOWN"


def test_gpu_summary_on_gb10_fixture():
    s = read_gpu_summary(fixture("gb10_healthy"))
    assert (s.present, s.nvml, s.name, s.compute_capability, s.unified, s.count) == \
        (True, True, "NVIDIA GB10", (12, 1), True, 1)
    assert "NOT_SUPPORTED" in s.detail


def test_gpu_summary_without_nvml():
    s = read_gpu_summary(fixture("thrashing"))
    assert (s.present, s.nvml, s.unified) == (False, False, None)


def test_memory_kill_evidence_on_fixture():
    ev = memory_kill_evidence(root=fixture("thrashing"))
    assert ev["oom_kills"] == 3
    assert len(ev["lines"]) == 3
