"""Model memory footprint from file headers only: safetensors and GGUF, plus config.json for the KV cache.

Nothing here loads weights or imports numpy/torch/transformers/max: a safetensors header is an 8-byte
length and a JSON table (dtype, shape, data_offsets per tensor); a GGUF header is metadata key/values
and tensor infos (name, dims, ggml type, offset). ``estimate_footprint(path)`` is the one estimate
``doctor --model`` and ``launch`` preflight both use, so they never disagree about whether a model fits.

    total = weights (bytes of tensor data) + KV cache (per token x context) + overhead (runtime + activations)

Every assumption made is listed in ``Footprint.assumptions``. Bad input raises ``UserError`` naming
the file and what was expected.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from baldr_ops.errors import UserError

GIB = 1024**3
DEFAULT_CONTEXT_CAP = 8192          # KV estimate uses min(model context, this) unless told otherwise
RUNTIME_OVERHEAD = 1 * GIB          # CUDA/MAX runtime, compiled graphs, allocator slack (assumption)
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
MAX_GGUF_HEADER = 512 * 1024 * 1024

# safetensors dtype -> bytes per element (sub-byte types use the data_offsets span instead)
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
                      "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75, "C64": 8}

# ggml type id -> (name, elements per block, bytes per block); ggml.h / gguf-py GGML_QUANT_SIZES
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}

_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


class Footprint(BaseModel):
    """Estimated memory a model needs when served. Sizes in bytes."""

    model_config = ConfigDict(extra="forbid")

    path: str
    format: str                                   # safetensors | gguf
    files: list[str]
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    total_bytes: int
    parameters: int
    dtypes: list[str]                             # tensor dtypes present (safetensors or ggml names)
    dtype_bytes: dict[str, int] = Field(default_factory=dict)
    context_length: int | None = None
    kv_bytes_per_token: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    assumptions: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        kv = (f"KV {self.kv_cache_bytes / GIB:.2f} GiB @ {self.context_length} tokens"
              if self.kv_bytes_per_token else "KV not estimated")
        return (f"{self.format}, {self.parameters / 1e9:.2f} B params ({', '.join(self.dtypes)}): weights "
                f"{self.weights_bytes / GIB:.2f} GiB + {kv} + overhead {self.overhead_bytes / GIB:.2f} GiB "
                f"= {self.total_bytes / GIB:.2f} GiB")


# ---------------------------------------------------------------- safetensors

def read_safetensors_header(path: str) -> dict[str, dict]:
    """The tensor table of one .safetensors file ({name: {dtype, shape, data_offsets}}), validated."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise UserError(f"{path} is truncated: a safetensors file starts with an 8-byte header length",
                                hint="re-download the file")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_SAFETENSORS_HEADER:
                raise UserError(f"{path} is not a safetensors file (header length {n} is implausible)",
                                hint="expected an 8-byte little-endian length followed by a JSON header")
            if 8 + n > size:
                raise UserError(f"{path} is truncated: its header says {n} bytes of JSON but the file has {size}",
                                hint="re-download the file")
            raw = fh.read(n)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        table = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{path} is not a safetensors file: its header is not JSON",
                        hint="expected the safetensors format (https://github.com/huggingface/safetensors)") from None
    if not isinstance(table, dict):
        raise UserError(f"{path} is not a safetensors file: its header is not a JSON object")
    data_size = size - 8 - n
    tensors = {}
    for name, info in table.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise UserError(f"{path}: tensor {name!r} has no dtype/shape/data_offsets entry")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if (not isinstance(dtype, str) or not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise UserError(f"{path}: tensor {name!r} has a malformed entry (dtype, shape, data_offsets expected)")
        if offsets[1] > data_size:
            raise UserError(f"{path} is truncated: tensor {name!r} ends at byte {offsets[1]} of the data but the "
                            f"file holds {data_size}", hint="re-download the file")
        tensors[name] = {"dtype": dtype, "shape": shape, "nbytes": offsets[1] - offsets[0]}
    return tensors


def _safetensors_files(directory: str) -> list[str]:
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as fh:
                weight_map = json.load(fh)["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index} is not a valid safetensors index (expected a JSON object with weight_map)") from None
        missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
        if missing:
            raise UserError(f"{index} lists shards that are missing: {', '.join(missing[:3])}",
                            hint="finish the download (all shards named in the index)")
        return [os.path.join(directory, n) for n in names]
    names = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
    if len(names) > 1:
        # Mistral-style repos ship consolidated.safetensors beside the HF shards: count one set
        hf = [n for n in names if not n.startswith("consolidated")]
        names = hf or names
    return [os.path.join(directory, n) for n in names]


# ---------------------------------------------------------------- GGUF

class _Reader:
    def __init__(self, fh, path: str, size: int):
        self.fh, self.path, self.size = fh, path, size

    def take(self, n: int) -> bytes:
        if n < 0 or self.fh.tell() + n > min(self.size, MAX_GGUF_HEADER):
            raise UserError(f"{self.path} is truncated or not GGUF: the header runs past the end of the file",
                            hint="re-download the file")
        data = self.fh.read(n)
        if len(data) != n:
            raise UserError(f"{self.path} is truncated: the GGUF header ends early", hint="re-download the file")
        return data

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        n = self.u64()
        if n > 64 * 1024 * 1024:
            raise UserError(f"{self.path} is not a valid GGUF file (a string of {n} bytes)")
        return self.take(n).decode("utf-8", "replace")

    def skip(self, n: int) -> None:
        self.take(n) if n < 4096 else self._seek(n)

    def _seek(self, n: int) -> None:
        if self.fh.tell() + n > min(self.size, MAX_GGUF_HEADER):
            raise UserError(f"{self.path} is truncated or not GGUF: the header runs past the end of the file")
        self.fh.seek(n, os.SEEK_CUR)


_GGUF_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
                 6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_KEEP_ARRAYS_UP_TO = 64   # small arrays are kept; big ones (tokenizer vocab) are skipped


def _gguf_value(r: _Reader, vtype: int, depth: int = 0):
    if vtype in _GGUF_SCALARS:
        fmt, n = _GGUF_SCALARS[vtype]
        return struct.unpack(fmt, r.take(n))[0]
    if vtype == 8:
        return r.string()
    if vtype == 9 and depth == 0:
        etype, count = r.u32(), r.u64()
        if count > 100_000_000:
            raise UserError(f"{r.path} is not a valid GGUF file (an array of {count} items)")
        if etype in _GGUF_SCALARS and count > _KEEP_ARRAYS_UP_TO:
            r.skip(_GGUF_SCALARS[etype][1] * count)
            return f"<array of {count}>"
        items = [_gguf_value(r, etype, depth + 1) for _ in range(count)]
        return items if count <= _KEEP_ARRAYS_UP_TO else f"<array of {count}>"
    raise UserError(f"{r.path} is not a valid GGUF file (unknown metadata value type {vtype})")


def read_gguf_header(path: str) -> tuple[dict[str, Any], list[dict]]:
    """(metadata, tensors) of one .gguf file; tensors as {name, type, shape, nbytes}. Validated."""
    try:
        size = os.path.getsize(path)
        fh = open(path, "rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        r = _Reader(fh, path, size)
        if size < 4 or fh.read(4) != b"GGUF":
            raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic)",
                            hint="expected a llama.cpp GGUF model file")
        fh.seek(4)
        version = r.u32()
        if version not in (2, 3):
            raise UserError(f"{path}: GGUF version {version} is not supported (expected 2 or 3)")
        n_tensors, n_kv = r.u64(), r.u64()
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise UserError(f"{path} is not a valid GGUF file ({n_tensors} tensors, {n_kv} metadata keys)")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = _gguf_value(r, r.u32())
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.u32()
            if n_dims > 8:
                raise UserError(f"{path}: tensor {name!r} has {n_dims} dimensions (not a valid GGUF file)")
            dims = [r.u64() for _ in range(n_dims)]
            gtype, offset = r.u32(), r.u64()
            if gtype not in GGML_TYPES:
                raise UserError(f"{path}: tensor {name!r} has ggml type {gtype}, which this estimator does not know",
                                hint="update baldr-ops (GGML_TYPES in models/footprint.py)")
            tname, block, block_bytes = GGML_TYPES[gtype]
            numel = 1
            for d in dims:
                numel *= d
            if numel % block:
                raise UserError(f"{path}: tensor {name!r} has {numel} elements, not a multiple of the "
                                f"{tname} block size {block}")
            tensors.append({"name": name, "type": tname, "shape": dims, "offset": offset,
                            "nbytes": numel // block * block_bytes, "numel": numel})
        alignment = meta.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0:
            alignment = 32
        data_start = -(-fh.tell() // alignment) * alignment
    end = max((t["offset"] + t["nbytes"] for t in tensors), default=0)
    if data_start + end > size:
        raise UserError(f"{path} is truncated: tensor data should end at byte {data_start + end} but the file has "
                        f"{size}", hint="re-download the file")
    return meta, tensors


def _gguf_files(directory: str) -> list[str]:
    names = sorted(n for n in os.listdir(directory) if n.endswith(".gguf") and "mmproj" not in n.lower())
    if len(names) <= 1:
        return [os.path.join(directory, n) for n in names]
    splits = [n for n in names if _SPLIT_RE.search(n)]
    prefixes = {_SPLIT_RE.sub("", n) for n in splits}
    if len(splits) == len(names) and len(prefixes) == 1:
        return [os.path.join(directory, n) for n in names]
    raise UserError(f"{directory} holds several GGUF models ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})",
                    hint="pass the one .gguf file to use")


# ---------------------------------------------------------------- config and estimate

def read_model_config(directory: str | os.PathLike) -> dict | None:
    """A model directory's config.json as a dict; None when the directory has none."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except OSError as exc:
        raise UserError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON", hint="expected a Hugging Face config.json") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path} is not a JSON object", hint="expected a Hugging Face config.json")
    return cfg


def model_context(cfg: dict) -> int | None:
    """The longest sequence a config.json says the model takes (under text_config, else at the top)."""
    return _arch_from_config(cfg)["context"] or _int_field(cfg, *CONTEXT_KEYS)


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len")


def _int_field(cfg: dict, *keys: str) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _arch_from_config(cfg: dict) -> dict[str, int | None]:
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    layers = _int_field(text, "num_hidden_layers", "n_layer", "num_layers")
    heads = _int_field(text, "num_attention_heads", "n_head")
    kv_heads = _int_field(text, "num_key_value_heads") or heads
    hidden = _int_field(text, "hidden_size", "n_embd", "d_model")
    head_dim = _int_field(text, "head_dim") or (hidden // heads if hidden and heads else None)
    return {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim, "hidden": hidden,
            "intermediate": _int_field(text, "intermediate_size", "n_inner"),
            "context": _int_field(text, *CONTEXT_KEYS),
            "vocab": _int_field(text, "vocab_size") or _int_field(cfg, "vocab_size")}


def _arch_from_gguf(meta: dict) -> dict[str, int | None]:
    arch = meta.get("general.architecture")

    def get(key):
        value = meta.get(f"{arch}.{key}")
        if isinstance(value, list):   # per-layer values (some archs): take the largest
            value = max((v for v in value if isinstance(v, int)), default=None)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    heads, hidden = get("attention.head_count"), get("embedding_length")
    head_dim = get("attention.key_length") or (hidden // heads if hidden and heads else None)
    return {"layers": get("block_count"), "kv_heads": get("attention.head_count_kv") or heads, "head_dim": head_dim,
            "hidden": hidden, "intermediate": get("feed_forward_length"), "context": get("context_length"),
            "vocab": get("vocab_size")}


def estimate_footprint(path: str | os.PathLike, context_length: int | None = None, batch_size: int = 1,
                       config: dict | None = None) -> Footprint:
    """Estimate the memory to serve the model at ``path`` (a directory, a .safetensors or a .gguf file).

    ``config``: the directory's config.json when the caller has read it already."""
    path = os.fspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(path):
        raise UserError(f"model path {path} does not exist",
                        hint="give a model directory (config.json + *.safetensors) or a .gguf file")
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    try:
        if os.path.isdir(path):
            st_files = _safetensors_files(path)
            gguf_files = [] if st_files else _gguf_files(path)
        elif path.endswith(".safetensors"):
            st_files, gguf_files = [path], []
        elif path.endswith(".gguf"):
            st_files, gguf_files = [], [path]
        else:
            raise UserError(f"{path} is neither a model directory nor a .safetensors/.gguf file",
                            hint="give a model directory (config.json + *.safetensors) or a .gguf file")
    except OSError as exc:
        raise UserError(f"cannot list {path}: {exc.strerror or exc}") from None
    if not st_files and not gguf_files:
        raise UserError(f"{path} holds no model weights (no *.safetensors or *.gguf files)",
                        hint="give a model directory (config.json + *.safetensors) or a .gguf file")

    assumptions: list[str] = []
    dtype_bytes: dict[str, int] = {}
    params = 0
    details: dict[str, Any] = {}
    if st_files:
        fmt = "safetensors"
        for f in st_files:
            for t in read_safetensors_header(f).values():
                numel = 1
                for d in t["shape"]:
                    numel *= d
                params += numel
                dtype_bytes[t["dtype"]] = dtype_bytes.get(t["dtype"], 0) + t["nbytes"]
        cfg = config if config is not None else read_model_config(directory)
        arch = _arch_from_config(cfg) if cfg else None
        if cfg is None:
            assumptions.append(f"no config.json in {directory}: KV cache and activations not estimated")
        torch_dtype = (cfg or {}).get("torch_dtype") or ((cfg or {}).get("text_config") or {}).get("torch_dtype")
        details["torch_dtype"] = torch_dtype
    else:
        fmt = "gguf"
        arch = None
        for i, f in enumerate(gguf_files):
            meta, tensors = read_gguf_header(f)
            if i == 0:
                arch = _arch_from_gguf(meta)
                details["architecture"] = meta.get("general.architecture")
                details["name"] = meta.get("general.name")
            for t in tensors:
                params += t["numel"]
                dtype_bytes[t["type"]] = dtype_bytes.get(t["type"], 0) + t["nbytes"]
    weights = sum(dtype_bytes.values())
    if weights == 0:
        raise UserError(f"{path} has no tensor data in its weight files", hint="is the download complete?")

    # KV element size: float32 models keep a float32 cache (MAX on CPU); everything else 16-bit
    kv_elem = 4 if max(dtype_bytes, key=dtype_bytes.get) == "F32" else 2
    kv_per_token = None
    ctx = None
    kv_bytes = 0
    activations = 0
    if arch and arch["layers"] and arch["kv_heads"] and arch["head_dim"]:
        kv_per_token = 2 * arch["layers"] * arch["kv_heads"] * arch["head_dim"] * kv_elem * batch_size
        model_ctx = arch["context"]
        if context_length:
            ctx = context_length
        elif model_ctx:
            ctx = min(model_ctx, DEFAULT_CONTEXT_CAP)
            if model_ctx > DEFAULT_CONTEXT_CAP:
                assumptions.append(f"context {ctx} tokens (the model allows {model_ctx}; pass --context to change)")
        else:
            ctx = DEFAULT_CONTEXT_CAP
            assumptions.append(f"model context unknown: assumed {ctx} tokens")
        kv_bytes = kv_per_token * ctx
        assumptions.append(f"KV cache {kv_elem}-byte elements, batch {batch_size}, every layer full attention "
                           "(an upper bound for sliding-window models)")
        if arch["hidden"]:
            chunk = min(ctx, DEFAULT_CONTEXT_CAP)
            activations = chunk * (4 * arch["hidden"] + 2 * (arch["intermediate"] or 4 * arch["hidden"])) * 4
            activations += (arch["vocab"] or 0) * 4 * batch_size * 8
    elif arch is not None:
        assumptions.append("layer/head counts missing from the model metadata: KV cache not estimated")
    overhead = RUNTIME_OVERHEAD + activations
    assumptions.append(f"overhead = {RUNTIME_OVERHEAD // GIB} GiB runtime + activations for one prefill chunk")
    details.update({"arch": arch})
    return Footprint(
        path=path, format=fmt, files=[os.path.basename(f) for f in (st_files or gguf_files)],
        weights_bytes=weights, kv_cache_bytes=kv_bytes, overhead_bytes=overhead,
        total_bytes=weights + kv_bytes + overhead, parameters=params, dtypes=sorted(dtype_bytes),
        dtype_bytes=dtype_bytes, context_length=ctx, kv_bytes_per_token=kv_per_token, details=details,
        assumptions=assumptions)
