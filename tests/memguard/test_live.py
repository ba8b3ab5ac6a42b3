"""The guard on this machine, for real: the page cache measured from /proc/meminfo, anonymous memory
really allocated, a real kernel. Floors are set from this machine's figures at the time, so the
tests need no particular memory size and never come near the kernel's OOM killer."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from baldr_ops.memguard.blackbox import read_box

GIB = 1 << 30
pytestmark = pytest.mark.slow


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0]) * 1024
    return out


def oom_kills() -> int:
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def test_fadvise_drops_the_weight_files_from_the_page_cache(tmp_path, monkeypatch):
    # A 2 GiB "weight file" on disk (not tmpfs: tmpfs pages are not reclaimable cache).
    weights = tmp_path / "model.safetensors"
    with open(weights, "wb") as fh:
        block = b"\1" * (64 << 20)
        for _ in range(32):
            fh.write(block)
    subprocess.run(["sync"], check=True)
    # Start from the file out of the cache, so the fake server's read is what fills it.
    fd = __import__("os").open(weights, __import__("os").O_RDONLY)
    __import__("os").posix_fadvise(fd, 0, 0, __import__("os").POSIX_FADV_DONTNEED)
    __import__("os").close(fd)
    before = meminfo()
    floor = before["MemFree"] - 1.7 * GIB   # crossed near the end of the server's read
    monkeypatch.setenv("BALDR_STATE_DIR", str(tmp_path / "state"))
    server = ("import sys,time; f=open(sys.argv[1],'rb')\n"
              "while f.read(64<<20): pass\n"
              "print('READ_DONE', flush=True); time.sleep(4)")
    cached = []
    done = threading.Event()

    def poll():
        while not done.is_set():
            cached.append(meminfo()["Cached"])
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    proc = subprocess.run([sys.executable, "-m", "baldr_ops", "guard", "--memguard", "on", "--load-floor",
                           str(int(floor)), "--weights", str(weights), "--name", "fadvise-test", "--",
                           sys.executable, "-c", server, str(weights)], capture_output=True, text=True, timeout=120)
    done.set()
    poller.join()
    assert proc.returncode == 0, proc.stderr
    assert "READ_DONE" in proc.stdout
    box = read_box(tmp_path / "state" / "blackbox" / "fadvise-test")
    assert box.clean
    fadvised = [r for r in box.records if r["kind"] == "action" and r["action"] == "fadvise"]
    assert fadvised and fadvised[0]["ok"], proc.stderr
    # Measured here, independently of the guard: the page cache rose by most of the file while it
    # was read, then fell by most of it after the guard's fadvise (the file still open).
    peak_at = max(range(len(cached)), key=cached.__getitem__)
    assert cached[peak_at] - before["Cached"] > 1.5 * GIB
    assert cached[peak_at] - min(cached[peak_at:]) > 1.2 * GIB
    # And the guard's own before/after figures say the same.
    assert fadvised[0]["before_cache"] - fadvised[0]["after_cache"] > 1.0 * GIB


def test_a_runaway_server_is_drained_then_killed_before_the_oom_killer(tmp_path, monkeypatch):
    import socket

    import requests

    from baldr_ops.engines.max.command import EngineOptions
    from baldr_ops.launch.runstate import PostMortem, RunDir
    from baldr_ops.launch.supervisor import Reporter, Supervisor
    from baldr_ops.plan.guard import decide_guard
    from baldr_ops.plan.memguard import MemGuardPlan
    from baldr_ops.plan.model import LaunchPlan, Supervision

    monkeypatch.setenv("BALDR_STATE_DIR", str(tmp_path / "state"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    available = meminfo()["MemAvailable"]
    # The serve floor 2 GiB under what is available now; the fake allocates 512 MiB a second, at
    # most 8 GiB, touching every page. The kernel's OOM killer is far away whatever happens.
    serve_floor = available - 2 * GIB
    plan = LaunchPlan(command=[sys.executable, str(Path(__file__).parents[1] / "launch" / "fake_max.py")],
                      options=EngineOptions(model_path=Path("/fake"), served_name="fake"),
                      env={"FAKE_PORT": str(port), "FAKE_SLOW_S": "60", "FAKE_ALLOC_MIB_PER_S": "512",
                           "FAKE_ALLOC_CAP_MIB": "8192", "FAKE_LIFETIME_S": "120"},
                      host="127.0.0.1", port=port, served_name="fake", model="fake-model",
                      guard=decide_guard("off", None, True),
                      # The floor is relative to a roomy machine's figures, so a runaway takes minutes to reach
                      # zero: the trend horizon is widened to match (on a Spark at its floor, 60 s is the default).
                      memguard=MemGuardPlan(mode="on", reason="test", load_floor=1 << 20, serve_floor=serve_floor,
                                            trend_horizon_s=900),
                      supervision=Supervision(startup_timeout_s=30, grace_s=10, liveness_interval_s=1,
                                              max_restarts=0))

    class Lines(Reporter):
        def __init__(self):
            self.lines, self.messages, self.exits = [], [], []

        def line(self, text):
            self.lines.append((time.monotonic(), text))

        def message(self, text):
            self.messages.append((time.monotonic(), text))

        def exited(self, verdict, postmortem):
            self.exits.append((verdict, postmortem))

    reporter = Lines()
    rundir = RunDir(port, tmp_path / "runs")
    rundir.acquire()
    answer = {}

    def slow_request(sup):
        reply = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
            "model": "fake", "messages": [{"role": "user", "content": "a slow one"}]})
        answer["status"], answer["at"] = reply.status_code, time.monotonic()
        return None   # keep serving: the guard decides what happens next

    kills_before = oom_kills()
    sup = Supervisor(plan, rundir, reporter, memory_recheck=lambda: "still out of memory",
                     after_ready=slow_request)
    code = sup.run()
    assert oom_kills() == kills_before                     # the kernel never had to step in
    verdict, postmortem = reporter.exits[0]
    assert verdict.kind == "memguard" and code != 0
    drained_at = next(t for t, m in reporter.messages if "draining the server" in m)
    killed_at = next(t for t, m in reporter.messages if "SIGKILL" in m)
    term_seen = next(t for t, line in reporter.lines if "SIGTERM received" in line)
    assert drained_at <= term_seen < killed_at
    # The request in flight when the drain began was answered during the drain.
    assert answer["status"] == 200 and drained_at < answer["at"] < killed_at
    assert any(line == "ANSWERED slow" for _, line in reporter.lines)
    doc = PostMortem.model_validate_json(Path(postmortem).read_text())
    assert doc.blackbox["min_mem_available"] < serve_floor
    state = json.loads(rundir.state_file.read_text())
    assert state["memguard"]["actions"].get("drain") == 1 and state["state"] == "failed"
    box = read_box(tmp_path / "state" / "blackbox" / f"port-{port}")
    assert box.clean and any(r["kind"] == "decision" and "drain" in r["actions"] for r in box.records)
