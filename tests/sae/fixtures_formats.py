"""Synthetic SAE files in each published on-disk layout (random weights), the reference maths each
format's authors define, and a recorder of which weight files and tensors a load actually reads.

The writers use numpy / safetensors directly, never the kit's own writer, so a loader bug cannot
cancel out against a writer bug.
"""

from __future__ import annotations

import json
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

D_IN, D_SAE = 32, 96


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def jumprelu_arrays(d_in: int = D_IN, d_sae: int = D_SAE, seed: int = 0) -> dict[str, np.ndarray]:
    """Gemma Scope style weights: W_enc [d_in, d_sae], W_dec [d_sae, d_in], positive thresholds."""
    r = _rng(seed)
    f32 = np.float32
    return {"W_enc": (r.standard_normal((d_in, d_sae)) / np.sqrt(d_in)).astype(f32),
            "W_dec": (r.standard_normal((d_sae, d_in)) / np.sqrt(d_sae)).astype(f32),
            "b_enc": (r.standard_normal(d_sae) * 0.1).astype(f32),
            "b_dec": (r.standard_normal(d_in) * 0.1).astype(f32),
            "threshold": r.uniform(0.05, 0.6, d_sae).astype(f32)}


def _merged(arrays: dict, override: dict) -> dict:
    """Replace arrays; an override of None leaves the array out of the file."""
    out = {**arrays, **override}
    return {k: v for k, v in out.items() if v is not None}


def write_gemma_scope_v1(root: Path, layer: int = 12, seed: int = 0, compressed: bool = False,
                         **override) -> tuple[Path, dict[str, np.ndarray]]:
    """layer_{L}/width_16k/average_l0_71/params.npz, as google/gemma-scope-2b-pt-res lays it out."""
    arrays = _merged(jumprelu_arrays(seed=seed), override)
    folder = root / f"layer_{layer}" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(folder / "params.npz", **arrays)
    return folder, arrays


def write_gemma_scope_2(folder: Path, layer: int = 12, seed: int = 1, config: bool = True,
                        **override) -> tuple[Path, dict[str, np.ndarray]]:
    """resid_post/layer_{L}_width_16k_l0_small/params.safetensors (lowercase keys) + config.json."""
    from safetensors.numpy import save_file

    arrays = _merged(jumprelu_arrays(seed=seed), override)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k.lower(): v for k, v in arrays.items()}, str(folder / "params.safetensors"))
    if config:
        (folder / "config.json").write_text(json.dumps({
            "architecture": "jump_relu", "model_name": "gemma-v3-270m-pt",
            "hf_hook_point_in": f"model.layers.{layer}.output", "width": D_SAE}))
    return folder, arrays


def sparsify_arrays(d_in: int = D_IN, d_sae: int = D_SAE, seed: int = 2) -> dict[str, np.ndarray]:
    r = _rng(seed)
    f32 = np.float32
    return {"encoder.weight": (r.standard_normal((d_sae, d_in)) / np.sqrt(d_in)).astype(f32),
            "encoder.bias": (r.standard_normal(d_sae) * 0.1).astype(f32),
            "W_dec": (r.standard_normal((d_sae, d_in)) / np.sqrt(d_sae)).astype(f32),
            "b_dec": (r.standard_normal(d_in) * 0.1).astype(f32)}


def write_sparsify(folder: Path, k: int = 8, expansion_factor: int = 3, num_latents: int = 0, seed: int = 2,
                   drop: tuple[str, ...] = (), **cfg_override) -> tuple[Path, dict[str, np.ndarray]]:
    """<hookpoint>/cfg.json + sae.safetensors as sparsify's SparseCoder.save_to_disk writes them
    (cfg = SparseCoderConfig.to_dict() plus d_in)."""
    from safetensors.numpy import save_file

    d_sae = num_latents or D_IN * expansion_factor
    arrays = {k_: v for k_, v in sparsify_arrays(d_sae=d_sae, seed=seed).items() if k_ not in drop}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": expansion_factor, "normalize_decoder": True,
           "num_latents": num_latents, "k": k, "multi_topk": False, "skip_connection": False,
           "transcode": False, "d_in": D_IN, **cfg_override}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder, arrays


def write_saelens_batchtopk(folder: Path, layer: int = 5, seed: int = 3, scalar_threshold: bool = False
                            ) -> tuple[Path, dict[str, np.ndarray]]:
    """A SAELens BatchTopK SAE whose cfg still says batchtopk: a broadcast ``threshold`` (what
    SAELens saves for inference) or the training-time scalar ``topk_threshold``."""
    from safetensors.numpy import save_file

    arrays = jumprelu_arrays(seed=seed)
    value = np.float32(0.3)
    arrays["threshold"] = np.full(D_SAE, value, dtype=np.float32)
    tensors = {k: v for k, v in arrays.items() if k != "threshold"}
    if scalar_threshold:
        tensors["topk_threshold"] = np.array(value, dtype=np.float32)
    else:
        tensors["threshold"] = arrays["threshold"]
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "k": 16, "rescale_acts_by_decoder_norm": False,
        "architecture": "batchtopk", "metadata": {"hook_name": f"blocks.{layer}.hook_resid_post"}}))
    return folder, arrays


# -- reference maths, float64, written from each format's definition ----------------------------
def ref_jumprelu(a: dict[str, np.ndarray], x: np.ndarray, subtract_b_dec: bool) -> np.ndarray:
    """Gemma Scope: f(x) = JumpReLU_theta(x W_enc + b_enc), no b_dec subtraction (SAELens
    apply_b_dec_to_input=False); JumpReLU(z) = z * H(z - theta)."""
    x = x.astype(np.float64)
    if subtract_b_dec:
        x = x - a["b_dec"]
    pre = x @ a["W_enc"].astype(np.float64) + a["b_enc"]
    return np.where(pre > a["threshold"], pre, 0.0) * (pre > 0)


def ref_sparsify_encode(a: dict[str, np.ndarray], x: np.ndarray, k: int) -> np.ndarray:
    """sparsify: pre = relu(Linear(x - b_dec)); keep the k largest per row (fused_encoder)."""
    x = x.astype(np.float64) - a["b_dec"]
    pre = np.maximum(x @ a["encoder.weight"].astype(np.float64).T + a["encoder.bias"], 0.0)
    out = np.zeros_like(pre)
    for row in range(pre.shape[0]):
        top = np.argsort(-pre[row], kind="stable")[:k]
        out[row, top] = pre[row, top]
    return out


def ref_sparse_decode(w_dec: np.ndarray, b_dec: np.ndarray, acts: np.ndarray) -> np.ndarray:
    """Sum of the active features' decoder rows plus b_dec (sparsify's gather form)."""
    out = np.tile(b_dec.astype(np.float64), (acts.shape[0], 1))
    for row in range(acts.shape[0]):
        for j in np.flatnonzero(acts[row]):
            out[row] += acts[row, j] * w_dec[j].astype(np.float64)
    return out


# -- what a load reads ------------------------------------------------------------------------
@dataclass
class Reads:
    files: list[str] = field(default_factory=list)  # weight files opened, in order
    tensors: list[tuple[str, str]] = field(default_factory=list)  # (file name, tensor) read


@contextmanager
def record_reads(monkeypatch):
    """Count every safetensors file opened and tensor read, and every .npz member read."""
    import safetensors

    reads = Reads()
    real_safe_open = safetensors.safe_open

    class Recording:
        def __init__(self, path, *args, **kwargs):
            self._path = str(path)
            self._inner = real_safe_open(path, *args, **kwargs)
            reads.files.append(self._path)

        def keys(self):
            return self._inner.keys()

        def get_slice(self, key):
            return self._inner.get_slice(key)  # header only: shapes

        def get_tensor(self, key):
            reads.tensors.append((Path(self._path).name, key))
            return self._inner.get_tensor(key)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    real_zip_init = zipfile.ZipFile.__init__

    def zip_init(self, file, *args, **kwargs):
        real_zip_init(self, file, *args, **kwargs)
        if str(file).endswith(".npz"):
            reads.files.append(str(file))

    def read_array(fh, *args, **kwargs):
        reads.tensors.append(("params.npz", Path(fh.name).stem))
        return real_read_array(fh, *args, **kwargs)

    real_read_array = np.lib.format.read_array
    monkeypatch.setattr(safetensors, "safe_open", Recording)
    monkeypatch.setattr(zipfile.ZipFile, "__init__", zip_init)
    monkeypatch.setattr(np.lib.format, "read_array", read_array)
    yield reads
