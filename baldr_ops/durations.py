"""The one duration grammar for options such as ``--canary-every``: ``90`` or ``90s``, ``1.5m``,
``10m``, ``2h`` (seconds, minutes, hours). Positive and finite; no sign, no spaces."""

from __future__ import annotations

import re

from baldr_ops.errors import UserError

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h)?")
_UNIT = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_S = 7 * 86400.0


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds for ``text``; UserError naming ``what`` on bad input."""
    match = _DURATION.fullmatch(str(text).strip())
    if not match:
        raise UserError(f"{what} {text!r} is not a duration", hint="use seconds or a unit: 30s, 10m, 2h")
    seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if not 0 < seconds <= MAX_S:
        raise UserError(f"{what} {text!r} is out of range", hint="between 1s and 7 days (168h)")
    return seconds
