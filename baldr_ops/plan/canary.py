"""The canary: a few real chat completions whose answers are read, not just received.

A server can start, answer, and be wrong: every prompt answered with one repeated token
(tonyd2wild/DeepSeek-V4.1-Flash-vLLM-DGX-Spark#2, bisected to CUDA graphs), or a worker that
dies on the first sampled request (modular#6488). The canary asks at temperature 0 with logprobs
(MAX returns the generated tokens) and a newline stop sequence, and judges each answer:

* empty text -> fail;
* U+FFFD (a replacement character) or token bytes that do not decode as UTF-8 -> fail: a broken
  tokenizer or garbage logits;
* the stop sequence (a newline) inside the answer -> fail: the server ignores stop conditions;
* one token, or an n-gram of up to ``MAX_PERIOD`` tokens, repeated back to back over at least
  ``MIN_COVERAGE`` of an answer of at least ``MIN_TOKENS`` tokens, ``MIN_REPEATS`` times or more
  -> fail: the degenerate output of the reports above ("Paris. Paris. Paris. Paris." is caught,
  "The capital of France is Paris." is not; shorter answers are too short to judge);
* a finish reason other than stop or length -> fail;
* an operator's expectation (``--canary-expect REGEX``, searched case-insensitively) not found.

While serving, the same set is asked again (``--canary-every``) and each answer must equal the
one recorded at ready, bit for bit (greedy decoding is deterministic); the first differing token
is reported. The canary set is part of the plan; this module is pure (the HTTP side is in
launch/readiness.py).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from baldr_ops.errors import UserError, first_invalid_field

STOP = "\n"                 # the canary's stop sequence: its answer is one line
MAX_TOKENS = 16
MIN_TOKENS = 6              # shorter answers cannot be judged repetitive
MAX_PERIOD = 3              # repeated units of 1 to 3 tokens
MIN_REPEATS = 4
MIN_COVERAGE = 0.6          # "most of the output"
DEMO_CANARY = ("What is the capital of France?", "Paris")
GENERIC_PROMPT = "Reply with one word: ready"


class Canary(BaseModel):
    """One prompt and, optionally, what its answer must contain."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    expect: str | None = None          # a regular expression, searched case-insensitively
    max_tokens: int = Field(default=MAX_TOKENS, ge=1, le=512)

    @field_validator("expect")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        return value


class CanaryAnswer(BaseModel):
    prompt: str
    text: str
    tokens: list[str] = []             # the server's tokens (logprobs), else whitespace-split words
    tokens_from_server: bool = False
    finish_reason: str | None = None
    latency_s: float
    undecodable: bool = False          # a token's bytes were not valid UTF-8


class CanaryCheck(BaseModel):
    """One pass over the canary set: ok, or the first failure in one line."""

    ok: bool
    reason: str | None = None
    answers: list[CanaryAnswer] = []
    latency_s: float = 0.0
    at: float = Field(default_factory=time.time)


def load_canary_file(path: str | Path) -> list[Canary]:
    """A JSON list of {"prompt", "expect"?, "max_tokens"?} (or {"canaries": [...]}), for CI."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read canary file {path}: {exc.strerror or exc}",
                        hint="give a JSON file: [{\"prompt\": ..., \"expect\": ...}, ...]") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"canary file {path} is not JSON: {str(exc).splitlines()[0]}",
                        hint="give a JSON file: [{\"prompt\": ..., \"expect\": ...}, ...]") from None
    items = data.get("canaries") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise UserError(f"canary file {path} holds no canaries", hint="a JSON list of {\"prompt\": ..., \"expect\": ...}")
    canaries = []
    for number, item in enumerate(items, 1):
        try:
            canaries.append(Canary.model_validate(item))
        except ValidationError as exc:
            field, message = first_invalid_field(exc)
            where = f"entry {number}" + (f": {field}" if field else "")
            raise UserError(f"canary file {path}: {where}: {message}",
                            hint="each entry: {\"prompt\": TEXT, \"expect\": REGEX (optional)}") from None
    return canaries


# -- judging (pure) -------------------------------------------------------------------------------

def repeated_run(tokens: list[str]) -> tuple[int, int, int]:
    """The longest back-to-back repetition of a unit of 1..MAX_PERIOD tokens: (period, repeats,
    tokens covered). Whitespace around tokens is ignored ("Paris." and " Paris." are one unit)."""
    units = [t.strip() for t in tokens]
    best = (1, 1, 1 if units else 0)
    for period in range(1, MAX_PERIOD + 1):
        i = 0
        while i + period <= len(units):
            unit = units[i:i + period]
            j = i + period
            while j + period <= len(units) and units[j:j + period] == unit:
                j += period
            repeats = (j - i) // period
            if repeats > 1 and j - i > best[2]:
                best = (period, repeats, j - i)
            i += 1
    return best


def judge(canary: Canary, answer: CanaryAnswer) -> str | None:
    """Why this answer is not healthy (one line), or None."""
    text = answer.text
    shown = text if len(text) <= 80 else text[:77] + "..."
    if not text.strip():
        return f"empty answer to {canary.prompt!r}"
    if "\ufffd" in text or answer.undecodable:
        return f"the answer has bytes that do not decode (U+FFFD): {shown!r}"
    if STOP in text:
        return f"the answer runs past the stop sequence (a newline): the server ignores stop: {shown!r}"
    tokens = answer.tokens
    if len(tokens) >= MIN_TOKENS:
        period, repeats, covered = repeated_run(tokens)
        if repeats >= MIN_REPEATS and covered >= MIN_COVERAGE * len(tokens):
            unit = " ".join(t.strip() for t in _unit(tokens, period))
            return (f"degenerate answer: {unit!r} repeated {repeats} times over {covered} of {len(tokens)} "
                    f"tokens: {shown!r}")
    if answer.finish_reason not in ("stop", "length"):
        return f"the answer finished with {answer.finish_reason!r}"
    if canary.expect is not None and not re.search(canary.expect, text, re.IGNORECASE):
        return f"the answer {shown!r} does not match the expectation /{canary.expect}/"
    return None


def _unit(tokens: list[str], period: int) -> list[str]:
    units = [t.strip() for t in tokens]
    for i in range(len(units) - period):
        if units[i:i + period] == units[i + period:i + 2 * period]:
            return tokens[i:i + period]
    return tokens[:period]


def first_difference(recorded: CanaryAnswer, now: CanaryAnswer) -> str | None:
    """None when the answers are equal bit for bit, else where they part (the first differing token)."""
    if recorded.text == now.text:
        return None
    a, b = recorded.tokens, now.tokens
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    was = repr(a[i]) if i < len(a) else "the end"
    got = repr(b[i]) if i < len(b) else "the end"
    return f"token {i}: {was} at ready, now {got}"
