"""The compile runner on a stand-in process that prints MAX 26.7's warm-cache log lines."""

from __future__ import annotations

import sys

from baldr_ops.compile.runner import run_compile

SCRIPT = r"""
import sys, time
for line in [
    "22:23:18.843 INFO: Auto-detected pipeline task: text_generation (model architecture: LlamaForCausalLM)",
    "22:23:38.523 INFO: Building, compiling, and initializing model...",
    "22:24:38.530 INFO: Still compiling model (60.0s elapsed)",
    "22:25:40.446 INFO: Compiling model took 119.9 seconds",
    "22:25:40.452 INFO: Building, compiling, and initializing sampler...",
    "22:26:07.795 INFO: Compiling sampler took 25.9 seconds",
]:
    print(line, flush=True)
    time.sleep(0.05)
sys.exit(int(sys.argv[1]))
"""


class Recorder:
    def __init__(self):
        self.states, self.lines = [], []

    def phase(self, status):
        self.states.append((status.state, status.compile_elapsed_s))

    def line(self, text):
        self.lines.append(text)


def test_phases_compile_times_and_log(tmp_path):
    reporter = Recorder()
    run = run_compile([sys.executable, "-c", SCRIPT, "0"], {}, reporter, tmp_path / "compile.log", tick_s=0.01)
    assert run.returncode == 0
    assert run.compile_times == {"model": 119.9, "sampler": 25.9}
    states = [s for s, _ in reporter.states]
    assert states[0] == "loading" and "compiling" in states
    assert any(elapsed for s, elapsed in reporter.states if s == "compiling")
    assert len(reporter.lines) == 6 and "Compiling sampler took" in (tmp_path / "compile.log").read_text()


def test_failure_keeps_the_exit_code_and_tail():
    run = run_compile([sys.executable, "-c", SCRIPT, "3"], {})
    assert run.returncode == 3 and run.tail[-1].endswith("Compiling sampler took 25.9 seconds")
