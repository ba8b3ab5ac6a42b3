"""The CLI: exit codes and --fail-on, the JSON schema, Prometheus textfile, snapshot round trip, the real /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from baldr_ops.doctor.report import DoctorReport
from tests.doctor.helpers import REPO, cli, cli_json, fixture, statuses


@pytest.mark.parametrize("name,fail_on,code", [
    ("gb10_healthy", "warn", 0), ("thrashing", "warn", 2), ("thrashing", "crit", 2), ("thrashing", "never", 0),
    ("no_psi", "warn", 3), ("no_psi", "crit", 0), ("gb10_nvrm_oom", "never", 0), ("cgroup_v2_limit", "crit", 2),
])
def test_exit_codes_and_fail_on(name, fail_on, code):
    proc = cli("--root", fixture(name), "--fail-on", fail_on)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_warn_only_exits_1(tmp_path):
    import shutil

    root = tmp_path / "r"
    shutil.copytree(fixture("gb10_healthy"), root)
    (root / "proc" / "pressure" / "memory").write_text(
        "some avg10=12.00 avg60=3.00 avg300=1.00 total=5\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert cli("--root", str(root)).returncode == 1
    assert cli("--root", str(root), "--fail-on", "crit").returncode == 0


@pytest.mark.parametrize("name", ["gb10_healthy", "thrashing", "cgroup_v2_limit", "no_psi"])
def test_json_validates_against_the_schema(name):
    rc, doc = cli_json("--root", fixture(name))
    report = DoctorReport.model_validate(doc)
    assert report.schema_version == "1.0" and report.tool == "baldr-ops" and report.command == "doctor"
    assert report.exit_code == rc
    assert sum(getattr(report.summary, k) for k in ("ok", "info", "warn", "crit", "unknown")) == len(report.checks)
    ids = [c.id for c in report.checks]
    for required in ("mem.available", "swap.used", "swap.absent", "psi.available", "psi.some", "psi.full",
                     "oom.kernel", "cgroup.mode", "cgroup.limit", "reclaim.direct", "frag.highorder", "cache.gap",
                     "shmem.tmpfs", "mem.pinned", "hugetlb", "overcommit", "zram.zswap", "gpu.nvml",
                     "gpu.memory_model", "gpu.proc_mem", "gpu.nvrm_oom", "gpu.xid", "platform.versions"):
        assert required in ids
    assert all(c.hint for c in report.checks if c.status != "OK" and c.id != "platform.versions")


def test_schema_version_matches_the_document_base():
    from baldr_ops.doctor.render import SCHEMA_VERSION
    from baldr_ops.schema import SCHEMA_VERSION as BASE

    assert SCHEMA_VERSION == BASE


def test_json_schema_flag():
    proc = cli("--json-schema")
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert "checks" in schema["properties"] and "schema_version" in schema["properties"]


def test_prometheus_textfile(tmp_path):
    target = tmp_path / "baldr.prom"
    proc = cli("--root", fixture("thrashing"), "--prometheus", str(target), "--fail-on", "never")
    assert proc.returncode == 0
    text = target.read_text()
    assert os.listdir(tmp_path) == ["baldr.prom"]          # no temp file left behind
    assert '# TYPE baldr_doctor_check_status gauge' in text
    assert 'baldr_doctor_check_status{check="psi.full",status="CRIT"} 2' in text
    assert 'baldr_psi_memory_avg{kind="full",window="10"} 72.44' in text
    assert "baldr_oom_kills_total 3" in text
    assert 'baldr_meminfo_bytes{field="MemAvailable"} 1536000000' in text
    assert "baldr_doctor_last_run_timestamp_seconds " in text
    for line in text.splitlines():                          # every sample line is name{labels} value
        if not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            float(value)
            assert name_labels.startswith("baldr_")


def test_prometheus_bad_directory_is_a_user_error(tmp_path):
    proc = cli("--root", fixture("gb10_healthy"), "--prometheus", str(tmp_path / "no" / "such" / "x.prom"))
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr and "cannot write" in proc.stderr


@pytest.mark.parametrize("args,needle", [
    (["--root", "/nonexistent/root"], "does not exist"),
    (["--replay", "/etc/hostname"], "bundle"),
    (["--interval", "-1"], "out of range"),
    (["--interval", "nan"], "out of range"),
    (["--floor", "lots"], "not a size"),
    (["--model", "/nonexistent/model"], "does not exist"),
    (["--snapshot", "/tmp/x.tar.gz", "--watch"], "--watch"),
])
def test_bad_input_never_gives_a_traceback(args, needle):
    proc = cli(*args)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr


def test_garbage_bundle(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    proc = cli("--replay", str(bad))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    not_ours = tmp_path / "other.tar.gz"
    with tarfile.open(not_ours, "w:gz") as tar:
        tar.add(__file__, arcname="x.py")
    proc = cli("--replay", str(not_ours))
    assert proc.returncode == 3 and "not a baldr-ops snapshot" in proc.stderr


@pytest.mark.parametrize("name", ["thrashing", "cgroup_v2_limit", "gb10_nvrm_oom"])
def test_snapshot_of_a_fixture_replays_the_same(tmp_path, name):
    bundle = tmp_path / "s.tar.gz"
    rc1, doc1 = cli_json("--root", fixture(name), "--snapshot", str(bundle))
    rc2, doc2 = cli_json("--replay", str(bundle))
    rc3, doc3 = cli_json("--root", str(bundle))
    assert rc1 == rc2 == rc3
    assert doc1["checks"] == doc2["checks"] == doc3["checks"]


def test_live_snapshot_replays_the_same(tmp_path):
    bundle = tmp_path / "live.tar.gz"
    rc1, doc1 = cli_json("--interval", "0.3", "--snapshot", str(bundle))
    rc2, doc2 = cli_json("--replay", str(bundle))
    assert rc1 == rc2
    assert doc1["checks"] == doc2["checks"]
    assert doc1["interval_s"] == doc2["interval_s"] > 0
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert "proc/meminfo" in names and ".baldr/kernel.log" in names and ".baldr/nvml.json" in names
    assert ".baldr/sample2/proc/vmstat" in names and ".baldr/report.json" in names


def test_real_proc():
    """This machine, whatever it is: every check runs, nothing crashes, core signals are read, and
    the exit code is the one the worst verdict gives (docs/doctor.md's table, written out here)."""
    rc, doc = cli_json("--interval", "0.2")
    statuses = [c["status"] for c in doc["checks"]]
    expected = 2 if "CRIT" in statuses else 1 if "WARN" in statuses else 3 if "UNKNOWN" in statuses else 0
    assert rc == expected == doc["exit_code"]
    by = {c["id"]: c for c in doc["checks"]}
    assert by["mem.available"]["status"] != "UNKNOWN"
    assert isinstance(by["mem.available"]["value"], float)
    assert by["reclaim.direct"]["status"] != "UNKNOWN"       # two samples: rates known
    if os.path.exists("/proc/pressure/memory"):
        assert by["psi.available"]["status"] == "OK"
    assert by["cgroup.mode"]["value"] in ("unified", "hybrid", "legacy") or by["cgroup.mode"]["status"] == "UNKNOWN"
    if not os.path.exists("/proc/driver/nvidia"):
        assert by["gpu.nvml"]["status"] == "UNKNOWN"
    assert not [c for c in doc["checks"] if "internal error" in str(c["evidence"].get("reason", ""))]


def test_single_sample_has_unknown_rates():
    _, doc = cli_json("--interval", "0")
    by = statuses(doc)
    assert by["reclaim.direct"] == "UNKNOWN"
    assert doc["interval_s"] == 0.0


def test_table_output():
    proc = cli("--root", fixture("thrashing"))
    assert "psi.full" in proc.stdout and "CRIT" in proc.stdout
    assert "worst CRIT; exit 2" in proc.stdout


def test_watch_runs_until_interrupted():
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "baldr_ops", "doctor", "--json", "--watch", "--interval", "0.2",
                             "--root", fixture("gb10_healthy")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) >= 2, err
    assert all(json.loads(ln)["command"] == "doctor" for ln in lines)
    assert "Traceback" not in err


def test_docs_table_is_generated_from_the_thresholds():
    from baldr_ops.doctor.thresholds import markdown_table

    with open(os.path.join(REPO, "docs", "doctor.md"), encoding="utf-8") as fh:
        assert markdown_table() in fh.read()


HEAVY = ("torch", "transformers", "max", "numpy")
PROBE = """
import sys, json
from baldr_ops.cli import main
try:
    main(["doctor", "--json", "--interval", "0"])
except SystemExit:
    pass
print("@@" + json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {names!r})), file=sys.stderr)
"""


@pytest.mark.parametrize("names", [HEAVY, ("pydantic", "rich", "pynvml")], ids=["heavy", "slow-to-import"])
def test_doctor_json_imports_nothing_heavy(names):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(names=names)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("@@")]
    assert line, proc.stderr
    loaded = json.loads(line[-1][2:])
    if names != HEAVY and os.path.exists("/proc/driver/nvidia"):
        loaded = [m for m in loaded if m != "pynvml"]   # NVML is queried when a driver is present
    assert loaded == []


def test_replay_of_an_archive_with_a_file_where_a_directory_goes(tmp_path):
    import io
    import tarfile

    bundle = tmp_path / "odd.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        for name in ("proc", "proc/meminfo"):
            data = b"MemTotal: 1 kB\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    proc = cli("--replay", str(bundle))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "has a file where 'proc/meminfo' needs a directory" in proc.stderr
    proc = cli("--replay", str(tmp_path))
    assert proc.returncode == 3 and "is a directory" in proc.stderr and "internal error" not in proc.stderr


SIGTERM_DURING_EXTRACT = """
import os, signal, sys
import baldr_ops.system.snapshot as snapshot
real = snapshot.extract_bundle
def extract_then_sigterm(source, tmp):
    root = real(source, tmp)
    os.kill(os.getpid(), signal.SIGTERM)   # arrives while the extracted bundle is on disk
    return root
snapshot.extract_bundle = extract_then_sigterm
from baldr_ops.cli import main
sys.exit(main(["doctor", "--replay", sys.argv[1]]))
"""


def test_sigterm_during_a_replay_removes_the_extracted_bundle(tmp_path):
    bundle = tmp_path / "s.tar.gz"
    cli_json("--root", fixture("thrashing"), "--snapshot", str(bundle))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run([sys.executable, "-c", SIGTERM_DURING_EXTRACT, str(bundle)], cwd=REPO,
                          env={**os.environ, "TMPDIR": str(scratch)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 128 + 15, proc.stderr
    assert list(scratch.iterdir()) == []


def test_a_plain_doctor_run_does_not_load_signal_handling():
    # doctor's start-up budget (issue 12): a live run holds nothing to clean up on SIGTERM
    code = ("import sys; from baldr_ops.cli import main; rc = main(['doctor', '--json', '--interval', '0']);"
            "print('signal' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().splitlines()[-1] == "False", proc.stderr
