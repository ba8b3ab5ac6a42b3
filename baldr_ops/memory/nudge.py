"""The hooks that nudge generation: at each configured layer, recall for the current state and add.

One `NudgeSession` covers one generation (one ``generate`` call or one forward pass). At each layer
its `LayerHook`:

1. pools the layer's state over the tokens it has not seen yet (absolute position 0, the
   attention sink, is never pooled or nudged). Given the prompt's inputs, the session pools the
   prompt from a clean pass (no hooks, stopped after the deepest key layer) before generation
   starts, so each layer recalls from the model's own state and not from a state a shallower
   layer's memory already moved: layers recall independently, and a nudge at one layer cannot
   pull recall at the next one toward itself. A memory whose keys live at another layer than the
   one it nudges, or are topic states (`keyspace`), recalls from the clean pass's state at its key
   layer (for topic keys a pass over the prompt followed by the topic question,
   `derive.topic_states`), so it needs the prompt's inputs and the prompt query;
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

Device: the memory, the pooled sums, the deltas and every counter live on the model's device. The
hook learns which positions a call holds from the call's shape and what it has seen (a cached step
adds tokens after the last one, a step without the cache re-runs everything plus one token), so a
generated token costs no copy to or from the host: the audit counters are read once, when the
session ends. The clip bound is checked there too; with ``strict`` (the default for a model on the
CPU, where reading a number costs nothing) it is also checked in every call.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from baldr_ops.memory import derive
from baldr_ops.memory.recall import LayerMemory, Recall
from baldr_ops.research import hooks

STRICT_ENV = "BALDR_MEMORY_STRICT_CLIP"  # "1": check the clip in every call on any device; "0": never per call


class ClipBreach(RuntimeError):
    """The nudge moved a token's residual further than its clip allows (a bug, never expected)."""


class SessionReused(RuntimeError):
    """A session's hooks saw a second generation (or a call they cannot place): its deltas belong to
    the first one, so the result would be wrong."""

    def __init__(self, detail: str):
        super().__init__(f"{detail}: a memory session covers one generate() or forward call; open a new "
                         f"session (runtime.session(...)) for each")


@dataclass
class LayerTrace:
    """What one layer did in one generation, for the audit trail (filled when the session ends)."""

    layer: int
    recalls: int = 0
    records: dict[str, dict[str, float]] = field(default_factory=dict)  # id -> max relevance, max weight
    delta_norm: float = 0.0  # of the last recall's delta (row 0), before the per-token clip
    tokens_nudged: int = 0
    tokens_clipped: int = 0
    max_ratio: float = 0.0  # the largest realised ||change|| / ||h|| of any token


def clip_tolerance(clip: float, dtype: torch.dtype) -> float:
    """How far the realised change may exceed ``clip * ||h||``, relative to ||h||. The clip itself is
    applied in float32 (slack: 1e-4 of the clip, for the norms' arithmetic). Rounding ``h + delta``
    to the model's dtype then moves it by at most the unit roundoff u = eps/2 times ||h + delta|| <=
    (1 + clip) ||h||, which no clip can prevent. So: clip * 1e-4 + 1.01 * u * (1 + clip); for
    bfloat16 and clip 0.5 that is 0.0059 (1.2 % of the clip), for float32 0.00005 (0.01 %)."""
    u = torch.finfo(dtype).eps / 2
    return clip * 1e-4 + 1.01 * u * (1 + clip)


class LayerHook:
    """The edit function of one layer for one generation (see the module docstring)."""

    def __init__(self, memory: LayerMemory, prompt_mask: torch.Tensor | None = None,
                 prompt_pooled: tuple[torch.Tensor, torch.Tensor] | None = None, strict: bool | None = None):
        self.memory = memory
        self.settings = memory.settings
        self.running = self.settings.query == "running"
        self.prompt_mask = prompt_mask  # [b, n] real tokens of a padded prompt batch, or None
        self.strict = strict  # None: per call, when the model is on the CPU
        self.trace = LayerTrace(memory.layer)
        self.seen = 0  # positions below this have been seen
        self.calls = 0
        self.total: torch.Tensor | None = None  # [b, d] float32 sum of pooled states
        self.count: torch.Tensor | None = None  # [b, 1]
        self.pooled_tokens = 0  # positions >= 1 pooled so far (padding included)
        self.pooled_upto = 0  # positions below this are already pooled
        self.current: torch.Tensor | None = None  # [b, d] delta for tokens that are new now; None = nothing
        self.first_delta: int | None = None  # the first position that got a delta (running query)
        self.history: torch.Tensor | None = None  # running query: [b, capacity, d] delta each position got
        self.last_recall: Recall | None = None
        self._acc: dict[str, torch.Tensor] | None = None  # device counters, read by `finish`
        self.dtype: torch.dtype | None = None  # the hidden states' (for the clip check in `finish`)
        if (memory.key_layer != memory.layer or memory.key_pooling != "mean") and (prompt_pooled is None or
                                                                                  self.running):
            raise ValueError(f"layer {memory.layer} recalls with {memory.key_pooling} keys at layer {memory.key_layer}: give the "
                             f"session the prompt's inputs (its clean pass pools them) and use the prompt query")
        if prompt_pooled is not None:  # (sum [b, d], count [b, 1]) from the session's clean pass
            self.total, self.count = (t.to(device=memory.device, dtype=torch.float32).clone() for t in prompt_pooled)
            self.pooled_upto = prompt_mask.shape[1] if prompt_mask is not None else 0
            self.pooled_tokens = max(self.pooled_upto - 1, 0)
            self._recall()

    # -- bookkeeping ---------------------------------------------------------------------------
    def _counters(self) -> dict[str, torch.Tensor]:
        if self._acc is None:
            device, n = self.memory.device, self.memory.size
            self._acc = {"nudged": torch.zeros((), dtype=torch.int64, device=device),
                         "clipped": torch.zeros((), dtype=torch.int64, device=device),
                         "worst": torch.zeros((), dtype=torch.float32, device=device),
                         "weight": torch.zeros(n, dtype=torch.float32, device=device),
                         "relevance": torch.full((n,), -torch.inf, dtype=torch.float32, device=device),
                         "delta_norm": torch.zeros((), dtype=torch.float32, device=device),
                         "positions": torch.zeros((), dtype=torch.bool, device=device)}
        return self._acc

    def _span(self, length: int) -> int:
        """The first position of a call of ``length`` tokens: 0 for the first call and for a re-run
        without the cache (everything so far plus one token), ``seen`` for a cached step (one token).
        Anything else is a second generation in the same session (or a multi-token cached call,
        which is not supported) and raises `SessionReused`."""
        if self.calls == 0 or (length == self.seen + 1 and length > 1):
            return 0
        if length == 1:
            return self.seen
        raise SessionReused(f"layer {self.memory.layer}: a call of {length} tokens after {self.seen} seen is "
                            f"neither a cached step (1 token) nor a re-run ({self.seen + 1})")

    def _check_positions(self, call: hooks.HookCall, end: int, strict: bool) -> None:
        """The call's own positions must end where the hook thinks: checked now when ``strict``,
        else on the device and read in `finish` (a second generation whose first call happens to
        look like a step is caught here)."""
        if call.positions is None:
            return
        wrong = call.positions.amax() != end - 1
        if strict:
            if bool(wrong):
                raise SessionReused(f"layer {self.memory.layer}: positions restart below the {self.seen} seen")
        else:
            acc = self._counters()
            acc["positions"] = acc["positions"] | wrong.to(acc["positions"].device)

    def _pool(self, hidden: torch.Tensor, start: int, first: int, end: int) -> None:
        """Add positions first..end-1 of the call (which starts at ``start``) to the pooled sum."""
        states = hidden[:, first - start:end - start]
        weight = torch.ones(states.shape[:2], dtype=torch.float32, device=hidden.device)
        if first == 0:
            weight[:, 0] = 0  # the attention sink
        if self.prompt_mask is not None and first < self.prompt_mask.shape[1]:
            n = self.prompt_mask.shape[1]
            weight[:, :n - first] *= self.prompt_mask[:, first:min(n, end)].to(torch.float32)
        total, count = derive.pooled_sum(states, weight)
        if self.total is None:
            self.total, self.count = total, count
        else:
            self.total += total
            self.count += count
        self.pooled_tokens += end - max(first, 1)
        self.pooled_upto = end

    def _recall(self) -> None:
        if self.pooled_tokens <= 0:
            return
        recall = self.memory.recall(self.total / self.count.clamp_min(1.0), valid=self.count[:, 0] > 0)
        self.trace.recalls += 1
        self.last_recall = recall
        acc = self._counters()
        acc["delta_norm"] = recall.delta[0].norm()
        if recall.rows.numel():
            rows, w = recall.rows.flatten(), recall.weight_matrix.flatten()
            acc["weight"].scatter_reduce_(0, rows, torch.where(w > 0, w, 0.0), "amax")
            acc["relevance"].scatter_reduce_(0, rows, torch.where(w > 0, recall.scores.flatten(), -torch.inf), "amax")
        if self.running:
            self.current = recall.delta  # a zero row where nothing is recalled: adding it changes nothing
        else:  # one recall per generation: whether it recalled anything is read once, here
            self.current = recall.delta if recall.active else None

    def _remember(self, first: int, end: int) -> None:
        """Running query: positions first..end-1 are new and get the current delta."""
        if self.current is None:
            return
        b, d = self.current.shape
        if self.history is None or self.history.shape[1] < end:
            capacity = max(64, 2 * end)
            grown = torch.zeros((b, capacity, d), dtype=torch.float32, device=self.current.device)
            if self.history is not None:
                grown[:, :self.history.shape[1]] = self.history
            self.history = grown
        lo = max(first, 1)
        if lo < end:
            self.history[:, lo:end] = self.current[:, None, :]
            self.first_delta = lo if self.first_delta is None else self.first_delta

    # -- the edit ------------------------------------------------------------------------------
    def __call__(self, hidden: torch.Tensor, call: hooks.HookCall) -> torch.Tensor | None:
        if self.memory.device != hidden.device:  # a memory built elsewhere: moved once
            self.memory = self.memory.to(hidden.device)
        length = hidden.shape[1]
        start = self._span(length)
        end = start + length
        self._check_positions(call, end, self._strict(hidden))
        first_new = max(self.seen, start)
        self.calls += 1
        if first_new < end:
            fresh = max(first_new, self.pooled_upto)
            if fresh < end and (self.running or self.trace.recalls == 0):
                self._pool(hidden, start, fresh, end)
                self._recall()
            if self.running:
                self._remember(first_new, end)
            self.seen = end
        if self.running:
            if self.first_delta is None or self.first_delta >= end:
                return None
            delta = self.history[:, start:end]
        else:
            if self.current is None or end <= 1:
                return None
            delta = self.current[:, None, :].expand(-1, length, -1)
            if start == 0:
                delta = torch.cat([torch.zeros_like(delta[:, :1]), delta[:, 1:]], dim=1)
        return self._apply(hidden, delta, first_new - start)

    def _apply(self, hidden: torch.Tensor, delta: torch.Tensor, new_from: int) -> torch.Tensor:
        clip = self.settings.clip
        h = hidden.to(torch.float32)
        h_norm = h.norm(dim=-1, keepdim=True)
        d_norm = delta.norm(dim=-1, keepdim=True)
        scale = torch.where(d_norm > 0, (clip * h_norm / d_norm.clamp_min(1e-30)).clamp(max=1.0),
                            torch.zeros_like(d_norm))
        out = torch.where(d_norm > 0, (h + delta * scale).to(hidden.dtype), hidden)
        # Measure what was really added (after rounding to the model's dtype) and hold the bound.
        ratio = (out.to(torch.float32) - h).norm(dim=-1) / h_norm.squeeze(-1).clamp_min(1e-30)
        acc = self._counters()
        acc["worst"] = torch.maximum(acc["worst"], ratio.max())
        if self._strict(hidden):
            self._check_clip(float(acc["worst"]), hidden.dtype)
        touched = (d_norm.squeeze(-1) > 0)[:, new_from:]
        acc["nudged"] += touched.sum()
        acc["clipped"] += (touched & (scale.squeeze(-1)[:, new_from:] < 1)).sum()
        self.dtype = hidden.dtype
        return out

    def _strict(self, hidden: torch.Tensor) -> bool:
        if self.strict is not None:
            return self.strict
        env = os.environ.get(STRICT_ENV, "").strip()
        return env == "1" if env in ("0", "1") else hidden.device.type == "cpu"

    def _check_clip(self, worst: float, dtype: torch.dtype) -> None:
        clip = self.settings.clip
        if worst > clip + clip_tolerance(clip, dtype):
            raise ClipBreach(f"layer {self.memory.layer}: a token moved by {worst:.4f} of its norm, clip {clip}")

    def finish(self) -> LayerTrace:
        """Read the device counters into the trace (one copy per layer) and check the clip bound."""
        if self._acc is not None:
            acc = {k: v.cpu() for k, v in self._acc.items()}
            t = self.trace
            t.tokens_nudged, t.tokens_clipped = int(acc["nudged"]), int(acc["clipped"])
            t.max_ratio, t.delta_norm = float(acc["worst"]), float(acc["delta_norm"])
            weights, relevance = acc["weight"].tolist(), acc["relevance"].tolist()
            t.records = {self.memory.record_ids[i]: {"relevance": relevance[i], "weight": w}
                         for i, w in enumerate(weights) if w > 0}
            if bool(acc["positions"]):
                raise SessionReused(f"layer {self.memory.layer}: a call's positions did not follow the ones before")
            if self.dtype is not None:
                self._check_clip(t.max_ratio, self.dtype)
        return self.trace


def _mask_of(inputs: dict) -> torch.Tensor:
    """A tokenized batch's attention mask (all ones when it has none)."""
    mask = inputs.get("attention_mask")
    return torch.ones_like(inputs["input_ids"]) if mask is None else mask


class NudgeSession:
    """Hooks for one generation; ``with`` it around the ``generate`` (or forward) call."""

    def __init__(self, lm, memories: dict[int, LayerMemory], inputs: dict | None = None,
                 disabled_reason: str | None = None, strict: bool | None = None, key_inputs: dict | None = None):
        """``inputs``: the prompt's ``input_ids`` and ``attention_mask`` (a right-padded batch is
        fine), pooled from a clean pass; without them each layer pools what its hook sees.
        ``key_inputs``: what the clean pass reads instead (same batch size), e.g. the user's text
        without the chat template around it. ``strict``: check the clip in every call (default:
        when the model is on the CPU)."""
        self.lm = lm
        self.disabled_reason = disabled_reason
        device = lm.device
        active = {} if disabled_reason else {layer: m.to(device) for layer, m in memories.items() if m.size}
        mask = _mask_of(inputs) if inputs is not None else None
        keys = {(m.key_layer, m.key_pooling) for m in active.values()}
        # Recall reads ``key_inputs`` when given (and only when there is a prompt to nudge).
        source = key_inputs if key_inputs is not None else inputs
        pooled = self._clean_pool(lm, source, _mask_of(source), keys) if active and inputs is not None else {}
        self.hooks = {layer: LayerHook(m, mask, pooled.get((m.key_layer, m.key_pooling)), strict)
                      for layer, m in active.items()}
        self._stack: ExitStack | None = None

    @staticmethod
    def _clean_pool(lm, inputs: dict, mask: torch.Tensor, keys: set[tuple[int, str]]) -> dict:
        """{(layer, pooling): (sum, count)} of the prompt, unhooked: for mean keys its states over its
        tokens after the first, for topic keys its topic state (count 1; 0 for a row of one token,
        which a mean would not pool either)."""
        inputs = {"input_ids": inputs["input_ids"], "attention_mask": mask}
        out = {}
        mean_layers = sorted(layer for layer, pooling in keys if pooling == "mean")
        if mean_layers:
            weights = derive.token_weights(mask)
            states = hooks.residuals(lm, inputs, mean_layers)
            out.update({(layer, "mean"): derive.pooled_sum(hidden, weights) for layer, hidden in states.items()})
        topic_layers = sorted(layer for layer, pooling in keys if pooling == "topic")
        if topic_layers:
            count = (mask.sum(dim=1, keepdim=True) >= 2).to(torch.float32)
            states = derive.topic_states(lm, inputs, topic_layers)
            out.update({(layer, "topic"): (hidden * count.to(hidden.device), count) for layer, hidden in states.items()})
        return out

    def __enter__(self) -> NudgeSession:
        if self._stack is not None:
            raise SessionReused("this session was entered before")
        self._stack = ExitStack()
        if self.hooks:
            self._stack.enter_context(hooks.edit_residual(self.lm, dict(self.hooks)))
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stack.close()
        try:
            for hook in self.hooks.values():
                hook.finish()
        except (ClipBreach, SessionReused):
            if exc_type is None:
                raise

    @property
    def traces(self) -> list[LayerTrace]:
        return [self.hooks[layer].trace for layer in sorted(self.hooks)]
