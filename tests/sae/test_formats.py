"""Each published SAE format against its authors' maths (criterion 6), auto-detection and clear
errors (criterion 7), encoder-only reads (criterion 9, per file) and SAELens compatibility (5)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from baldr_ops.errors import UserError
from baldr_ops.sae.formats import (
    detect_format,
    layer_from_hook,
    load_sae,
    reads_residual_stream,
    save_saelens,
    split_layer_name,
)
from tests.sae.fixtures_formats import (
    D_IN,
    D_SAE,
    record_reads,
    ref_jumprelu,
    ref_sparse_decode,
    ref_sparsify_encode,
    write_gemma_scope_2,
    write_gemma_scope_v1,
    write_saelens_batchtopk,
    write_sparsify,
)

pytestmark = pytest.mark.research

TOL = 1e-6


def _x(n: int = 24, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D_IN)).astype(np.float32)


def _max_diff(ours: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(ours.double().numpy() - ref).max())


def _check_jumprelu(sae, arrays, subtract_b_dec: bool) -> None:
    x = _x()
    acts = sae.encode(torch.from_numpy(x))
    ref = ref_jumprelu(arrays, x, subtract_b_dec)
    assert 0 < (ref > 0).sum() < ref.size  # the threshold really gates something
    assert _max_diff(acts, ref) < TOL
    assert _max_diff(sae.decode(acts), ref_sparse_decode(arrays["W_dec"], arrays["b_dec"], ref)) < TOL


# -- criterion 6: each format equals its reference maths ---------------------------------------
@pytest.mark.parametrize("compressed", [False, True])
def test_gemma_scope_v1_npz(tmp_path, compressed):
    folder, arrays = write_gemma_scope_v1(tmp_path, layer=12, compressed=compressed)
    sae = load_sae(folder)
    c = sae.config
    assert (c.source_format, c.architecture, c.d_in, c.d_sae) == ("gemma-scope-v1", "jumprelu", D_IN, D_SAE)
    assert c.apply_b_dec_to_input is False
    assert c.layer == 12 and c.hook_name == "blocks.12.hook_resid_post"
    _check_jumprelu(sae, arrays, subtract_b_dec=False)
    # The weight file itself may be named.
    assert torch.equal(load_sae(folder / "params.npz").W_enc, sae.W_enc)


def test_gemma_scope_v1_release_names(tmp_path):
    folder, _ = write_gemma_scope_v1(tmp_path / "gemma-scope-2b-pt-mlp-canonical", layer=4)
    hook = load_sae(folder).config.hook_name
    assert hook == "blocks.4.hook_mlp_out" and reads_residual_stream(hook) is False
    folder, _ = write_gemma_scope_v1(tmp_path / "gemma-scope-9b-it-res", layer=4)
    assert load_sae(folder).config.hook_name == "blocks.4.hook_resid_post"
    emb = tmp_path / "gemma-scope-2b-pt-res" / "embedding" / "width_4k" / "average_l0_111"
    emb.parent.mkdir(parents=True)
    (folder).rename(emb)
    with pytest.raises(UserError, match="embedding SAE reads the token embeddings"):
        load_sae(emb)


@pytest.mark.parametrize("config", [True, False])
def test_gemma_scope_2_safetensors(tmp_path, config):
    folder, arrays = write_gemma_scope_2(tmp_path / "resid_post" / "layer_7_width_16k_l0_small", layer=7,
                                         config=config)
    sae = load_sae(folder)
    c = sae.config
    assert (c.source_format, c.architecture, c.apply_b_dec_to_input) == ("gemma-scope-2", "jumprelu", False)
    assert c.layer == 7  # from config.json's hf_hook_point_in, else from the folder name
    assert c.hook_name == "model.layers.7.output"
    assert c.model_name == ("gemma-v3-270m-pt" if config else None)
    _check_jumprelu(sae, arrays, subtract_b_dec=False)
    if not config:
        mlp, _ = write_gemma_scope_2(tmp_path / "mlp_out" / "layer_7_width_16k_l0_small", config=False)
        assert reads_residual_stream(load_sae(mlp).config.hook_name) is False


@pytest.mark.parametrize("num_latents", [0, 80])
def test_sparsify(tmp_path, num_latents):
    folder, arrays = write_sparsify(tmp_path / "layers.4", k=8, expansion_factor=3, num_latents=num_latents)
    sae = load_sae(folder)
    c = sae.config
    # num_latents 0 means d_in * expansion_factor
    assert (c.source_format, c.architecture, c.k, c.d_sae) == ("sparsify", "topk", 8, num_latents or D_IN * 3)
    assert c.apply_b_dec_to_input is True and c.layer == 4 and c.hook_name == "layers.4"
    x = _x()
    acts = sae.encode(torch.from_numpy(x))
    ref = ref_sparsify_encode(arrays, x, k=8)
    assert _max_diff(acts, ref) < TOL
    assert ((acts > 0).sum(-1) <= 8).all()
    # W_dec is [num_latents, d_in] in sparsify and in ours: rows are features, no transpose.
    assert _max_diff(sae.decode(acts), ref_sparse_decode(arrays["W_dec"], arrays["b_dec"], ref)) < TOL


def test_sparsify_bfloat16_loads_as_stored(tmp_path):
    from safetensors.torch import save_file

    folder, arrays = write_sparsify(tmp_path / "layers.2")
    save_file({k: torch.from_numpy(v).bfloat16() for k, v in arrays.items()}, str(folder / "sae.safetensors"))
    sae = load_sae(folder)
    assert sae.W_enc.dtype == torch.bfloat16 and sae.config.dtype == "bfloat16"
    assert load_sae(folder, dtype=torch.float32).W_enc.dtype == torch.float32


@pytest.mark.parametrize("scalar_threshold", [False, True])
def test_saelens_batchtopk_runs_as_jumprelu(tmp_path, scalar_threshold):
    folder, arrays = write_saelens_batchtopk(tmp_path / "sae", layer=5, scalar_threshold=scalar_threshold)
    sae = load_sae(folder)
    assert (sae.config.architecture, sae.config.layer, sae.config.k) == ("jumprelu", 5, None)
    _check_jumprelu(sae, arrays, subtract_b_dec=True)


# -- criterion 7: detection and errors --------------------------------------------------------------
def test_detection_picks_each_format(tmp_path):
    from tests.sae.test_model import random_sae

    made = {
        "gemma-scope-v1": write_gemma_scope_v1(tmp_path / "gs1")[0],
        "gemma-scope-2": write_gemma_scope_2(tmp_path / "gs2" / "layer_3_width_16k_l0_big")[0],
        "sparsify": write_sparsify(tmp_path / "sp" / "layers.3")[0],
        "saelens": save_saelens(random_sae("topk"), tmp_path / "sl"),
    }
    batchtopk = write_saelens_batchtopk(tmp_path / "btk")[0]
    for name, folder in made.items():
        assert detect_format(folder).name == name, folder
        assert load_sae(folder).config.source_format == name
    assert detect_format(batchtopk).name == "saelens"


def test_hook_and_directory_names():
    assert layer_from_hook("blocks.12.hook_resid_post") == 12
    assert layer_from_hook("model.layers.12.output") == 12
    assert layer_from_hook("blocks.12.hook_resid_pre") == 11  # input of block 12
    assert layer_from_hook("blocks.0.hook_resid_pre") is None
    assert split_layer_name("layer_12_width_16k_l0_small") == (12, "width_16k_l0_small")
    assert split_layer_name("layers.3.mlp") == (3, "mlp")
    assert split_layer_name("blocks.4.hook_resid_post") == (4, "hook_resid_post")
    assert split_layer_name("width_16k") is None
    assert reads_residual_stream("blocks.4.hook_resid_post") is True
    assert reads_residual_stream("model.layers.4.output") is True
    for other in ("blocks.4.hook_mlp_out", "blocks.4.attn.hook_z", "layers.4.mlp", "hook_embed"):
        assert reads_residual_stream(other) is False


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    text = info.value.message
    assert "\n" not in text
    return text


def test_wrong_d_model_names_file_expected_and_found(tmp_path):
    folder, _ = write_gemma_scope_v1(tmp_path)
    msg = _error(load_sae, folder, expect_d_in=576)
    assert str(folder) in msg and "576" in msg and f"d_in {D_IN}" in msg


def test_wrong_shape_names_file_tensor_and_shapes(tmp_path):
    folder, _ = write_gemma_scope_v1(tmp_path, W_dec=np.zeros((D_SAE, D_IN + 1), np.float32))
    msg = _error(load_sae, folder)
    assert "params.npz" in msg and "W_dec" in msg and f"[{D_SAE}, {D_IN + 1}]" in msg \
        and f"expected [{D_SAE}, {D_IN}]" in msg
    folder, _ = write_sparsify(tmp_path / "layers.1")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "num_latents": 64}))
    msg = _error(load_sae, folder)
    assert "sae.safetensors" in msg and "encoder.weight" in msg and "expected [64, 32]" in msg


def test_missing_tensor(tmp_path):
    folder, _ = write_sparsify(tmp_path / "layers.1", drop=("b_dec",))
    msg = _error(load_sae, folder)
    assert "sae.safetensors" in msg and "b_dec is missing" in msg and "encoder.weight" in msg
    folder, _ = write_gemma_scope_2(tmp_path / "layer_2", threshold=None)  # written without threshold
    assert "threshold is missing" in _error(load_sae, folder)


def test_nan_weights(tmp_path):
    bad = np.ones((D_IN, D_SAE), np.float32)
    bad[3, 4] = np.nan
    folder, _ = write_gemma_scope_2(tmp_path / "layer_2", W_enc=bad)
    msg = _error(load_sae, folder)
    assert "params.safetensors" in msg and "w_enc" in msg and "1 non-finite" in msg
    folder, _ = write_gemma_scope_v1(tmp_path / "v1", threshold=np.full(D_SAE, np.inf, np.float32))
    assert "threshold has 96 non-finite" in _error(load_sae, folder)


def test_unknown_format_and_unsupported_variants(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.bin").write_bytes(b"\0" * 8)
    msg = _error(load_sae, tmp_path / "odd")
    assert "unknown SAE format" in msg and "weights.bin" in msg
    assert "does not exist" in _error(load_sae, tmp_path / "nowhere")
    assert "unknown SAE format 'frob'" in _error(load_sae, tmp_path / "odd", format="frob")
    folder, _ = write_sparsify(tmp_path / "layers.1", activation="groupmax")
    assert "groupmax" in _error(load_sae, folder)
    folder, _ = write_sparsify(tmp_path / "layers.2", transcode=True)
    assert "transcode" in _error(load_sae, folder)
    folder, _ = write_gemma_scope_2(tmp_path / "layer_3", affine_skip_connection=np.eye(D_IN, dtype=np.float32))
    assert "transcoder" in _error(load_sae, folder)
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "params.npz").write_bytes(b"PK\x03\x04 not really")
    assert "cannot read" in _error(load_sae, tmp_path / "trunc")


def test_garbled_json_config(tmp_path):
    folder, _ = write_sparsify(tmp_path / "layers.1")
    (folder / "cfg.json").write_text("{not json")
    msg = _error(load_sae, folder)
    assert "cfg.json" in msg and "not valid JSON" in msg


def _rewrite_json(file, **changes):
    cfg = json.loads(file.read_text())
    cfg.update(changes)
    file.write_text(json.dumps(cfg))


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("rescale_acts_by_decoder_norm", "no", "boolean"),  # bool("no") would be True
    ("k", "8", "integer"),
    ("d_sae", 96.0, "integer"),
    ("apply_b_dec_to_input", 1, "boolean"),
    ("metadata", {"hook_name": 12}, "string"),
])
def test_saelens_config_with_wrong_types_names_field_and_value(tmp_path, field, value, expected):
    from tests.sae.test_model import random_sae

    folder = save_saelens(random_sae("topk", k=8), tmp_path / "sae")
    _rewrite_json(folder / "cfg.json", **{field: value})
    msg = _error(load_sae, folder)
    shown = "metadata.hook_name" if field == "metadata" else field
    assert "cfg.json" in msg and shown in msg and expected in msg and repr(value if field != "metadata" else 12) in msg


def test_other_configs_with_wrong_types(tmp_path):
    folder, _ = write_sparsify(tmp_path / "layers.1", k="8")
    msg = _error(load_sae, folder)
    assert "cfg.json" in msg and "field k must be" in msg and "'8'" in msg
    folder, _ = write_sparsify(tmp_path / "layers.2", transcode="false")
    assert "field transcode must be" in _error(load_sae, folder)
    folder, _ = write_sparsify(tmp_path / "layers.3", d_in=None)
    assert "field d_in must be" in _error(load_sae, folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["d_in"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    assert _error(load_sae, folder).endswith("cfg.json: field d_in is missing")
    folder, _ = write_gemma_scope_2(tmp_path / "layer_3")
    _rewrite_json(folder / "config.json", hf_hook_point_in=["model.layers.3"])
    msg = _error(load_sae, folder)
    assert "config.json" in msg and "hf_hook_point_in" in msg


# -- criterion 9 (per file): encoder-only never reads W_dec ---------------------------------------
@pytest.mark.parametrize("fmt", ["gemma-scope-v1", "gemma-scope-2", "sparsify", "saelens"])
def test_encoder_only_reads_no_decoder(tmp_path, monkeypatch, fmt):
    from tests.sae.test_model import random_sae

    folder = {
        "gemma-scope-v1": lambda: write_gemma_scope_v1(tmp_path)[0],
        "gemma-scope-2": lambda: write_gemma_scope_2(tmp_path / "layer_1")[0],
        "sparsify": lambda: write_sparsify(tmp_path / "layers.1")[0],
        "saelens": lambda: save_saelens(random_sae("jumprelu"), tmp_path / "sl"),
    }[fmt]()
    with record_reads(monkeypatch) as reads:
        sae = load_sae(folder, encoder_only=True)
    read = {name.lower() for _, name in reads.tensors}
    assert sae.W_dec is None and "w_dec" not in read
    assert {"b_dec"} <= read and ({"w_enc"} <= read or "encoder.weight" in read)
    assert len(reads.files) == 1
    with record_reads(monkeypatch) as reads:
        load_sae(folder)
    assert "w_dec" in {name.lower() for _, name in reads.tensors}


def test_topk_ranked_by_decoder_norm_keeps_decoder_even_encoder_only(tmp_path):
    from tests.sae.test_model import random_sae

    sae = random_sae("topk", rescale_acts_by_decoder_norm=True)
    save_saelens(sae, tmp_path / "s")
    back = load_sae(tmp_path / "s", encoder_only=True)
    x = torch.randn(3, 16)
    assert torch.equal(back.encode(x), sae.encode(x))


# -- criterion 5, optional part: SAELens itself reads what we write --------------------------------
@pytest.mark.skipif(importlib.util.find_spec("sae_lens") is None, reason="sae-lens is not installed")
@pytest.mark.parametrize("architecture", ["relu", "topk", "jumprelu"])
def test_sae_lens_loads_kit_written_dirs(tmp_path, architecture):
    from sae_lens import SAE

    from tests.sae.test_model import random_sae

    ours = random_sae(architecture)
    save_saelens(ours, tmp_path / "sae")
    theirs = SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        diff = (theirs.encode(x) - ours.encode(x)).abs().max().item()
        assert diff < TOL
        recon = (theirs.decode(theirs.encode(x)) - ours.reconstruct(x)).abs().max().item()
        assert recon < 1e-5


def _has_eleuther_sparsify() -> bool:
    """PyPI's `sparsify` is an unrelated tool; EleutherAI's (`eai-sparsify`) has SparseCoder."""
    if importlib.util.find_spec("sparsify") is None:
        return False
    import sparsify

    return hasattr(sparsify, "SparseCoder")


@pytest.mark.skipif(not _has_eleuther_sparsify(), reason="eai-sparsify is not installed")
def test_eleuther_sparsify_agrees(tmp_path):
    from sparsify import SparseCoder

    folder, _ = write_sparsify(tmp_path / "layers.3", k=8)
    ours, theirs = load_sae(folder), SparseCoder.load_from_disk(folder)
    x = torch.from_numpy(_x(64))
    with torch.no_grad():
        out = theirs.encode(x)
        dense = torch.zeros(64, ours.d_sae).scatter(-1, out.top_indices, out.top_acts)
        assert (dense - ours.encode(x)).abs().max().item() < TOL
        assert (theirs.decode(out.top_acts, out.top_indices) - ours.decode(dense)).abs().max().item() < TOL


def test_a_config_without_its_weights_names_the_missing_file(tmp_path):
    import json

    from baldr_ops.errors import UserError
    from baldr_ops.sae.formats import load_sae

    cases = {"saelens": ({"d_sae": 64, "d_in": 16, "architecture": "standard"}, "sae_weights.safetensors (SAELens)"),
             "sparsify": ({"d_in": 16, "num_latents": 64, "k": 8}, "sae.safetensors (sparsify)"),
             "unknown": ({"note": "?"}, "sae_weights.safetensors (SAELens) or sae.safetensors (sparsify)")}
    for name, (cfg, expected) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "cfg.json").write_text(json.dumps(cfg))
        with pytest.raises(UserError) as exc:
            load_sae(d)
        assert exc.value.message.endswith(f"the weights are not: expected {expected}")
        assert "unknown SAE format" not in exc.value.message


def test_weight_files_are_closed_after_loading(tmp_path):
    import gc
    import os

    torch = pytest.importorskip("torch")
    from baldr_ops.sae.formats import load_sae, save_saelens
    from baldr_ops.sae.model import SAEConfig, SparseAutoencoder

    def descriptors() -> list[str]:
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if str(tmp_path) in target:
                out.append(target)
        return out

    def mappings() -> list[str]:
        with open("/proc/self/maps") as fh:
            return [line for line in fh if str(tmp_path) in line]

    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, architecture="relu"), W_enc=torch.randn(8, 16),
                            b_enc=torch.zeros(16), W_dec=torch.randn(16, 8), b_dec=torch.zeros(8))
    out = tmp_path / "sae"
    save_saelens(sae, out)
    loaded = load_sae(out)
    assert loaded.d_sae == 16
    assert descriptors() == []          # the file itself is closed once loaded
    # safetensors maps the tensors without copying them: the mapping lives as long as the SAE.
    del loaded
    gc.collect()
    assert mappings() == []
    # Closing is explicit, not left to the garbage collector: a reader still referenced lets go of
    # its file when closed (a per-layer directory evicts one and opens the next).
    from baldr_ops.sae.formats import NpzFile, TensorFile

    import numpy as np

    np.savez(tmp_path / "params.npz", W_enc=np.zeros((8, 16), np.float32))
    for open_reader in (lambda: TensorFile(out / "sae_weights.safetensors"), lambda: NpzFile(tmp_path / "params.npz")):
        reader = open_reader()
        with reader:
            assert descriptors() or mappings()
        assert descriptors() == [] and reader is not None
