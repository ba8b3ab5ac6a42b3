"""Compile once, start everywhere, with real MAX 26.7 on CPU and the demo model.

compile --export (fast when this machine's cache is warm, ~4 min when cold), then launch from an
empty MODULAR_CACHE_DIR with the bundle: ready without compiling. Bad bundles are refused through
the CLI with their reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.max]

QUESTION = "What is the capital of France?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "baldr_ops", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "BALDR_RUN_DIR": str(tmp_path / "runs"), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def demo_bundle(demo_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "smollm2"
    state = tmp_path_factory.mktemp("state")
    proc = cli("compile", "--export", str(out), "--json", "--memguard", "dry-run", "--load-floor", "512M",
               env={**os.environ, "PYTHONUNBUFFERED": "1", "BALDR_STATE_DIR": str(state)}, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads(proc.stdout), proc.stderr


@pytest.mark.slow
def test_compile_exports_a_verified_bundle(demo_bundle, env):
    bundle, report, stderr = demo_bundle
    assert report["action"] == "compiled" and report["bundle_payload"] == "mefs" and report["bundle_files"] >= 3
    assert report["cache_warm"] is True, report         # this machine's cache now holds the graphs
    assert "compiling" in stderr                        # live phases, as launch shows them
    # The load guard watched the compile (dry-run here: it would only log) and its box is complete.
    assert report["memguard"]["mode"] == "dry-run" and report["memguard"]["phase"] == "loading"
    assert report["memguard"]["mem_available"] > 0
    manifest = json.loads((bundle / "baldr-bundle.json").read_text())
    assert manifest["max_version"] == report["max_version"] and manifest["device"]["kind"] == "cpu"
    assert any(name.endswith(".mef") for name in manifest["files"])
    check = cli("compile", "--check", "--import", str(bundle), "--json", env=env)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["bundle_used"] is True


@pytest.mark.slow
def test_launch_from_empty_cache_with_bundle_skips_the_compile(demo_bundle, env, tmp_path):
    bundle, _, _ = demo_bundle
    empty = tmp_path / "modular-cache"
    empty.mkdir()
    env = {**env, "MODULAR_CACHE_DIR": str(empty)}
    cold = cli("compile", "--check", "--json", env=env)
    assert cold.returncode == 1 and json.loads(cold.stdout)["cache_warm"] is False

    port = free_port()
    proc = cli("launch", "--port", str(port), "--precompiled", str(bundle), "--ask", QUESTION, "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "paris" in json.loads(proc.stdout)["answer"].lower()
    assert "matches" in proc.stderr and "no compile" in proc.stderr
    log = (Path(env["BALDR_RUN_DIR"]) / f"port-{port}" / "server.log").read_text()
    assert "--precompiled-mefs" in log and "Still compiling" not in log
    took = [float(s) for s in re.findall(r"Compiling (?:model|sampler) took ([\d.]+) seconds", log)]
    assert took and max(took) < 5.0, took               # a cold compile here is ~120 s + ~26 s
    assert not list(empty.glob(".max_cache/mof/mef/*/*"))   # graphs came from the bundle, not a compile

    imported = cli("compile", "--import", str(bundle), "--json", env=env)
    assert imported.returncode == 0, imported.stderr[-4000:]
    report = json.loads(imported.stdout)
    assert report["action"] == "imported" and report["bundle_used"] is True
    assert report["compile_times"] and max(report["compile_times"].values()) < 5.0, report


def test_mismatched_bundle_says_which_field_and_corrupt_one_is_refused(demo_model, env, tmp_path):
    from baldr_ops.engines.max import bundle as b
    from baldr_ops.engines.max.command import EngineOptions
    from baldr_ops.engines.max.quirks import installed_version

    mefs = tmp_path / "mefs"
    mefs.mkdir()
    (mefs / "manifest.json").write_text('{"graphs": [], "artifacts": []}')
    (mefs / "g.mef").write_bytes(b"\0" * 2048)
    options = EngineOptions(model_path=demo_model, served_name="x", devices="cpu")
    good = tmp_path / "bundle"
    b.export_bundle(good, "mefs", mefs, options, installed_version())

    other = tmp_path / "other-max"
    shutil.copytree(good, other)
    manifest = b.read_manifest(other).model_copy(update={"max_version": "26.6.0"})
    manifest.digest = manifest.compute_digest()
    (other / b.MANIFEST_NAME).write_text(manifest.model_dump_json())
    proc = cli("compile", "--check", "--import", str(other), "--devices", "cpu", env=env)
    assert proc.returncode == 1 and "max_version differs (bundle 26.6.0" in proc.stdout, proc.stdout + proc.stderr

    data = bytearray((good / "mefs" / "g.mef").read_bytes())
    data[100] ^= 0xFF
    (good / "mefs" / "g.mef").write_bytes(bytes(data))
    for command in (["compile", "--check", "--import", str(good)],
                    ["launch", "--port", str(free_port()), "--precompiled", str(good)]):
        proc = cli(*command, env=env, timeout=120)
        assert proc.returncode == 2 and "mefs/g.mef was altered" in proc.stderr and "hint:" in proc.stderr, \
            proc.stderr
