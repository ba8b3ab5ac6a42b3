"""--target (cross-compiling for a GPU this machine lacks): parsing and the rules around it."""

from __future__ import annotations

from pathlib import Path

import pytest

from baldr_ops.compile.service import _for_target, parse_target
from baldr_ops.errors import UserError
from baldr_ops.plan.model import LaunchRequest


@pytest.mark.parametrize("target, arch, capability", [
    ("cuda:sm_121", "sm_121", (12, 1)), ("cuda:sm_90", "sm_90", (9, 0)), ("cuda:sm_100", "sm_100", (10, 0)),
])
def test_parse_target(target, arch, capability):
    assert parse_target(target) == (arch, capability)


@pytest.mark.parametrize("bad", ["cuda", "sm_121", "hip:gfx942", "cuda:121", "metal"])
def test_unknown_target_is_refused(bad):
    with pytest.raises(UserError, match="not a CUDA target"):
        parse_target(bad)


def test_target_rules():
    request = LaunchRequest(max_batch_size=4)
    out = Path("/tmp/b")
    changed, arch, capability = _for_target(request, "cuda:sm_121", out, None, False)
    assert changed.devices == "gpu" and changed.shim == "off" and (arch, capability) == ("sm_121", (12, 1))
    with pytest.raises(UserError, match="--export DIR only"):
        _for_target(request, "cuda:sm_121", None, None, False)
    with pytest.raises(UserError, match="--export DIR only"):
        _for_target(request, "cuda:sm_121", out, None, True)
    with pytest.raises(UserError, match="needs --max-batch-size"):
        _for_target(LaunchRequest(), "cuda:sm_121", out, None, False)
