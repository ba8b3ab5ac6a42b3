"""Directories of per-layer SAEs (criterion 9): layers listed without reading weights, exactly one
layer's file read on request, encoder-only never reads W_dec, one SAE in memory by default."""

from __future__ import annotations

import pytest
import torch

from baldr_ops.errors import UserError
from baldr_ops.sae.formats import load_sae, save_saelens
from baldr_ops.sae.layered import LayeredSAEs, is_layered
from tests.sae.fixtures_formats import (
    D_IN,
    record_reads,
    write_gemma_scope_2,
    write_gemma_scope_v1,
    write_sparsify,
)

pytestmark = pytest.mark.research


@pytest.fixture
def sparsify_root(tmp_path):
    """A sparsify release: layers.0-3, an MLP-output SAE and an embedding SAE beside them."""
    root = tmp_path / "sparsify-release"
    for layer in range(4):
        write_sparsify(root / f"layers.{layer}", seed=layer)
    write_sparsify(root / "layers.2.mlp", seed=9)
    write_sparsify(root / "embed_tokens", seed=10)
    (root / "config.json").write_text('{"model": "tiny"}')
    return root


def test_listing_reads_no_weights(sparsify_root, monkeypatch):
    with record_reads(monkeypatch) as reads:
        saes = LayeredSAEs(sparsify_root)
        assert saes.layers == [0, 1, 2, 3] and len(saes) == 4 and 2 in saes and 7 not in saes
    assert reads.files == [] and reads.tensors == []
    assert saes.skipped == ["layers.2.mlp (not the residual stream)"]
    assert is_layered(sparsify_root) and not is_layered(sparsify_root / "layers.1")


def test_a_layer_reads_only_its_own_file(sparsify_root, monkeypatch):
    saes = LayeredSAEs(sparsify_root)
    with record_reads(monkeypatch) as reads:
        sae = saes.get(2)
    assert reads.files == [str(sparsify_root / "layers.2" / "sae.safetensors")]
    assert {name for _, name in reads.tensors} == {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}
    assert sae.config.layer == 2 and torch.equal(sae.W_enc, load_sae(sparsify_root / "layers.2").W_enc)


def test_encoder_only_reads_no_decoder(sparsify_root, monkeypatch):
    saes = LayeredSAEs(sparsify_root, encoder_only=True)
    with record_reads(monkeypatch) as reads:
        sae = saes.get(1)
    assert len(reads.files) == 1 and sae.W_dec is None
    assert "W_dec" not in {name for _, name in reads.tensors}
    full = saes.get(1, encoder_only=False)  # a per-call override
    assert full.W_dec is not None


def test_one_sae_in_memory_by_default(sparsify_root, monkeypatch):
    saes = LayeredSAEs(sparsify_root)
    first = saes.get(0)
    assert saes.get(0) is first and saes.loads == 1  # cached: no second read
    saes.get(3)
    assert list(saes._cache) == [(3, False)] and saes.loads == 2  # layer 0 was dropped
    with record_reads(monkeypatch) as reads:
        saes.get(0)
    assert len(reads.files) == 1  # read again
    two = LayeredSAEs(sparsify_root, cache_size=2)
    for layer in (0, 1, 2):
        two.get(layer)
    assert [layer for layer, _ in two._cache] == [1, 2]
    two.clear()
    assert not two._cache


def test_gemma_scope_v1_variants(tmp_path):
    root = tmp_path / "gemma-scope-2b-pt-res"
    write_gemma_scope_v1(root, layer=3, seed=1)
    other = root / "layer_3" / "width_65k" / "average_l0_20"
    write_gemma_scope_v1(tmp_path / "elsewhere", layer=3, seed=2)
    other.parent.mkdir(parents=True)
    (tmp_path / "elsewhere" / "layer_3" / "width_16k" / "average_l0_71").rename(other)
    write_gemma_scope_v1(root, layer=4, seed=3)
    saes = LayeredSAEs(root)
    assert saes.layers == [3, 4]
    assert saes.variants(3) == ["width_16k/average_l0_71", "width_65k/average_l0_20"]
    with pytest.raises(UserError, match="2 SAEs for layer 3") as info:
        saes.get(3)
    assert "width_65k/average_l0_20" in info.value.hint
    assert saes.get(4).config.source_format == "gemma-scope-v1"
    picked = LayeredSAEs(root, variant="width_65k").get(3)
    assert torch.equal(picked.W_enc, load_sae(other).W_enc)
    with pytest.raises(UserError, match="matches variant 'width_1m'"):
        LayeredSAEs(root, variant="width_1m").get(3)


def test_gemma_scope_2_and_saelens_layouts(tmp_path):
    from tests.sae.test_model import random_sae

    root = tmp_path / "resid_post"
    for name in ("layer_5_width_16k_l0_small", "layer_5_width_16k_l0_big", "layer_6_width_16k_l0_small"):
        write_gemma_scope_2(root / name, layer=int(name.split("_")[1]))
    saes = LayeredSAEs(root, variant="l0_small")
    assert saes.layers == [5, 6] and saes.variants(5) == ["width_16k_l0_big", "width_16k_l0_small"]
    assert saes.get(6).config.layer == 6

    tl = tmp_path / "saelens-release"
    for layer in (0, 1):
        sae = random_sae("topk", seed=layer)
        sae.config = sae.config.model_copy(update={"layer": layer, "hook_name": None})
        save_saelens(sae, tl / f"blocks.{layer}.hook_resid_post")
    assert LayeredSAEs(tl).get(1).config.layer == 1


def test_bad_directories_are_clear(tmp_path, sparsify_root):
    from tests.sae.test_model import random_sae

    with pytest.raises(UserError, match="has no SAE for layer 9") as info:
        LayeredSAEs(sparsify_root).get(9)
    assert info.value.hint == "layers present: 0-3"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no per-layer SAE"):
        LayeredSAEs(tmp_path / "empty")
    with pytest.raises(UserError, match="does not exist"):
        LayeredSAEs(tmp_path / "missing")
    with pytest.raises(UserError, match="directory of per-layer SAEs") as info:
        load_sae(sparsify_root)
    assert "LayeredSAEs" in info.value.hint
    with pytest.raises(UserError, match=f"d_in {D_IN} but the model's d_model is 576"):
        LayeredSAEs(sparsify_root, expect_d_in=576).get(0)
    # A directory named for one layer holding an SAE that says it reads another.
    liar = tmp_path / "liar"
    save_saelens(random_sae("relu"), liar / "layers.4")  # its cfg names blocks.3.hook_resid_post
    with pytest.raises(UserError, match="reads layer 3 but its directory says layer 4"):
        LayeredSAEs(liar).get(4)
