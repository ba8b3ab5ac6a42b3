"""Bad input stops at the door: each value a user gives, checked before anything starts.

Small pure functions, each raising :class:`UserError` with one line that names the option and the
value, and a hint. The command line uses the single-value ones as argparse types (so a bad
``--port`` is refused while the line is parsed); preflight (`plan_launch`) uses the ones that
need the model's config, MAX's registry of architectures or MAX's own options, all read without
starting MAX.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import socket

from baldr_ops.durations import MAX_S
from baldr_ops.errors import UserError
from baldr_ops.models.footprint import model_context

_DEVICES = re.compile(r"cpu|gpu(:(all|[0-9]+(,[0-9]+)*))?")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_DOTTED = re.compile(r"[0-9.]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?|[0-9]{1,10}")


def port(text, what: str = "--port") -> int:
    value = _integer(text, what)
    if not 1 <= value <= 65535:
        raise UserError(f"{what} {value} is not a TCP port", hint="give 1 to 65535")
    return value


def positive_int(text, what: str) -> int:
    value = _integer(text, what)
    if value < 1:
        raise UserError(f"{what} {value} must be at least 1")
    if value > 1 << 31:
        raise UserError(f"{what} {value} is too large")
    return value


def count(text, what: str) -> int:
    """A count that may be 0 (e.g. --max-restarts)."""
    value = _integer(text, what)
    if not 0 <= value <= 1_000_000:
        raise UserError(f"{what} {value} is out of range", hint="give 0 or more")
    return value


def seconds(text, what: str, allow_zero: bool = True) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(f"{what} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) or value > MAX_S:
        low = "0" if allow_zero else "more than 0"
        raise UserError(f"{what} {text} is out of range", hint=f"give {low} to {MAX_S:.0f} seconds")
    return value


def _integer(text, what: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise UserError(f"{what} {text!r} is not a whole number") from None


def host(text: str, what: str = "--host") -> str:
    """An IP address, or a host name this machine can resolve (never 'the port is in use')."""
    text = str(text).strip()
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if not text or _DOTTED.fullmatch(text) or not _HOSTNAME.fullmatch(text):
        raise UserError(f"{what} {text!r} is not an IP address or a host name",
                        hint="e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    try:
        socket.getaddrinfo(text, None)
    except (socket.gaierror, UnicodeError):
        raise UserError(f"{what} {text!r} does not resolve to an address on this machine",
                        hint="give an IP address, e.g. 127.0.0.1") from None
    return text


def devices(text: str, what: str = "--devices") -> str:
    text = str(text).strip()
    if not _DEVICES.fullmatch(text):
        raise UserError(f"{what} {text!r} is not a MAX device list",
                        hint="cpu, gpu, gpu:all or GPU ids such as gpu:0,1")
    return text


def question(text: str, what: str = "--ask") -> str:
    if not str(text).strip():
        raise UserError(f"{what} is empty", hint="ask a question, e.g. --ask \"What is the capital of France?\"")
    return text


def unit_text(text: str, what: str) -> str:
    """A value that goes into a systemd unit file: one line, no control characters."""
    if _CONTROL.search(str(text)):
        raise UserError(f"{what} {text!r} has a control character (a newline would add lines to the unit)",
                        hint="give plain text on one line")
    return str(text)


def unix_user(text: str, what: str = "--user") -> str:
    text = unit_text(text, what)
    if not _UNIX_USER.fullmatch(text):
        raise UserError(f"{what} {text!r} is not a user name", hint="a user such as llm, or a numeric uid")
    return text


def engine_values(devices_text: str | None, max_length_value: int | None, max_batch_size: int | None) -> None:
    """The options `launch` and `compile` share with MAX."""
    if devices_text is not None:
        devices(devices_text)
    for option, value in (("--max-length", max_length_value), ("--max-batch-size", max_batch_size)):
        if value is not None:
            positive_int(value, option)


# -- checks that need the model or MAX -----------------------------------------------------------------

def model_architecture(config: dict, supported: set[str] | None, model: str) -> None:
    """The model's architecture against MAX's own registry (None: the registry could not be read,
    and MAX will say so itself)."""
    names = config.get("architectures") or []
    if supported is None or not names:
        return
    arch = names[0]
    if arch not in supported:
        close = difflib.get_close_matches(arch, sorted(supported), n=3, cutoff=0.6)
        raise UserError(f"{model}: architecture {arch!r} (config.json) is not one MAX serves",
                        hint=f"MAX has e.g. {', '.join(close)}" if close else "see `max list` for the architectures")


def max_length(value: int | None, config: dict, model: str) -> None:
    """``--max-length`` against the model's context as its config.json gives it."""
    if value is None:
        return
    limit = model_context(config)
    if limit is not None and value > limit:
        raise UserError(f"--max-length {value} exceeds {model}'s context ({limit} tokens)",
                        hint=f"give at most {limit}")


def engine_args(args: list[str], known: set[str] | None) -> None:
    """Options after ``--`` against the options MAX's `serve` takes (None: unknown, not checked)."""
    if known is None:
        return
    for arg in args:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            if flag not in known:
                close = difflib.get_close_matches(flag, sorted(known), n=3, cutoff=0.75)
                raise UserError(f"max serve has no option {flag}",
                                hint=(f"did you mean {', '.join(close)}? " if close else "") +
                                     "see `max serve --help`")
