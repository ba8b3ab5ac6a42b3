"""The one size grammar: the C parser (the truth, through cffi) and its Python twin agree.

No fallback here: if the library is not built these tests fail, because `make test` builds it and a
comparison of the Python parser with itself would prove nothing.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from baldr_ops import native, sizes
from baldr_ops.errors import UserError

# Hand-picked edges: suffix spellings, decimals with and without a suffix, percent bounds and
# precision, signs, hex, spaces, overflow, non-ASCII digits.
EDGES = ["0", "1", "512", "1K", "1k", "8G", "8GB", "8GiB", "8gib", "1.5G", "0.5T", "1.25M", "90%", "87.5%",
         "100%", "12Q", "", "G", "1.5", "-1", "+1", "0x10", "1 G", "0%", "101%", "87.555%", "1.%", ".5G",
         "99999999999T", "16777215T", "16777216T", "18446744073709551615", "18446744073709551614", "3B",
         "1e3", "inf", "nan", "1.5B", "١٢G", "8G\\n", "1.000000000000000000001G"]

SIZE_CHARS = st.sampled_from(list("0123456789.%KMGTkmgtiIbB -+xe١"))


def c_parse(text: str, allow_percent: bool = True):
    ffi, lib = native.load()  # raises if the library is missing: no silent fallback
    value = ffi.new("unsigned long long *")
    centipercent = ffi.new("unsigned int *")
    err = ffi.new("char[256]")
    if lib.baldr_memcap_parse_size(text.encode(), int(allow_percent), value, centipercent, err, 256) != 0:
        return None
    return (None, centipercent[0] / 100) if centipercent[0] else (int(value[0]), None)


def py_parse(text: str, allow_percent: bool = True):
    try:
        spec = sizes.parse_spec_python(text, "size", allow_percent)
    except UserError:
        return None
    return (spec.bytes, spec.percent)


def test_the_library_is_built_for_this_test_run():
    assert native.available(), "run 'make shim' (make test does): the C parser is what the sizes are checked against"


@pytest.mark.parametrize("text", EDGES)
@pytest.mark.parametrize("allow_percent", [True, False])
def test_python_twin_agrees_with_c_on_edges(text, allow_percent):
    assert py_parse(text, allow_percent) == c_parse(text, allow_percent)


@settings(max_examples=1500, deadline=None)
@given(st.text(SIZE_CHARS, max_size=14), st.booleans())
@example("1.5G", True)
def test_python_twin_agrees_with_c_on_random_strings(text, allow_percent):
    assert py_parse(text, allow_percent) == c_parse(text, allow_percent)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 24) - 1), st.sampled_from(["", "K", "M", "G", "T"]))
def test_whole_sizes_are_exact(n, suffix):
    shift = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[suffix]
    assert sizes.parse_size(f"{n}{suffix}") == n << shift


def test_entry_point_uses_the_c_parser_and_its_messages():
    # The C parser names the bad suffix; the Python twin only says "not a size".
    with pytest.raises(UserError, match='unknown suffix "Q"') as exc:
        sizes.parse_size("12Q", "floor")
    assert exc.value.message.startswith("bad floor:")


def test_percent_resolves_against_a_total_and_refuses_without_one():
    assert sizes.parse_size("50%", total=3) == 1
    assert sizes.parse_size("87.5%", total=1 << 30) == 7 << 27
    with pytest.raises(UserError, match="percentage needs a total"):
        sizes.parse_size("50%", "floor")
    with pytest.raises(UserError):
        sizes.parse_size("50%", allow_percent=False)
