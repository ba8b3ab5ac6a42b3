"""The readiness gate: a server is ready only when it answers a real completion.

Order: TCP port accepts -> GET /health 200 -> GET /v1/models lists the served name -> a canary
chat completion (temperature 0, a few tokens). MAX binds its port only once the model worker is
up, so "connection refused" just means "still starting".
"""

from __future__ import annotations

import time

from pydantic import BaseModel

from baldr_ops.system.ports import client_host, port_open

CANARY_PROMPT = "Reply with one word: ready"
CANARY_MAX_TOKENS = 8


class GateResult(BaseModel):
    stage: str            # port | health | models | canary | ready
    ok: bool
    detail: str = ""
    latency_s: float | None = None


def base_url(host: str, port: int) -> str:
    return f"http://{client_host(host)}:{port}"


def check_once(host: str, port: int, served_name: str, canary: bool = True, timeout: float = 60.0) -> GateResult:
    """Walk the gate once; the first failing stage is reported."""
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
        if not canary:
            return GateResult(stage="ready", ok=True, detail="health and models answer")
        started = time.monotonic()
        reply = requests.post(f"{url}/v1/chat/completions", timeout=timeout, json={
            "model": served_name, "temperature": 0, "max_tokens": CANARY_MAX_TOKENS,
            "messages": [{"role": "user", "content": CANARY_PROMPT}],
        })
        latency = time.monotonic() - started
        if reply.status_code != 200:
            return GateResult(stage="canary", ok=False, latency_s=latency,
                              detail=f"canary completion answered {reply.status_code}: {reply.text[:200]}")
        choice = reply.json()["choices"][0]
        if choice.get("finish_reason") not in ("stop", "length"):
            return GateResult(stage="canary", ok=False, latency_s=latency,
                              detail=f"canary finished with {choice.get('finish_reason')!r}")
        return GateResult(stage="ready", ok=True, latency_s=latency,
                          detail=f"canary answered in {latency:.2f} s")
    except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
        return GateResult(stage="health", ok=False, detail=f"{type(exc).__name__}: {exc}")


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
