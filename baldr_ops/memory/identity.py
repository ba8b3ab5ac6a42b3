"""Which model a store's vectors belong to. Activations are model-specific: a key captured on one
model's layer 13 means nothing to another model (or to the same model in another dtype), so a store
records the model it was made with and refuses any other."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict

from baldr_ops.errors import UserError


class ModelIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    weights_sha256: str
    tokenizer_sha256: str
    d_model: int
    n_layers: int
    dtype: str  # the model's dtype when the vectors were captured

    def short(self) -> str:
        return f"{self.name} (weights {self.weights_sha256[:12]}, {self.dtype}, d_model {self.d_model})"


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over the vocabulary and special tokens; 'none' for a model without a tokenizer."""
    if tokenizer is None:
        return "none"
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", []))
    return hashlib.sha256(json.dumps([vocab, special]).encode()).hexdigest()


def _parameters_fingerprint(model) -> str:
    """For models built in memory (no weight files): sha256 over every parameter's name and bytes."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def identity_of(lm) -> ModelIdentity:
    """The identity of a loaded `LanguageModel` (weights hash from its files, cached on disk)."""
    weights = lm.weights_fingerprint() if lm.path.exists() else _parameters_fingerprint(lm.model)
    return ModelIdentity(name=lm.name, weights_sha256=weights, tokenizer_sha256=tokenizer_fingerprint(lm.tokenizer),
                         d_model=lm.d_model, n_layers=lm.n_layers, dtype=str(lm.dtype).removeprefix("torch."))


def require_same_model(stored: ModelIdentity, loaded: ModelIdentity, where: str) -> None:
    """A clear error when the loaded model is not the one the store was made with."""
    differences = [field for field in ("weights_sha256", "tokenizer_sha256", "d_model", "n_layers", "dtype")
                   if getattr(stored, field) != getattr(loaded, field)]
    if differences:
        raise UserError(f"{where} holds memories of {stored.short()}; the loaded model is {loaded.short()} "
                        f"(differs in {', '.join(differences)})",
                        hint="memories are model-specific: use the model (and --dtype) the store was made with, "
                             "or a new --store")
