"""Load a causal LM for research work: the embedded demo model or a local Hugging Face directory.

`load_model` returns a `LanguageModel`: the transformers model plus what the hooks and metrics need
to know about it (its decoder layers, final norm, unembedding, embedding scale), found once here so
no other module has to know where a family keeps them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from baldr_ops.atomic import atomic_write
from baldr_ops.errors import UserError
from baldr_ops.paths import cache_root

DEMO_SPEC = "demo"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
# Containers that hold a model's other towers; their layer lists are not the language model's.
_NOT_TEXT = ("vision", "audio", "image", "visual", "encoder")


def layer_ranges(layers) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1-3, 7, 9-10': a compact list of layer indices for messages."""
    runs: list[list[int]] = []
    for x in sorted(set(layers)):
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@dataclass
class LanguageModel:
    """A loaded causal LM and the parts of it that research code reads or hooks."""

    model: nn.Module
    tokenizer: object
    path: Path
    name: str
    layers: nn.ModuleList  # the decoder blocks, in order; hook index i == hidden_states[i + 1]
    final_norm: nn.Module | None
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def config(self):
        return self.model.config.get_text_config()

    @property
    def family(self) -> str:
        return str(getattr(self.config, "model_type", "unknown"))

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_layer(self, layer: int) -> int:
        """The layer index, or a clear error naming the valid range (negative counts from the end)."""
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise UserError(f"layer must be an integer, got {layer!r}")
        index = layer + self.n_layers if layer < 0 else layer
        if not 0 <= index < self.n_layers:
            raise UserError(f"layer {layer} is out of range for {self.name}: it has {self.n_layers} decoder "
                            f"layers, 0..{self.n_layers - 1}")
        return index

    # -- embedding and unembedding -------------------------------------------------------------
    def input_embedding_matrix(self) -> torch.Tensor:
        """The token embedding rows, [vocab, d_model], without any scale the model applies."""
        return self.model.get_input_embeddings().weight

    @property
    def embed_scale(self) -> float:
        """The factor the embedding module multiplies rows by (sqrt(d_model) on Gemma, 1 elsewhere).

        Passing ``inputs_embeds`` bypasses it, so callers that build embeddings themselves apply it.
        """
        emb = self.model.get_input_embeddings()
        scale = getattr(emb, "embed_scale", None)
        if scale is None:
            scale = getattr(emb, "scalar_embed_scale", 1.0)
        return float(scale.item() if torch.is_tensor(scale) else scale)

    def logits_from_residual(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own read-out applied to a residual-stream state (the logit lens)."""
        x = self.final_norm(hidden) if self.final_norm is not None else hidden
        logits = self.model.get_output_embeddings()(x)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # -- text ----------------------------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask for one text or a right-padded batch, on the model's device."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        if not batch:
            raise UserError("no text given")
        enc = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=max_length is not None,
                             max_length=max_length)
        return {"input_ids": enc["input_ids"].to(self.device),
                "attention_mask": enc["attention_mask"].to(self.device)}

    # -- identity ------------------------------------------------------------------------------
    def weights_fingerprint(self) -> str:
        """sha256 over the weight files (name, size, bytes), cached on disk by path, size and mtime."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.path)
        return self._fingerprint


def resolve_model_path(spec: str | os.PathLike | None, progress: Callable[[str], None] = lambda _: None) -> Path:
    """``None`` or ``"demo"`` is the embedded demo model (converted on first use); else a local path."""
    if spec is None or str(spec) == DEMO_SPEC:
        from baldr_ops.models.demo import ensure_demo_model

        return ensure_demo_model(progress)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"model {path} does not exist",
                        hint="give a Hugging Face model directory (config.json + weights), a .gguf file, or 'demo'")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"model directory {path} has no config.json",
                        hint="give a Hugging Face model directory (config.json + weights), a .gguf file, or 'demo'")
    if path.is_file() and path.suffix != ".gguf":
        raise UserError(f"model file {path} is not a .gguf file",
                        hint="give a Hugging Face model directory, a .gguf file, or 'demo'")
    return path


def find_decoder_layers(model: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    """The language model's decoder-block list and the module that holds it (which also holds the
    final norm). Llama/Qwen/Gemma 2-3 keep it at ``model.layers``; Gemma 3/4 multimodal checkpoints
    at ``model.language_model.layers``; GPT-2 style at ``transformer.h``."""
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in ("layers", "h", "blocks") or any(t in name.lower() for t in _NOT_TEXT):
            continue
        candidates.append((name, module))
    if not candidates:
        raise UserError(f"cannot find the decoder layers of {type(model).__name__}",
                        hint="supported: transformers causal LMs of the Llama, Gemma 2/3/4 and Qwen families")
    # The shallowest list wins: nested lists (experts, per-layer sub-blocks) sit deeper.
    name, layers = min(candidates, key=lambda c: c[0].count("."))
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return layers, parent


def _final_norm(holder: nn.Module) -> nn.Module | None:
    for attr in ("norm", "final_layernorm", "ln_f", "final_norm"):
        module = getattr(holder, attr, None)
        if isinstance(module, nn.Module):
            return module
    return None


def wrap_model(model: nn.Module, tokenizer, path: Path, name: str | None = None) -> LanguageModel:
    """A `LanguageModel` around an already built transformers model (tests build tiny ones)."""
    model.eval()
    model.requires_grad_(False)
    layers, holder = find_decoder_layers(model)
    if tokenizer is not None and getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LanguageModel(model=model, tokenizer=tokenizer, path=Path(path), name=name or Path(path).name,
                         layers=layers, final_norm=_final_norm(holder))


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_model(spec: str | os.PathLike | None = None, *, dtype: str = "float32", device: str = "cpu",
               progress: Callable[[str], None] = lambda _: None) -> LanguageModel:
    """Load a causal LM from local files only (no hub): the demo model, a directory or a GGUF file."""
    if dtype not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    path = resolve_model_path(spec, progress)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    where, extra = (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})
    progress(f"loading {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where), local_files_only=True, **extra)
        model = AutoModelForCausalLM.from_pretrained(str(where), dtype=_DTYPES[dtype], local_files_only=True,
                                                     **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load model {path}: {str(exc).splitlines()[0]}",
                        hint="a transformers causal LM directory with config.json, weights and tokenizer") from exc
    model.to(device)
    name = path.stem if path.is_file() else path.name
    return wrap_model(model, tokenizer, path, name=name)


def weights_fingerprint(path: Path) -> str:
    """sha256 of a model's weight files, cached in the user cache keyed by (path, sizes, mtimes)."""
    files = sorted([path] if path.is_file() else [p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES])
    if not files:
        raise UserError(f"no weight files in {path}")
    stamp = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:32]
    memo = cache_root() / "fingerprints" / f"{key}.txt"
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}\0{p.stat().st_size}\0".encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    value = digest.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(memo, value)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return value
