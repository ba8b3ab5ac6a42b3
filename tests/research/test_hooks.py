"""Residual-stream hooks (criteria 2-4): capture equals hidden_states, hooks always go away,
no-op edits are bit-identical, injections agree with and without the KV cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from baldr_ops.errors import UserError
from baldr_ops.research import hooks
from baldr_ops.research.models import wrap_model

pytestmark = pytest.mark.research


def _ids(batch=2, seq=7, seed=0):
    return torch.randint(3, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _hook_ids(lm):
    # transformers itself leaves a hook on each block once output_hidden_states was asked for
    return [sorted(block._forward_hooks) for block in lm.layers]


def _no_hooks_left(lm, before=None):
    return _hook_ids(lm) == (before if before is not None else [[] for _ in lm.layers])


def test_capture_equals_hidden_states_every_family(tiny_lm):
    ids = _ids()
    ref = tiny_lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    before = _hook_ids(tiny_lm)
    layers = range(tiny_lm.n_layers - 1)  # hidden_states[-1] is after the final norm
    with hooks.capture(tiny_lm, layers) as record:
        tiny_lm.model(input_ids=ids)
    for layer in layers:
        torch.testing.assert_close(record[layer], ref[layer + 1], atol=1e-5, rtol=0)
    assert _no_hooks_left(tiny_lm, before)


def test_capture_equals_hidden_states_smollm2(smollm2):
    inputs = smollm2.tokenize(["The capital of France is", "Sparse autoencoders read features"])
    with torch.no_grad():
        ref = smollm2.model(**inputs, output_hidden_states=True).hidden_states
    got = hooks.residuals(smollm2, inputs, [0, 12, 28])
    for layer, value in got.items():
        torch.testing.assert_close(value, ref[layer + 1], atol=1e-5, rtol=0)


def test_residuals_stops_after_the_deepest_layer(tiny_lm):
    calls = []
    handle = tiny_lm.layers[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        hooks.residuals(tiny_lm, {"input_ids": _ids()}, [1])
    finally:
        handle.remove()
    assert calls == []  # layer 2 never ran
    assert _no_hooks_left(tiny_lm)


class _TupleBlock(nn.Module):
    """A decoder block in the style of transformers 4.x: returns (hidden, attention weights)."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return (x + torch.tanh(self.lin(x)), torch.zeros(1))


class _TupleModel(nn.Module):
    def __init__(self, d=8, n=3):
        super().__init__()
        torch.manual_seed(0)
        self.config = type("Cfg", (), {"hidden_size": d, "model_type": "toy",
                                       "get_text_config": lambda self: self})()
        self.layers = nn.ModuleList(_TupleBlock(d) for _ in range(n))
        self.norm = nn.LayerNorm(d)

    def forward(self, x, use_cache=False):
        states = [x]
        for block in self.layers:
            x = block(x)[0]
            states.append(x)
        return self.norm(x), states


def test_tuple_block_outputs_are_handled():
    model = _TupleModel()
    lm = wrap_model(model, None, "/nonexistent/toy")
    x = torch.randn(2, 4, 8)
    _, states = model(x)
    with hooks.capture(lm, [0, 1]) as record:
        model(x)
    torch.testing.assert_close(record[0], states[1])  # not batch row 0 of the tuple
    torch.testing.assert_close(record[1], states[2])
    shift = torch.ones(8)
    with hooks.edit_residual(lm, {1: lambda h, call: h + shift}):
        _, edited = model(x)
    torch.testing.assert_close(edited[2], states[2] + shift)
    assert hooks.replace_residual((1, "a"), 2) == (2, "a")
    assert hooks.replace_residual([1, "a"], 2) == [2, "a"]


def test_hooks_are_removed_on_exceptions_and_logits_are_bit_identical(tiny_lm):
    ids = _ids()
    clean = tiny_lm.model(input_ids=ids).logits
    with pytest.raises(RuntimeError, match="body"):
        with hooks.edit_residual(tiny_lm, {1: lambda h, call: h * 2}):
            raise RuntimeError("body")
    assert _no_hooks_left(tiny_lm)

    def boom(h, call):
        raise RuntimeError("hook")
    with pytest.raises(RuntimeError, match="hook"):
        with hooks.edit_residual(tiny_lm, {0: boom}):
            tiny_lm.model(input_ids=ids)
    with pytest.raises(UserError, match="out of range"):  # a bad layer after a good one
        with hooks.edit_residual(tiny_lm, {0: lambda h, c: None, 9: lambda h, c: None}):
            pass
    assert _no_hooks_left(tiny_lm)
    assert torch.equal(tiny_lm.model(input_ids=ids).logits, clean)


def test_noop_and_zero_edits_are_bit_identical(tiny_lm):
    ids = _ids()
    clean = tiny_lm.model(input_ids=ids).logits
    with hooks.edit_residual(tiny_lm, {0: lambda h, c: None, 1: lambda h, c: h + torch.zeros_like(h)}):
        hooked = tiny_lm.model(input_ids=ids).logits
    assert torch.equal(hooked, clean)
    with hooks.edit_residual(tiny_lm, {1: lambda h, c: h + 0.5}):
        assert not torch.equal(tiny_lm.model(input_ids=ids).logits, clean)


def test_edit_sees_absolute_positions_with_the_kv_cache(smollm2):
    inputs = smollm2.tokenize("The capital of France is")
    seen = []
    with hooks.edit_residual(smollm2, {5: lambda h, call: seen.append((h.shape[1], call.positions[0].tolist()))}):
        smollm2.model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=True,
                               pad_token_id=smollm2.tokenizer.pad_token_id)
    n = inputs["input_ids"].shape[1]
    assert seen[0] == (n, list(range(n)))
    assert seen[1:] == [(1, [n]), (1, [n + 1])]


@pytest.mark.parametrize("use_cache_first", [True, False])
def test_injection_gives_same_greedy_tokens_with_and_without_cache(smollm2, use_cache_first):
    """Criterion 4: an injection that depends only on the token's own state and position."""
    torch.manual_seed(0)
    direction = torch.randn(smollm2.d_model)
    direction = direction / direction.norm()

    def nudge(h, call):
        return h + 4.0 * direction * h.norm(dim=-1, keepdim=True) / 10

    inputs = smollm2.tokenize("My favourite hobby is")
    outs = {}
    with hooks.edit_residual(smollm2, {12: nudge}):
        for use_cache in (use_cache_first, not use_cache_first):
            outs[use_cache] = smollm2.model.generate(**inputs, max_new_tokens=12, do_sample=False,
                                                     use_cache=use_cache,
                                                     pad_token_id=smollm2.tokenizer.pad_token_id)
    plain = smollm2.model.generate(**inputs, max_new_tokens=12, do_sample=False,
                                   pad_token_id=smollm2.tokenizer.pad_token_id)
    assert torch.equal(outs[True], outs[False])
    assert not torch.equal(outs[True], plain)  # the nudge did change the text
