"""SAE tests need the research extra; the demo-model fixtures come from tests/research."""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("safetensors") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    from tests.research.conftest import smollm2, tiny_lm  # noqa: F401  (shared fixtures)
