"""The canary reads the answer (issue 14): judged answers, checks while serving, the sampling
self-test, metrics; against tests/launch/fake_max.py, no model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from baldr_ops.engines.max.command import EngineOptions
from baldr_ops.launch.runstate import RunDir
from baldr_ops.launch.supervisor import Supervisor
from baldr_ops.plan.canary import Canary, CanaryAnswer, first_difference, judge, repeated_run
from baldr_ops.plan.guard import decide_guard
from baldr_ops.plan.model import LaunchPlan, Supervision
from tests.launch.test_supervisor import FAKE, Recorder, free_port

PARIS = Canary(prompt="What is the capital of France?", expect="Paris")


def answer(text: str, tokens: list[str] | None = None, finish: str = "stop") -> CanaryAnswer:
    return CanaryAnswer(prompt=PARIS.prompt, text=text, tokens=tokens if tokens is not None else text.split(),
                        finish_reason=finish, latency_s=0.1)


# -- the judgement -----------------------------------------------------------------------------------

def test_a_healthy_answer_passes():
    assert judge(PARIS, answer("The capital of France is Paris.")) is None
    assert judge(Canary(prompt="p"), answer("ready")) is None                  # no expectation: any sane text


@pytest.mark.parametrize("text, tokens, reason", [
    ("", [], "empty answer"),
    ("   ", [], "empty answer"),
    ("Paris Paris Paris Paris Paris Paris Paris Paris", None, "degenerate answer: 'Paris' repeated 8 times"),
    ("the the the the the the the cat", None, "'the' repeated 7 times over 7 of 8"),
    ("Paris is. Paris is. Paris is. Paris is. Paris is.", None, "'Paris is.' repeated 5 times"),
    ("Par\ufffds", None, "do not decode"),
    ("Paris.\nParis.", None, "runs past the stop sequence"),
    ("Berlin is the capital.", None, "does not match the expectation /Paris/"),
])
def test_each_kind_of_wrong_answer_is_named(text, tokens, reason):
    found = judge(PARIS, answer(text, tokens))
    assert found is not None and reason in found, found


def test_short_or_varied_answers_are_not_called_repetitive():
    # Under six tokens nothing is judged repetitive; a repeated phrase inside a varied answer is fine.
    assert judge(Canary(prompt="p"), answer("no no no no no")) is None
    assert judge(Canary(prompt="p"), answer("It is Paris, Paris, the city of light and of the Seine.")) is None
    assert repeated_run("a b a b a b c".split()) == (2, 3, 6)


def test_finish_reasons():
    assert judge(PARIS, answer("Paris", finish="length")) is None
    assert "finished with 'error'" in judge(PARIS, answer("Paris", finish="error"))


def test_first_difference_names_the_token():
    ready = answer("Paris is lovely", ["Paris", " is", " lovely"])
    assert first_difference(ready, answer("Paris is lovely", ["Paris", " is", " lovely"])) is None
    assert first_difference(ready, answer("Paris was lovely", ["Paris", " was", " lovely"])) == \
        "token 1: ' is' at ready, now ' was'"
    assert first_difference(ready, answer("Paris", ["Paris"])) == "token 1: ' is' at ready, now the end"


# -- against the fake server ----------------------------------------------------------------------------

def make(tmp_path, port, env=None, guard="off", **supervision):
    sup = {"startup_timeout_s": 30, "grace_s": 2, "liveness_interval_s": 0.3, "backoff_initial_s": 0.1,
           "backoff_max_s": 0.2, "canaries": [PARIS], **supervision}
    plan = LaunchPlan(command=[sys.executable, FAKE], options=EngineOptions(model_path=Path("/fake"), served_name="fake"),
                      env={"FAKE_PORT": str(port), "FAKE_MARKER": str(tmp_path / "starts"), **(env or {})},
                      host="127.0.0.1", port=port, served_name="fake", model="fake-model",
                      guard=decide_guard(guard, (12, 1), True), supervision=Supervision(**sup))
    rundir = RunDir(port, tmp_path / "runs")
    rundir.acquire()
    return Supervisor(plan, rundir, Recorder()), rundir


def starts(tmp_path) -> int:
    return len((tmp_path / "starts").read_text().split())


def test_a_healthy_server_is_ready_with_its_answer_recorded_and_one_request(tmp_path):
    sup, rundir = make(tmp_path, free_port())
    sup.after_ready = lambda s: 0
    assert sup.run() == 0
    state = json.loads(rundir.state_file.read_text())
    assert state["canary"]["ready_answers"] == ["Paris."]
    assert state["canary"]["prompts"] == [PARIS.prompt] and state["canary"]["expect"] == ["Paris"]
    # The content check rides on today's single canary request: the server saw one completion.
    assert [line for line in sup.reporter.lines if line.startswith("REQUEST")] == ["REQUEST chat temperature=0.0"]
    assert starts(tmp_path) == 1


@pytest.mark.parametrize("mode, reason", [("repeat", "degenerate answer: 'Paris' repeated 16 times"),
                                          ("empty", "empty answer"),
                                          ("stopless", "runs past the stop sequence")])
def test_a_wrong_answer_fails_readiness_once_with_exit_2(tmp_path, mode, reason):
    sup, rundir = make(tmp_path, free_port(), env={"FAKE_ANSWERS": mode})
    assert sup.run() == 2
    assert starts(tmp_path) == 1                                   # no crash loop
    verdict, postmortem = sup.reporter.exits[0]
    assert verdict.kind == "canary" and reason in verdict.summary and not verdict.restart
    assert any(m.startswith("not ready: ") and reason in m for m in sup.reporter.messages)
    assert rundir.read().state == "failed"


def test_an_answer_that_drifts_is_caught_while_serving_and_restarts_when_asked(tmp_path):
    # No expectation: the drift alone (a greedy answer that changed) is the finding.
    sup, rundir = make(tmp_path, free_port(), env={"FAKE_ANSWERS": "drift", "FAKE_DRIFT_AFTER": "2"},
                       canaries=[Canary(prompt=PARIS.prompt)], canary_every_s=0.3, on_canary_failure="restart",
                       max_restarts=1)
    assert sup.run() == 1                                          # drifted again after the restart: gave up
    assert starts(tmp_path) == 2
    failures = [m for m in sup.reporter.messages if m.startswith("canary failed while serving")]
    assert failures and "token 0: 'Paris' at ready, now 'Ly'" in failures[0] and "'Paris.' -> 'Lyon.'" in failures[0]
    canary = rundir.read().canary
    assert canary.failures >= 1 and canary.checks >= 2 and "changed since ready" in canary.last_failure
    assert [v.kind for v, _ in sup.reporter.exits] == ["canary", "canary"]


def test_a_drift_only_warns_by_default(tmp_path):
    import time

    sup, rundir = make(tmp_path, free_port(), env={"FAKE_ANSWERS": "drift", "FAKE_DRIFT_AFTER": "2"},
                       canary_every_s=0.2)

    def serve_a_while(s):
        time.sleep(1.5)
        return 0

    sup.after_ready = serve_a_while
    assert sup.run() == 0 and starts(tmp_path) == 1
    assert rundir.read().canary.failures >= 1


def test_a_sampling_kernel_crash_at_the_self_test_falls_back_to_greedy(tmp_path):
    sup, rundir = make(tmp_path, free_port(), env={"FAKE_SAMPLING_CRASH": "1"}, guard="auto", sampling_selftest=True)
    assert sup.plan.guard.mode == "host-sampling"
    sup.after_ready = lambda s: 0
    assert sup.run() == 0
    assert starts(tmp_path) == 2                                   # one crash, then greedy: no loop
    verdict, _ = sup.reporter.exits[0]
    assert verdict.kind == "sampling-kernel" and "modular#6488" in verdict.summary
    assert any("falling back to --guard greedy" in m for m in sup.reporter.messages)
    state = rundir.read()
    assert state.guard.mode == "greedy" and "fallback" in state.guard.reason
    assert sup.plan.env["BALDR_GUARD"] == "greedy" and not sup.plan.supervision.sampling_selftest
    # First start: the canary (greedy), then the sampled self-test that killed it; second start: the
    # canary only (the self-test is off under greedy).
    requests = [line for line in sup.reporter.lines if line.startswith("REQUEST")]
    assert requests == ["REQUEST chat temperature=0.0", "REQUEST chat temperature=0.8", "REQUEST chat temperature=0.0"]


def test_metrics_parse_with_the_official_parser(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from baldr_ops.launch.metrics import exposition

    sup, rundir = make(tmp_path, free_port(), canary_every_s=0.2)

    def serve_a_while(s):
        import time

        time.sleep(0.8)
        return 0

    sup.after_ready = serve_a_while
    assert sup.run() == 0
    state = rundir.read()
    text = exposition([state], now=1.0)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"baldr_launch_up", "baldr_launch_ready", "baldr_launch_restarts", "baldr_launch_canary_latency_seconds",
            "baldr_launch_canary_checks", "baldr_launch_canary_failures", "baldr_launch_sampling_guard_info"} <= set(families)
    checks = families["baldr_launch_canary_checks"]
    assert checks.type == "counter" and checks.samples[0].value == state.canary.checks >= 2
    assert families["baldr_launch_canary_failures"].samples[0].value == 0
    guard = families["baldr_launch_sampling_guard_info"].samples[0]
    assert guard.labels == {"port": str(state.port), "served_name": "fake", "mode": "off"} and guard.value == 1


# Bad canary options (missing file, bad regex, bad or zero interval, empty prompt) are rows of the
# bad-input table (tests/test_bad_input.py), which also checks that nothing started or was written.


def test_canary_file_errors_name_the_entry(tmp_path, capsys, monkeypatch):
    from baldr_ops.cli import main

    monkeypatch.setenv("BALDR_RUN_DIR", str(tmp_path / "runs"))
    cases = {"notjson.json": ("{", "is not JSON"), "empty.json": ("[]", "holds no canaries"),
             "badregex.json": ('[{"prompt": "p", "expect": "["}]', "entry 1: expect: '[' is not a regular expression"),
             "extra.json": ('[{"prompt": "p", "expecting": "x"}]', "entry 1: expecting: Extra inputs are not permitted"),
             "binary.json": (b"\xff\xfe\x00", "is not JSON")}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        code = main(["launch", "--canary-file", str(path)])
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[")]
        assert code == 2 and message in err[0], (name, err)
