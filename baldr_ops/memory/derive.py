"""From text to vectors: the pooled residual state of a text at a layer.

pooled(text, L) = mean of the layer-L output over positions 1.. of the text. Position 0 is left out
because it is the model's attention sink: on SmolLM2 its residual norm at layer 13 is ~150 times
that of any other token, so it would dominate any mean. A record's key and value are the pooled
state minus the layer's reference centre, the mean pooled state of the built-in reference texts,
so what they hold is what is particular to the text, not the direction all text shares.

The same function is used to write a record, to re-derive it later, and (inside the hook) to pool
the prompt during generation, so all three agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from baldr_ops.errors import UserError
from baldr_ops.research import hooks

MAX_TOKENS = 512  # longer texts are cut: a memory is a passage, not a document


def token_weights(mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] float32 pooling weights: 1 on each row's real tokens (``mask``) after its first,
    whichever side the padding is on."""
    weights = mask.to(torch.float32).clone()
    first = weights.argmax(dim=1)  # the first real token
    weights[torch.arange(weights.shape[0], device=weights.device), first] = 0
    return weights


def pooled_sum(hidden: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted sum of ``hidden`` [batch, seq, d] over its tokens, float32 [batch, d], and the
    total weight [batch, 1]: the one pooling rule, also used by the generation hooks (`nudge`),
    which add up sums over the tokens they see."""
    total = (hidden.to(torch.float32) * weights[..., None].to(hidden.device)).sum(dim=1)
    return total, weights.sum(dim=1, keepdim=True)


def pool_states(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's tokens after its first (``mask`` marks real tokens), [batch, d] float32."""
    total, count = pooled_sum(hidden, token_weights(mask))
    return total / count.clamp_min(1.0).to(total.device)


def token_counts(lm, texts: Sequence[str]) -> list[int]:
    return [len(lm.tokenizer(t, truncation=True, max_length=MAX_TOKENS)["input_ids"]) for t in texts]


def pooled(lm, texts: Sequence[str], layers: Sequence[int], batch_size: int = 8,
           progress: Callable[[str], None] = lambda _: None) -> dict[int, torch.Tensor]:
    """Pooled states of ``texts`` at each layer, {layer: [len(texts), d_model]} float32, on the CPU.

    Every text needs at least two tokens (position 0 is not pooled)."""
    texts = list(texts)
    if not texts:
        raise UserError("no text given")
    short = [t for t, n in zip(texts, token_counts(lm, texts), strict=True) if n < 2]
    if short:
        raise UserError(f"text too short to pool (needs at least 2 tokens): {short[0]!r}")
    layers = sorted({lm.check_layer(layer) for layer in layers})
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    # Similar lengths in a batch waste less padding; the order is restored below.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        if len(order) > batch_size:
            progress(f"pooling texts {start + 1}-{start + len(chunk)} of {len(order)}")
        inputs = lm.tokenize([texts[i] for i in chunk], max_length=MAX_TOKENS)
        states = hooks.residuals(lm, inputs, layers)
        for layer in layers:
            out[layer].append(pool_states(states[layer], inputs["attention_mask"]).cpu())
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {layer: torch.cat(parts)[inverse] for layer, parts in out.items()}
