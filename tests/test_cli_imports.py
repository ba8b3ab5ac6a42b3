"""The CLI must stay light: --help and doctor never import torch, transformers or MAX."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "max", "numpy")

PROBE = """
import sys, json
from baldr_ops.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("@@" + json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})), file=sys.stderr)
"""


def _heavy_modules_after(argv: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)],
                          capture_output=True, text=True, timeout=120)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("@@")]
    assert line, proc.stderr
    return json.loads(line[-1][2:])


def test_help_imports_nothing_heavy():
    assert _heavy_modules_after(["--help"]) == []


def test_version_prints():
    proc = subprocess.run([sys.executable, "-m", "baldr_ops", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("baldr-ops ")


def test_unknown_command_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "baldr_ops", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
