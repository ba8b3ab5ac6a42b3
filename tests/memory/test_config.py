"""Default layer: from a saved SAE layer profile when there is one, else 90 % depth."""

from __future__ import annotations

import json

import pytest

from baldr_ops.errors import UserError
from baldr_ops.memory.config import PROFILE_ENV, default_layer

pytestmark = pytest.mark.research


def test_without_a_profile_90_percent_depth():
    assert default_layer(30, env={}) == (27, "90% depth (no SAE layer profile)")
    assert default_layer(1, env={})[0] == 0
    layer, source = default_layer(4, env={})
    assert layer == 2  # 90 % would be the last layer, a bare output bias
    assert "90% depth (" not in source and "last layer but one" in source  # the label names the clamp


def test_profile_file_and_env(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"weights_sha256": "abc", "integration_layer": 11}))
    assert default_layer(30, "abc", path, env={})[0] == 11
    assert default_layer(30, "abc", env={PROFILE_ENV: str(path)})[0] == 11
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"profile": {"recommended_layer": 9}}))
    layer, source = default_layer(30, "abc", nested, env={})
    assert layer == 9 and "recommended_layer" in source


@pytest.mark.parametrize("content, message", [
    ({"weights_sha256": "other", "layer": 3}, "another model"),
    ({"layer": 99}, "outside"),
    ({"nothing": 1}, "names no layer"),
])
def test_bad_profiles_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(content))
    with pytest.raises(UserError, match=message):
        default_layer(30, "abc", path, env={})
    path.write_text("{broken")
    with pytest.raises(UserError, match="cannot read"):
        default_layer(30, "abc", path, env={})


def test_sae_profile_document(tmp_path):
    """The shape `baldr-ops sae profile --json` writes: integration_depth.layer, used when interior."""
    path = tmp_path / "sae-profile.json"
    doc = {"kind": "sae.layer_profile", "n_layers": 30, "layers": [{"layer": 0}],
           "integration_depth": {"layer": 12, "interior": True}}
    path.write_text(json.dumps(doc))
    assert default_layer(30, "abc", path, env={}) == (12, f"SAE layer profile {path} (integration depth)")
    doc["integration_depth"] = {"layer": 29, "interior": False}
    path.write_text(json.dumps(doc))
    layer, source = default_layer(30, "abc", path, env={})
    assert layer == 27 and "no interior integration zone" in source
    doc["n_layers"] = 18
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="18 layers"):
        default_layer(30, "abc", path, env={})


def test_sae_profile_of_another_model_is_refused(tmp_path):
    """An SAE profile document records no weights hash, only the model's name (its directory or file
    name), n_layers and d_model: all three must match. A heuristic, documented as one."""
    path = tmp_path / "sae-profile.json"
    doc = {"kind": "sae.layer_profile", "model": "SmolLM2-135M-Instruct", "family": "llama", "n_layers": 30,
           "d_model": 576, "integration_depth": {"layer": 12, "interior": True}}
    path.write_text(json.dumps(doc))
    mine = dict(model_name="SmolLM2-135M-Instruct", d_model=576)
    assert default_layer(30, "abc", path, env={}, **mine)[0] == 12
    for change, message in (({"model": "Other-Model-30L"}, "made for Other-Model-30L"), ({"d_model": 960}, "d_model 960")):
        path.write_text(json.dumps({**doc, **change}))
        with pytest.raises(UserError, match=message) as err:
            default_layer(30, "abc", path, env={}, **mine)
        assert "--layer" in err.value.hint
