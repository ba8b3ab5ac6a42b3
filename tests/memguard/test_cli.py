"""Bad input to the guard's options: one line and a hint, exit 2, nothing started."""

from __future__ import annotations

import subprocess
import sys

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
