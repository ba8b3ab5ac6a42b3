"""End to end with real MAX 26.7 on CPU and the demo model (SmolLM2-135M-Instruct).

Slow: the first start on a fresh machine compiles for ~4 minutes; later starts take ~30 s.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.max]

QUESTION = "What is the capital of France?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run_env(tmp_path):
    return {**os.environ, "BALDR_RUN_DIR": str(tmp_path / "runs"), "BALDR_STATE_DIR": str(tmp_path / "state"),
            "PYTHONUNBUFFERED": "1"}


def cli(*args, env, timeout=900, check=True):
    proc = subprocess.run([sys.executable, "-m", "baldr_ops", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"baldr-ops {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


def session_members(sid: int) -> list[int]:
    """Live processes of a session; zombies waiting for init to reap them do not count."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except OSError:
            pass
    return members


def status(port, env) -> dict:
    return json.loads(cli("status", "--port", str(port), "--json", env=env).stdout)[0]


def test_ask_answers_and_leaves_nothing_running(demo_model, run_env):
    from baldr_ops.memguard.blackbox import read_box

    port = free_port()
    # The memory guard on, for real (floors low enough for any CI machine): it samples the whole
    # load and serve and must not act on a healthy start.
    proc = cli("launch", "--port", str(port), "--ask", QUESTION, "--json", "--memguard", "on",
               "--load-floor", "512M", "--serve-floor", "512M", env=run_env)
    answer = json.loads(proc.stdout)
    assert answer["schema_version"] and answer["question"] == QUESTION
    assert "paris" in answer["answer"].lower(), answer
    assert "] ready " in proc.stderr and "preflight" in proc.stderr
    assert "memory guard: on (--memguard on)" in proc.stderr
    final = status(port, run_env)
    assert final["state"] == "stopped" and not final["alive"]
    assert session_members(final["server_pid"]) == []
    guard = final["memguard"]
    assert guard["actions"] == {} and guard["unknown"] in ([], ["kernel_log"])
    box = read_box(guard["blackbox"])
    assert box.clean and box.ended["state"] == "stopped"
    phases = {r["phase"] for r in box.records if r["kind"] == "sample"}
    assert {"loading", "serving"} <= phases
    assert not any(r["kind"] == "action" for r in box.records)


def test_detached_serving_guard_restart_and_stop(demo_model, run_env):
    from openai import OpenAI

    port = free_port()
    cli("launch", "--port", str(port), "--detach", "--guard", "greedy", env=run_env)
    try:
        st = status(port, run_env)
        assert st["state"] == "ready" and st["alive"] and st["guard"]["mode"] == "greedy"
        assert st["compile_cache"].split()[0] in ("warm", "cold", "unknown")
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        name = st["served_name"]

        plain = client.chat.completions.create(model=name, temperature=0, max_tokens=24,
                                               messages=[{"role": "user", "content": QUESTION}])
        greedy_text = plain.choices[0].message.content
        assert "Paris" in greedy_text

        chunks = client.chat.completions.create(model=name, temperature=0, max_tokens=24, stream=True,
                                                messages=[{"role": "user", "content": QUESTION}])
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == greedy_text

        # The guard makes a sampling request decode greedily: same text as temperature 0, every time.
        for seed in (1, 2):
            hot = client.chat.completions.create(model=name, temperature=0.9, top_p=0.95, seed=seed, max_tokens=24,
                                                 messages=[{"role": "user", "content": QUESTION}])
            assert hot.choices[0].message.content == greedy_text

        # Kill the MAX process: the supervisor classifies a crash and brings it back.
        server_pid = st["server_pid"]
        os.kill(server_pid, signal.SIGKILL)
        deadline = time.monotonic() + 600
        while True:
            st = status(port, run_env)
            if st["state"] == "ready" and st["server_pid"] != server_pid:
                break
            assert time.monotonic() < deadline, st
            time.sleep(2)
        assert st["restarts"] == 1 and "SIGKILL" in st["last_exit"]
        assert session_members(server_pid) == []  # MAX's workers of the killed server are gone too
        again = client.chat.completions.create(model=name, temperature=0, max_tokens=24,
                                               messages=[{"role": "user", "content": QUESTION}])
        assert again.choices[0].message.content == greedy_text
        logs = cli("logs", "--port", str(port), "-n", "400", env=run_env).stdout
        assert "patch sampling-guard: applied" in logs
    finally:
        stopped = cli("stop", "--port", str(port), env=run_env, check=False)
    assert stopped.returncode == 0, stopped.stderr
    final = status(port, run_env)
    assert final["state"] == "stopped" and not final["alive"]
    assert session_members(final["server_pid"]) == []
    assert session_members(final["supervisor_pid"]) == []


def test_canary_reads_the_answer_at_ready_and_while_serving(demo_model, run_env):
    # A wrong expectation: readiness fails with the answer shown, exit 2, one start (no crash loop).
    port = free_port()
    wrong = cli("launch", "--port", str(port), "--canary-expect", "Berlin", "--memguard", "off", env=run_env,
                check=False)
    assert wrong.returncode == 2, wrong.stderr[-3000:]
    assert "does not match the expectation /Berlin/" in wrong.stderr and "Paris" in wrong.stderr
    log = (Path(run_env["BALDR_RUN_DIR"]) / f"port-{port}" / "server.log").read_text()
    assert log.count("===== baldr-ops: starting") == 1
    # The demo's own expectation (Paris), asked again every 5 s for 30 s: the same greedy answer each time.
    port = free_port()
    cli("launch", "--port", str(port), "--detach", "--canary-every", "5s", "--memguard", "off", env=run_env)
    try:
        time.sleep(30)
        st = status(port, run_env)
        assert st["state"] == "ready", st
        canary = st["canary"]
        assert canary["expect"] == ["Paris"] and "Paris" in canary["ready_answers"][0]
        assert canary["checks"] >= 4 and canary["failures"] == 0, canary
    finally:
        cli("stop", "--port", str(port), env=run_env, check=False)
