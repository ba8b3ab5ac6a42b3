"""Supervisor behaviour against a fake `max serve` (tests/launch/fake_max.py): fast, no model."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from baldr_ops.engines.max.command import EngineOptions
from baldr_ops.plan.guard import decide_guard
from baldr_ops.launch.runstate import RunDir
from baldr_ops.launch.supervisor import Reporter, Supervisor
from baldr_ops.plan.model import LaunchPlan, Supervision

FAKE = str(Path(__file__).with_name("fake_max.py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    """Running, not a zombie (a zombie still answers kill(0) but holds nothing)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Recorder(Reporter):
    def __init__(self):
        self.messages, self.states, self.exits, self.lines = [], [], [], []

    def phase(self, status):
        self.states.append(status.state)

    def line(self, text):
        self.lines.append(text)

    def exited(self, verdict, postmortem):
        self.exits.append((verdict, postmortem))

    def message(self, text):
        self.messages.append(text)


def make(tmp_path, port, env=None, **supervision):
    sup = {"startup_timeout_s": 30, "grace_s": 2, "liveness_interval_s": 0.2, "backoff_initial_s": 0.1,
           "backoff_max_s": 0.2, **supervision}
    plan = LaunchPlan(command=[sys.executable, FAKE], options=EngineOptions(model_path=Path("/fake"), served_name="fake"),
                      env={"FAKE_PORT": str(port), **(env or {})},
                      host="127.0.0.1", port=port, served_name="fake", model="fake-model",
                      guard=decide_guard("off", None, True), supervision=Supervision(**sup))
    rundir = RunDir(port, tmp_path / "runs")
    rundir.acquire()
    return Supervisor(plan, rundir, Recorder()), rundir


def worker_pid(sup) -> int:
    for line in sup.reporter.lines:
        if line.startswith("WORKER_PID"):
            return int(line.split()[1])
    raise AssertionError("fake worker pid not seen")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ready_then_a_signal_drains_whole_tree(tmp_path, sig):
    port = free_port()
    seen = {}

    def after_ready(sup):
        seen["state"] = json.loads(sup.rundir.state_file.read_text())["state"]
        seen["server"], seen["worker"] = sup.proc.pid, worker_pid(sup)
        threading.Timer(0.3, lambda: os.kill(os.getpid(), sig)).start()   # a real signal to the supervisor
        return None

    sup, rundir = make(tmp_path, port)
    sup.after_ready = after_ready
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    sup.install_signal_handlers()
    try:
        code = sup.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert seen["state"] == "ready"
    assert code == 128 + signal.SIGTERM  # the server's status after our SIGTERM, as a shell reports it
    assert not pid_alive(seen["server"]) and not pid_alive(seen["worker"])
    final = rundir.read()
    assert final.state == "stopped"
    assert "compiling" in sup.reporter.states and "ready" in sup.reporter.states


def test_stubborn_server_is_killed_after_grace(tmp_path):
    port = free_port()
    sup, _ = make(tmp_path, port, env={"FAKE_IGNORE_TERM": "1"}, grace_s=1)
    pids = {}

    def after_ready(s):
        pids["server"], pids["worker"] = s.proc.pid, worker_pid(s)
        return 0

    sup.after_ready = after_ready
    started = time.monotonic()
    assert sup.run() == 0
    assert time.monotonic() - started >= 1  # it waited the grace period before SIGKILL
    assert not pid_alive(pids["server"]) and not pid_alive(pids["worker"])
    assert any("SIGKILL" in m for m in sup.reporter.messages)


def test_crash_is_restarted_with_backoff_then_given_up(tmp_path):
    port = free_port()
    marker = tmp_path / "starts"
    sup, rundir = make(tmp_path, port, env={"FAKE_EXIT_AFTER_S": "0.3", "FAKE_EXIT_CODE": "7",
                                           "FAKE_MARKER": str(marker)}, max_restarts=2)
    code = sup.run()
    assert code == 7
    assert len(marker.read_text().split()) == 3  # first start + 2 restarts
    assert [v.kind for v, _ in sup.reporter.exits] == ["crash"] * 3
    assert all(pm and Path(pm).is_file() for _, pm in sup.reporter.exits)
    postmortem = json.loads(Path(sup.reporter.exits[0][1]).read_text())
    assert postmortem["verdict"]["kind"] == "crash" and postmortem["returncode"] == 7
    assert rundir.read().state == "failed" and rundir.read().restarts == 2
    assert any("giving up" in m for m in sup.reporter.messages)


@pytest.mark.parametrize("line, code, kind", [
    ("ValueError: Cannot cast from 'float32' to 'bfloat16' on device cpu", "1", "encoding"),
    # MAX 26.7's own words for what preflight now refuses earlier (seen with --model of an unknown
    # architecture, --max-length over the context, an option `max serve` lacks):
    ("ValueError: Architecture 'FooForCausalLM' not found in registry", "1", "architecture"),
    ("ValueError: Unable to infer max_length for Llama3Config, the provided max_length (100000000) exceeds the "
     "model's max_position_embeddings (8192).", "1", "max-length"),
    ("Error: No such option '--no-such-flag'.", "2", "usage"),
])
def test_config_error_is_not_restarted(tmp_path, line, code, kind):
    port = free_port()
    marker = tmp_path / "starts"
    sup, _ = make(tmp_path, port, env={
        "FAKE_EXIT_AFTER_S": "0.2", "FAKE_MARKER": str(marker), "FAKE_EXIT_CODE": code, "FAKE_FAIL_LOG": line})
    assert sup.run() == int(code)
    assert len(marker.read_text().split()) == 1
    verdict = sup.reporter.exits[0][0]
    assert verdict.kind == "config-error" and f"({kind};" in verdict.summary


def test_memory_death_restarts_only_when_memory_recovered(tmp_path):
    port = free_port()
    marker = tmp_path / "starts"
    sup, _ = make(tmp_path, port, env={"FAKE_EXIT_AFTER_S": "0.2", "FAKE_MARKER": str(marker),
                                       "FAKE_FAIL_LOG": "RuntimeError: Model size exceeds available memory"})
    sup.memory_recheck = lambda: "the model does not fit: needs 60 GiB, 20 GiB available"
    assert sup.run() == 1
    assert len(marker.read_text().split()) == 1  # no restart into the same OOM
    assert sup.reporter.exits[0][0].kind == "plan-oom"
    assert any("not restarting into an out-of-memory condition" in m for m in sup.reporter.messages)


def test_second_launch_on_same_port_is_refused(tmp_path):
    from baldr_ops.errors import UserError

    first = RunDir(4321, tmp_path)
    first.acquire()
    with pytest.raises(UserError, match="already runs on port 4321"):
        RunDir(4321, tmp_path).acquire()


def test_lock_is_released_when_the_holder_dies(tmp_path):
    import subprocess

    code = (f"import sys,time; sys.path.insert(0, {str(Path(__file__).parents[2])!r}); from baldr_ops.launch.runstate import RunDir; "
            f"from pathlib import Path; RunDir(4322, Path({str(tmp_path)!r})).acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert RunDir(4322, tmp_path).held_by_someone()
    holder.kill()
    holder.wait()
    assert not RunDir(4322, tmp_path).held_by_someone()
    RunDir(4322, tmp_path).acquire()  # a new launch can take the port


def test_systemd_sees_ready_after_canary_watchdog_and_stopping(tmp_path, monkeypatch):
    address = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    sup, _ = make(tmp_path, free_port())
    messages = []
    done = threading.Event()

    def listen():
        while not done.is_set():
            try:
                messages.append(server.recv(4096).decode())
            except (TimeoutError, OSError):
                continue

    listener = threading.Thread(target=listen)
    listener.start()
    sup.after_ready = lambda s: 0
    try:
        assert sup.run() == 0
        time.sleep(0.3)
    finally:
        done.set()
        listener.join()
        server.close()
    joined = "\n".join(messages)
    ready_at = next(i for i, m in enumerate(messages) if "READY=1" in m)
    assert any("WATCHDOG=1" in m for m in messages[:ready_at])  # pinged while starting
    assert any(m.startswith("STATUS=compiling") for m in messages[:ready_at])
    assert "STOPPING=1" in joined and joined.index("STOPPING=1") > joined.index("READY=1")


def test_workers_orphaned_by_a_crash_are_ended_before_the_restart(tmp_path):
    port = free_port()
    sup, _ = make(tmp_path, port, env={"FAKE_EXIT_AFTER_S": "0.3", "FAKE_LEAVE_WORKER": "1"}, max_restarts=1)
    assert sup.run() == 1
    workers = [int(line.split()[1]) for line in sup.reporter.lines if line.startswith("WORKER_PID")]
    assert len(workers) == 2  # one per start
    assert not any(pid_alive(pid) for pid in workers)


def test_state_writes_from_two_threads_never_collide(tmp_path):
    # Two writers of one state file (the race a fixed `state.tmp` lost with FileNotFoundError),
    # and a reader that must always find a whole document.
    from baldr_ops.launch.runstate import RunStatus

    rundir = RunDir(4323, tmp_path)
    rundir.path.mkdir(parents=True)
    errors, done = [], threading.Event()

    def writer(tag):
        try:
            for i in range(400):
                rundir.write(RunStatus(port=4323, host="h", url="u", model=tag, served_name="n", restarts=i))
        except Exception as exc:  # noqa: BLE001 - any failure of a writer is the finding
            errors.append(exc)

    def reader():
        while not done.is_set():
            status = rundir.read()
            if status is None:
                errors.append(AssertionError("a reader saw a missing or torn state file"))

    rundir.write(RunStatus(port=4323, host="h", url="u", model="first", served_name="n"))
    threads = [threading.Thread(target=writer, args=(t,)) for t in ("a", "b")]
    check = threading.Thread(target=reader)
    check.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    check.join()
    assert errors == []
    assert rundir.read().restarts == 399
    assert [p.name for p in rundir.path.iterdir()] == ["state.json"]  # no temporary left behind


def test_a_flooding_server_never_stalls_the_pump(tmp_path, monkeypatch):
    # 20,000 lines while compiling (half of them progress lines, each a phase event the main loop
    # turns into state writes) and 20,000 more while serving and the work asked after ready runs:
    # the pump must keep reading, or the server blocks on a full pipe.
    lines = 20000
    pump_errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: pump_errors.append(args.exc_value))
    port = free_port()
    sup, rundir = make(tmp_path, port, env={"FAKE_FLOOD_LINES": str(lines)})
    seen = {}

    def after_ready(s):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "FLOOD_DONE 2" not in rundir.log_file.read_text():
            time.sleep(0.1)
        seen["pump_alive"] = s.current.pump.is_alive()
        seen["server_alive"] = s.proc.poll() is None
        return 0

    sup.after_ready = after_ready
    assert sup.run() == 0
    log = rundir.log_file.read_text()
    assert "FLOOD_DONE 1" in log and "FLOOD_DONE 2" in log
    for burst in (1, 2):
        assert sum(1 for line in log.splitlines() if line.startswith(f"flood {burst} line ")) == lines // 2
    assert seen == {"pump_alive": True, "server_alive": True}
    assert pump_errors == []
    assert rundir.read().state == "stopped"
    # Progress lines queued together are coalesced: far fewer state writes than progress lines
    # (10,000 here; one write each without coalescing, a few hundred batches with it).
    assert sup.reporter.states.count("compiling") < lines // 20


def test_postmortem_is_a_versioned_document(tmp_path):
    from baldr_ops.launch.runstate import PostMortem

    port = free_port()
    sup, _ = make(tmp_path, port, env={"FAKE_EXIT_AFTER_S": "0.2", "FAKE_EXIT_CODE": "9",
                                       "FAKE_FAIL_LOG": "ERROR: something broke"}, max_restarts=0)
    assert sup.run() == 9
    path = sup.reporter.exits[0][1]
    doc = PostMortem.model_validate_json(Path(path).read_text())
    assert doc.schema_version == "1.0" and doc.kind == "postmortem" and doc.returncode == 9
    assert doc.verdict.kind == "crash" and "something broke" in doc.errors[-1]
    assert doc.log_tail[-1] == "ERROR: something broke"


def test_work_after_ready_that_raises_ends_the_run_instead_of_hanging_it(tmp_path):
    sup, rundir = make(tmp_path, free_port())

    def broken(_sup):
        raise ConnectionError("the question could not be sent")

    sup.after_ready = broken
    assert sup.run() == 1
    assert any("the work after ready failed: ConnectionError" in m for m in sup.reporter.messages)
    assert rundir.read().state == "stopped"
