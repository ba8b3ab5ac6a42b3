"""On a GB10 runner: PyTorch under the shim hits OOM at the cap; queries and NVML tell the truth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gb10_shim_smoke.py"


@pytest.mark.gb10
@pytest.mark.gpu
def test_gb10_shim_smoke():
    # The marker already ran this only on a GB10: a script that skips (77) here is a failure.
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_smoke_script_skips_cleanly_without_a_gpu():
    if Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 77 and proc.stdout.startswith("skip:")
