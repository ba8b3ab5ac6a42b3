"""The SAE itself: weights, configuration and the encode/decode maths of each architecture.

One convention everywhere, SAELens': ``W_enc`` is [d_in, d_sae], ``W_dec`` [d_sae, d_in];
loaders transpose other layouts into it.

    pre    = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc
    relu:     a = relu(pre)
    topk:     a = relu(pre) on the k largest entries per token, 0 elsewhere
    jumprelu: a = relu(pre) * (pre > threshold)
    decode:   x_hat = a @ W_dec + b_dec

BatchTopK SAEs are saved and run as JumpReLU with their learned global threshold (as SAELens does).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from baldr_ops.sae.errors import SAEError

Architecture = Literal["relu", "topk", "jumprelu"]


class SAEConfig(BaseModel):
    """What an SAE is and where it reads: enough to rebuild it and to check it fits a model."""

    model_config = ConfigDict(extra="forbid")

    d_in: int
    d_sae: int
    architecture: Architecture
    k: int | None = None  # topk only
    apply_b_dec_to_input: bool = True
    # SAELens' TopK option: rank pre-activations scaled by each feature's decoder norm.
    rescale_acts_by_decoder_norm: bool = False
    dtype: str = "float32"
    model_name: str | None = None
    hook_name: str | None = None  # e.g. blocks.12.hook_resid_post
    layer: int | None = None  # decoder layer whose output the SAE reads
    source_format: str | None = None  # which loader read it (saelens, gemma-scope-v1, ...)


@dataclass
class SparseAutoencoder:
    """Weights plus config. ``W_dec`` is None for an encoder-only copy (feature read-out only)."""

    config: SAEConfig
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    W_dec: torch.Tensor | None = None
    threshold: torch.Tensor | None = None

    def __post_init__(self) -> None:
        c = self.config
        if c.architecture == "topk" and not (c.k and 0 < c.k <= c.d_sae):
            raise SAEError(f"a TopK SAE needs 0 < k <= d_sae ({c.d_sae}), got k={c.k}")
        if c.architecture == "jumprelu" and self.threshold is None:
            raise SAEError("a JumpReLU SAE needs a threshold tensor")

    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        return self.config.d_sae

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SparseAutoencoder:
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        config = self.config if dtype is None else self.config.model_copy(
            update={"dtype": str(dtype).removeprefix("torch.")})
        return replace(self, config=config, W_enc=move(self.W_enc), b_enc=move(self.b_enc),
                       b_dec=move(self.b_dec), W_dec=move(self.W_dec), threshold=move(self.threshold))

    def encoder_only(self) -> SparseAutoencoder:
        return replace(self, W_dec=None)

    # -- maths --------------------------------------------------------------------------------
    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_in:
            raise SAEError(f"activations have d_model {x.shape[-1]} but the SAE expects d_in {self.d_in}")
        return x.to(self.W_enc.dtype)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        x = self._cast(x)
        if self.config.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations, [..., d_sae]."""
        pre = self.pre_activations(x)
        arch = self.config.architecture
        if arch == "relu":
            return torch.relu(pre)
        if arch == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        return self._topk(pre)

    def _topk(self, pre: torch.Tensor) -> torch.Tensor:
        rank_by = pre
        if self.config.rescale_acts_by_decoder_norm:
            if self.W_dec is None:
                raise SAEError("this TopK SAE ranks by decoder norm; load it with its decoder")
            rank_by = pre * self.W_dec.norm(dim=-1)
        _, idx = rank_by.topk(self.config.k, dim=-1, sorted=False)
        acts = torch.zeros_like(pre)
        return acts.scatter_(-1, idx, torch.relu(rank_by.gather(-1, idx)))

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        if self.W_dec is None:
            raise SAEError("this SAE was loaded encoder-only; load it with its decoder to reconstruct")
        w_dec = self.W_dec
        if self.config.architecture == "topk" and self.config.rescale_acts_by_decoder_norm:
            w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        return acts.to(w_dec.dtype) @ w_dec + self.b_dec

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def top_features(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, feature ids) of the k most active features per token, largest first."""
        acts = self.encode(x)
        return acts.topk(min(k, self.d_sae), dim=-1)
