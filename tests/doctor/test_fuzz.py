"""Property tests: no parser lets an exception escape on garbage, truncated or empty input."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baldr_ops.doctor.checks import run_checks
from baldr_ops.errors import UserError
from baldr_ops.models.footprint import read_gguf_header, read_safetensors_header
from baldr_ops.system import _io
from baldr_ops.system.buddyinfo import parse_buddyinfo
from baldr_ops.system.cgroup import parse_proc_cgroup
from baldr_ops.system.kernel import parse_dmesg, parse_kmsg_record
from baldr_ops.system.meminfo import parse_meminfo
from baldr_ops.system.mounts import parse_mountinfo
from baldr_ops.system.nvml import nvml_from_json
from baldr_ops.system.platform import parse_dgx_release, parse_os_release
from baldr_ops.system.psi import parse_psi
from baldr_ops.system.snapshot import take_snapshot
from baldr_ops.system.sysctl import selected
from baldr_ops.system.vmstat import parse_vmstat
from baldr_ops.system.zram import parse_mm_stat, parse_swaps
from tests.doctor.helpers import fixture

PARSERS = [parse_meminfo, parse_psi, parse_vmstat, parse_buddyinfo, parse_mountinfo, parse_proc_cgroup,
           parse_mm_stat, parse_swaps, parse_dmesg, parse_os_release, parse_dgx_release, selected, _io.key_values,
           _io.to_int, nvml_from_json]

# text that looks like the real formats, cut and mutated, plus plain noise
LIKE = st.sampled_from(["MemTotal:  123 kB\n", "some avg10=1.00 avg60=2.00 avg300=3.00 total=4\n",
                        "full avg10=x avg60= total=-1\n", "Node 0, zone   Normal 1 2 3\n", "oom_kill 3\n",
                        "0::/a/b\n", "5:memory:/x\n", "[ 1.0] Out of memory: Killed process 1 (x)\n",
                        "22 27 0:21 / /proc rw - proc proc rw\n", "HugePages_Total: 4\n", "max\n", "[madvise]",
                        '{"available": true, "devices": [{"index": "x"}]}', "\x00\xff", "-5\n", "1e309\n"])
TEXT = st.one_of(st.text(max_size=400), st.lists(LIKE, max_size=12).map("".join),
                 st.binary(max_size=200).map(lambda b: b.decode("latin-1")))


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_parsers_never_raise(parser, text):
    parser(text)
    parser(text[: len(text) // 2])
    parser("")


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
def test_parsers_accept_none(parser):
    parser(None)


def test_kmsg_records():
    assert parse_kmsg_record("6,123,4567890,-;Out of memory: Killed process 1 (x)").ts == pytest.approx(4.56789)
    assert parse_kmsg_record("garbage") is None
    assert parse_kmsg_record("a,b;msg").ts is None


FILES = ["proc/meminfo", "proc/pressure/memory", "proc/vmstat", "proc/buddyinfo", "proc/self/mountinfo",
         "proc/self/cgroup", "proc/swaps", "proc/uptime", "proc/sys/vm/overcommit_memory", ".baldr/nvml.json",
         ".baldr/kernel.log", ".baldr/meta.json", ".baldr/platform.json", ".baldr/statvfs.json",
         ".baldr/sample2/proc/vmstat", "sys/block/zram0/mm_stat",
         "sys/fs/cgroup/system.slice/max-serve.service/memory.events",
         "sys/fs/cgroup/system.slice/max-serve.service/memory.max", "etc/os-release"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(FILES), content=st.one_of(TEXT, st.just(None)),
       base=st.sampled_from(["gb10_healthy", "cgroup_v2_limit", "thrashing"]))
def test_a_broken_file_in_a_tree_never_breaks_doctor(tmp_path_factory, target, content, base):
    root = tmp_path_factory.mktemp("tree")
    shutil.copytree(fixture(base), root, dirs_exist_ok=True)
    path = root / target
    if content is None:                       # missing file
        if path.exists():
            path.unlink()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    checks = run_checks(take_snapshot(str(root)))
    assert len(checks) >= 23
    assert not [c for c in checks if "internal error" in str(c.evidence.get("reason", ""))]


def test_empty_root_is_all_unknown_or_ok(tmp_path):
    checks = run_checks(take_snapshot(str(tmp_path)))
    by = {c.id: c.status for c in checks}
    assert by["mem.available"] == by["psi.full"] == by["oom.kernel"] == by["gpu.nvml"] == "UNKNOWN"
    assert "OK" not in {by[k] for k in ("mem.available", "swap.used", "psi.some", "cgroup.limit", "hugetlb")}


def test_unreadable_files_are_unknown(tmp_path):
    root = tmp_path / "r"
    shutil.copytree(fixture("gb10_healthy"), root)
    os.unlink(root / "proc" / "meminfo")
    os.mkdir(root / "proc" / "meminfo")          # open() fails (EISDIR), as for root too
    assert {c.id: c.status for c in run_checks(take_snapshot(str(root)))}["mem.available"] == "UNKNOWN"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_header_readers_raise_only_user_errors(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("h")
    for name, reader, prefix in (("x.safetensors", read_safetensors_header, b""),
                                 ("x.gguf", read_gguf_header, b"GGUF\x03\x00\x00\x00")):
        for blob in (data, prefix + data):
            (d / name).write_bytes(blob)
            try:
                reader(str(d / name))
            except UserError as exc:
                assert str(d / name) in exc.message
