"""Bad input to launch: one clear line and a hint, a non-zero exit, nothing left running."""

from __future__ import annotations

import json
import socket
import struct

import pytest

from baldr_ops.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out


_children_before: set[int] = set()


def children():
    """Processes this test started (not a multiprocessing resource tracker an earlier test left)."""
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if p.pid not in _children_before]


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path, monkeypatch):
    import psutil

    monkeypatch.setenv("BALDR_RUN_DIR", str(tmp_path / "runs"))
    _children_before.clear()
    _children_before.update(p.pid for p in psutil.Process().children(recursive=True))


def write_tiny_model(path, dtype="F32"):
    """A config.json and a one-tensor safetensors file in the real on-disk format."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 1, "num_key_value_heads": 1, "intermediate_size": 16, "vocab_size": 4,
        "max_position_embeddings": 16}))
    size = {"F32": 4, "BF16": 2, "F16": 2}[dtype]
    header = json.dumps({"model.embed_tokens.weight": {"dtype": dtype, "shape": [4, 8],
                                                       "data_offsets": [0, 32 * size]}}).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * (32 * size))
    return path


def test_missing_model(capsys, tmp_path):
    code, out = run_cli(capsys, "launch", "--model", str(tmp_path / "nope"), "--port", "18761")
    assert code == 2 and "does not exist" in out.err and "hint:" in out.err
    assert children() == []


def test_directory_that_is_not_a_model(capsys, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    code, out = run_cli(capsys, "launch", "--model", str(tmp_path / "notes"), "--port", "18762")
    assert code == 2 and "config.json is missing" in out.err


def test_port_in_use(capsys, tmp_path):
    model = write_tiny_model(tmp_path / "m")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out = run_cli(capsys, "launch", "--model", str(model), "--port", str(port))
    assert code == 2 and f"port {port}" in out.err and "already in use" in out.err
    assert children() == []


def test_max_not_installed(capsys, tmp_path, monkeypatch):
    from baldr_ops.engines.max import quirks

    monkeypatch.setattr(quirks, "installed_version", lambda: None)
    code, out = run_cli(capsys, "launch", "--model", str(write_tiny_model(tmp_path / "m")), "--port", "18763")
    assert code == 2 and "MAX is not installed" in out.err and "baldr-ops[max]" in out.err


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_half_precision_weights_on_cpu(capsys, tmp_path, dtype):
    model = write_tiny_model(tmp_path / "m", dtype=dtype)
    code, out = run_cli(capsys, "launch", "--model", str(model), "--port", "18764", "--devices", "cpu")
    assert code == 2 and dtype in out.err and "CPU" in out.err
    assert children() == []


def test_unsupported_encoding_flag_on_cpu(capsys, tmp_path):
    model = write_tiny_model(tmp_path / "m")
    code, out = run_cli(capsys, "launch", "--model", str(model), "--port", "18765", "--devices", "cpu",
                        "--quantization-encoding", "bfloat16")
    assert code == 2 and "bfloat16" in out.err and "not supported on CPU" in out.err


def test_cap_without_gpu_is_refused(capsys, tmp_path):
    model = write_tiny_model(tmp_path / "m")
    code, out = run_cli(capsys, "launch", "--model", str(model), "--port", "18766", "--devices", "cpu",
                        "--cap", "10G")
    assert code == 2 and "--cap needs the shim" in out.err


def test_systemd_unit_refuses_detach(capsys):
    code, out = run_cli(capsys, "systemd-unit", "--", "--detach")
    assert code == 2 and "foreground" in out.err


def test_systemd_unit_keeps_launchs_own_separator(capsys, tmp_path):
    """`launch --help` shows MAX's arguments after a second `--`; the unit must keep it (it used to
    drop every `--`, and launch's parser then refused MAX's option)."""
    model = write_tiny_model(tmp_path / "m")
    code, out = run_cli(capsys, "systemd-unit", "--", "--model", str(model), "--", "--enable-prefix-caching")
    assert code == 0, out.err
    assert "-- --enable-prefix-caching" in out.out


def test_status_and_stop_without_runs(capsys):
    assert run_cli(capsys, "status")[1].out.strip() == "no launches"
    code, out = run_cli(capsys, "stop", "--port", "18767")
    assert code == 1 and "nothing is running on port 18767" in out.err


HOLDER = """
import signal, sys, time
from pathlib import Path
from baldr_ops.launch.runstate import RunDir, RunStatus
rundir = RunDir(int(sys.argv[1]), Path(sys.argv[2]))
rundir.acquire()
rundir.write(RunStatus(port=rundir.port, host="127.0.0.1", url="u", model="m", served_name="n",
                       supervisor_pid=__import__("os").getpid(), state="ready"))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("held", flush=True)
time.sleep(60)
"""


def _hold(tmp_path, port):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(port), str(tmp_path / "runs")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_stop_without_port_stops_the_only_running_launch(capsys, tmp_path):
    holder = _hold(tmp_path, 18771)
    try:
        code, out = run_cli(capsys, "stop")
        assert code == 0 and "port 18771" in out.out
        assert holder.wait(timeout=10) == 0
    finally:
        holder.kill()


def test_launch_on_a_held_port_names_the_holder_before_preflight(capsys, tmp_path):
    holder = _hold(tmp_path, 18774)
    try:
        code, out = run_cli(capsys, "launch", "--model", str(tmp_path / "no-such-model"), "--port", "18774")
        assert code == 2 and "another baldr-ops launch already runs on port 18774" in out.err, out.err
        assert "preflight" not in out.out and "no-such-model" not in out.err  # said before the model is read
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_stop_without_port_among_several_asks_which(capsys, tmp_path):
    holders = [_hold(tmp_path, 18772), _hold(tmp_path, 18773)]
    try:
        code, out = run_cli(capsys, "stop")
        assert code == 2 and "2 launches are running (ports 18772, 18773)" in out.err and "--port" in out.err
        assert all(h.poll() is None for h in holders)  # nothing was stopped
    finally:
        for h in holders:
            h.kill()
            h.wait()


def test_the_memory_plan_sizes_the_kv_cache_for_the_max_length_served(tmp_path):
    from baldr_ops.plan.model import LaunchRequest
    from baldr_ops.plan.planner import plan_launch

    model = write_tiny_model(tmp_path / "m")
    notes = {}
    for length in (None, 8):
        _, out = plan_launch(LaunchRequest(model=model, max_length=length, memguard="off"), check_ports=False)
        notes[length] = next(n for n in out if n.startswith("model "))
    # The tiny model's context is 16 tokens (max_position_embeddings): the default plans for it, 8 when asked.
    assert "@ 16 tokens" in notes[None] and "@ 8 tokens" in notes[8]


@pytest.mark.parametrize("context", [{"n_positions": 16}, {"max_seq_len": 16},
                                     {"text_config": {"max_position_embeddings": 16}},
                                     {"max_position_embeddings": 16, "text_config": {"model_type": "llama"}}])
def test_max_length_is_checked_against_every_spelling_of_the_context(capsys, tmp_path, context):
    # Configs name the context max_position_embeddings, n_positions (GPT-2 style) or max_seq_len,
    # under text_config (multimodal) or at the top beside a text_config that lacks it: each one
    # refuses a --max-length beyond it.
    model = write_tiny_model(tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    del config["max_position_embeddings"]
    (model / "config.json").write_text(json.dumps(config | context))
    code, out = run_cli(capsys, "launch", "--model", str(model), "--max-length", "17", "--port", "18762")
    assert code == 2 and "--max-length 17 exceeds m's context (16 tokens)" in out.err
    assert children() == []
