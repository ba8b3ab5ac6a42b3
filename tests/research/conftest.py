"""Fixtures for the research modules: the demo model loaded through transformers, tiny families."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
    collect_ignore_glob = ["test_*.py"]  # the research extra is optional; nothing here runs without it


@pytest.fixture(scope="session")
def smollm2(demo_model):
    """SmolLM2-135M-Instruct (float32) as a LanguageModel, loaded once per test session."""
    from baldr_ops.research.models import load_model

    return load_model(demo_model)


@pytest.fixture(params=("llama", "qwen2", "qwen3", "gemma2", "gemma3", "gemma4"))
def tiny_lm(request):
    """A tiny random model of each supported family, wrapped (no tokenizer)."""
    from baldr_ops.research.models import wrap_model
    from tests.research.tiny import build

    model, _ = build(request.param)
    return wrap_model(model, None, f"/nonexistent/tiny-{request.param}", name=f"tiny-{request.param}")
