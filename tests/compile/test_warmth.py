"""Cache warmth: found by content, recorded per model and options, answered without MAX."""

from __future__ import annotations

import json
import os

import pytest

from baldr_ops.engines.max import warmth
from baldr_ops.engines.max.command import EngineOptions

VERSION = "26.7.0"


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("BALDR_CACHE_DIR", str(tmp_path / "baldr-cache"))
    cache = tmp_path / "modular"
    monkeypatch.setenv("MODULAR_CACHE_DIR", str(cache))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    options = EngineOptions(model_path=model, served_name="m", devices="cpu")
    # MAX stores an exported MEF in its cache under an opaque key, with a 16-byte trailer.
    mefs = tmp_path / "mefs"
    mefs.mkdir()
    store = cache / ".max_cache/mof/mef" / VERSION
    store.mkdir(parents=True)
    for key, name in (("KEYA", "llama3-1.mef"), ("KEYB", "top_k_sampler-2.mef")):
        body = os.urandom(500)
        (mefs / name).write_bytes(body)
        (store / key).write_bytes(body + os.urandom(warmth.MEF_TRAILER))
    (store / "OTHER").write_bytes(os.urandom(516))          # another model's graph, same size
    return model, options, cache, mefs


def test_entries_found_by_content(setup):
    _, _, cache, mefs = setup
    assert warmth.cache_entries_for_mefs(mefs, cache) == [f".max_cache/mof/mef/{VERSION}/KEYA",
                                                          f".max_cache/mof/mef/{VERSION}/KEYB"]


def test_unknown_then_warm_then_cold(setup):
    model, options, cache, mefs = setup
    assert warmth.cache_warm(model, options, cache, VERSION) is None          # never compiled through us
    warmth.record_compiled(options, VERSION, warmth.cache_entries_for_mefs(mefs, cache), cache)
    assert warmth.cache_warm(model, options, cache, VERSION) is True
    assert warmth.cache_warm(model, None, cache, VERSION) is True             # any recorded options
    assert warmth.cache_warm(model, options.model_copy(update={"max_length": 99}), cache, VERSION) is None
    assert warmth.cache_warm(model, options, cache, "26.8.0") is None
    (cache / f".max_cache/mof/mef/{VERSION}/KEYB").unlink()                  # evicted
    assert warmth.cache_warm(model, options, cache, VERSION) is False


def test_empty_or_missing_cache_is_cold(setup, tmp_path):
    model, options, _, _ = setup
    assert warmth.cache_warm(model, options, tmp_path / "nowhere", VERSION) is False
    (tmp_path / "empty").mkdir()
    assert warmth.cache_warm(model, options, tmp_path / "empty", VERSION) is False


def test_changed_model_is_not_warm_by_path(setup):
    model, options, cache, mefs = setup
    warmth.record_compiled(options, VERSION, warmth.cache_entries_for_mefs(mefs, cache), cache)
    (model / "model.safetensors").write_bytes(b"\1" * 65)
    assert warmth.cache_warm(model, None, cache, VERSION) is None
    assert warmth.cache_warm(model, options, cache, VERSION) is None


def test_default_cache_dir_follows_modular_cache_dir(setup):
    model, options, cache, mefs = setup
    warmth.record_compiled(options, VERSION, warmth.cache_entries_for_mefs(mefs, cache))
    assert warmth.cache_warm(model, options, max_version=VERSION) is True
