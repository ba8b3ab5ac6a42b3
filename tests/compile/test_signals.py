"""SIGTERM and SIGINT end `compile` the same way: MAX's whole process tree ended, the scratch
directory removed, the shell's status for the signal (a `kill`, `timeout`, systemd stop or CI
cancel used to leave MAX's warm-cache running on its own)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = [pytest.mark.max, pytest.mark.slow]


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_compile_its_tree_and_its_scratch(demo_model, tmp_path, sig):
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch_root), "PYTHONUNBUFFERED": "1",
           "BALDR_STATE_DIR": str(tmp_path / "state"), "MODULAR_CACHE_DIR": str(tmp_path / "modular")}
    # --payload cache compiles into an empty scratch cache: the scratch directory is there from the start.
    proc = subprocess.Popen([sys.executable, "-m", "baldr_ops", "compile", "--export", str(tmp_path / "bundle"),
                             "--payload", "cache", "--memguard", "off"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        seen: list[psutil.Process] = []
        while time.monotonic() < deadline:
            seen = descendants(proc.pid)
            if any("warm-cache" in " ".join(p.cmdline()) for p in seen if p.is_running()) and \
                    list(scratch_root.glob("baldr-compile-*")):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("MAX's warm-cache never started")
        time.sleep(2)                       # MAX is loading: its workers may be up too
        tree = descendants(proc.pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]
    assert list(scratch_root.iterdir()) == []           # the scratch directory went with it
    assert not (tmp_path / "bundle").exists()           # and no half bundle
