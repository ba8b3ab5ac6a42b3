"""Read and write SAEs in the formats people publish, chosen by auto-detection.

Each format is a `Format` (name, a cheap `detect` on the directory's file names only, a `load`).
`load_sae` tries them in order; `save_saelens` writes the SAELens 6 layout
(``cfg.json`` + ``sae_weights.safetensors``) that ``sae_lens.SAE.load_from_disk`` reads.

| format          | files                                   | stored as                        |
|-----------------|-----------------------------------------|----------------------------------|
| saelens         | cfg.json + sae_weights.safetensors      | our layout (W_enc [d_in, d_sae]) |
| gemma-scope-v1  | params.npz (W_enc, W_dec, ..threshold)  | our layout, JumpReLU             |
| gemma-scope-2   | params.safetensors (w_enc, w_dec, ...)  | our layout, lowercase keys       |
| sparsify        | cfg.json + sae.safetensors              | encoder.weight [d_sae, d_in]: .T |

Weights are read tensor by tensor (``safe_open``; one zip member at a time for ``.npz``), so an
encoder-only load never reads W_dec and detection never reads weights at all.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from baldr_ops.errors import UserError
from baldr_ops.sae.model import SAEConfig, SparseAutoencoder

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_VERSION = "6.54.12"  # the release whose layout we write (and test against when installed)
GEMMA_SCOPE_V1_WEIGHTS = "params.npz"
GEMMA_SCOPE_2_WEIGHTS = "params.safetensors"
GEMMA_SCOPE_2_CFG = "config.json"
SPARSIFY_CFG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"
# Weight files a user may name directly instead of their directory.
WEIGHT_FILES = (SAELENS_WEIGHTS, GEMMA_SCOPE_V1_WEIGHTS, GEMMA_SCOPE_2_WEIGHTS, SPARSIFY_WEIGHTS)

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


class _StrictFields(BaseModel):
    """The fields of a published config that we read, with the types their writers emit: strict, so a
    "64" for k or a "no" for a flag is an error naming the field, not a silent coercion or bool("no")."""
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


def _typed(model: type[_StrictFields], cfg: dict, file: Path):
    try:
        return model.model_validate(cfg)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        expected = first["msg"].removeprefix("Input should be ").removeprefix("a valid ")
        found = cfg
        for part in first["loc"]:
            found = found.get(part) if isinstance(found, dict) else None
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        if first["type"] == "missing":
            raise UserError(f"{file}: field {field} is missing{more}") from None
        raise UserError(f"{file}: field {field} must be {expected}, found {found!r}{more}") from None


def check_shape(name: str, found: tuple[int, ...], expected: tuple[int, ...], file: str) -> None:
    """A clear error naming the file, the tensor, the expected and the found shape."""
    if tuple(found) != tuple(expected):
        raise UserError(f"{file}: tensor {name} has shape {list(found)}, expected {list(expected)}")


def check_finite(name: str, tensor: torch.Tensor, file: str) -> None:
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise UserError(f"{file}: tensor {name} has {bad} non-finite values (NaN or inf)")


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

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the file (safetensors maps it); tensors already read stay valid."""
        file, self._file = self._file, None
        if file is not None:
            file.__exit__(None, None, None)

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


class NpzFile:
    """The same lazy access for a numpy ``.npz`` (a zip of ``.npy`` members): shapes come from each
    member's header, and only the members asked for are decompressed."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise UserError(f"cannot read {path}: {exc}") from exc
        self._members = {n.removesuffix(".npy"): n for n in self._zip.namelist() if n.endswith(".npy")}
        self.keys = set(self._members)

    def __enter__(self) -> NpzFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def shape(self, key: str) -> tuple[int, ...]:
        with self._zip.open(self._members[key]) as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _fortran, _dtype = read_header(fh)
        return tuple(shape)

    def get(self, key: str, opts: LoadOptions, required: bool = True) -> torch.Tensor | None:
        if key not in self.keys:
            if required:
                raise UserError(f"{self.path}: array {key} is missing (found: {', '.join(sorted(self.keys))})")
            return None
        try:
            with self._zip.open(self._members[key]) as fh:
                array = np.lib.format.read_array(fh, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise UserError(f"cannot read array {key} from {self.path}: {exc}") from exc
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        check_finite(key, tensor, str(self.path))
        return tensor.to(device=opts.device, dtype=opts.dtype or tensor.dtype)


# -- SAELens ---------------------------------------------------------------------------------------
_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu",
                 # BatchTopK runs at inference as JumpReLU with its learned global threshold
                 # (SAELens saves it so); a training-time cfg still says batchtopk.
                 "batchtopk": "jumprelu", "matryoshka_batchtopk": "jumprelu"}


class _SAELensMetadata(_StrictFields):
    hook_name: str | None = None
    model_name: str | None = None


class _SAELensActivationKwargs(_StrictFields):
    k: int | None = None


class _SAELensFields(_StrictFields):
    d_in: int
    d_sae: int
    architecture: str | None = None
    k: int | None = None
    activation_fn_str: str | None = None  # pre-6.0 configs
    activation_fn: str | None = None
    activation_fn_kwargs: _SAELensActivationKwargs | None = None
    normalize_activations: str | None = None
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False
    metadata: _SAELensMetadata | None = None
    hook_name: str | None = None
    hook_point: str | None = None
    hook_layer: int | None = None
    model_name: str | None = None


def _saelens_cfg(raw: dict, file: Path) -> dict:
    """SAELens 6 fields, converting pre-6.0 configs (activation_fn_str, activation_fn_kwargs.k)."""
    cfg = _typed(_SAELensFields, raw, file)
    arch, k = cfg.architecture, cfg.k
    if arch is None:  # pre-6.0
        act = cfg.activation_fn_str or cfg.activation_fn or "relu"
        if cfg.activation_fn_kwargs and cfg.activation_fn_kwargs.k is not None:
            k = cfg.activation_fn_kwargs.k
        arch = "topk" if act == "topk" else "standard"
    if arch not in _SAELENS_ARCH:
        raise UserError(f"{file}: SAE architecture {arch!r} is not supported",
                        hint=f"supported: {', '.join(sorted(_SAELENS_ARCH))}")
    norm = cfg.normalize_activations or "none"
    if norm != "none":
        raise UserError(f"{file}: normalize_activations={norm!r} is not supported", hint="only 'none'")
    meta = cfg.metadata or _SAELensMetadata()
    hook = meta.hook_name or cfg.hook_name or cfg.hook_point
    rescale = cfg.rescale_acts_by_decoder_norm
    if arch in ("batchtopk", "matryoshka_batchtopk") and rescale:
        # The learned threshold is then in units of pre * |W_dec|, which JumpReLU does not model.
        raise UserError(f"{file}: a BatchTopK training checkpoint with rescale_acts_by_decoder_norm is "
                        "not supported", hint="save it for inference with SAELens (it folds the norm)")
    if arch == "topk" and k is None:
        raise UserError(f"{file}: a TopK SAE needs k", hint="add \"k\": <active features per token>")
    return {"architecture": _SAELENS_ARCH[arch], "k": k if arch == "topk" else None,
            "d_in": cfg.d_in, "d_sae": cfg.d_sae, "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
            "rescale_acts_by_decoder_norm": rescale and arch == "topk",
            "model_name": meta.model_name or cfg.model_name, "hook_name": hook,
            "layer": layer_from_hook(hook) if hook else cfg.hook_layer}


def layer_from_hook(hook: str | None) -> int | None:
    """The decoder layer whose *output* a hook reads, from TransformerLens/HF hook names:
    blocks.12.hook_resid_post and model.layers.12(.output) are 12; blocks.12.hook_resid_pre is the
    input of block 12, i.e. the output of layer 11."""
    if not hook:
        return None
    parts = hook.replace("/", ".").split(".")
    for prev, part in zip(parts, parts[1:], strict=False):
        if prev in ("blocks", "layers", "h", "layer") and part.isdigit():
            layer = int(part)
            if hook.endswith("hook_resid_pre"):
                return layer - 1 if layer > 0 else None  # block 0's input is the embedding
            return layer
    return None


# Hook names that read something other than the residual stream between blocks.
_NOT_RESIDUAL = re.compile(r"(mlp|attn|att\b|hook_z|resid_mid|transcoder|embed|pre_feedforward|"
                           r"post_feedforward|o_proj)", re.IGNORECASE)


def reads_residual_stream(hook: str | None) -> bool | None:
    """Whether a hook name reads the residual stream at a block boundary (None: no name given)."""
    if not hook:
        return None
    return not _NOT_RESIDUAL.search(hook)


_LAYER_IN_NAME = re.compile(r"^(?:layers?|blocks?)[._-]?(\d+)(?=$|[._-])", re.IGNORECASE)


def split_layer_name(name: str) -> tuple[int, str] | None:
    """(layer, what follows) for a directory name that denotes a layer: layer_12 -> (12, ''),
    layers.12.mlp -> (12, 'mlp'), blocks.12.hook_resid_post -> (12, 'hook_resid_post'),
    layer_12_width_16k_l0_small (Gemma Scope 2) -> (12, 'width_16k_l0_small')."""
    match = _LAYER_IN_NAME.match(name)
    if not match:
        return None
    rest = name[match.end():].lstrip("._-")
    layer = int(match.group(1))
    if rest == "hook_resid_pre":  # the input of block N is the output of layer N - 1
        if layer == 0:
            return None
        layer -= 1
    return layer, rest


def layer_from_name(name: str) -> int | None:
    split = split_layer_name(name)
    return None if split is None else split[0]


def layer_from_path(path: Path) -> int | None:
    """The nearest ``layer_N``-like part of a path, deepest first (Gemma Scope:
    layer_12/width_16k/average_l0_71/params.npz)."""
    for part in reversed(path.parts):
        layer = layer_from_name(part)
        if layer is not None:
            return layer
    return None


def build_sae(fields: dict, tensors: TensorFile | NpzFile, keys: dict[str, str], opts: LoadOptions,
              source_format: str, transpose: tuple[str, ...] = (),
              given: dict[str, torch.Tensor] | None = None) -> SparseAutoencoder:
    """An SAE from a file's tensors: ``keys`` maps our names (W_enc, ...) to the file's; names in
    ``transpose`` are stored [out, in] and turned into SAELens' layout; ``given`` supplies tensors
    derived elsewhere (e.g. a broadcast threshold). Shapes are checked before any data is read."""
    d_in, d_sae = fields["d_in"], fields["d_sae"]
    file = str(tensors.path)
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
                "threshold": (d_sae,)}
    # A TopK SAE that ranks by decoder norm needs W_dec to encode at all.
    needs_decoder = not opts.encoder_only or fields.get("rescale_acts_by_decoder_norm", False)
    wanted = ["W_enc", "b_enc", "b_dec"] + (["W_dec"] if needs_decoder else [])
    if fields["architecture"] == "jumprelu":
        wanted.append("threshold")
    loaded = dict(given or {})
    to_read = [name for name in wanted if name not in loaded]
    for name in to_read:  # every key and shape first, so a bad file fails before gigabytes are read
        key = keys[name]
        if key not in tensors.keys:
            raise UserError(f"{file}: tensor {key} is missing (found: {', '.join(sorted(tensors.keys))})")
        want = tuple(reversed(expected[name])) if name in transpose else expected[name]
        check_shape(key, tensors.shape(key), want, file)
    for name in to_read:
        tensor = tensors.get(keys[name], opts)
        loaded[name] = tensor.T.contiguous() if name in transpose else tensor
    dtype = str(loaded["W_enc"].dtype).removeprefix("torch.")
    for name, tensor in loaded.items():  # given tensors follow the file's dtype and device
        loaded[name] = tensor.to(device=loaded["W_enc"].device, dtype=loaded["W_enc"].dtype)
    config = SAEConfig(dtype=dtype, source_format=source_format, **fields)
    return SparseAutoencoder(config=config, **loaded)


def _detect_saelens(path: Path) -> bool:
    return (path / SAELENS_CFG).is_file() and (path / SAELENS_WEIGHTS).is_file()


def _load_saelens(path: Path, opts: LoadOptions) -> SparseAutoencoder:
    cfg = _read_json(path / SAELENS_CFG)
    fields = _saelens_cfg(cfg, path / SAELENS_CFG)
    with TensorFile(path / SAELENS_WEIGHTS) as tensors:
        names = {n: n for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
        given = {}
        if fields["architecture"] == "jumprelu" and "threshold" not in tensors.keys \
                and "topk_threshold" in tensors.keys:
            # A BatchTopK training checkpoint: one global threshold, broadcast as SAELens does on save.
            scalar = tensors.get("topk_threshold", opts)
            if scalar.numel() != 1:
                raise UserError(f"{tensors.path}: topk_threshold has shape {list(scalar.shape)}, expected one value")
            given["threshold"] = scalar.reshape(()).expand(fields["d_sae"]).clone()
        return build_sae(fields, tensors, names, opts, "saelens", given=given)


# -- Gemma Scope v1 (Gemma 2): params.npz --------------------------------------------------------
def _detect_gemma_scope_v1(path: Path) -> bool:
    return (path / GEMMA_SCOPE_V1_WEIGHTS).is_file()


def _pick_keys(keys: set[str], names: tuple[str, ...], file: Path) -> dict[str, str]:
    """Our tensor names to the file's, accepting W_enc or w_enc spellings."""
    chosen = {}
    for name in names:
        for candidate in (name, name.lower()):
            if candidate in keys:
                chosen[name] = candidate
                break
        else:
            raise UserError(f"{file}: tensor {name} is missing (found: {', '.join(sorted(keys))})")
    return chosen


def _jumprelu_fields_from_shapes(tensors: TensorFile | NpzFile, keys: dict[str, str]) -> dict:
    shape = tensors.shape(keys["W_enc"])
    if len(shape) != 2:
        raise UserError(f"{tensors.path}: tensor {keys['W_enc']} has shape {list(shape)}, expected [d_in, d_sae]")
    d_in, d_sae = shape
    return {"architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": False}


_GEMMA_SCOPE_RELEASE = re.compile(r"gemma-scope-[\w.-]*?-(res|mlp|att)(?:-|$)")


def _load_gemma_scope_v1(path: Path, opts: LoadOptions) -> SparseAutoencoder:
    with NpzFile(path / GEMMA_SCOPE_V1_WEIGHTS) as tensors:
        keys = _pick_keys(tensors.keys, ("W_enc", "b_enc", "b_dec", "threshold")
                          + (() if opts.encoder_only else ("W_dec",)), tensors.path)
        keys.setdefault("W_dec", "W_dec")
        if "scaling_factor" in tensors.keys:  # a fine-tuning scale SAELens folds; 1 everywhere is a no-op
            scale = tensors.get("scaling_factor", opts)
            if not torch.allclose(scale, torch.ones_like(scale)):
                raise UserError(f"{tensors.path}: a scaling_factor other than 1 is not supported")
        if "embedding" in path.parts:
            raise UserError(f"{path}: a Gemma Scope embedding SAE reads the token embeddings, not a layer's output",
                            hint="use a layer_L SAE")
        fields = _jumprelu_fields_from_shapes(tensors, keys)
        layer = layer_from_path(path)
        # The release name says what it reads: gemma-scope-2b-pt-res / -mlp / -att (-canonical, ...).
        site = next((m.group(1) for part in path.parts if (m := _GEMMA_SCOPE_RELEASE.search(part))), "res")
        hook = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}[site]
        fields.update(layer=layer, hook_name=f"blocks.{layer}.{hook}" if layer is not None else None)
        return build_sae(fields, tensors, keys, opts, "gemma-scope-v1")


# -- Gemma Scope 2 (Gemma 3): params.safetensors, lowercase keys, optional config.json -------------
def _detect_gemma_scope_2(path: Path) -> bool:
    return (path / GEMMA_SCOPE_2_WEIGHTS).is_file()


class _GemmaScope2Fields(_StrictFields):
    architecture: str = "jump_relu"
    hf_hook_point_in: str | None = None
    hf_hook_point_out: str | None = None
    model_name: str | None = None


def _load_gemma_scope_2(path: Path, opts: LoadOptions) -> SparseAutoencoder:
    cfg_file = path / GEMMA_SCOPE_2_CFG
    cfg = _typed(_GemmaScope2Fields, _read_json(cfg_file) if cfg_file.is_file() else {}, cfg_file)
    arch = cfg.architecture
    if arch not in ("jump_relu", "jumprelu"):
        raise UserError(f"{path / GEMMA_SCOPE_2_CFG}: architecture {arch!r} is not supported",
                        hint="Gemma Scope 2 SAEs are jump_relu")
    with TensorFile(path / GEMMA_SCOPE_2_WEIGHTS) as tensors:
        if "affine_skip_connection" in tensors.keys or cfg.hf_hook_point_out:
            raise UserError(f"{tensors.path}: this is a transcoder (it maps an MLP's input to its output), "
                            "not a residual-stream SAE", hint="use a resid_post SAE")
        keys = _pick_keys(tensors.keys, ("W_enc", "b_enc", "b_dec", "threshold")
                          + (() if opts.encoder_only else ("W_dec",)), tensors.path)
        keys.setdefault("W_dec", "w_dec")
        fields = _jumprelu_fields_from_shapes(tensors, keys)
        hook = cfg.hf_hook_point_in
        layer = layer_from_hook(hook) if hook else layer_from_path(path)
        if not hook and layer is not None:
            # No config.json: the release's folder says the site (resid_post/, mlp_out/, attn_out/).
            site = next((p for p in path.parts if p in ("mlp_out", "attn_out")), None)
            hook = f"blocks.{layer}.hook_{site}" if site else f"model.layers.{layer}.output"
        fields.update(layer=layer, model_name=cfg.model_name, hook_name=hook)
        return build_sae(fields, tensors, keys, opts, "gemma-scope-2")


# -- EleutherAI sparsify: cfg.json + sae.safetensors ----------------------------------------------
def _detect_sparsify(path: Path) -> bool:
    return (path / SPARSIFY_CFG).is_file() and (path / SPARSIFY_WEIGHTS).is_file()


class _SparsifyFields(_StrictFields):
    d_in: int
    activation: str = "topk"
    num_latents: int = 0
    expansion_factor: int = 32
    k: int = 32
    transcode: bool = False
    skip_connection: bool = False


def _load_sparsify(path: Path, opts: LoadOptions) -> SparseAutoencoder:
    """encode = topk(relu(x - b_dec) @ encoder.weight.T + encoder.bias)); decode = acts @ W_dec + b_dec.
    encoder.weight is [d_sae, d_in] (an nn.Linear) and is transposed; W_dec is already [d_sae, d_in]."""
    cfg_file = path / SPARSIFY_CFG
    cfg = _typed(_SparsifyFields, _read_json(cfg_file), cfg_file)
    if cfg.activation != "topk":
        raise UserError(f"{cfg_file}: sparsify activation {cfg.activation!r} is not supported", hint="only topk")
    for flag, why in (("transcode", "a transcoder maps an MLP's input to its output"),
                      ("skip_connection", "its W_skip term is not modelled")):
        if getattr(cfg, flag):
            raise UserError(f"{cfg_file}: {flag}=true is not supported ({why})")
    d_in = cfg.d_in
    # num_latents 0 (or absent) means d_in * expansion_factor, as sparsify builds it.
    d_sae = cfg.num_latents or d_in * cfg.expansion_factor
    k = cfg.k
    with TensorFile(path / SPARSIFY_WEIGHTS) as tensors:
        keys = {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec"}
        layer = layer_from_path(path)
        fields = {"architecture": "topk", "k": k, "d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True,
                  "layer": layer, "hook_name": path.name if layer is not None else None}
        return build_sae(fields, tensors, keys, opts, "sparsify", transpose=("W_enc",))


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
    Format("sparsify", _detect_sparsify, _load_sparsify),
    Format("gemma-scope-2", _detect_gemma_scope_2, _load_gemma_scope_2),
    Format("gemma-scope-v1", _detect_gemma_scope_v1, _load_gemma_scope_v1),
]


def sae_directory(path: Path) -> Path:
    """The SAE's directory: the path itself, or the folder of a weights file named directly."""
    if path.is_file() and path.name in WEIGHT_FILES:
        return path.parent
    return path


def _weights_named_by(cfg_file: Path) -> str:
    """Which weights file a cfg.json implies: sparsify's configs name latents, SAELens' d_sae."""
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError):
        cfg = {}
    cfg = cfg if isinstance(cfg, dict) else {}
    if "num_latents" in cfg or "expansion_factor" in cfg:
        return f"{SPARSIFY_WEIGHTS} (sparsify)"
    if "d_sae" in cfg or "architecture" in cfg or "hook_name" in cfg:
        return f"{SAELENS_WEIGHTS} (SAELens)"
    return f"{SAELENS_WEIGHTS} (SAELens) or {SPARSIFY_WEIGHTS} (sparsify)"


def detect_format(path: Path) -> Format:
    """The format of one SAE directory, from file names alone (no weights are read)."""
    if not path.exists():
        raise UserError(f"SAE {path} does not exist")
    path = sae_directory(path)
    for fmt in FORMATS:
        if fmt.detect(path):
            return fmt
    if path.is_dir() and any(c.is_dir() and layer_from_name(c.name) is not None for c in path.iterdir()):
        # Named by layer (layer_12, layers.12, blocks.12.hook_resid_post): the layout `layered` reads.
        raise UserError(f"{path} is a directory of per-layer SAEs, not one SAE",
                        hint="open it with baldr_ops.sae.layered.LayeredSAEs (the CLI: --sae DIR --layer L)")
    if path.is_dir() and (path / SAELENS_CFG).is_file():   # SAELens and sparsify both keep a cfg.json
        raise UserError(f"{path}: {SAELENS_CFG} is there but the weights are not: expected "
                        f"{_weights_named_by(path / SAELENS_CFG)}", hint="copy the weights file beside cfg.json")
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
    sae = fmt.load(sae_directory(path), LoadOptions(device=device, dtype=dtype, encoder_only=encoder_only))
    if expect_d_in is not None and sae.d_in != expect_d_in:
        raise UserError(f"{path}: the SAE reads d_in {sae.d_in} but the model's d_model is {expect_d_in}",
                        hint="use an SAE trained on this model (and this layer)")
    return sae


def dtype_named(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose float32, float16 or bfloat16")
    return _DTYPES[name]
