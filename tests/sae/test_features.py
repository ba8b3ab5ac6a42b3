"""Feature read-out on the demo model: the library against a direct encode of captured residuals,
the hook during a forward call, and `baldr-ops sae features` end to end (text, --json, layered
directories, labels, tiers) with bad input exiting 2 in one line."""

from __future__ import annotations

import json

import pytest
import torch

from baldr_ops.cli import main
from baldr_ops.errors import UserError
from baldr_ops.research.hooks import capture
from baldr_ops.sae.features import features_hook, open_sae_for_layer, read_features
from baldr_ops.sae.formats import save_saelens
from baldr_ops.sae.metadata import FeatureCatalog
from baldr_ops.sae.model import SAEConfig, SparseAutoencoder

pytestmark = pytest.mark.research

D_MODEL, D_SAE, LAYER = 576, 512, 12
TEXT = "The capital of France is"


def demo_sae(layer: int | None = LAYER, d_in: int = D_MODEL, architecture: str = "topk", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    config = SAEConfig(d_in=d_in, d_sae=D_SAE, architecture=architecture, k=16 if architecture == "topk" else None,
                       layer=layer, model_name="smollm2-135m-instruct")
    return SparseAutoencoder(config=config, W_enc=torch.randn(d_in, D_SAE, generator=g) / d_in ** 0.5,
                             b_enc=torch.randn(D_SAE, generator=g) * 0.1, b_dec=torch.randn(d_in, generator=g) * 0.1,
                             W_dec=torch.randn(D_SAE, d_in, generator=g) / D_SAE ** 0.5)


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    """On-disk SAEs: one for layer 12, a per-layer directory (layers 3 and 12), a wrong-width one,
    one that names no layer, and labels for layer 12 (odd ids high, even ids low)."""
    root = tmp_path_factory.mktemp("saes")
    save_saelens(demo_sae(), root / "one")
    for layer in (3, LAYER):
        save_saelens(demo_sae(layer, seed=layer), root / "layered" / f"layers.{layer}")
    save_saelens(demo_sae(d_in=64), root / "narrow")
    nameless = demo_sae(layer=None)
    save_saelens(nameless, root / "nameless")
    cfg = json.loads((root / "nameless" / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = None
    (root / "nameless" / "cfg.json").write_text(json.dumps(cfg))
    records = [{"feature_id": i, "layer": LAYER, "claude_label": f"concept {i}",
                "confidence_tier": "high" if i % 2 else "low"} for i in range(D_SAE)]
    (root / "labels.json").write_text(json.dumps(records))
    return root


def direct_top(lm, sae, layer, text, k):
    """The reference: capture the residual on a full forward, encode, take the top k."""
    inputs = lm.tokenize(text)
    with torch.no_grad(), capture(lm, [layer]) as rec:
        lm.model(**inputs, use_cache=False)
    acts = sae.encode(rec[layer][0])
    return acts.topk(k, dim=-1)


def test_read_features_matches_direct_encode(smollm2, saes):
    sae, layer = open_sae_for_layer(smollm2, saes / "one")
    assert layer == LAYER and sae.W_dec is None  # encoder-only by default
    [result] = read_features(smollm2, sae, layer, [TEXT], top_k=5)
    values, ids = direct_top(smollm2, sae, layer, TEXT, 5)
    ids_ref = smollm2.tokenize(TEXT)["input_ids"][0].tolist()
    assert [t.token_id for t in result.tokens] == ids_ref
    assert "".join(t.token for t in result.tokens) == TEXT
    for tok in result.tokens:
        assert [h.feature_id for h in tok.features] == ids[tok.position].tolist()
        assert [h.activation for h in tok.features] == pytest.approx(values[tok.position].tolist(), abs=1e-4)


def test_hook_logs_the_same_features_and_leaves_logits_alone(smollm2, saes):
    sae, layer = open_sae_for_layer(smollm2, saes / "one")
    inputs = smollm2.tokenize(TEXT)
    with torch.no_grad():
        clean = smollm2.model(**inputs, use_cache=False).logits
        with features_hook(smollm2, sae, layer, top_k=4) as log:
            hooked = smollm2.model(**inputs, use_cache=False).logits
    assert torch.equal(clean, hooked)
    values, ids = direct_top(smollm2, sae, layer, TEXT, 4)
    [(logged_values, logged_ids)] = log.calls
    assert torch.equal(logged_ids[0], ids) and torch.allclose(logged_values[0], values)
    assert log.seconds > 0


@pytest.mark.parametrize("top_k", [1, 5, 16, 40])
def test_top_active_shortcut_equals_dense_ranking(top_k):
    from baldr_ops.sae.features import top_active

    sae = demo_sae()
    hidden = torch.randn(2, 9, D_MODEL, generator=torch.Generator().manual_seed(3)) * 3
    values, ids = top_active(sae, hidden, top_k)
    dense_values, dense_ids = sae.encode(hidden).topk(top_k, dim=-1)
    torch.testing.assert_close(values, dense_values, atol=1e-5, rtol=0)
    live = dense_values > 0  # where nothing fires, which zero comes first is arbitrary
    assert torch.equal(ids[live], dense_ids[live])


def test_min_tier_considers_only_confident_features(smollm2, saes):
    sae, layer = open_sae_for_layer(smollm2, saes / "one")
    catalog = FeatureCatalog.load(saes / "labels.json")
    [result] = read_features(smollm2, sae, layer, [TEXT], top_k=3, catalog=catalog, min_tier="high")
    hits = [h for t in result.tokens for h in t.features]
    assert hits and all(h.feature_id % 2 == 1 and h.confidence_tier == "high" for h in hits)
    assert all(h.label == f"concept {h.feature_id}" for h in hits)
    with pytest.raises(UserError, match="needs feature labels"):
        read_features(smollm2, sae, layer, [TEXT], min_tier="high")


def test_layer_reconciliation(smollm2, saes):
    assert open_sae_for_layer(smollm2, saes / "one", -18)[1] == LAYER  # 30 layers: -18 is 12
    with pytest.raises(UserError, match="reads layer 12 but --layer is 5"):
        open_sae_for_layer(smollm2, saes / "one", 5)
    with pytest.raises(UserError, match="does not say which layer"):
        open_sae_for_layer(smollm2, saes / "nameless")
    assert open_sae_for_layer(smollm2, saes / "nameless", 7)[1] == 7
    with pytest.raises(UserError, match="d_in 64 but the model's d_model is 576"):
        open_sae_for_layer(smollm2, saes / "narrow")
    with pytest.raises(UserError, match="several layers; pick one"):
        open_sae_for_layer(smollm2, saes / "layered")
    with pytest.raises(UserError, match="has no SAE for layer 4"):
        open_sae_for_layer(smollm2, saes / "layered", 4)
    with pytest.raises(UserError, match="out of range"):
        open_sae_for_layer(smollm2, saes / "one", 30)


# -- the command -------------------------------------------------------------------------------
@pytest.fixture
def cli(smollm2, monkeypatch, capsys):
    """`baldr-ops ...` in-process on the session's demo model (loading it costs ~10 s a time)."""
    import baldr_ops.cli.sae.features as command

    monkeypatch.setattr(command, "load_model_from_args", lambda args: smollm2)

    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err
    return run


def test_json_output_matches_direct_encode(smollm2, saes, cli):
    rc, out, _ = cli("sae", "features", "--sae", str(saes / "layered"), "--layer", "12", "--top-k", "4",
                     "--labels", str(saes / "labels.json"), "--json", TEXT)
    assert rc == 0
    doc = json.loads(out)
    assert doc["schema_version"] and doc["command"] == "sae features" and doc["layer"] == LAYER
    assert doc["sae_format"] == "saelens" and doc["encoder_only"] is True and doc["labelled_features"] == D_SAE
    sae, _ = open_sae_for_layer(smollm2, saes / "layered", LAYER)
    values, ids = direct_top(smollm2, sae, LAYER, TEXT, 4)
    [text] = doc["texts"]
    assert text["text"] == TEXT and len(text["tokens"]) == ids.shape[0]
    for tok in text["tokens"]:
        assert [h["feature_id"] for h in tok["features"]] == ids[tok["position"]].tolist()
        assert [h["activation"] for h in tok["features"]] == pytest.approx(values[tok["position"]].tolist(), abs=1e-4)
        assert all(h["label"] == f"concept {h['feature_id']}" for h in tok["features"])


def test_text_output_and_file_input(smollm2, saes, cli, tmp_path):
    (tmp_path / "prompt.txt").write_text("Paris is lovely")
    rc, out, err = cli("sae", "features", "--sae", str(saes / "one"), "--file", str(tmp_path / "prompt.txt"),
                       "--top-k", "2", "--no-encoder-only", TEXT)
    assert rc == 0 and "layer 12" in err
    sae, _ = open_sae_for_layer(smollm2, saes / "one")
    _, ids = direct_top(smollm2, sae, LAYER, "Paris is lovely", 2)
    lines = out.splitlines()
    assert lines[0].startswith("model ") and "(saelens, topk, 512 features)" in lines[0]
    assert "'The capital of France is'" in lines and "'Paris is lovely'" in lines
    last = lines[-1].split()
    assert last[0] == str(ids.shape[0] - 1) and last[1] == "'" and last[2] == "lovely'"
    assert f"#{ids[-1, 0].item()}" == last[3]


def test_max_tokens_cuts_the_text(saes, cli):
    rc, out, _ = cli("sae", "features", "--sae", str(saes / "one"), "--max-tokens", "2", "--json", TEXT)
    [text] = json.loads(out)["texts"]
    assert rc == 0 and text["truncated"] is True and len(text["tokens"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--layer", "5", TEXT], "the SAE reads layer 12 but --layer is 5"),
    (["--sae", "narrow", TEXT], "d_in 64 but the model's d_model is 576"),
    (["--sae", "layered", TEXT], "holds SAEs for several layers"),
    (["--sae", "layered", "--layer", "7", TEXT], "has no SAE for layer 7"),
    (["--sae", "missing", TEXT], "does not exist"),
    ([], "no text given"),
    (["--min-tier", "high", TEXT], "--min-tier needs feature labels"),
    (["--labels", "missing.json", TEXT], "does not exist"),
    (["--top-k", "0", TEXT], "--top-k must be at least 1"),
    (["--file", "/nonexistent/prompt.txt"], "cannot read /nonexistent/prompt.txt"),
])
def test_bad_input_exits_2_in_one_line(saes, cli, monkeypatch, argv, message):
    monkeypatch.chdir(saes)
    if "--sae" not in argv:
        argv = ["--sae", "one", *argv]
    rc, out, err = cli("sae", "features", *argv)
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("baldr-ops: error:")]
    assert rc == 2 and out == "" and "Traceback" not in err
    assert len(errors) == 1 and message in errors[0], err
    assert all(ln.startswith(("baldr-ops: error:", "  hint:", "  loading", "  SAE")) for ln in lines), err


@pytest.mark.parametrize("argv", [["--sae", "layered"], ["--sae", "layered", "--layer", "7"],
                                  ["--sae", "missing"], ["--sae", "one", "--labels", "missing.json"]])
def test_sae_and_label_errors_come_before_the_model_loads(saes, monkeypatch, capsys, argv):
    import baldr_ops.cli.sae.features as command

    def no_model(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(command, "load_model_from_args", no_model)
    monkeypatch.chdir(saes)
    assert main(["sae", "features", *argv, TEXT]) == 2
    assert "baldr-ops: error:" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["sae", "features", "--help"])
    out = capsys.readouterr().out
    for option in ("--sae", "--layer", "--file", "--top-k", "--labels", "--min-tier", "--encoder-only",
                   "--no-encoder-only", "--variant", "--sae-format", "--max-tokens", "--json", "--model"):
        assert option in out
    assert "(default 5)" in out


def test_real_model_load_through_the_cli(saes, capsys, demo_model):
    """Once without the patched loader: --model with a real directory."""
    rc = main(["sae", "features", "--model", str(demo_model), "--sae", str(saes / "one"), "--top-k", "1",
               "--json", "Hi"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["model"] == "smollm2-135m-instruct" and doc["texts"][0]["tokens"]
