"""The footprint estimator on small real-format files written here, and on bad inputs."""

from __future__ import annotations

import json
import os
import struct

import pytest

from baldr_ops.errors import UserError
from baldr_ops.models.footprint import (
    GGML_TYPES,
    estimate_footprint,
    read_gguf_header,
    read_safetensors_header,
)

CONFIG = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4, "num_attention_heads": 8,
          "num_key_value_heads": 2, "hidden_size": 256, "intermediate_size": 512, "max_position_embeddings": 32768,
          "vocab_size": 1000, "torch_dtype": "bfloat16"}


def write_safetensors(path, tensors: dict[str, tuple[str, list[int], int]], pad_header: int = 0) -> None:
    """By hand: {name: (dtype, shape, itemsize)} with zero data."""
    header, offset = {}, 0
    for name, (dtype, shape, itemsize) in tensors.items():
        n = itemsize
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode() + b" " * pad_header
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def model_dir(tmp_path, config=CONFIG):
    d = tmp_path / "model"
    d.mkdir()
    write_safetensors(d / "model.safetensors", {"embed": ("BF16", [1000, 256], 2), "w": ("BF16", [256, 512], 2),
                                               "norm": ("F32", [256], 4)})
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    return d


def test_safetensors_by_hand(tmp_path):
    fp = estimate_footprint(model_dir(tmp_path))
    weights = 1000 * 256 * 2 + 256 * 512 * 2 + 256 * 4
    assert fp.format == "safetensors"
    assert fp.weights_bytes == weights
    assert fp.parameters == 1000 * 256 + 256 * 512 + 256
    assert fp.dtypes == ["BF16", "F32"]
    # K and V x 4 layers x 2 KV heads x head_dim 32 x 2 bytes (bf16), per token.
    assert fp.kv_bytes_per_token == 2 * 4 * 2 * (256 // 8) * 2 == 1024
    # The model says 32768 tokens; the documented default caps the estimate at 8192 (docs/doctor.md).
    assert fp.context_length == 8192
    assert fp.kv_cache_bytes == 1024 * 8192
    # Overhead, as docs/doctor.md states it: 1 GiB of runtime plus the activations of one 8192-token
    # prefill chunk, 8192 x (4 x 256 + 2 x 512) x 4 bytes, plus the logits, 1000 x 4 x 8 bytes.
    assert fp.overhead_bytes == (1 << 30) + 8192 * (4 * 256 + 2 * 512) * 4 + 1000 * 4 * 8
    assert fp.total_bytes == fp.weights_bytes + fp.kv_cache_bytes + fp.overhead_bytes
    assert any("32768" in a for a in fp.assumptions)
    assert "GiB" in fp.summary()
    fp2 = estimate_footprint(model_dir(tmp_path / "x") if False else tmp_path / "model", context_length=1024)
    assert fp2.kv_cache_bytes == fp.kv_bytes_per_token * 1024


def test_safetensors_written_by_the_safetensors_package(tmp_path):
    np = pytest.importorskip("numpy")
    from safetensors.numpy import save_file

    d = tmp_path / "m"
    d.mkdir()
    save_file({"a": np.zeros((64, 32), dtype=np.float32), "b": np.zeros((7,), dtype=np.float16)},
              str(d / "model-00001-of-00002.safetensors"))
    save_file({"c": np.zeros((3, 5), dtype=np.int8)}, str(d / "model-00002-of-00002.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}}))
    (d / "config.json").write_text(json.dumps(CONFIG))
    fp = estimate_footprint(d)
    assert fp.weights_bytes == 64 * 32 * 4 + 7 * 2 + 15
    assert fp.dtypes == ["F16", "F32", "I8"]
    assert len(fp.files) == 2
    assert fp.kv_bytes_per_token == 2 * 4 * 2 * 32 * 4   # float32-dominant model: 4-byte KV


def test_gemma_style_text_config(tmp_path):
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"],
           "text_config": {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
                           "head_dim": 128, "hidden_size": 64, "max_position_embeddings": 4096}}
    fp = estimate_footprint(model_dir(tmp_path, cfg))
    assert fp.kv_bytes_per_token == 2 * 2 * 1 * 128 * 2
    assert fp.context_length == 4096


def test_no_config_still_estimates_weights(tmp_path):
    fp = estimate_footprint(model_dir(tmp_path, None))
    assert fp.kv_cache_bytes == 0 and fp.kv_bytes_per_token is None
    assert any("no config.json" in a for a in fp.assumptions)


def write_gguf(path, quant: bool = True, n_layers: int = 3):
    np = pytest.importorskip("numpy")
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layers)
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_vocab_size(100)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(100)])
    w.add_token_scores([0.0] * 100)
    w.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.zeros((64,), dtype=np.float16))
    if quant:
        q = gguf.GGMLQuantizationType.Q4_K
        block, size = gguf.GGML_QUANT_SIZES[q]
        rows, cols = 8, 256
        w.add_tensor("blk.0.ffn_up.weight", np.zeros((rows, cols // block * size), dtype=np.uint8), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_written_by_the_gguf_package(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    fp = estimate_footprint(path)
    expected = 100 * 64 * 4 + 64 * 2 + 8 * 256 // 256 * 144
    assert fp.format == "gguf"
    assert fp.weights_bytes == expected
    assert sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors) == expected
    assert fp.dtypes == ["F16", "F32", "Q4_K"]
    assert fp.kv_bytes_per_token == 2 * 3 * 2 * 16 * 4   # F32 holds most bytes here: 4-byte KV
    assert fp.context_length == 2048
    assert fp.details["architecture"] == "llama"
    # a directory with the one file works the same
    assert estimate_footprint(tmp_path).weights_bytes == expected


def test_ggml_table_matches_the_gguf_package():
    gguf = pytest.importorskip("gguf")
    for type_id, (name, block, nbytes) in GGML_TYPES.items():
        q = gguf.GGMLQuantizationType(type_id)
        assert q.name == name
        assert gguf.GGML_QUANT_SIZES[q] == (block, nbytes)


def test_split_gguf_is_summed_and_mixed_ggufs_are_refused(tmp_path):
    d = tmp_path / "split"
    d.mkdir()
    write_gguf(d / "m-00001-of-00002.gguf")
    write_gguf(d / "m-00002-of-00002.gguf", quant=False)
    fp = estimate_footprint(d)
    assert len(fp.files) == 2
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_gguf(mixed / "a-Q4_K.gguf")
    write_gguf(mixed / "a-F16.gguf", quant=False)
    with pytest.raises(UserError, match="several GGUF"):
        estimate_footprint(mixed)


# ---------------------------------------------------------------- bad inputs: UserError naming the file

def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        estimate_footprint(tmp_path / "nope")


def test_not_a_model_dir(tmp_path):
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(UserError, match="no model weights") as exc:
        estimate_footprint(tmp_path)
    assert exc.value.hint


def test_not_a_model_file(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x" * 100)
    with pytest.raises(UserError, match="neither"):
        estimate_footprint(f)


@pytest.mark.parametrize("content,match", [
    (b"", "truncated"),
    (b"\x01\x02", "truncated"),
    (struct.pack("<Q", 1 << 40) + b"{}", "implausible"),
    (struct.pack("<Q", 500) + b"{}", "truncated"),
    (struct.pack("<Q", 8) + b"not json", "not JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (struct.pack("<Q", 23) + b'{"a": {"dtype": "F32"}}', "malformed"),
])
def test_bad_safetensors(tmp_path, content, match):
    f = tmp_path / "model.safetensors"
    f.write_bytes(content)
    with pytest.raises(UserError, match=match) as exc:
        estimate_footprint(f)
    assert str(f) in exc.value.message


def test_truncated_safetensors_data(tmp_path):
    d = model_dir(tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(UserError, match="truncated"):
        read_safetensors_header(str(f))


def test_index_naming_missing_shard(tmp_path):
    d = model_dir(tmp_path)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00009.safetensors"}}))
    with pytest.raises(UserError, match="missing"):
        estimate_footprint(d)


def test_garbage_config(tmp_path):
    d = model_dir(tmp_path)
    (d / "config.json").write_text("{nope")
    with pytest.raises(UserError, match="config.json is not valid JSON"):
        estimate_footprint(d)


@pytest.mark.parametrize("cut", [3, 10, 30, 200, -1])
def test_truncated_gguf(tmp_path, cut):
    path = tmp_path / "t.gguf"
    write_gguf(path)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut > 0 else data[:-100])
    with pytest.raises(UserError) as exc:
        read_gguf_header(str(path))
    assert str(path) in exc.value.message


def test_gguf_wrong_magic(tmp_path):
    path = tmp_path / "t.gguf"
    path.write_bytes(b"GGML" + bytes(100))
    with pytest.raises(UserError, match="GGUF magic"):
        estimate_footprint(path)


def test_cli_model_errors_are_one_line(tmp_path):
    from tests.doctor.helpers import cli

    (tmp_path / "junk.safetensors").write_bytes(b"garbage!garbage!")
    proc = cli("--model", str(tmp_path), "--interval", "0")
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    assert "junk.safetensors" in proc.stderr


def test_footprint_does_not_import_heavy_modules():
    import subprocess
    import sys

    code = ("import sys; from baldr_ops.models.footprint import estimate_footprint; "
            "print(sorted(m for m in ('numpy','torch','transformers','max','gguf','safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert os.path.exists(__file__)
