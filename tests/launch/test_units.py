"""Pure parts of launch: log phases, guard decision, exit classification, backoff, command line, systemd."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from baldr_ops.engines.max.command import EngineOptions, ServeBinding, engine_args, serve_command
from baldr_ops.engines.max.logphases import PhaseState
from baldr_ops.engines.max.quirks import quirks_for
from baldr_ops.errors import UserError
from baldr_ops.launch.exits import ExitEvidence, classify_exit
from baldr_ops.plan.guard import decide_guard
from baldr_ops.launch.sdnotify import Notifier, unit_file
from baldr_ops.launch.supervisor import backoff_delay

# Real lines from a MAX 26.7 cold start of the demo model on CPU (timestamps kept).
MAX_LOG = """\
22:02:17.607 INFO: Auto-detected pipeline task: text_generation (model architecture: LlamaForCausalLM)
22:02:18.458 INFO: Starting server...
22:02:19.581 INFO: Starting worker: MODEL_564ec2c7-1041-46fb-a07c-18ffdbfe9f60
22:02:19.581 INFO: Waiting for model worker readiness
22:02:29.564 INFO: Worker process startup took 9.98s (Python imports + driver init)
22:02:29.582 INFO: Initializing model pipeline...
22:02:57.144 INFO: Building, compiling, and initializing model...
22:03:57.145 INFO: Still compiling model (60.0s elapsed)
22:04:57.155 INFO: Still compiling model (120.0s elapsed)
22:05:16.895 INFO: Compiling model took 136.9 seconds
22:05:16.901 INFO: Building, compiling, and initializing sampler...
22:05:48.431 INFO: Compiling sampler took 30.0 seconds
22:05:48.435 INFO: Model pipeline initialized in 198.9s (graph build: 0.0s, graph compile: 192.0s)
22:05:48.825 INFO: Model worker ready
                       🚀 Server ready on http://127.0.0.1:8123 (Press CTRL+C to quit)
"""


def test_log_phases_follow_a_real_cold_start():
    state = PhaseState()
    seen = []
    for line in MAX_LOG.splitlines():
        if state.feed(line):
            seen.append(state.phase)
        if "120.0s elapsed" in line:
            assert state.compile_elapsed_s == 120.0
    assert seen == ["configuring", "worker", "compiling", "sampler", "warmup", "ready"]
    assert state.compile_times == {"model": 136.9, "sampler": 30.0}
    assert state.server_url == "http://127.0.0.1:8123"
    assert state.errors == []


def test_log_phases_never_go_backwards_and_collect_errors():
    state = PhaseState()
    state.feed("12:00:00.000 INFO: Model worker ready")
    assert not state.feed("12:00:01.000 INFO: Building, compiling, and initializing model...")
    assert state.phase == "ready"
    state.feed("12:00:02.000 ERROR: ValueError: Cannot cast from 'float32' to 'bfloat16' on device cpu")
    assert state.error_kinds == ["encoding"] and len(state.errors) == 1


@pytest.mark.parametrize("requested, cc, host, mode", [
    ("auto", None, True, "off"),            # CPU: not affected
    ("auto", (9, 0), True, "off"),          # H100: not affected
    ("auto", (12, 1), True, "host-sampling"),  # GB10 with MAX 26.7
    ("auto", (12, 1), False, "greedy"),     # GB10 with an older MAX
    ("auto", (12, 0), False, "greedy"),     # RTX PRO 6000
    ("greedy", None, True, "greedy"),       # asked for explicitly, applies anywhere
    ("off", (12, 1), True, "off"),
])
def test_guard_decision(requested, cc, host, mode):
    decision = decide_guard(requested, cc, host)
    assert decision.mode == mode
    if mode == "greedy":
        assert decision.env == {"BALDR_GUARD": "greedy"}
        assert decision.serve_args == {"default_temperature": 0.0, "default_top_k": 1}
    if mode == "host-sampling":
        assert decision.serve_args == {"sample_on_host": True}


def test_guard_host_sampling_needs_a_max_that_has_it():
    with pytest.raises(UserError, match="needs MAX 26.7"):
        decide_guard("host-sampling", (12, 1), False)
    with pytest.raises(UserError, match="unknown --guard"):
        decide_guard("sometimes", None, True)


@pytest.mark.parametrize("evidence, kind, restart", [
    (dict(returncode=-signal.SIGKILL, oom_kills_delta=1), "kernel-oom", False),
    (dict(returncode=-signal.SIGKILL, kernel_lines=["systemd-oomd[1]: Killed /system.slice/x due to memory pressure"]),
     "oomd", False),
    (dict(returncode=1, kernel_lines=["NVRM: nvCheckOkFailedNoLog: Check failed: Out of memory [NV_ERR_NO_MEMORY]"]),
     "nvrm-oom", False),
    (dict(returncode=1, log_error_kinds=["plan-oom"]), "plan-oom", False),
    (dict(returncode=1, log_error_kinds=["encoding"]), "config-error", False),
    (dict(returncode=-signal.SIGSEGV), "crash", True),
    (dict(returncode=-signal.SIGKILL), "crash", True),  # SIGKILL without OOM evidence
    (dict(returncode=0), "clean", False),
    (dict(returncode=-signal.SIGTERM, stopping=True), "stopped", False),
])
def test_exit_classification(evidence, kind, restart):
    verdict = classify_exit(ExitEvidence(**evidence))
    assert (verdict.kind, verdict.restart) == (kind, restart)


def test_backoff_is_exponential_and_capped():
    assert [backoff_delay(n, 5, 300) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_quirks_table():
    assert quirks_for("26.4.0").estimator_attr == "free_memory"
    assert quirks_for("26.7.0").estimator_attr == "_free_memory"
    assert not quirks_for("26.4.0").has_sample_on_host and quirks_for("26.7.0").has_sample_on_host
    with pytest.raises(UserError):
        quirks_for("nightly")


def test_serve_command_is_the_engine_args_plus_binding():
    options = EngineOptions(model_path=Path("/m"), served_name="m", devices="gpu", sample_on_host=True,
                            default_temperature=0.0, default_top_k=1, max_length=4096, extra_args=["--x", "1"])
    args = engine_args(options)
    assert args[:4] == ["--model-path", "/m", "--devices", "gpu"]
    assert "--sample-on-host" in args and args[-2:] == ["--x", "1"]
    assert args[args.index("--temperature") + 1] == "0.0" and args[args.index("--top-k") + 1] == "1"
    cmd = serve_command(options, ServeBinding(host="127.0.0.1", port=9000), python="py")
    assert cmd[:4] == ["py", "-m", "baldr_ops.engines.max.entry", "serve"]
    assert cmd[-4:] == ["--host", "127.0.0.1", "--port", "9000"]


def test_sd_notify_sends_datagrams(tmp_path):
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000000"})
        assert notifier.enabled and notifier.watchdog_interval_s == 10
        assert notifier.send("READY=1", "STATUS=ready")
        assert server.recv(100) == b"READY=1\nSTATUS=ready"
    assert not Notifier({}).send("READY=1")


def test_unit_file_runs_launch_in_the_foreground():
    unit = unit_file(["--model", "/models/gemma 31b", "--cap", "100G"], user="llm")
    assert "Type=notify" in unit and "User=llm" in unit and "WatchdogSec=" in unit
    exec_line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "launch --model '/models/gemma 31b' --cap 100G" in exec_line


def test_sd_notify_never_blocks_on_a_listener_that_does_not_read(tmp_path):
    address = str(tmp_path / "deaf")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        notifier = Notifier({"NOTIFY_SOCKET": address})
        results = [notifier.send("WATCHDOG=1") for _ in range(500)]  # the queue holds far fewer
        assert results[0] is True and results[-1] is False


def _verdict(kind, restart=False):
    from baldr_ops.launch.exits import ExitVerdict

    return ExitVerdict(kind=kind, summary=kind, restart=restart)


def test_restart_policy():
    from baldr_ops.launch.supervisor import decide_restart
    from baldr_ops.plan.model import Supervision

    policy = Supervision(max_restarts=2, backoff_initial_s=5, backoff_max_s=8, healthy_reset_s=600)
    crash = _verdict("crash", restart=True)
    first = decide_restart(crash, 0, 3, policy)
    assert (first.restart, first.attempt, first.delay_s) == (True, 1, 5)
    second = decide_restart(crash, 1, 3, policy)
    assert (second.restart, second.attempt, second.delay_s) == (True, 2, 8)  # 10 capped at 8
    third = decide_restart(crash, 2, 3, policy)
    assert not third.restart and "giving up after 2" in third.reason
    # Ten healthy minutes reset the count.
    assert decide_restart(crash, 2, 601, policy).attempt == 1
    # Configuration errors and clean exits never restart, with nothing to add to the verdict.
    for kind in ("config-error", "clean", "stopped"):
        decision = decide_restart(_verdict(kind), 0, 3, policy)
        assert not decision.restart and decision.reason is None
    # A memory death restarts only once memory is back.
    oom = _verdict("kernel-oom")
    blocked = decide_restart(oom, 0, 3, policy, memory_blocker="needs 60 GiB, 20 GiB available")
    assert not blocked.restart and "out-of-memory condition: needs 60 GiB" in blocked.reason
    assert decide_restart(oom, 0, 3, policy, memory_blocker=None).restart


def test_a_max_installed_under_a_comma_is_refused_in_one_line(tmp_path):
    from baldr_ops.engines.max.quirks import check_install_path
    from baldr_ops.errors import UserError

    check_install_path(str(tmp_path / "venv" / "lib" / "max"))  # an ordinary path passes
    check_install_path(None)
    with pytest.raises(UserError, match="contains a comma") as exc:
        check_install_path("/home/a,b/.venv/lib/python3.11/site-packages/max")
    assert "\n" not in exc.value.message and "without commas" in exc.value.hint


def test_unit_file_asks_the_canary_every_10_minutes_unless_told():
    assert "--canary-every 10m" in unit_file(["--model", "/m"])
    assert "--canary-every 1h" in unit_file(["--model", "/m", "--canary-every", "1h"])
    assert "--canary-every 10m" not in unit_file(["--model", "/m", "--canary-every", "1h"])
    assert "--canary-every" not in unit_file(["--no-canary"])
    # MAX's arguments after launch's `--` stay last: the added option is launch's, not MAX's.
    assert unit_file(["--model", "/m", "--", "--enable-prefix-caching"]).count(
        "--canary-every 10m -- --enable-prefix-caching") == 1
