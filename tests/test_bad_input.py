"""Bad input stops at the door (issue 16): a table of mistakes across the whole command line.

Every case runs the real CLI in a subprocess, in a sandbox (HOME, XDG and BALDR directories, TMPDIR
inside the test's directory) and asserts: the documented exit code; at most two lines of message
(the error naming the problem, a hint); no traceback and no "internal error"; nothing started (no
process left behind, no server log); nothing written anywhere but the paths the case names; and
an answer within 2 seconds of the command's own CPU time (no model load, no MAX start: either takes
many seconds of CPU). CPU time, not wall time, so a busy CI machine cannot fail the case.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 2.0


def tiny_model(root: Path, name: str = "m", arch: str = "LlamaForCausalLM", config: str | None = None) -> Path:
    path = root / name
    path.mkdir()
    cfg = {"architectures": [arch], "model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1,
           "num_attention_heads": 1, "num_key_value_heads": 1, "intermediate_size": 16, "vocab_size": 4,
           "max_position_embeddings": 16}
    (path / "config.json").write_text(config if config is not None else json.dumps(cfg))
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [4, 8],
                                                       "data_offsets": [0, 128]}}).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 128)
    return path


def tar_with(root: Path, members: list[tuple[str, bytes]]) -> Path:
    out = root / "bundle.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


# (id, argv with {in} for the inputs directory, exit code, regex the first line must match,
#  setup(inputs) run before). Exit codes: 2 bad input; doctor's is 3 (Nagios UNKNOWN).
CASES = [
    # -- launch: single values --------------------------------------------------------------------------
    ("port-0", ["launch", "--port", "0"], 2, r"--port 0 is not a TCP port", None),
    ("port-70000", ["launch", "--port", "70000"], 2, r"--port 70000 is not a TCP port", None),
    ("port-huge", ["launch", "--port", "99999999999999999999999"], 2, r"is not a TCP port", None),
    ("port-word", ["launch", "--port", "abc"], 2, r"argument --port: invalid int value: 'abc'", None),
    ("port-empty", ["launch", "--port", ""], 2, r"argument --port: invalid int value: ''", None),
    ("metrics-port-70000", ["launch", "--metrics-port", "70000"], 2, r"--metrics-port 70000 is not a TCP port", None),
    ("metrics-port-same", ["launch", "--port", "8123", "--metrics-port", "8123"], 2, r"is the API port", None),
    ("host-bad-ip", ["launch", "--host", "999.1.1.1"], 2, r"--host '999.1.1.1' is not an IP address", None),
    ("host-empty", ["launch", "--host", ""], 2, r"--host '' is not an IP address", None),
    ("host-junk", ["launch", "--host", "bad host!"], 2, r"is not an IP address or a host name", None),
    ("devices-tpu", ["launch", "--devices", "tpu"], 2, r"--devices 'tpu' is not a MAX device list", None),
    ("devices-gpu-colon", ["launch", "--devices", "gpu:"], 2, r"is not a MAX device list", None),
    ("devices-gpu-letters", ["launch", "--devices", "gpu:a,b"], 2, r"is not a MAX device list", None),
    ("max-length-0", ["launch", "--max-length", "0"], 2, r"--max-length 0 must be at least 1", None),
    ("max-length-negative", ["launch", "--max-length=-5"], 2, r"--max-length -5 must be at least 1", None),
    ("max-batch-size-0", ["launch", "--max-batch-size", "0"], 2, r"--max-batch-size 0 must be at least 1", None),
    ("grace-negative", ["launch", "--grace=-5"], 2, r"--grace -5.0 is out of range", None),
    ("grace-inf", ["launch", "--grace", "inf"], 2, r"--grace inf is out of range", None),
    ("grace-nan", ["launch", "--grace", "nan"], 2, r"--grace nan is out of range", None),
    ("startup-timeout-0", ["launch", "--startup-timeout", "0"], 2, r"--startup-timeout 0.0 is out of range", None),
    ("max-restarts-negative", ["launch", "--max-restarts=-1"], 2, r"--max-restarts -1 is out of range", None),
    ("ask-empty", ["launch", "--ask", ""], 2, r"--ask is empty", None),
    ("ask-blank", ["launch", "--ask", "   "], 2, r"--ask is empty", None),
    ("served-name-empty", ["launch", "--served-name", ""], 2, r"--served-name is empty", None),
    ("guard-enum", ["launch", "--guard", "fast"], 2, r"argument --guard: invalid choice: 'fast' \(choose from", None),
    ("shim-enum", ["launch", "--shim", "maybe"], 2, r"argument --shim: invalid choice: 'maybe'", None),
    ("memguard-enum", ["launch", "--memguard", "sometimes"], 2, r"argument --memguard: invalid choice", None),
    ("on-canary-failure-enum", ["launch", "--on-canary-failure", "panic"], 2, r"invalid choice: 'panic'", None),
    ("unknown-option", ["launch", "--frobnicate"], 2, r"unrecognized arguments: --frobnicate", None),
    ("floor-no-suffix-decimal", ["launch", "--floor", "1.5"], 2, r"bad --floor", None),
    ("floor-inf", ["launch", "--floor", "inf"], 2, r"bad --floor", None),
    ("floor-percent-too-big", ["launch", "--floor", "101%"], 2, r"bad --floor", None),
    ("load-floor-word", ["launch", "--load-floor", "lots"], 2, r"bad --load-floor", None),
    ("serve-floor-above-memtotal", ["launch", "--serve-floor", "100T"], 2, r"is at or above this machine's memory", None),
    ("memguard-hz-shape", ["launch", "--memguard-hz", "4-1"], 2, r"--memguard-hz .* is not LOAD:SERVE", None),
    ("memguard-hz-range", ["launch", "--memguard-hz", "100:1"], 2, r"--memguard-hz .* is out of range", None),
    ("canary-expect-regex", ["launch", "--canary-expect", "(Paris"], 2, r"not a regular expression", None),
    ("canary-every-word", ["launch", "--canary-every", "soon"], 2, r"--canary-every 'soon' is not a duration", None),
    ("canary-every-zero", ["launch", "--canary-every", "0"], 2, r"--canary-every '0' is out of range", None),
    ("canary-every-zero-seconds", ["launch", "--canary-every", "0s"], 2, r"--canary-every '0s' is out of range", None),
    ("canary-prompt-empty", ["launch", "--canary-prompt", ""], 2, r"--canary-prompt", None),
    ("canary-file-missing", ["launch", "--canary-file", "{in}/none.json"], 2, r"cannot read canary file", None),
    ("canary-file-is-dir", ["launch", "--canary-file", "{in}"], 2, r"cannot read canary file", None),
    # -- launch: the model and MAX ------------------------------------------------------------------------
    ("model-missing", ["launch", "--model", "{in}/nothing"], 2, r"does not exist", None),
    ("model-is-a-file", ["launch", "--model", "{in}/file.txt"], 2, r"is not a directory",
     lambda d: (d / "file.txt").write_text("x")),
    ("model-without-config", ["launch", "--model", "{in}/empty"], 2, r"config.json is missing",
     lambda d: (d / "empty").mkdir()),
    ("model-config-not-json", ["launch", "--model", "{in}/m"], 2, r"config.json is not valid JSON",
     lambda d: tiny_model(d, config="{not json")),
    ("model-unknown-architecture", ["launch", "--model", "{in}/m"], 2,
     r"architecture 'FooForCausalLM' \(config.json\) is not one MAX serves", lambda d: tiny_model(d, arch="FooForCausalLM")),
    ("max-length-over-context", ["launch", "--model", "{in}/m", "--max-length", "100000000"], 2,
     r"--max-length 100000000 exceeds m's context \(16 tokens", lambda d: tiny_model(d)),
    ("max-arg-unknown", ["launch", "--model", "{in}/m", "--", "--no-such-flag", "3"], 2,
     r"max serve has no option --no-such-flag", lambda d: tiny_model(d)),
    ("precompiled-missing", ["launch", "--model", "{in}/m", "--precompiled", "{in}/nobundle"], 2,
     r"precompiled bundle .* does not exist", lambda d: tiny_model(d)),
    ("run-dir-is-a-file", ["launch", "--port", "8124"], 2, r"cannot use the run directory .*Not a directory", None),
    # -- compile ------------------------------------------------------------------------------------------
    ("compile-export-is-a-file", ["compile", "--model", "{in}/m", "--export", "{in}/f"], 2, r"--export .* is a file",
     lambda d: (tiny_model(d), (d / "f").write_text("x"))),
    ("compile-export-not-empty", ["compile", "--model", "{in}/m", "--export", "{in}/full"], 2,
     r"already exists and is not empty", lambda d: (tiny_model(d), (d / "full").mkdir(), (d / "full" / "x").write_text("x"))),
    ("compile-import-missing", ["compile", "--model", "{in}/m", "--import", "{in}/none"], 2,
     r"precompiled bundle .* does not exist", lambda d: tiny_model(d)),
    ("compile-payload-enum", ["compile", "--payload", "zip"], 2, r"argument --payload: invalid choice: 'zip'", None),
    ("compile-target", ["compile", "--target", "tpu:v5", "--export", "{in}/b"], 2, r"--target 'tpu:v5' is not a CUDA target",
     None),
    ("compile-devices", ["compile", "--devices", "tpu"], 2, r"--devices 'tpu' is not a MAX device list", None),
    ("compile-max-length", ["compile", "--max-length", "0"], 2, r"--max-length 0 must be at least 1", None),
    # -- doctor (bad input is exit 3, Nagios UNKNOWN) --------------------------------------------------------
    ("doctor-fail-on-enum", ["doctor", "--fail-on", "sometimes"], 3, r"argument --fail-on: invalid choice", None),
    ("doctor-interval-negative", ["doctor", "--interval=-1"], 3, r"--interval -1.0 is out of range", None),
    ("doctor-interval-word", ["doctor", "--interval", "abc"], 3, r"argument --interval: invalid float value", None),
    ("doctor-context-0", ["doctor", "--context", "0"], 3, r"--context 0 must be positive", None),
    ("doctor-floor-word", ["doctor", "--floor", "lots"], 3, r"bad --floor", None),
    ("doctor-replay-missing", ["doctor", "--replay", "{in}/none.tar.gz"], 3, r"does not exist", None),
    ("doctor-replay-dir", ["doctor", "--replay", "{in}"], 3, r"is a directory", None),
    ("doctor-replay-not-tar", ["doctor", "--replay", "{in}/x.tar.gz"], 3, r"is not a readable .tar.gz bundle",
     lambda d: (d / "x.tar.gz").write_text("not a tar")),
    ("doctor-replay-traversal", ["doctor", "--replay", "{in}/bundle.tar.gz"], 3, r"unsafe member name '../../evil'",
     lambda d: tar_with(d, [("../../evil", b"x")])),
    ("doctor-replay-absolute", ["doctor", "--replay", "{in}/bundle.tar.gz"], 3, r"unsafe member name '/etc/evil'",
     lambda d: tar_with(d, [("/etc/evil", b"x")])),
    ("doctor-replay-file-then-dir", ["doctor", "--replay", "{in}/bundle.tar.gz"], 3, r"has a file where",
     lambda d: tar_with(d, [("proc", b"x"), ("proc/meminfo", b"MemTotal: 1 kB\n")])),
    ("doctor-root-missing", ["doctor", "--root", "{in}/none"], 3, r"does not exist", None),
    ("doctor-blackbox-file", ["doctor", "--blackbox", "{in}/f"], 3, r"--blackbox .* is not a directory",
     lambda d: (d / "f").write_text("x")),
    ("doctor-root-and-replay", ["doctor", "--root", "{in}", "--replay", "{in}/x"], 3, r"either --root or --replay",
     None),
    # -- status, stop, logs, systemd-unit --------------------------------------------------------------
    ("status-port-0", ["status", "--port", "0"], 2, r"--port 0 is not a TCP port", None),
    ("stop-port-huge", ["stop", "--port", "70000"], 2, r"--port 70000 is not a TCP port", None),
    ("stop-timeout-0", ["stop", "--port", "8125", "--timeout", "0"], 2, r"--timeout 0.0 is out of range", None),
    ("logs-lines-negative", ["logs", "--lines=-1"], 2, r"--lines -1 is out of range", None),
    ("unit-user-newline", ["systemd-unit", "--user", "root\nExecStartPre=/bin/true"], 2, r"--user .* control character",
     None),
    ("unit-user-not-a-user", ["systemd-unit", "--user", "root user"], 2, r"--user 'root user' is not a user name", None),
    ("unit-description-control", ["systemd-unit", "--description", "a\x1bb"], 2, r"--description .* control character",
     None),
    ("unit-launch-enum", ["systemd-unit", "--", "--guard", "fast"], 2, r"the launch arguments would fail at boot", None),
    ("unit-launch-port", ["systemd-unit", "--", "--port", "0"], 2, r"--port 0 is not a TCP port", None),
    ("unit-launch-newline-arg", ["systemd-unit", "--", "--served-name", "a\nb"], 2, r"control character", None),
    ("unit-detach", ["systemd-unit", "--", "--detach"], 2, r"foreground", None),
    # -- shim, guard, memory, top level ---------------------------------------------------------------------
    ("shim-limit-word", ["shim", "env", "--limit", "lots"], 2, r"bad limit", None),
    ("shim-unified-enum", ["shim", "env", "--unified", "yes"], 2, r"argument --unified: invalid choice", None),
    ("shim-budget-traversal", ["shim", "ledger", "--budget", "../etc"], 2, r"bad budget", None),
    ("guard-no-command", ["guard"], 2, r"no command to guard", None),
    ("guard-ready-regex", ["guard", "--ready-regex", "(", "--", "true"], 2, r"is not a regular expression", None),
    ("guard-ready-after", ["guard", "--ready-after=-1", "--", "true"], 2, r"--ready-after -1 is out of range", None),
    ("guard-weights-missing", ["guard", "--weights", "{in}/none", "--", "true"], 2, r"--weights .* does not exist", None),
    ("guard-command-missing", ["guard", "--memguard", "dry-run", "--", "{in}/no-such-program"], 2,
     r"command not found", None),
    ("memory-threshold-z-range", ["memory", "ab", "--store", "{in}/s", "--threshold-z", "50", "x"], 2,
     r"--threshold-z: Input should be less than or equal to 10", None),
    ("memory-layer-spec-field", ["memory", "ab", "--store", "{in}/s", "--layer", "13:strength=abc", "x"], 2,
     r"bad --layer '13:strength=abc': strength: Input should be a valid number", None),
    ("memory-recall-by-choice", ["memory", "ab", "--store", "{in}/s", "--recall-by", "topic", "x"], 2,
     r"argument --recall-by: invalid choice: 'topic'", None),
    ("memory-layer-spec-recall-by", ["memory", "ab", "--store", "{in}/s", "--layer", "13:recall_by=group", "x"], 2,
     r"bad --layer '13:recall_by=group': recall_by: Input should be 'label' or 'record'", None),
    ("memory-add-empty-label", ["memory", "add", "--store", "{in}/s", "--label", " ", "a memory"], 2,
     r"the label is empty", None),
    ("memory-keygen-missing-dir", ["memory", "keygen", "--key-file", "{in}/missing/dir/k"], 2, r"does not exist", None),
    ("unknown-command", ["frobnicate"], 2, r"argument COMMAND: invalid choice: 'frobnicate'", None),
    ("top-level-unknown-option", ["--frobnicate"], 2, r"unrecognized arguments: --frobnicate", None),
]


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def serve_options_cache():
    """The one slow read (`max serve --help`, ~8 s, once per MAX version) done before the clock runs."""
    from baldr_ops.engines.max.registry import serve_options

    return serve_options()


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id, argv, code, pattern, setup", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, serve_options_cache, case_id, argv, code, pattern, setup):
    inputs, sandbox = tmp_path / "in", tmp_path / "sandbox"
    inputs.mkdir()
    for sub in ("home", "runs", "state", "tmp", "xdg-cache", "xdg-config", "xdg-state"):
        (sandbox / sub).mkdir(parents=True)
    if setup:
        setup(inputs)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BALDR_", "XDG_"))}
    env.update({"HOME": str(sandbox / "home"), "TMPDIR": str(sandbox / "tmp"), "XDG_CONFIG_HOME": str(sandbox / "xdg-config"),
                "XDG_STATE_HOME": str(sandbox / "xdg-state"), "XDG_CACHE_HOME": str(sandbox / "xdg-cache"),
                "BALDR_RUN_DIR": str(sandbox / "runs"), "BALDR_STATE_DIR": str(sandbox / "state"),
                # the cache holds `max serve`'s options, read before the clock runs
                "BALDR_CACHE_DIR": os.environ.get("BALDR_CACHE_DIR") or str(Path.home() / ".cache" / "baldr-ops"),
                "PYTHONUNBUFFERED": "1"})
    if case_id == "run-dir-is-a-file":
        (sandbox / "runs").rmdir()
        (sandbox / "runs").write_text("a file where the run directory goes")
    argv = [a.replace("{in}", str(inputs)) for a in argv]
    before_inputs, before_sandbox = snapshot(inputs), snapshot(sandbox)
    # Children alive before (a multiprocessing resource tracker an earlier test started) are not ours.
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "baldr_ops", *argv], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    lines = [line for line in proc.stderr.splitlines() if not re.match(r"\[\s*\d+s\]", line)]   # progress lines
    assert proc.returncode == code, proc.stderr
    assert 1 <= len(lines) <= 2 and lines[0].startswith("baldr-ops: error: "), proc.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert len(lines) == 1 or lines[1].startswith("  hint: ")
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert "starting   process started" not in proc.stderr            # MAX never started
    assert not list((sandbox / "runs").glob("port-*/server.log")) if (sandbox / "runs").is_dir() else True
    assert snapshot(inputs) == before_inputs and snapshot(sandbox) == before_sandbox   # nothing written
    assert [p for p in psutil.Process().children(recursive=True) if p.pid not in children_before] == []
    assert cpu < LIMIT_S, f"{case_id} took {cpu:.2f} s of CPU"
