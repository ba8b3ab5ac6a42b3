"""From text to vectors: the pooled residual state of a text at a layer, and a text's key state.

pooled(text, L) = mean of the layer-L output over positions 1.. of the text. Position 0 is left out
because it is the model's attention sink: on SmolLM2 its residual norm at layer 13 is ~150 times
that of any other token, so it would dominate any mean. A record's key and value are the pooled
state minus the layer's reference centre, the mean pooled state of the built-in reference texts,
so what they hold is what is particular to the text, not the direction all text shares.

The same function is used to write a record, to re-derive it later, and (inside the hook) to pool
the prompt during generation, so all three agree.

A key may instead be the text's *topic state* (key pooling "topic", the default of store format v4):
the text's tokens followed by the tokens of `TOPIC_SUFFIX`, a question the model answers with the
text's subject, and the key layer's state at the last token, where the model has gathered the
answer. A mean over tokens carries a text's wording as much as its subject; the topic state carries
the subject, which is what a query from the same domain in other words shares (docs/memory.md,
"Keys"). Prompts at generation time get the same suffix (`topic_inputs`) in the session's clean pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from baldr_ops.errors import UserError
from baldr_ops.research import hooks

MAX_TOKENS = 512  # longer texts are cut: a memory is a passage, not a document
TOPIC_SUFFIX = "\nThe topic of the text above, in one word:"


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
    texts, layers = _checked(lm, texts), _layers(lm, layers)

    def batch(inputs: dict) -> dict[int, torch.Tensor]:
        states = hooks.residuals(lm, inputs, layers)
        return {layer: pool_states(states[layer], inputs["attention_mask"]) for layer in states}

    return _batched(lm, texts, layers, batch, batch_size, "pooling", progress)


def topic_inputs(lm, inputs: dict) -> tuple[dict, torch.Tensor]:
    """Each row's real tokens (``attention_mask``; either padding side) followed by the tokens of
    `TOPIC_SUFFIX`, right-padded, and the index [batch] of each row's last token."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    suffix = torch.tensor(lm.tokenizer(TOPIC_SUFFIX, add_special_tokens=False)["input_ids"], dtype=ids.dtype,
                          device=ids.device)
    rows = [torch.cat([row[keep], suffix]) for row, keep in zip(ids, mask, strict=True)]
    width = max(len(r) for r in rows)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    out_ids = torch.full((len(rows), width), pad, dtype=ids.dtype, device=ids.device)
    out_mask = torch.zeros((len(rows), width), dtype=inputs["attention_mask"].dtype, device=ids.device)
    for i, row in enumerate(rows):
        out_ids[i, :len(row)] = row
        out_mask[i, :len(row)] = 1
    return {"input_ids": out_ids, "attention_mask": out_mask}, out_mask.sum(dim=1) - 1


def topic_states(lm, inputs: dict, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The topic state [batch, d_model] float32 at each layer of a tokenized batch."""
    asked, last = topic_inputs(lm, inputs)
    states = hooks.residuals(lm, asked, layers)
    rows = torch.arange(len(last), device=last.device)
    return {layer: hidden[rows, last.to(hidden.device)].to(torch.float32) for layer, hidden in states.items()}


def key_states(lm, texts: Sequence[str], layers: Sequence[int], pooling: str, batch_size: int = 8,
               progress: Callable[[str], None] = lambda _: None) -> dict[int, torch.Tensor]:
    """The key states of ``texts`` under a key pooling ("mean": `pooled`; "topic": `topic_states`),
    {layer: [len(texts), d_model]} float32 on the CPU."""
    if pooling == "mean":
        return pooled(lm, texts, layers, batch_size, progress)
    texts, layers = _checked(lm, texts), _layers(lm, layers)
    return _batched(lm, texts, layers, lambda inputs: topic_states(lm, inputs, layers), batch_size,
                    "reading the topic of", progress)


def _checked(lm, texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    if not texts:
        raise UserError("no text given")
    short = [t for t, n in zip(texts, token_counts(lm, texts), strict=True) if n < 2]
    if short:
        raise UserError(f"text too short for a memory (needs at least 2 tokens): {short[0]!r}")
    return texts


def _layers(lm, layers: Sequence[int]) -> list[int]:
    return sorted({lm.check_layer(layer) for layer in layers})


def _batched(lm, texts: list[str], layers: Sequence[int], per_batch: Callable[[dict], dict[int, torch.Tensor]],
             batch_size: int, verb: str, progress: Callable[[str], None]) -> dict[int, torch.Tensor]:
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    # Similar lengths in a batch waste less padding; the order is restored below.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        if len(order) > batch_size:
            progress(f"{verb} texts {start + 1}-{start + len(chunk)} of {len(order)}")
        states = per_batch(lm.tokenize([texts[i] for i in chunk], max_length=MAX_TOKENS))
        for layer in layers:
            out[layer].append(states[layer].cpu())
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {layer: torch.cat(parts)[inverse] for layer, parts in out.items()}
