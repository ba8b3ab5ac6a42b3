"""Shared helpers for the doctor tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fixture(name: str) -> str:
    return os.path.join(FIXTURES, name)


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "baldr_ops", "doctor", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def cli_json(*args: str) -> tuple[int, dict]:
    proc = cli("--json", *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def statuses(doc_or_checks) -> dict[str, str]:
    checks = doc_or_checks["checks"] if isinstance(doc_or_checks, dict) else doc_or_checks
    return {(c["id"] if isinstance(c, dict) else c.id): (c["status"] if isinstance(c, dict) else c.status)
            for c in checks}
