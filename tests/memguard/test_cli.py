"""Bad input to the guard's options: one line and a hint, exit 2, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from baldr_ops.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("BALDR_RUN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("BALDR_STATE_DIR", str(tmp_path / "state"))


@pytest.mark.parametrize("argv, message", [
    (["--load-floor", "lots"], "bad --load-floor"),
    (["--serve-floor=-1G"], "bad --serve-floor"),
    (["--load-floor", "100T"], "is at or above this machine's memory"),
    (["--serve-floor", "100%"], "is at or above this machine's memory"),
    (["--memguard-hz", "4"], "is not LOAD:SERVE"),
    (["--memguard-hz", "fast:1"], "is not LOAD:SERVE"),
    (["--memguard-hz", "0:1"], "is out of range"),
    (["--memguard-hz", "4:nan"], "is out of range"),
])
def test_bad_floors_stop_launch_and_guard_at_the_door(capsys, tmp_path, argv, message):
    for command in (["launch", "--model", str(tmp_path / "absent")], ["guard"]):
        tail = ["--", "true"] if command == ["guard"] else []
        code, out = run_cli(capsys, *command, *argv, *tail)
        lines = [line for line in out.err.strip().splitlines() if not line.startswith("[")]  # progress lines
        assert code == 2 and message in lines[0] and lines[1].startswith("  hint:"), out.err
        assert not (tmp_path / "state").exists()          # no black box was started


def test_memguard_mode_must_be_known():
    proc = subprocess.run([sys.executable, "-m", "baldr_ops", "launch", "--memguard", "maybe"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "--memguard" in proc.stderr and "'maybe'" in proc.stderr


def test_guard_needs_a_command(capsys):
    code, out = run_cli(capsys, "guard")
    assert code == 2 and "no command to guard" in out.err


def test_guard_runs_a_command_and_passes_its_status_through(capsys, tmp_path):
    code, _ = run_cli(capsys, "guard", "--memguard", "dry-run", "--", sys.executable, "-c", "raise SystemExit(7)")
    assert code == 7
    from baldr_ops.memguard.blackbox import find_boxes, read_box

    [box] = find_boxes(tmp_path / "state" / "blackbox")
    reading = read_box(box)
    assert reading.clean and reading.ended["returncode"] == 7 and reading.started["mode"] == "dry-run"


@pytest.mark.parametrize("sig", [15, 2])
def test_a_signal_drains_the_guarded_command_and_its_children(tmp_path, sig):
    import signal
    import time

    import psutil

    from baldr_ops.memguard.blackbox import find_boxes, read_box

    env = {**__import__("os").environ, "BALDR_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "baldr_ops", "guard", "--memguard", "dry-run", "--grace", "2", "--",
                             "sh", "-c", "sleep 60 & sleep 60"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    tree: list = []
    while time.monotonic() < deadline:
        tree = psutil.Process(proc.pid).children(recursive=True)
        if sum(1 for p in tree if p.name() == "sleep") == 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.Signals(sig))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert alive == []
    [box] = find_boxes(tmp_path / "state" / "blackbox")
    assert read_box(box).clean


def test_memguard_hz_sets_how_often_the_guard_samples(capsys, tmp_path):
    """The black box keeps every sample: 20 a second over 1.5 s leaves many, 1 a second a few."""
    from baldr_ops.memguard.blackbox import find_boxes, read_box

    counts = {}
    for rate in ("20:20", "1:1"):
        code, _ = run_cli(capsys, "guard", "--memguard", "dry-run", "--memguard-hz", rate, "--name", f"hz-{rate[0]}",
                          "--", sys.executable, "-c", "import time; time.sleep(1.5)")
        assert code == 0
        [box] = [b for b in find_boxes(tmp_path / "state" / "blackbox") if Path(b).name == f"hz-{rate[0]}"]
        counts[rate] = sum(1 for record in read_box(box).records if record["kind"] == "sample")
    assert counts["20:20"] >= 10 and counts["1:1"] <= 4, counts
