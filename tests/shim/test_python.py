"""baldr_ops.shim and `baldr-ops shim`: sizes parsed by the C parser, the child environment, the
ledger read back while a process holds memory, and the CLI's documents and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from baldr_ops import shim, sizes
from baldr_ops.cli import main
from baldr_ops.errors import UserError

from .conftest import GIB, write_meminfo

def test_parse_size():
    assert sizes.parse_size("1.5G") == 3 << 29
    assert sizes.parse_size("90%", total=1000) == 900
    with pytest.raises(UserError, match="needs a total"):
        sizes.parse_size("90%", "limit")
    with pytest.raises(UserError, match='unknown suffix "Q"'):
        sizes.parse_size("12Q")


def test_child_env_preloads_and_validates(monkeypatch):
    lib = str(shim.library_path())
    base = {"LD_PRELOAD": "/opt/other.so", "BALDR_MEMCAP_FLOOR": "4G"}
    env = shim.child_env(limit="90%", budget="svc-1", on_error="closed", base_env=base)
    assert env["LD_PRELOAD"] == f"{lib}:/opt/other.so"
    assert env["BALDR_MEMCAP_LIMIT"] == "90%" and env["BALDR_MEMCAP_BUDGET"] == "svc-1"
    assert env["BALDR_MEMCAP_FLOOR"] == ""  # the parent's floor does not leak into the child
    again = shim.child_env(limit="1G", base_env={"LD_PRELOAD": env["LD_PRELOAD"]})
    assert again["LD_PRELOAD"] == f"{lib}:/opt/other.so"  # never preloaded twice
    for kwargs, msg in [({"limit": "0"}, "0 would refuse"), ({"floor": "lots"}, "bad floor"),
                        ({"budget": "a b"}, "bad budget"), ({"unified": "yes"}, "bad unified"),
                        ({"on_error": "maybe"}, "bad on_error")]:
        with pytest.raises(UserError, match=msg):
            shim.child_env(base_env={}, **kwargs)


def test_library_path_honours_override(monkeypatch, tmp_path):
    monkeypatch.setenv("BALDR_SHIM_PATH", str(tmp_path / "missing.so"))
    with pytest.raises(UserError, match="does not exist"):
        shim.library_path()


def test_read_ledger_while_a_process_holds_memory(kit, tmp_path):
    b = kit.budget()
    assert shim.read_ledger(b) is None
    env = kit.env(budget=b, BALDR_MEMCAP_LIMIT="2G")
    holder = kit.popen("dlsym", "init", "alloc", "dev", "768M", "hold", env=env)
    try:
        for _ in range(3):
            holder.stdout.readline()
        state = shim.read_ledger(b)
        assert (state.cap, state.committed, state.dead_used) == (2 * GIB, 768 << 20, 0)
        assert [(p.pid, p.used, p.alive) for p in state.processes] == [(holder.pid, 768 << 20, True)]
        # What a planner in the same tree would be told: min(cap - committed, MemAvailable - floor).
        mi = write_meminfo(tmp_path / "meminfo", available=100 * GIB)
        free = shim.planning_free_bytes({"BALDR_MEMCAP_LIMIT": "2G", "BALDR_MEMCAP_BUDGET": b,
                                         "BALDR_MEMCAP_MEMINFO": str(mi), "BALDR_MEMCAP_FLOOR": "8G"})
        assert free == 2 * GIB - (768 << 20)
        out = subprocess.run([sys.executable, "-m", "baldr_ops", "shim", "ledger", "--budget", b, "--json"],
                             capture_output=True, text=True)
        doc = json.loads(out.stdout)
        assert doc["schema_version"] and doc["ledger"]["committed"] == 768 << 20
    finally:
        holder.kill()
        holder.wait()


def test_cli_env_and_errors(capsys):
    assert main(["shim", "env", "--limit", "90%", "--floor", "8G", "--budget", "x"]) == 0
    out = capsys.readouterr().out
    assert "export BALDR_MEMCAP_LIMIT=90%" in out and "export LD_PRELOAD=" in out
    assert main(["shim", "env", "--limit", "4G", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == "1.0" and doc["env"]["BALDR_MEMCAP_LIMIT"] == "4G"
    assert main(["shim", "env", "--limit", "lots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("baldr-ops: error: bad limit") and err[1].startswith("  hint:")
    assert main(["shim", "ledger", "--budget", "../etc"]) == 2
    assert main(["shim", "ledger", "--budget", "never-used-budget"]) == 0
    assert "no ledger" in capsys.readouterr().out
    assert main(["shim", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(shim.library_path())
