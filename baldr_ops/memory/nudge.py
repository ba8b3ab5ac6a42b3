"""The hooks that nudge generation: at each configured layer, recall for the current state and add.

One `NudgeSession` covers one generation (one ``generate`` call or one forward pass). At each layer
its `LayerHook`:

1. pools the layer's state over the tokens it has not seen yet (absolute position 0, the
   attention sink, is never pooled or nudged). Given the prompt's inputs, the session pools the
   prompt from a clean pass (no hooks, stopped after the deepest memory layer) before generation
   starts, so each layer recalls from the model's own state and not from a state a shallower
   layer's memory already moved: layers recall independently, and a nudge at one layer cannot
   pull recall at the next one toward itself;
2. recalls: once, for the prompt ("prompt" query, the default: the nudge is then one fixed vector
   for the whole generation), or again at every step from the running mean of all tokens so far
   ("running"; the states of generated tokens are those the model computed, shallower nudges
   included);
3. adds, at every position p >= 1, the delta that was current when p was new, clipped to
   ``clip * ||h_p||``; the realised change is measured and a breach of the bound raises.

Why the per-position bookkeeping: with the KV cache a step's call holds only the new token, without
it every step re-runs the whole sequence. Giving each position the delta it got when it was new
makes both paths compute the same thing, so greedy tokens agree with and without the cache. When no
position of a call has a delta (memory off, an empty store, nothing above the threshold) the hook
returns None and the layer's output object is untouched: logits are bit-identical to the unhooked
model's.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from baldr_ops.memory import derive
from baldr_ops.memory.recall import LayerMemory, Recall
from baldr_ops.research import hooks


class ClipBreach(RuntimeError):
    """The nudge moved a token's residual further than its clip allows (a bug, never expected)."""


@dataclass
class LayerTrace:
    """What one layer did in one generation, for the audit trail."""

    layer: int
    recalls: int = 0
    records: dict[str, dict[str, float]] = field(default_factory=dict)  # id -> max relevance, max weight
    delta_norm: float = 0.0  # of the last recall's delta (row 0), before the per-token clip
    tokens_nudged: int = 0
    tokens_clipped: int = 0
    max_ratio: float = 0.0  # the largest realised ||change|| / ||h|| of any token

    def note_recall(self, recall: Recall) -> None:
        self.recalls += 1
        self.delta_norm = float(recall.delta[0].norm())
        for ids, rel, wts in zip(recall.record_ids, recall.relevance, recall.weights, strict=True):
            for rid, r, w in zip(ids, rel, wts, strict=True):
                seen = self.records.setdefault(rid, {"relevance": r, "weight": w})
                seen["relevance"], seen["weight"] = max(seen["relevance"], r), max(seen["weight"], w)


class LayerHook:
    """The edit function of one layer for one generation (see the module docstring)."""

    def __init__(self, memory: LayerMemory, prompt_mask: torch.Tensor | None = None,
                 prompt_pooled: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.memory = memory
        self.settings = memory.settings
        self.prompt_mask = prompt_mask  # [b, n] real tokens of a padded prompt batch, or None
        self.trace = LayerTrace(memory.layer)
        self.seen = 0
        self.total: torch.Tensor | None = None  # [b, d] float32 sum of pooled states
        self.count: torch.Tensor | None = None  # [b, 1]
        self.current: torch.Tensor | None = None  # [b, d] delta for tokens that are new now, None = nothing
        self.history: list[torch.Tensor | None] = []  # delta each position got when it was new
        self.last_recall: Recall | None = None
        self.pooled_upto = 0  # positions below this are already pooled
        if prompt_pooled is not None:  # (sum [b, d], count [b, 1]) from the session's clean pass
            self.total, self.count = (t.to(torch.float32).cpu().clone() for t in prompt_pooled)
            self.pooled_upto = prompt_mask.shape[1] if prompt_mask is not None else 0
            self._recall()

    # -- bookkeeping ---------------------------------------------------------------------------
    def _positions(self, call: hooks.HookCall, length: int) -> torch.Tensor:
        if call.positions is not None:
            return call.positions[0].to("cpu")
        return torch.arange(self.seen, self.seen + length)  # models that pass none: assume cached steps

    def _pool_new(self, hidden: torch.Tensor, positions: torch.Tensor, new: torch.Tensor) -> None:
        pos = positions[new]
        states = hidden[:, new.to(hidden.device)].to(torch.float32).cpu()
        weight = (pos >= 1).to(torch.float32).expand(states.shape[0], -1).clone()
        if self.prompt_mask is not None:
            n = self.prompt_mask.shape[1]
            inside = pos < n
            weight[:, inside] *= self.prompt_mask[:, pos[inside]].to(torch.float32).cpu()
        total, count = derive.pooled_sum(states, weight)
        if self.total is None:
            self.total, self.count = total, count
        else:
            self.total += total
            self.count += count

    def _recall(self) -> None:
        if self.count is None or not bool((self.count > 0).all()):
            return
        recall = self.memory.recall(self.total / self.count)
        self.trace.note_recall(recall)
        self.last_recall = recall
        self.current = recall.delta if recall.active else None

    # -- the edit ------------------------------------------------------------------------------
    def __call__(self, hidden: torch.Tensor, call: hooks.HookCall) -> torch.Tensor | None:
        positions = self._positions(call, hidden.shape[1])
        new = positions >= self.seen
        if bool(new.any()):
            fresh = new & (positions >= self.pooled_upto)
            if bool(fresh.any()) and (self.settings.query == "running" or self.trace.recalls == 0):
                self._pool_new(hidden, positions, fresh)
                self._recall()
            end = int(positions.max()) + 1
            self.history.extend([None] * (end - len(self.history)))
            for p in positions[new].tolist():
                self.history[p] = self.current if p >= 1 else None
            self.seen = max(self.seen, end)
        deltas = [self.history[p] for p in positions.tolist()]
        if all(d is None for d in deltas):
            return None
        zero = torch.zeros_like(next(d for d in deltas if d is not None))
        delta = torch.stack([zero if d is None else d for d in deltas], dim=1).to(hidden.device)  # [b, s, d]
        return self._apply(hidden, delta, new.to(hidden.device))

    def _apply(self, hidden: torch.Tensor, delta: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        clip = self.settings.clip
        h = hidden.to(torch.float32)
        h_norm = h.norm(dim=-1, keepdim=True)
        d_norm = delta.norm(dim=-1, keepdim=True)
        scale = torch.where(d_norm > 0, (clip * h_norm / d_norm.clamp_min(1e-30)).clamp(max=1.0),
                            torch.zeros_like(d_norm))
        out = (h + delta * scale).to(hidden.dtype)
        # Measure what was really added (after rounding to the model's dtype) and hold the bound.
        ratio = (out.to(torch.float32) - h).norm(dim=-1) / h_norm.squeeze(-1).clamp_min(1e-30)
        tolerance = clip * 1e-3 + 8 * torch.finfo(hidden.dtype).eps
        worst = float(ratio.max())
        if worst > clip + tolerance:
            raise ClipBreach(f"layer {self.memory.layer}: a token moved by {worst:.4f} of its norm, clip {clip}")
        touched = (d_norm.squeeze(-1) > 0) & new
        self.trace.tokens_nudged += int(touched.sum())
        self.trace.tokens_clipped += int((touched & (scale.squeeze(-1) < 1)).sum())
        self.trace.max_ratio = max(self.trace.max_ratio, worst)
        return out


class NudgeSession:
    """Hooks for one generation; ``with`` it around the ``generate`` (or forward) call."""

    def __init__(self, lm, memories: dict[int, LayerMemory], inputs: dict | None = None,
                 disabled_reason: str | None = None):
        """``inputs``: the prompt's ``input_ids`` and ``attention_mask`` (a right-padded batch is
        fine), pooled from a clean pass; without them each layer pools what its hook sees."""
        self.lm = lm
        self.disabled_reason = disabled_reason
        active = {} if disabled_reason else {layer: m for layer, m in memories.items() if m.size}
        mask = inputs.get("attention_mask") if inputs is not None else None
        if inputs is not None and mask is None:
            mask = torch.ones_like(inputs["input_ids"])
        pooled = self._clean_pool(lm, inputs, mask, sorted(active)) if active and inputs is not None else {}
        self.hooks = {layer: LayerHook(m, mask, pooled.get(layer)) for layer, m in active.items()}
        self._stack: ExitStack | None = None

    @staticmethod
    def _clean_pool(lm, inputs: dict, mask: torch.Tensor, layers: list[int]) -> dict:
        """{layer: (sum, count)} of the prompt's states over its tokens after the first, unhooked."""
        states = hooks.residuals(lm, {"input_ids": inputs["input_ids"], "attention_mask": mask}, layers)
        weights = derive.token_weights(mask)
        return {layer: derive.pooled_sum(hidden, weights) for layer, hidden in states.items()}

    def __enter__(self) -> NudgeSession:
        self._stack = ExitStack()
        if self.hooks:
            self._stack.enter_context(hooks.edit_residual(self.lm, dict(self.hooks)))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def traces(self) -> list[LayerTrace]:
        return [self.hooks[layer].trace for layer in sorted(self.hooks)]
