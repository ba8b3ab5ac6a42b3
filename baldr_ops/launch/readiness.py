"""The readiness gate, and the canary set asked over HTTP.

Order: TCP port accepts -> GET /health 200 -> GET /v1/models lists the served name -> the canary
set (plan/canary.py judges each answer) -> with ``sampling_selftest``, one sampled request
(temperature > 0, top-k > 1) so that a sampling kernel that kills the worker (modular#6488) is
found before the server is called ready. MAX binds its port only once the model worker is up, so
"connection refused" just means "still starting".
"""

from __future__ import annotations

import re
import time

from pydantic import BaseModel

from baldr_ops.plan.canary import STOP, Canary, CanaryAnswer, CanaryCheck, first_difference, judge
from baldr_ops.system.ports import client_host, port_open

SELFTEST_TEMPERATURE = 0.8
SELFTEST_TOP_K = 40


class GateResult(BaseModel):
    stage: str            # port | health | models | canary | sampling | ready
    ok: bool
    detail: str = ""
    latency_s: float | None = None
    final: bool = False   # a verdict on the answers themselves: asking again will not change it
    check: CanaryCheck | None = None


def base_url(host: str, port: int) -> str:
    return f"http://{client_host(host)}:{port}"


def check_once(host: str, port: int, served_name: str, canaries: list[Canary] | None = None,
               sampling_selftest: bool = False, timeout: float = 60.0) -> GateResult:
    """Walk the gate once; the first failing stage is reported. ``canaries`` None or empty: ready
    at /v1/models."""
    import requests

    if not port_open(host, port):
        return GateResult(stage="port", ok=False, detail="port not accepting connections yet")
    url = base_url(host, port)
    try:
        health = requests.get(f"{url}/health", timeout=5)
        if health.status_code != 200:
            return GateResult(stage="health", ok=False, detail=f"/health answered {health.status_code}")
        models = requests.get(f"{url}/v1/models", timeout=5)
        names = [m.get("id") for m in models.json().get("data", [])] if models.ok else []
        if served_name not in names:
            return GateResult(stage="models", ok=False, detail=f"/v1/models lists {names}, not {served_name!r}")
        if not canaries:
            return GateResult(stage="ready", ok=True, detail="health and models answer")
    except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
        return GateResult(stage="health", ok=False, detail=f"{type(exc).__name__}: {exc}")
    try:
        check = run_set(host, port, served_name, canaries, timeout=timeout)
    except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
        return GateResult(stage="canary", ok=False, detail=f"canary completion failed: {type(exc).__name__}: {exc}")
    if not check.ok:
        return GateResult(stage="canary", ok=False, final=True, detail=check.reason, latency_s=check.latency_s,
                          check=check)
    detail = f"canary answered in {check.latency_s:.2f} s"
    if sampling_selftest:
        try:
            ask_canary(host, port, served_name, canaries[0], timeout, temperature=SELFTEST_TEMPERATURE,
                       top_k=SELFTEST_TOP_K)
        except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
            return GateResult(stage="sampling", ok=False, final=True, check=check,
                              detail=f"the sampling self-test (temperature {SELFTEST_TEMPERATURE}, top-k "
                                     f"{SELFTEST_TOP_K}) failed: {type(exc).__name__}: {str(exc)[:200]}")
        detail += f"; sampling self-test passed (temperature {SELFTEST_TEMPERATURE}, top-k {SELFTEST_TOP_K})"
    return GateResult(stage="ready", ok=True, latency_s=check.latency_s, detail=detail, check=check)


def alive(host: str, port: int, timeout: float = 5.0) -> bool:
    """Liveness: /health answers 200 within the timeout."""
    import requests

    try:
        return requests.get(f"{base_url(host, port)}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def ask(host: str, port: int, served_name: str, question: str, max_tokens: int = 64,
        temperature: float = 0.0, timeout: float = 120.0) -> str:
    """One chat question, the answer's text."""
    import requests

    reply = requests.post(f"{base_url(host, port)}/v1/chat/completions", timeout=timeout, json={
        "model": served_name, "temperature": temperature, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": question}],
    })
    reply.raise_for_status()
    return reply.json()["choices"][0]["message"]["content"]


# -- the canary set (judged in plan/canary.py) -------------------------------------------------------

def ask_canary(host: str, port: int, served_name: str, canary: Canary, timeout: float = 60.0,
        temperature: float = 0.0, top_k: int | None = None) -> CanaryAnswer:
    """One canary completion; raises requests' errors (the caller decides what they mean)."""
    import requests

    body = {"model": served_name, "temperature": temperature, "max_tokens": canary.max_tokens, "stop": [STOP],
            "logprobs": True, "messages": [{"role": "user", "content": canary.prompt}]}
    if top_k is not None:
        body["top_k"] = top_k
    started = time.monotonic()
    reply = requests.post(f"{base_url(host, port)}/v1/chat/completions", timeout=timeout, json=body)
    latency = time.monotonic() - started
    reply.raise_for_status()
    choice = reply.json()["choices"][0]
    text = (choice.get("message") or {}).get("content") or ""
    content = (choice.get("logprobs") or {}).get("content") or []
    tokens = [str(item.get("token", "")) for item in content]
    undecodable = False
    if content and all(isinstance(item.get("bytes"), list) for item in content):
        # All the tokens' bytes together: one token may hold half of a character, the answer may not.
        try:
            b"".join(bytes(item["bytes"]) for item in content).decode("utf-8")
        except (UnicodeDecodeError, ValueError, TypeError):
            undecodable = True
    from_server = bool(tokens)
    if not from_server:
        tokens = re.findall(r"\S+", text)
    return CanaryAnswer(prompt=canary.prompt, text=text, tokens=tokens, tokens_from_server=from_server,
                        finish_reason=choice.get("finish_reason"), latency_s=round(latency, 3),
                        undecodable=undecodable)


def run_set(host: str, port: int, served_name: str, canaries: list[Canary],
            recorded: list[CanaryAnswer] | None = None, timeout: float = 60.0) -> CanaryCheck:
    """Ask every canary; judge each answer and, given the answers recorded at ready, compare."""
    answers: list[CanaryAnswer] = []
    for i, canary in enumerate(canaries):
        answer = ask_canary(host, port, served_name, canary, timeout)
        answers.append(answer)
        reason = judge(canary, answer)
        if reason is None and recorded is not None and i < len(recorded):
            diff = first_difference(recorded[i], answer)
            if diff is not None:
                reason = (f"the greedy answer to {canary.prompt!r} changed since ready ({diff}): "
                          f"{recorded[i].text!r} -> {answer.text!r}")
        if reason is not None:
            return CanaryCheck(ok=False, reason=reason, answers=answers,
                               latency_s=round(sum(a.latency_s for a in answers), 3))
    return CanaryCheck(ok=True, answers=answers, latency_s=round(sum(a.latency_s for a in answers), 3))
