"""Doctor's checks for the memory guard's traps (issue 13): tmpfs limits, vm.min_free_kbytes
against the floor, and an unclean previous run found in a black box."""

from __future__ import annotations

import json
import os
import shutil

from baldr_ops.memguard.blackbox import BlackBox

from .helpers import cli, cli_json, fixture, statuses

GIB = 1 << 30


def gb10_copy(tmp_path, shm_bytes=None, min_free_kb=None):
    root = tmp_path / "root"
    shutil.copytree(fixture("gb10_healthy"), root)
    if shm_bytes is not None:
        stat = json.loads((root / ".baldr/statvfs.json").read_text())
        stat["/dev/shm"]["size_bytes"] = shm_bytes
        (root / ".baldr/statvfs.json").write_text(json.dumps(stat))
    if min_free_kb is not None:
        (root / "proc/sys/vm/min_free_kbytes").write_text(f"{min_free_kb}\n")
    return str(root)


def check(doc, cid):
    return next(c for c in doc["checks"] if c["id"] == cid)


def test_healthy_gb10_has_the_kernel_defaults():
    # /dev/shm at the kernel's default (half of MemTotal) is worth knowing, not a warning; the
    # default min_free_kbytes (66 MiB) is under 1 % of the 8 GiB floor.
    _, doc = cli_json("--root", fixture("gb10_healthy"))
    s = statuses(doc)
    assert s["tmpfs.limits"] == "INFO" and s["vm.min_free"] == "OK"


def test_a_64_gib_shm_on_a_spark_warns(tmp_path):
    # docker --shm-size=64g on a 119.7 GiB Spark: one tmpfs may take 53 % of the unified pool.
    _, doc = cli_json("--root", gb10_copy(tmp_path, shm_bytes=64 * GIB))
    c = check(doc, "tmpfs.limits")
    assert c["status"] == "WARN" and c["evidence"]["largest"] == "/dev/shm"
    assert c["value"] == round(100 * 64 * GIB / (125513000 * 1024), 1)
    assert "/dev/shm may hold 64.0 GiB" in c["hint"]


def test_min_free_kbytes_against_the_floor(tmp_path):
    root = gb10_copy(tmp_path, min_free_kb=4 * 1024 * 1024)          # a 4 GiB reserve
    _, doc = cli_json("--root", root)                                  # floor 8G: half of it
    c = check(doc, "vm.min_free")
    assert c["status"] == "WARN" and c["value"] == 4.0 and c["evidence"]["pct_of_floor"] == 50.0
    _, doc = cli_json("--root", root, "--floor", "32G")                # an eighth of a larger floor
    assert check(doc, "vm.min_free")["status"] == "OK"


def write_box(directory, end: bool, boot: str | None = None):
    now = [1000.0]
    box = BlackBox(directory, clock=lambda: now[0])
    box.start(port=8000)
    for i in range(70):
        now[0] += 1.0  # one sample a second
        box.record("sample", phase="serving", mem_available=(20 - i * 0.25) * GIB, mem_free=2 * GIB,
                   psi_full_avg10=float(i), kernel_lines=[])
    box.record("decision", actions=["drain"], reason="drain: MemAvailable 3.0 GiB < serve floor 4.0 GiB")
    if end:
        box.end(state="stopped")
    else:
        box.close()   # what a wedge leaves: no end marker
    if boot is not None:  # as if written in another boot
        for name in ("blackbox-0.jsonl", "blackbox-1.jsonl"):
            path = directory / name
            if path.exists():
                path.write_text(path.read_text().replace(f'"boot_id":"{_boot()}"', f'"boot_id":"{boot}"'))


def _boot():
    from baldr_ops.memguard.blackbox import boot_id

    return boot_id()


def test_an_unclean_run_is_reported_with_its_last_minute(tmp_path):
    write_box(tmp_path / "boxes" / "port-8000", end=False, boot="another-boot")
    write_box(tmp_path / "boxes" / "port-8001", end=True)
    rc, doc = cli_json("--root", fixture("gb10_healthy"), "--blackbox", str(tmp_path / "boxes"))
    c = check(doc, "launch.unclean")
    assert c["status"] == "WARN" and rc == 1
    assert c["evidence"]["unclean"] == [str(tmp_path / "boxes" / "port-8000")]
    minute = c["evidence"]["last_minute"]
    # The last 60 s of records (one sample a second, the decision at the last second): 61 samples
    # (both ends of the minute), MemAvailable down to 2.75 GiB.
    assert minute["samples"] == 61 and minute["min_mem_available"] == (20 - 69 * 0.25) * GIB
    assert minute["max_psi_full_avg10"] == 69.0
    assert minute["decisions"][-1].startswith("drain: MemAvailable 3.0 GiB")


def test_a_clean_box_and_a_box_still_being_written_are_not_unclean(tmp_path):
    write_box(tmp_path / "a", end=True)
    write_box(tmp_path / "b", end=False)       # this boot, a live writer (this test's pid)
    for box in ("a", "b"):
        _, doc = cli_json("--root", fixture("gb10_healthy"), "--blackbox", str(tmp_path / box))
        assert check(doc, "launch.unclean")["status"] == "OK"


def test_blackbox_must_be_a_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    proc = cli("--blackbox", str(tmp_path / "f"))
    assert proc.returncode == 3 and "is not a directory" in proc.stderr and len(proc.stderr.strip().splitlines()) == 2


def test_snapshot_keeps_the_black_box_verdict_for_replay(tmp_path):
    write_box(tmp_path / "boxes" / "x", end=False, boot="another-boot")
    bundle = tmp_path / "snap.tar.gz"
    env = {**os.environ}
    rc1, doc1 = cli_json("--interval", "0", "--blackbox", str(tmp_path / "boxes"), "--snapshot", str(bundle))
    rc2, doc2 = cli_json("--replay", str(bundle))
    assert check(doc1, "launch.unclean") == check(doc2, "launch.unclean")
    assert check(doc2, "launch.unclean")["status"] == "WARN" and env

