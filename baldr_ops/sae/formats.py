"""Read and write SAEs in the formats people publish, chosen by auto-detection.

Each format is a `Format` (name, a cheap `detect` on the directory's file names and keys, a
`load`). `load_sae` tries them in order; `save_saelens` writes the SAELens 6 layout
(``cfg.json`` + ``sae_weights.safetensors``) that ``sae_lens.SAE.load_from_disk`` reads.
Weights are read with ``safe_open`` tensor by tensor, so an encoder-only load never reads W_dec.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from baldr_ops.errors import UserError
from baldr_ops.sae.model import SAEConfig, SparseAutoencoder, check_finite, check_shape

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_VERSION = "6.54.12"  # the release whose layout we write (and test against when installed)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "torch.float32": torch.float32, "torch.float16": torch.float16, "torch.bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class LoadOptions:
    device: str = "cpu"
    dtype: torch.dtype | None = None  # None: as stored
    encoder_only: bool = False


@dataclass(frozen=True)
class Format:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, LoadOptions], SparseAutoencoder]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data


class TensorFile:
    """Lazy access to a safetensors file: keys without reading data, one tensor at a time."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        try:
            self._file = safe_open(str(path), framework="pt")
        except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
            raise UserError(f"cannot read {path}: {exc}") from exc
        self.keys = set(self._file.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file.get_slice(key).get_shape())

    def get(self, key: str, opts: LoadOptions, required: bool = True) -> torch.Tensor | None:
        if key not in self.keys:
            if required:
                raise UserError(f"{self.path}: tensor {key} is missing (found: {', '.join(sorted(self.keys))})")
            return None
        tensor = self._file.get_tensor(key)
        check_finite(key, tensor, str(self.path))
        return tensor.to(device=opts.device, dtype=opts.dtype or tensor.dtype)


# -- SAELens ---------------------------------------------------------------------------------------
_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}


def _saelens_cfg(cfg: dict, file: Path) -> dict:
    """SAELens 6 fields, converting pre-6.0 configs (activation_fn_str, activation_fn_kwargs.k)."""
    arch = cfg.get("architecture")
    k = cfg.get("k")
    if arch is None:  # pre-6.0
        act = cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu"
        k = (cfg.get("activation_fn_kwargs") or {}).get("k", k)
        arch = "topk" if act == "topk" else "standard"
    if arch not in _SAELENS_ARCH:
        raise UserError(f"{file}: SAE architecture {arch!r} is not supported",
                        hint=f"supported: {', '.join(sorted(_SAELENS_ARCH))} (BatchTopK is saved as jumprelu)")
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise UserError(f"{file}: normalize_activations={norm!r} is not supported", hint="only 'none'")
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int):
            raise UserError(f"{file}: {key} must be an integer, found {cfg.get(key)!r}")
    return {"architecture": _SAELENS_ARCH[arch], "k": k, "d_in": cfg["d_in"], "d_sae": cfg["d_sae"],
            "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
            "rescale_acts_by_decoder_norm": bool(cfg.get("rescale_acts_by_decoder_norm", False)),
            "model_name": meta.get("model_name") or cfg.get("model_name"), "hook_name": hook,
            "layer": layer_from_hook(hook) if hook else cfg.get("hook_layer")}


def layer_from_hook(hook: str | None) -> int | None:
    """The block index in TransformerLens/HF hook names: blocks.12.hook_resid_post, model.layers.12."""
    if not hook:
        return None
    parts = hook.replace("/", ".").split(".")
    for prev, part in zip(parts, parts[1:], strict=False):
        if prev in ("blocks", "layers", "h", "layer") and part.isdigit():
            return int(part)
    return None


def build_sae(fields: dict, tensors: TensorFile, keys: dict[str, str], opts: LoadOptions,
              source_format: str, transpose: tuple[str, ...] = ()) -> SparseAutoencoder:
    """An SAE from a file's tensors: ``keys`` maps our names (W_enc, ...) to the file's; names in
    ``transpose`` are stored [out, in] and turned into SAELens' layout. Shapes are checked first."""
    d_in, d_sae = fields["d_in"], fields["d_sae"]
    file = str(tensors.path)
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
                "threshold": (d_sae,)}
    wanted = ["W_enc", "b_enc", "b_dec"] + ([] if opts.encoder_only else ["W_dec"])
    if fields["architecture"] == "jumprelu":
        wanted.append("threshold")
    loaded = {}
    for name in wanted:
        key = keys[name]
        if key not in tensors.keys:
            raise UserError(f"{file}: tensor {key} is missing (found: {', '.join(sorted(tensors.keys))})")
        want = tuple(reversed(expected[name])) if name in transpose else expected[name]
        check_shape(key, tensors.shape(key), want, file)
        tensor = tensors.get(key, opts)
        loaded[name] = tensor.T.contiguous() if name in transpose else tensor
    dtype = str(loaded["W_enc"].dtype).removeprefix("torch.")
    config = SAEConfig(dtype=dtype, source_format=source_format, **fields)
    return SparseAutoencoder(config=config, **loaded)


def _detect_saelens(path: Path) -> bool:
    return (path / SAELENS_CFG).is_file() and (path / SAELENS_WEIGHTS).is_file()


def _load_saelens(path: Path, opts: LoadOptions) -> SparseAutoencoder:
    fields = _saelens_cfg(_read_json(path / SAELENS_CFG), path / SAELENS_CFG)
    tensors = TensorFile(path / SAELENS_WEIGHTS)
    names = {n: n for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    return build_sae(fields, tensors, names, opts, "saelens")


def save_saelens(sae: SparseAutoencoder, path: str | Path) -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` as SAELens 6 writes them."""
    from safetensors.torch import save_file

    if sae.W_dec is None:
        raise UserError("cannot save an encoder-only SAE: SAELens needs W_dec")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    c = sae.config
    arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[c.architecture]
    cfg = {"d_in": c.d_in, "d_sae": c.d_sae, "dtype": c.dtype, "device": "cpu",
           "apply_b_dec_to_input": c.apply_b_dec_to_input, "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": SAELENS_VERSION,
                        "model_name": c.model_name, "hook_name": c.hook_name or (
                            f"blocks.{c.layer}.hook_resid_post" if c.layer is not None else None)},
           "architecture": arch}
    if c.architecture == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=c.rescale_acts_by_decoder_norm)
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.threshold is not None and c.architecture == "jumprelu":
        tensors["threshold"] = sae.threshold
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / SAELENS_WEIGHTS))
    (out / SAELENS_CFG).write_text(json.dumps(cfg, indent=2))
    return out


# -- registry ----------------------------------------------------------------------------------
FORMATS: list[Format] = [
    Format("saelens", _detect_saelens, _load_saelens),
]


def detect_format(path: Path) -> Format:
    if not path.exists():
        raise UserError(f"SAE {path} does not exist")
    for fmt in FORMATS:
        if fmt.detect(path):
            return fmt
    listing = ", ".join(sorted(p.name for p in path.iterdir())[:12]) if path.is_dir() else path.name
    raise UserError(f"{path}: unknown SAE format (found: {listing or 'an empty directory'})",
                    hint=f"known formats: {', '.join(f.name for f in FORMATS)}")


def load_sae(path: str | Path, *, format: str = "auto", device: str = "cpu", dtype: torch.dtype | None = None,
             encoder_only: bool = False, expect_d_in: int | None = None) -> SparseAutoencoder:
    """Load one SAE; ``expect_d_in`` (the model's d_model) is checked with a clear error."""
    path = Path(path).expanduser()
    if format == "auto":
        fmt = detect_format(path)
    else:
        by_name = {f.name: f for f in FORMATS}
        if format not in by_name:
            raise UserError(f"unknown SAE format {format!r}", hint=f"choose one of: auto, {', '.join(by_name)}")
        fmt = by_name[format]
    sae = fmt.load(path, LoadOptions(device=device, dtype=dtype, encoder_only=encoder_only))
    if expect_d_in is not None and sae.d_in != expect_d_in:
        raise UserError(f"{path}: the SAE reads d_in {sae.d_in} but the model's d_model is {expect_d_in}",
                        hint="use an SAE trained on this model (and this layer)")
    return sae


def dtype_named(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose float32, float16 or bfloat16")
    return _DTYPES[name]
