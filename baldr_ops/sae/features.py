"""Read SAE features off a live model: per token, the most active features and their labels.

`open_sae_for_layer` reconciles what the user asked for with what the SAE says about itself (its
layer, its width, whether it reads the residual stream) and, for a directory of per-layer SAEs,
loads only the one layer. `read_features` runs the model only as deep as that layer and encodes;
`features_hook` does the same read-out during any forward call (generation included) without
touching the model's output.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel

from baldr_ops.errors import UserError
from baldr_ops.research.hooks import HookCall, edit_residual, residuals
from baldr_ops.research.models import LanguageModel
from baldr_ops.sae.formats import detect_format, load_sae, reads_residual_stream
from baldr_ops.sae.layered import LayeredSAEs, is_layered
from baldr_ops.sae.metadata import FeatureCatalog, check_tier
from baldr_ops.sae.model import SparseAutoencoder
from baldr_ops.schema import Document


# -- what is printed ------------------------------------------------------------------------------
class FeatureHit(BaseModel):
    feature_id: int
    activation: float
    label: str | None = None
    confidence_tier: str | None = None


class TokenFeatures(BaseModel):
    position: int
    token_id: int
    token: str
    features: list[FeatureHit]  # most active first; only features that fire (activation > 0)


class TextFeatures(BaseModel):
    text: str
    truncated: bool = False  # the text was cut at max_tokens
    tokens: list[TokenFeatures]


class FeaturesReport(Document):
    """`baldr-ops sae features --json`."""

    command: str = "sae features"
    model: str
    sae: str
    sae_format: str | None
    architecture: str
    d_sae: int
    layer: int
    top_k: int
    encoder_only: bool
    labels: str | None = None
    labelled_features: int = 0  # records for this layer in the metadata
    min_tier: str | None = None
    texts: list[TextFeatures]


# -- choosing the SAE -----------------------------------------------------------------------------
def preflight_sae(sae_path: str | Path, layer: int | None, *, variant: str | None = None,
                  format: str = "auto") -> None:
    """The checks that need no model and no weights (file names only), so a bad --sae/--layer fails
    before a model that takes minutes to load is loaded."""
    path = Path(sae_path).expanduser()
    if is_layered(path):
        saes = LayeredSAEs(path, variant=variant)
        if layer is None:
            raise UserError(f"{path} holds SAEs for several layers; pick one with --layer",
                            hint=f"layers present: {', '.join(map(str, saes.layers))}")
        if layer >= 0:  # a negative layer needs the model's depth
            saes.entry(layer)
    elif format == "auto":
        detect_format(path)


def open_sae_for_layer(lm: LanguageModel, sae_path: str | Path, layer: int | None = None, *,
                       encoder_only: bool = True, variant: str | None = None, format: str = "auto",
                       dtype: torch.dtype | None = None) -> tuple[SparseAutoencoder, int]:
    """The SAE to read and the (non-negative) layer it reads, or a clear error when the layer is
    missing, out of range, or disagrees with the SAE, or the SAE does not fit the model."""
    path = Path(sae_path).expanduser()
    device = str(lm.device)
    if is_layered(path):
        saes = LayeredSAEs(path, variant=variant, device=device, dtype=dtype, encoder_only=encoder_only,
                           expect_d_in=lm.d_model)
        if layer is None:
            raise UserError(f"{path} holds SAEs for several layers; pick one with --layer",
                            hint=f"layers present: {', '.join(map(str, saes.layers))}")
        index = lm.check_layer(layer)
        sae = saes.get(index)
    else:
        if variant is not None:
            raise UserError("--variant applies to a directory of per-layer SAEs", hint=f"{path} is one SAE")
        sae = load_sae(path, format=format, device=device, dtype=dtype, encoder_only=encoder_only,
                       expect_d_in=lm.d_model)
        named = sae.config.layer
        if layer is None and named is None:
            raise UserError(f"{path}: the SAE does not say which layer it reads", hint="pass --layer")
        index = lm.check_layer(layer if layer is not None else named)
        if named is not None and named != index:
            raise UserError(f"{path}: the SAE reads layer {named} but --layer is {layer}",
                            hint=f"drop --layer, or use an SAE trained on layer {index}")
    if reads_residual_stream(sae.config.hook_name) is False:
        raise UserError(f"{path}: the SAE reads {sae.config.hook_name}, not the residual stream after a layer",
                        hint="use a resid_post SAE (hook blocks.L.hook_resid_post / model.layers.L)")
    return sae, index


def feature_mask(sae: SparseAutoencoder, catalog: FeatureCatalog, layer: int, min_tier: str) -> torch.Tensor:
    """True for the features of ``layer`` labelled at ``min_tier`` or better."""
    mask = torch.zeros(sae.d_sae, dtype=torch.bool, device=sae.W_enc.device)
    for record in catalog.filter(min_tier=min_tier, layer=layer):
        if 0 <= record.feature_id < sae.d_sae:
            mask[record.feature_id] = True
    return mask


def top_active(sae: SparseAutoencoder, hidden: torch.Tensor, top_k: int,
               allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations, feature ids), [..., top_k], largest first; inactive slots have activation 0."""
    c = sae.config
    top_k = min(top_k, sae.d_sae)
    if c.architecture == "topk" and top_k <= c.k and allowed is None and not c.rescale_acts_by_decoder_norm:
        # The top few of a TopK SAE's k survivors are the top few pre-activations: skip building
        # the dense [..., d_sae] code and ranking it twice.
        values, ids = sae.pre_activations(hidden).topk(top_k, dim=-1)
        return values.clamp_(min=0), ids
    acts = sae.encode(hidden)
    if allowed is not None:
        acts = acts.masked_fill(~allowed, 0.0)
    return acts.topk(top_k, dim=-1)


# -- reading -------------------------------------------------------------------------------------
def read_features(lm: LanguageModel, sae: SparseAutoencoder, layer: int, texts: Sequence[str], *,
                  top_k: int = 5, catalog: FeatureCatalog | None = None, min_tier: str | None = None,
                  max_tokens: int | None = None) -> list[TextFeatures]:
    """Per text and token, the ``top_k`` most active features at ``layer``, with labels from
    ``catalog``; with ``min_tier`` only features labelled at that tier or better are considered."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if min_tier is not None and catalog is None:
        raise UserError("--min-tier needs feature labels", hint="pass --labels FILE_OR_DIR")
    allowed = feature_mask(sae, catalog, layer, check_tier(min_tier)) if min_tier is not None else None
    out = []
    for text in texts:  # one at a time: no padding, so positions are the model's own
        inputs = lm.tokenize(text)
        ids = inputs["input_ids"]
        truncated = max_tokens is not None and ids.shape[1] > max_tokens
        if truncated:
            inputs = {k: v[:, :max_tokens] for k, v in inputs.items()}
        hidden = residuals(lm, inputs, [layer])[layer][0]
        with torch.no_grad():
            values, indices = top_active(sae, hidden, top_k, allowed)
        tokens = []
        for pos, token_id in enumerate(inputs["input_ids"][0].tolist()):
            hits = []
            for value, fid in zip(values[pos].tolist(), indices[pos].tolist(), strict=True):
                if value <= 0:
                    break  # sorted: the rest are inactive too
                record = catalog.get(layer, fid) if catalog is not None else None
                hits.append(FeatureHit(feature_id=fid, activation=round(value, 6),
                                       label=record.label if record else None,
                                       confidence_tier=record.confidence_tier if record else None))
            tokens.append(TokenFeatures(position=pos, token_id=token_id,
                                        token=lm.tokenizer.decode([token_id]), features=hits))
        out.append(TextFeatures(text=text, truncated=truncated, tokens=tokens))
    return out


@dataclass
class FeatureLog:
    """What `features_hook` saw: per forward call, (activations, ids) [batch, seq, top_k]."""

    calls: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    seconds: float = 0.0  # wall time spent inside the hook, all calls together


@contextmanager
def features_hook(lm: LanguageModel, sae: SparseAutoencoder, layer: int, top_k: int = 5) -> Iterator[FeatureLog]:
    """Encode the residual at ``layer`` on every forward call and log the top features; the hook
    returns None, so the model's outputs stay bit-identical."""
    log = FeatureLog()

    def read(hidden: torch.Tensor, _call: HookCall) -> None:
        start = time.perf_counter()
        with torch.no_grad():
            values, ids = top_active(sae, hidden, top_k)
        log.calls.append((values, ids))
        log.seconds += time.perf_counter() - start

    with edit_residual(lm, {layer: read}):
        yield log
