"""On a GB10 runner: serve a real model with the shim and the guard (scripts/gb10_launch_smoke.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "gb10_launch_smoke.py"


@pytest.mark.gb10
@pytest.mark.slow
def test_gb10_launch_smoke():
    if not os.environ.get("BALDR_SMOKE_MODEL"):
        pytest.skip("set BALDR_SMOKE_MODEL to a model directory on the GB10 runner")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]


def test_smoke_script_skips_cleanly_without_a_gb10():
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("a GPU is present: the skip path is not what runs here")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "/nonexistent"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 77 and "SKIP" in proc.stdout
