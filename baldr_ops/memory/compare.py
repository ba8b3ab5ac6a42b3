"""Running the model with and without memory: next-token distributions, greedy generations, A/B.

`next_token_probs` runs one padded batch and returns each prompt's next-token distribution;
`greedy` generates; `ab` puts one prompt through both and measures the difference: KL at the next
token, the shift of probability mass onto the recalled memories' vocabulary (log-odds of their
source text against general text, `lexicon`), that vocabulary's share of each continuation, and
the relevance of the top candidates at each layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict

from baldr_ops.memory.audit import AuditEntry
from baldr_ops.memory.derive import key_states
from baldr_ops.memory.lexicon import lexicon
from baldr_ops.memory.runtime import MemoryRuntime
from baldr_ops.schema import Document


def prompt_text(lm, prompt: str, chat: bool = False) -> str:
    """The prompt as the model sees it: plain, or wrapped in the tokenizer's chat template."""
    if not chat:
        return prompt
    return lm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)


def next_token_probs(lm, texts: Sequence[str], runtime: MemoryRuntime | None = None,
                     layers: Sequence[int] | None = None,
                     key_texts: Sequence[str] | None = None) -> tuple[torch.Tensor, list[AuditEntry | None]]:
    """[len(texts), vocab] float32 next-token probabilities after each text (right-padded batch);
    ``key_texts``: what recall reads instead of each text (see `greedy`)."""
    inputs = lm.tokenize(list(texts))
    key_inputs = lm.tokenize(list(key_texts)) if key_texts is not None else None
    last = inputs["attention_mask"].sum(dim=1) - 1
    entry = None
    with torch.no_grad():
        if runtime is None:
            logits = lm.model(**inputs, use_cache=False).logits
        else:
            with runtime.session(inputs, prompt="\n".join(texts), layers=layers, key_inputs=key_inputs) as s:
                logits = lm.model(**inputs, use_cache=False).logits
            entry = s.entry
    rows = torch.arange(len(texts), device=logits.device)
    return logits[rows, last].to(torch.float32).softmax(dim=-1).cpu(), [entry]


class Generation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    token_ids: list[int]
    audit: AuditEntry | None = None


def greedy(lm, prompt: str, runtime: MemoryRuntime | None = None, max_new_tokens: int = 40,
           use_cache: bool = True, layers: Sequence[int] | None = None,
           key_text: str | None = None) -> tuple[Generation, dict]:
    """The greedy continuation, and each hooked layer's last recall (empty without memory).
    ``key_text``: what recall reads instead of the prompt (the user's text inside a chat prompt)."""
    inputs = lm.tokenize(prompt)
    key_inputs = lm.tokenize(key_text) if key_text is not None else None
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, use_cache=use_cache,
                  pad_token_id=lm.tokenizer.pad_token_id)
    entry, recalls = None, {}
    with torch.no_grad():
        if runtime is None:
            out = lm.model.generate(**inputs, **kwargs)
        else:
            with runtime.session(inputs, prompt=prompt, layers=layers, key_inputs=key_inputs) as session:
                out = lm.model.generate(**inputs, **kwargs)
            entry, recalls = session.entry, session.recalls
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    return Generation(text=lm.tokenizer.decode(new, skip_special_tokens=True), token_ids=new, audit=entry), recalls


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, in nats."""
    p, q = p.clamp_min(1e-12), q.clamp_min(1e-12)
    return (p * (p.log() - q.log())).sum(dim=-1)


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    label: str | None
    relevance: float
    # recalling by label: the relevance of the record's label group, which the gate reads
    label_relevance: float | None = None
    threshold: float | None  # what the gate holds against (the group's, or the record's); None: fixed gate
    weight: float
    text: str


class LayerRecall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int
    key_layer: int
    key_pooling: str
    threshold: str  # a number, or "calibrated (z ...)"
    strength: float
    recall_by: str
    candidates: list[Candidate]


class ABReport(Document):
    prompt: str
    model: str
    store: str
    disabled: str | None
    layers: list[LayerRecall]
    without_memory: str
    with_memory: str
    identical: bool
    kl_next_token: float
    vocabulary: list[str]
    vocabulary_shift_next_token: float  # probability mass onto the vocabulary, with minus without
    vocabulary_share_without: float  # share of the continuation's tokens in the vocabulary
    vocabulary_share_with: float
    generation_id: str | None


def _share(ids: list[int], vocab: set[int]) -> float:
    return sum(i in vocab for i in ids) / len(ids) if ids else 0.0


def ab(lm, runtime: MemoryRuntime, prompt: str, max_new_tokens: int = 40, chat: bool = False) -> ABReport:
    text = prompt_text(lm, prompt, chat)
    key_text = prompt if chat else None   # recall reads the user's text, not the chat template around it
    base, _ = greedy(lm, text, None, max_new_tokens)
    nudged, recalls = greedy(lm, text, runtime, max_new_tokens, key_text=key_text)
    p_base, _ = next_token_probs(lm, [text])
    p_mem, _ = next_token_probs(lm, [text], runtime, key_texts=[key_text] if chat else None)
    # The stored domain: the records this prompt recalled (the top candidates if none passed the
    # threshold). The hooks' own recall where they ran; with the kill switch on, a recall on the
    # prompt's un-nudged states, for display only.
    layers, sources = [], []
    bodies = _bodies(runtime)
    missing = [layer for layer in runtime.memories if recalls.get(layer) is None and runtime.memories[layer].size]
    states = {}
    for layer in missing:
        memory = runtime.memories[layer]
        key = (memory.key_layer, memory.key_pooling)
        if key not in states:
            states[key] = key_states(lm, [prompt if chat else text], [memory.key_layer],
                                     memory.key_pooling)[memory.key_layer]
    for layer, memory in sorted(runtime.memories.items()):
        recall = recalls.get(layer) or (memory.recall(states[memory.key_layer, memory.key_pooling])
                                        if layer in missing else None)
        if recall is None:
            continue
        weights = dict(zip(recall.record_ids[0], recall.weights[0], strict=True))
        groups = recall.top_group_relevance
        cands = [Candidate(id=rid, label=bodies[rid].label, relevance=r,
                           label_relevance=groups[0][j] if groups is not None else None,
                           threshold=memory.threshold_of(rid), weight=weights.get(rid, 0.0),
                           text=bodies[rid].source_text)
                 for j, (rid, r) in enumerate(recall.top_relevance[0])]
        layers.append(LayerRecall(layer=layer, key_layer=memory.key_layer, key_pooling=memory.key_pooling,
                                  threshold=memory.settings.describe_threshold(),
                                  strength=memory.settings.strength, recall_by=memory.settings.recall_by,
                                  candidates=cands))
        chosen = [c for c in cands if c.weight > 0] or cands
        sources += [c.text for c in chosen]
    vocab = lexicon(lm.tokenizer, sources) if sources else []
    vocab_set = set(vocab)
    return ABReport(prompt=prompt, model=lm.name, store=str(runtime.store.directory) if runtime.store else "",
                    disabled=nudged.audit.disabled if nudged.audit else None, layers=layers,
                    without_memory=base.text, with_memory=nudged.text, identical=base.token_ids == nudged.token_ids,
                    kl_next_token=float(kl(p_mem, p_base)[0]), vocabulary=[lm.tokenizer.decode([i]).strip() for i in vocab],
                    vocabulary_shift_next_token=float(p_mem[0, vocab].sum() - p_base[0, vocab].sum()) if vocab else 0.0,
                    vocabulary_share_without=_share(base.token_ids, vocab_set),
                    vocabulary_share_with=_share(nudged.token_ids, vocab_set),
                    generation_id=nudged.audit.generation_id if nudged.audit else None)


def _bodies(runtime: MemoryRuntime) -> dict:
    if runtime.store is None:
        return {}
    out = {}
    for layer in runtime.memories:
        out.update({rid: r.body for rid, r in runtime.store.read_layer(layer).records.items()})
    return out
