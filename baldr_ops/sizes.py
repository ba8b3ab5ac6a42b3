"""The one size grammar: every size a user types (--floor, --cap, --load-floor, shim limits).

The shim's C parser is the truth: the preloaded library reads BALDR_MEMCAP_* with it, so Python
calls the same function through cffi (:mod:`baldr_ops.native`) and a value accepted here is one
the shim accepts. Where the library is not built (a box without a compiler) a pure-Python twin
of the grammar answers; tests/shim/test_sizes.py holds the two equal on random strings.

Grammar: bytes ("4096"), a binary K/M/G/T suffix with optional "B"/"iB" ("8G", "8GiB"), decimals
only with a suffix ("1.5T"), or, where allowed, a percentage of a total with up to two decimals
("90%", "87.5%"). No sign, no spaces, no exponent, nothing at or above 2**64 - 1.
"""

from __future__ import annotations

import re

from baldr_ops.errors import UserError
from baldr_ops.native import NO_CAP, LibraryMissing, load

HINT = "sizes are bytes or binary K/M/G/T (e.g. 8G, 1.5T)"
HINT_PERCENT = HINT + ", or a percentage such as 90%"


class SizeSpec:
    """A parsed size: absolute ``bytes``, or a ``percent`` of a total resolved later."""

    __slots__ = ("text", "bytes", "percent")

    def __init__(self, text: str, bytes: int | None = None, percent: float | None = None):  # noqa: A002
        self.text, self.bytes, self.percent = text, bytes, percent

    def __eq__(self, other) -> bool:
        return isinstance(other, SizeSpec) and (self.bytes, self.percent) == (other.bytes, other.percent)

    def __repr__(self) -> str:
        return f"SizeSpec({self.text!r}, bytes={self.bytes}, percent={self.percent})"

    def resolve(self, total: int | None, what: str = "size") -> int:
        if self.bytes is not None:
            return self.bytes
        if total is None:
            raise UserError(f"{what} {self.text}: a percentage needs a total to be taken from",
                            hint="give an absolute size such as 100G")
        return int(total * round(self.percent * 100) // 10000)


def parse_spec(text: str, what: str = "size", allow_percent: bool = True) -> SizeSpec:
    """Parse ``text`` exactly as the shim will; UserError naming ``what`` on bad input."""
    text = str(text).strip()
    try:
        ffi, lib = load()
    except LibraryMissing:
        return parse_spec_python(text, what, allow_percent)
    value = ffi.new("unsigned long long *")
    centipercent = ffi.new("unsigned int *")
    err = ffi.new("char[256]")
    if lib.baldr_memcap_parse_size(text.encode(), int(allow_percent), value, centipercent, err, 256) != 0:
        raise UserError(f"bad {what}: {ffi.string(err).decode()}", hint=HINT_PERCENT if allow_percent else HINT)
    if centipercent[0]:
        return SizeSpec(text, percent=centipercent[0] / 100)
    return SizeSpec(text, bytes=int(value[0]))


def parse_size(text: str, what: str = "size", total: int | None = None, allow_percent: bool = True) -> int:
    """Bytes for ``text`` (a percentage is taken of ``total``)."""
    return parse_spec(text, what, allow_percent).resolve(total, what)


_SIZE_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?(?:([KMGTkmgt])(?:[iI])?[bB]?|[bB])?")
_PERCENT_RE = re.compile(r"([0-9]+)(?:\.([0-9]{1,2}))?%")
_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_spec_python(text: str, what: str = "size", allow_percent: bool = True) -> SizeSpec:
    """The grammar in Python, for where the library is not built. Errors are less specific than
    the C parser's (it names the bad suffix); the accepted values are the same. Like the C
    parser it takes ``text`` as is: :func:`parse_spec` strips surrounding blanks for both."""
    m = _PERCENT_RE.fullmatch(text)
    if m and allow_percent:
        centipercent = int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))
        if 0 < centipercent <= 10000:
            return SizeSpec(text, percent=centipercent / 100)
    m = _SIZE_RE.fullmatch(text)
    if m and not (m.group(2) and not m.group(3)):
        shift = _SHIFT[(m.group(3) or "").upper()]
        frac = (m.group(2) or "")[:12]
        value = (int(m.group(1)) << shift) + ((int(frac or "0") << shift) // 10 ** len(frac))
        if value < NO_CAP:
            return SizeSpec(text, bytes=value)
    raise UserError(f"bad {what}: {text!r} is not a size", hint=HINT_PERCENT if allow_percent else HINT)
