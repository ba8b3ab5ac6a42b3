"""The hook's device handling, without a GPU: the memory, the pooled sums, the deltas and the
counters live where the hidden states do, and a generated token reads nothing back to the host.

Two checks stand in for a GPU. On the "meta" device a tensor has no data: reading a value raises,
and mixing in a tensor made on the CPU raises, so a whole generation's hook calls running there
show that nothing in the per-token path is created on the CPU or copied to it. On the CPU, the
methods that read a tensor's value (``item``, ``tolist``, ``cpu``, ``bool``, ...) are made to raise
while the per-token calls run. The numbers themselves are checked against the unchanged CPU
behaviour by the bit-identity and KV-cache tests (test_nudge.py)."""

from __future__ import annotations

import pytest
import torch

from baldr_ops.memory.config import LayerSettings
from baldr_ops.memory.recall import LayerMemory, Recall
from baldr_ops.memory.nudge import LayerHook
from baldr_ops.research.hooks import HookCall

pytestmark = pytest.mark.research

D, PROMPT = 16, 5


def _memory(query: str, device: str) -> LayerMemory:
    keys = torch.randn(6, D, generator=torch.Generator().manual_seed(0))
    settings = LayerSettings(layer=0, threshold=-1.0, strength=1.0, query=query, clip=0.5)
    return LayerMemory(settings, list("abcdef"), keys, keys * 3, torch.zeros(D), device=device)


def _calls(cache: bool, steps: int = 4):
    """(hidden length, positions) of a generation's calls: the prompt, then one token per step."""
    yield PROMPT, torch.arange(PROMPT)[None]
    for step in range(steps):
        n = PROMPT + step + 1
        yield (1, torch.tensor([[n - 1]])) if cache else (n, torch.arange(n)[None])


def _hidden(n: int, device: str) -> torch.Tensor:
    return (torch.randn(1, n, D, generator=torch.Generator().manual_seed(n)) * 5).to(device)


class _HostRead(AssertionError):
    pass


def _forbid_host_reads(monkeypatch) -> None:
    def refuse(name):
        def method(self, *args, **kwargs):
            raise _HostRead(f"Tensor.{name} in the per-token path")
        return method
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse(name))


@pytest.mark.parametrize("query", ["prompt", "running"])
@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("clean_pass", [True, False])
def test_per_token_calls_read_nothing_back_to_the_host(monkeypatch, query, cache, clean_pass):
    memory = _memory(query, "cpu")
    mask = torch.ones(1, PROMPT, dtype=torch.long)
    pooled = (_hidden(PROMPT, "cpu")[:, 1:].sum(1), torch.full((1, 1), PROMPT - 1.0)) if clean_pass else None
    hook = LayerHook(memory, mask if clean_pass else None, pooled, strict=False)  # recall at the start: may read
    calls = list(_calls(cache))
    if not clean_pass:  # then the prompt's call pools and recalls, once per generation
        hook(_hidden(calls[0][0], "cpu"), HookCall(0, calls[0][1]))
        calls = calls[1:]
    with monkeypatch.context() as m:
        _forbid_host_reads(m)
        for n, positions in calls:
            out = hook(_hidden(n, "cpu"), HookCall(0, positions))
            assert out is not None and out.shape == (1, n, D)
    trace = hook.finish()  # the one read, at the end
    assert trace.tokens_nudged == PROMPT - 1 + 4 and trace.recalls == (1 if query == "prompt" else 5)
    assert len(trace.records) >= 4 and 0 < trace.max_ratio <= 0.5 + 1e-3


@pytest.mark.parametrize("query", ["prompt", "running"])
@pytest.mark.parametrize("cache", [True, False])
def test_the_hook_runs_where_the_hidden_states_are(monkeypatch, query, cache):
    """On the meta device nothing can be read and nothing made on the CPU can be mixed in."""
    if query == "prompt":  # the one read of a generation: whether its single recall found anything
        monkeypatch.setattr(Recall, "active", property(lambda self: True))
    memory = _memory(query, "meta")
    mask = torch.ones(1, PROMPT, dtype=torch.long, device="meta")
    pooled = (torch.zeros(1, D, device="meta"), torch.full((1, 1), PROMPT - 1.0, device="meta"))
    hook = LayerHook(memory, mask, pooled, strict=False)
    for n, positions in _calls(cache):
        out = hook(_hidden(n, "meta"), HookCall(0, positions.to("meta")))
        assert out.device.type == "meta" and out.shape == (1, n, D)


def test_a_layer_memory_lives_on_its_device():
    """`MemoryRuntime.load` builds each layer's memory on the model's device: keys, values, centre."""
    memory = _memory("prompt", "meta")
    assert {memory.values.device.type, memory.centre.device.type, memory.index.keys.device.type} == {"meta"}
    recall = memory.recall(torch.zeros(2, D, device="meta"))
    assert recall.delta.device.type == "meta" and recall.weight_matrix.device.type == "meta"


def test_clip_tolerance_is_relative_to_the_clip_and_sound_in_bfloat16():
    """The realised change may pass clip * ||h|| only by float32 slack and the dtype's rounding of
    h + delta (unit roundoff u times (1 + clip)), not by a fixed 8 eps (12 % of a 0.5 clip in bf16)."""
    from baldr_ops.memory.nudge import ClipBreach, clip_tolerance

    assert clip_tolerance(0.5, torch.bfloat16) < 0.5 * 0.015
    assert clip_tolerance(0.5, torch.float32) < 0.5 * 1.1e-4
    for clip in (0.01, 0.1, 0.5, 2.0):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            memory = _memory("prompt", "cpu")
            memory.settings = memory.settings.model_copy(update={"clip": clip})
            memory.values = memory.values * 1000  # always clipped
            pooled = (memory.values[:1] / 3000, torch.ones(1, 1))
            hook = LayerHook(memory, torch.ones(1, 64, dtype=torch.long), pooled, strict=True)
            hidden = (torch.randn(1, 64, D, generator=torch.Generator().manual_seed(7)) * 30).to(dtype)
            hook(hidden, HookCall(0, torch.arange(64)[None]))  # strict: a breach would raise here
            trace = hook.finish()
            assert clip <= trace.max_ratio + 1e-3 * clip and trace.max_ratio <= clip + clip_tolerance(clip, dtype)
    with pytest.raises(ClipBreach):  # 5 % over a 0.5 clip in bf16 is a breach (the old bound let 12 % pass)
        LayerHook(_memory("prompt", "cpu"))._check_clip(0.5 * 1.05, torch.bfloat16)
