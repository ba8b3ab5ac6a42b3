"""Bundles on synthetic data: export, verify, refuse corruption, name every mismatching field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from baldr_ops.engines.max import bundle as b
from baldr_ops.engines.max.command import EngineOptions
from baldr_ops.engines.max.quirks import quirks_for
from baldr_ops.errors import UserError

QUIRKS = quirks_for("26.7.0")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BALDR_CACHE_DIR", str(tmp_path / "baldr-cache"))
    monkeypatch.setenv("MODULAR_CACHE_DIR", str(tmp_path / "modular-cache"))


def make_model(path: Path, weights: bytes = b"\x01" * 4096, config: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "llama", "hidden_size": 8}))
    (path / "model.safetensors").write_bytes(weights)
    return path


def make_mefs(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"graphs": [{"key": "llama3-abc.mef"}], "artifacts": []}))
    (path / "llama3-abc.mef").write_bytes(os.urandom(3000))
    (path / "top_k_sampler-def.mef").write_bytes(os.urandom(1000))
    return path


def options_for(model: Path, **changes) -> EngineOptions:
    return EngineOptions(model_path=model, served_name="m", devices="cpu", **changes)


@pytest.fixture
def exported(tmp_path):
    model = make_model(tmp_path / "model")
    options = options_for(model)
    bundle_dir = tmp_path / "bundle"
    manifest = b.export_bundle(bundle_dir, "mefs", make_mefs(tmp_path / "mefs"), options, "26.7.0",
                               compile_seconds=12.5)
    return bundle_dir, options, manifest


def test_export_writes_manifest_with_hashes_and_identity(exported):
    bundle_dir, options, manifest = exported
    on_disk = json.loads((bundle_dir / b.MANIFEST_NAME).read_text())
    assert on_disk["schema_version"] == b.SCHEMA_VERSION == manifest.schema_version
    assert on_disk["max_version"] == "26.7.0" and on_disk["payload"] == "mefs"
    assert on_disk["device"]["kind"] == "cpu" and on_disk["device"]["arch"]
    assert on_disk["model"]["config_sha256"] == b.sha256_file(options.model_path / "config.json")
    assert on_disk["options"] == options.compile_identity()
    assert set(on_disk["files"]) == {"mefs/manifest.json", "mefs/llama3-abc.mef", "mefs/top_k_sampler-def.mef"}
    for rel, entry in on_disk["files"].items():
        assert entry["sha256"] == b.sha256_file(bundle_dir / rel)
    assert b.verify_bundle(bundle_dir) == manifest
    assert not list(bundle_dir.parent.glob(".bundle.tmp-*"))


def test_matching_bundle_gives_precompiled_mefs(exported):
    bundle_dir, options, _ = exported
    use = b.plan_with_bundle(bundle_dir, options, QUIRKS)
    assert use.used and use.payload == "mefs" and use.env == {}
    assert use.serve_args == ["--precompiled-mefs", str(bundle_dir.resolve() / "mefs")]
    assert "matches" in use.note and "2 compiled graphs" in use.note


def test_export_refuses_existing_non_empty_destination(exported, tmp_path):
    bundle_dir, options, _ = exported
    with pytest.raises(UserError, match="already exists"):
        b.export_bundle(bundle_dir, "mefs", bundle_dir / "mefs", options, "26.7.0")


@pytest.mark.parametrize("damage, reason", [
    ("truncate", "is truncated"),
    ("flip", "was altered"),
    ("delete", "is missing"),
    ("extra", "is not in the manifest"),
    ("manifest-field", "digest does not match"),
    ("manifest-json", "not readable JSON"),
])
def test_corrupt_bundle_is_refused_with_its_reason(exported, damage, reason):
    bundle_dir, options, _ = exported
    mef = bundle_dir / "mefs" / "llama3-abc.mef"
    manifest = bundle_dir / b.MANIFEST_NAME
    if damage == "truncate":
        mef.write_bytes(mef.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(mef.read_bytes())
        data[1234] ^= 0x01
        mef.write_bytes(bytes(data))
    elif damage == "delete":
        mef.unlink()
    elif damage == "extra":
        (bundle_dir / "mefs" / "intruder.mef").write_bytes(b"x")
    elif damage == "manifest-field":
        raw = json.loads(manifest.read_text())
        raw["options"]["max_length"] = 4096        # hand-edited to pass the comparison
        manifest.write_text(json.dumps(raw))
    elif damage == "manifest-json":
        manifest.write_text(manifest.read_text()[:200])
    with pytest.raises(UserError, match=reason) as info:
        b.plan_with_bundle(bundle_dir, options, QUIRKS)
    assert "refusing" in info.value.message or "corrupt" in info.value.message
    assert info.value.hint


def _rewrite_manifest(bundle_dir: Path, **changes) -> None:
    """A consistent manifest (digest recomputed) that describes something else: a mismatch, not damage."""
    manifest = b.read_manifest(bundle_dir)
    updated = manifest.model_copy(update=changes)
    updated.digest = updated.compute_digest()
    (bundle_dir / b.MANIFEST_NAME).write_text(updated.model_dump_json(indent=2))


def test_other_max_version_is_not_used_and_says_so(exported):
    bundle_dir, options, _ = exported
    _rewrite_manifest(bundle_dir, max_version="26.6.0")
    use = b.plan_with_bundle(bundle_dir, options, QUIRKS)
    assert not use.used and use.serve_args == [] and use.env == {}
    assert [m.field for m in use.mismatches] == ["max_version"]
    assert "max_version differs (bundle 26.6.0, here 26.7.0)" in use.note and "compiling normally" in use.note


def test_other_model_weights_are_not_used(exported, tmp_path):
    bundle_dir, _, _ = exported
    other = make_model(tmp_path / "other", weights=b"\x02" * 4096)   # same size, other bytes
    use = b.plan_with_bundle(bundle_dir, options_for(other), QUIRKS)
    assert not use.used and [m.field for m in use.mismatches] == ["model.weights_sha256"]
    assert "model.weights_sha256 differs" in use.note


def test_other_model_size_and_config_are_named(exported, tmp_path):
    bundle_dir, _, _ = exported
    other = make_model(tmp_path / "other", weights=b"\x02" * 10, config={"model_type": "llama", "hidden_size": 16})
    use = b.plan_with_bundle(bundle_dir, options_for(other), QUIRKS)
    assert [m.field for m in use.mismatches] == ["model.config_sha256", "model.weights_bytes"]


def test_other_options_and_device_are_named(exported):
    bundle_dir, options, _ = exported
    use = b.plan_with_bundle(bundle_dir, options.model_copy(update={"max_length": 2048}), QUIRKS)
    assert not use.used and "options.max_length differs (bundle none, here 2048)" in use.note
    _rewrite_manifest(bundle_dir, device=b.DeviceIdentity(kind="gpu", arch="sm_121", host="aarch64",
                                                          name="NVIDIA GB10"))
    use = b.plan_with_bundle(bundle_dir, options, QUIRKS)
    assert {"device.kind", "device.arch"} <= {m.field for m in use.mismatches}


def test_gpu_bundle_built_on_another_host_cpu_is_not_used(tmp_path, monkeypatch):
    """A GB10 bundle cross-compiled on x86_64 carries an x86_64 host sampler: aarch64 must not use it."""
    model = make_model(tmp_path / "model")
    options = options_for(model).model_copy(update={"devices": "gpu"})
    built_on = b.device_identity("gpu", gpu_arch="sm_121").model_copy(update={"host": "x86_64"})
    b.export_bundle(tmp_path / "bundle", "mefs", make_mefs(tmp_path / "mefs"), options, "26.7.0", device=built_on)
    here = built_on.model_copy(update={"host": "aarch64"})
    monkeypatch.setattr(b, "device_identity", lambda devices: here)
    use = b.plan_with_bundle(tmp_path / "bundle", options, QUIRKS)
    assert [m.field for m in use.mismatches] == ["device.host"]
    assert "device.host differs (bundle x86_64, here aarch64)" in use.note


def test_cpu_isa_difference_is_reported(exported):
    bundle_dir, options, manifest = exported
    device = manifest.device.model_copy(update={"isa": sorted(set(manifest.device.isa) | {"amx_tile"})})
    _rewrite_manifest(bundle_dir, device=device)
    use = b.plan_with_bundle(bundle_dir, options, QUIRKS)
    assert [m.field for m in use.mismatches] == ["device.isa"] and "+amx_tile" in use.note


def test_mef_bundle_on_max_without_mef_support(exported):
    bundle_dir, options, _ = exported
    _rewrite_manifest(bundle_dir, max_version="26.4.0")
    use = b.plan_with_bundle(bundle_dir, options, quirks_for("26.4.0"))
    assert not use.used and [m.field for m in use.mismatches] == ["max.mef_support"]


def test_newer_schema_is_refused(exported):
    bundle_dir, options, _ = exported
    raw = json.loads((bundle_dir / b.MANIFEST_NAME).read_text())
    raw["schema_version"] = 99
    (bundle_dir / b.MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(UserError, match="schema_version 99"):
        b.plan_with_bundle(bundle_dir, options, QUIRKS)


def test_not_a_bundle(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a baldr-ops bundle"):
        b.verify_bundle(tmp_path / "empty")
    with pytest.raises(UserError, match="does not exist"):
        b.verify_bundle(tmp_path / "nope")


def test_cache_payload_seeds_modular_cache_dir(tmp_path):
    model = make_model(tmp_path / "model")
    options = options_for(model)
    cache = tmp_path / "compiled-cache"
    (cache / ".max_cache/mof/mef/26.7.0").mkdir(parents=True)
    (cache / ".max_cache/mof/mef/26.7.0/KEY1").write_bytes(b"graph")
    (cache / ".mojo_cache/x").mkdir(parents=True)
    (cache / ".mojo_cache/x/kernel").write_bytes(b"kernel")
    b.export_bundle(tmp_path / "bundle", "cache", cache, options, "26.7.0")
    use = b.plan_with_bundle(tmp_path / "bundle", options, QUIRKS)
    target = tmp_path / "modular-cache"
    assert use.used and use.payload == "cache" and use.env == {"MODULAR_CACHE_DIR": str(target)}
    assert (target / ".max_cache/mof/mef/26.7.0/KEY1").read_bytes() == b"graph"
    assert (target / ".mojo_cache/x/kernel").read_bytes() == b"kernel"
    assert "2 files copied" in use.note


def test_weights_are_hashed_once_per_file_version(tmp_path, monkeypatch):
    model = make_model(tmp_path / "model")
    calls = []
    real = b.sha256_file
    monkeypatch.setattr(b, "sha256_file", lambda p: calls.append(Path(p).name) or real(p))
    first = b.model_identity(model)
    second = b.model_identity(model)
    assert first == second and calls.count("model.safetensors") == 1
    (model / "model.safetensors").write_bytes(b"\x03" * 4096)
    assert b.model_identity(model).weights_sha256 != first.weights_sha256


def test_cpu_isa_parsing():
    info = "processor: 0\nflags\t\t: fpu sse4_2 avx avx2 avx512f hypervisor fma\n"
    assert b._cpu_isa(info) == ["avx", "avx2", "avx512f", "fma", "sse4_2"]
    assert b._cpu_isa("Features\t: fp asimd sve i8mm\n") == ["asimd", "i8mm", "sve"]
