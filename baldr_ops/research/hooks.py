"""Read and edit the residual stream at the output of decoder layer L.

The output of block L is ``hidden_states[L + 1]`` of ``output_hidden_states=True`` (SAELens'
``blocks.L.hook_resid_post``). In transformers 5.x a decoder block returns a plain tensor, older
releases a tuple whose first item is the hidden state: `residual` and `replace_residual` handle both,
so no caller ever writes ``out[0]`` (which on a tensor silently takes batch row 0).

Every hook is registered inside a context manager and removed in its ``finally``, so an exception
in the body (or in the hook) never leaves a hook behind; with no hook attached the model is the
unhooked model, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from baldr_ops.research.models import LanguageModel


def residual(output) -> torch.Tensor:
    """The hidden state in a decoder block's output, whichever shape the transformers release uses."""
    return output if torch.is_tensor(output) else output[0]


def replace_residual(output, hidden: torch.Tensor):
    """The block's output with its hidden state replaced, in the same container type."""
    if torch.is_tensor(output):
        return hidden
    return (hidden, *output[1:]) if isinstance(output, tuple) else type(output)([hidden, *output[1:]])


@dataclass(frozen=True)
class HookCall:
    """What an edit function is told about the forward call it runs in."""

    layer: int
    # Absolute positions of this call's tokens, [batch, seq] (with a KV cache, only the new ones),
    # or None where the model does not pass them to its blocks.
    positions: torch.Tensor | None


EditFn = Callable[[torch.Tensor, HookCall], "torch.Tensor | None"]


def _positions(kwargs: dict) -> torch.Tensor | None:
    pos = kwargs.get("position_ids")
    if pos is None:
        pos = kwargs.get("cache_position")
        if pos is not None:
            pos = pos.unsqueeze(0)
    return pos


@contextmanager
def edit_residual(lm: LanguageModel, edits: Mapping[int, EditFn]) -> Iterator[None]:
    """Run ``fn(hidden, call)`` on the output of each named layer; a returned tensor replaces the
    hidden state, ``None`` leaves the output object untouched (so a no-op edit is bit-identical)."""
    handles = []

    def make(layer: int, fn: EditFn):
        def hook(_module, _args, kwargs, output):
            new = fn(residual(output), HookCall(layer, _positions(kwargs)))
            return None if new is None else replace_residual(output, new)
        return hook

    try:
        for layer, fn in edits.items():
            index = lm.check_layer(layer)
            handles.append(lm.layers[index].register_forward_hook(make(index, fn), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised by a capture hook to skip the layers after the last one wanted."""


class Capture:
    """Hidden states recorded at some layers, one tensor per forward call, [batch, seq, d_model]."""

    def __init__(self, layers: Iterable[int]):
        self.calls: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}

    def __getitem__(self, layer: int) -> torch.Tensor:
        """The layer's states over every call so far, concatenated along the sequence (one call:
        the prompt; during cached generation: prompt then each new token)."""
        calls = self.calls[layer]
        if not calls:
            raise KeyError(f"layer {layer} was not reached by any forward call")
        return calls[0] if len(calls) == 1 else torch.cat(calls, dim=1)


@contextmanager
def capture(lm: LanguageModel, layers: Iterable[int], *, stop_after_last: bool = False) -> Iterator[Capture]:
    """Record the output of each layer (detached copies). With ``stop_after_last`` the hook of the
    deepest layer raises `StopForward`, so a forward call computes no further than it needs."""
    indices = sorted({lm.check_layer(layer) for layer in layers})
    if not indices:
        raise ValueError("capture needs at least one layer")
    record = Capture(indices)
    last = indices[-1]

    def make(layer: int) -> EditFn:
        def grab(hidden: torch.Tensor, _call: HookCall) -> None:
            record.calls[layer].append(hidden.detach().clone())
            if stop_after_last and layer == last:
                raise StopForward
        return grab

    with edit_residual(lm, {layer: make(layer) for layer in indices}):
        yield record


def residuals(lm: LanguageModel, inputs: Mapping[str, torch.Tensor], layers: Iterable[int]) -> dict[int, torch.Tensor]:
    """The residual stream at ``layers`` for one batch, running the model only as deep as needed."""
    with torch.no_grad(), capture(lm, layers, stop_after_last=True) as record:
        try:
            lm.model(**inputs, use_cache=False)
        except StopForward:
            pass
    return {layer: record[layer] for layer in record.calls}
