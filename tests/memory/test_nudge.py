"""The nudge on SmolLM2 (criteria 3, 4, 15, 16): nothing recalled or memory off is bit-identical;
the KV cache does not change greedy tokens; a 1000x poisoned memory moves no token by more than
clip * ||h||; weights stay under the cap; the kill switch; the audit trail; generation never writes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from baldr_ops.memory.audit import AuditLog
from baldr_ops.memory.config import LayerSettings
from baldr_ops.memory.records import RecordBody, encode_array, now, sha256_text
from baldr_ops.memory.runtime import MemoryRuntime
from baldr_ops.memory.store import KILL_ENV, layer_file
from baldr_ops.research import hooks

pytestmark = pytest.mark.research

FINANCE = "When interest rates go up, investors usually"
NEUTRAL = ["The key to success is", "Yesterday afternoon I decided to"]


def _runtime(store, lm, layer=13, **settings):
    return MemoryRuntime.load(store, lm, [LayerSettings(layer=layer, **settings)])


def _logits(lm, texts, runtime=None, layers=None):
    inputs = lm.tokenize(texts)
    with torch.no_grad():
        if runtime is None:
            return lm.model(**inputs).logits
        with runtime.session(inputs, layers=layers) as session:
            out = lm.model(**inputs).logits
        return out, session.entry


def test_nothing_above_threshold_is_bit_identical(store_copy, smollm2):
    clean = _logits(smollm2, NEUTRAL + [FINANCE])
    out, entry = _logits(smollm2, NEUTRAL + [FINANCE], _runtime(store_copy, smollm2, threshold=0.99))
    assert torch.equal(out, clean)
    assert entry.layers[0].recalls == 1 and not entry.influenced
    # The default threshold recalls nothing for these neutral prompts either.
    out, entry = _logits(smollm2, NEUTRAL, _runtime(store_copy, smollm2))
    assert torch.equal(out, _logits(smollm2, NEUTRAL)) and not entry.influenced


def test_relevant_prompt_is_nudged_and_audited(store_copy, smollm2):
    runtime = _runtime(store_copy, smollm2)
    out, entry = _logits(smollm2, [FINANCE], runtime)
    assert not torch.equal(out, _logits(smollm2, [FINANCE]))
    layer = entry.layers[0]
    labels = {store_copy.find_record(r.id)[1].body.label for r in layer.records}
    assert labels == {"finance"}
    assert all(0 < r.weight <= 1.0 for r in layer.records) and layer.tokens_nudged > 0
    assert 0 < layer.max_ratio <= 0.5 + 1e-3
    logged, problems = AuditLog(store_copy).read()
    assert not problems and logged[-1].generation_id == entry.generation_id


def test_kill_switch_and_empty_memory_are_bit_identical(store_copy, smollm2, monkeypatch):
    clean = _logits(smollm2, [FINANCE])
    runtime = _runtime(store_copy, smollm2)
    store_copy.set_disabled(True)
    out, entry = _logits(smollm2, [FINANCE], runtime)  # checked at session start, not at load
    assert torch.equal(out, clean) and "kill switch" in entry.disabled and entry.layers == []
    store_copy.set_disabled(False)
    monkeypatch.setenv(KILL_ENV, "1")
    out, entry = _logits(smollm2, [FINANCE], runtime)
    assert torch.equal(out, clean) and KILL_ENV in entry.disabled
    monkeypatch.delenv(KILL_ENV)
    for rid in list(store_copy.read_layer(13).records):
        store_copy.decide(rid, "revoke")
    empty = _runtime(store_copy, smollm2)
    assert empty.memories[13].size == 0
    out, entry = _logits(smollm2, [FINANCE], empty)
    assert torch.equal(out, clean)


@pytest.mark.parametrize("keys, query, clean_pass", [("deep", "prompt", True), ("local", "prompt", True),
                                                     ("local", "running", True), ("local", "prompt", False)])
def test_same_greedy_tokens_with_and_without_kv_cache(store_copy, local_copy, smollm2, keys, query, clean_pass):
    store = store_copy if keys == "deep" else local_copy
    runtime = _runtime(store, smollm2, query=query, threshold=0.15)
    inputs = smollm2.tokenize(FINANCE)
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=smollm2.tokenizer.pad_token_id)
    outs, entries = {}, {}
    for use_cache in (True, False):
        with torch.no_grad(), runtime.session(inputs if clean_pass else None, prompt=FINANCE) as session:
            outs[use_cache] = smollm2.model.generate(**inputs, use_cache=use_cache, **kwargs)
        entries[use_cache] = session.entry
    plain = smollm2.model.generate(**inputs, **kwargs)
    assert torch.equal(outs[True], outs[False])
    assert not torch.equal(outs[True], plain)
    recalls = [entries[c].layers[0].recalls for c in (True, False)]
    assert recalls == ([1, 1] if query == "prompt" else [12, 12])  # prefill, then one per later step
    assert entries[True].layers[0].tokens_nudged == entries[False].layers[0].tokens_nudged


def test_keys_at_another_layer_need_the_prompt_query_and_its_inputs(store_copy, smollm2):
    """With topic keys at layer 28 and the nudge at 13, recall comes from the session's clean pass:
    the prompt's tokens followed by the topic question, the state at its last token at layer 28,
    exactly what writing the prompt as a memory would key. The running query and a session without
    the prompt's inputs cannot read that state in time and are refused, not silently wrong."""
    from baldr_ops.errors import UserError
    from baldr_ops.memory import derive

    inputs = smollm2.tokenize(FINANCE)
    runtime = _runtime(store_copy, smollm2)
    assert (runtime.memories[13].key_layer, runtime.memories[13].key_pooling) == (28, "topic")
    with torch.no_grad(), runtime.session(inputs) as session:
        hook = session.nudge.hooks[13]
        query = hook.total / hook.count
    assert torch.equal(query.cpu(), derive.key_states(smollm2, [FINANCE], [28], "topic")[28])
    # Built by hand: the prompt's ids, then the question's, and the last position's state.
    question = smollm2.tokenizer(derive.TOPIC_SUFFIX, add_special_tokens=False)["input_ids"]
    ids = torch.cat([inputs["input_ids"][0], torch.tensor(question)])[None]
    states = hooks.residuals(smollm2, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, [28])[28]
    assert torch.allclose(query[0], states[0, -1].float(), atol=1e-5)
    with pytest.raises(UserError, match="running query needs mean keys at the nudged layer"):
        _runtime(store_copy, smollm2, query="running")
    with pytest.raises(ValueError, match="give the session the prompt's inputs"), runtime.session(None):
        pass


def test_topic_keys_of_a_padded_batch_are_those_of_each_prompt_alone(store_copy, smollm2):
    """A right- or left-padded batch gets the question after each row's own tokens: every row's
    query equals that prompt's alone."""
    from baldr_ops.memory import derive

    prompts = [FINANCE, "The recipe says to whisk the eggs with sugar until"]
    alone = torch.cat([derive.key_states(smollm2, [p], [28], "topic")[28] for p in prompts])
    original = smollm2.tokenizer.padding_side
    for side in ("right", "left"):
        smollm2.tokenizer.padding_side = side
        try:
            inputs = smollm2.tokenize(prompts)
        finally:
            smollm2.tokenizer.padding_side = original
        assert not inputs["attention_mask"].all()   # the shorter prompt is padded
        batch = derive.topic_states(smollm2, inputs, [28])[28]
        assert torch.allclose(batch.cpu(), alone, atol=1e-4), side


def test_a_chat_prompt_recalls_from_the_users_text(store_copy, smollm2):
    """`memory ab --chat` wraps the prompt in the chat template (SmolLM2's adds a system prompt);
    recall reads the user's own text, as the memories were keyed, so its relevance is the plain
    prompt's."""
    from baldr_ops.memory.compare import ab

    runtime = _runtime(store_copy, smollm2)
    plain, chat = (ab(smollm2, runtime, FINANCE, max_new_tokens=2, chat=c) for c in (False, True))
    relevance = [[c.relevance for c in report.layers[0].candidates] for report in (plain, chat)]
    assert relevance[0] == pytest.approx(relevance[1], abs=1e-4)


def test_the_hooks_pool_with_the_function_that_makes_records(local_copy, smollm2, monkeypatch):
    """derive.pooled_sum is the one pooling rule: the session's clean pass and the hook's own
    pooling (running query) use it, so the query is exactly what writing the prompt would pool."""
    from baldr_ops.memory import derive

    calls = []
    real = derive.pooled_sum
    monkeypatch.setattr(derive, "pooled_sum", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    inputs = smollm2.tokenize(FINANCE)
    runtime = _runtime(local_copy, smollm2, query="running")
    with torch.no_grad(), runtime.session(inputs) as session:
        hook = session.nudge.hooks[13]
        query = hook.total / hook.count  # pooled by the clean pass, before any forward
        smollm2.model.generate(**inputs, max_new_tokens=3, do_sample=False,
                               pad_token_id=smollm2.tokenizer.pad_token_id)
    assert len(calls) >= 3  # the clean pass, then one per generated step
    states = hooks.residuals(smollm2, inputs, [13])[13]
    assert torch.equal(query, real(states, derive.token_weights(inputs["attention_mask"]))[0]
                       / derive.token_weights(inputs["attention_mask"]).sum(1, keepdim=True))
    assert torch.equal(query, derive.pool_states(states, inputs["attention_mask"]))


@pytest.mark.parametrize("query", ["prompt", "running"])
def test_a_second_generation_in_one_session_is_a_clear_error(local_copy, smollm2, query):
    """Its positions restart below what the hooks have seen, so the first generation's deltas would
    be applied to it: refused. A new session (or the same GenerationSession entered again) is fine."""
    from baldr_ops.memory.nudge import NudgeSession, SessionReused

    runtime = _runtime(local_copy, smollm2, query=query, threshold=0.15)
    inputs = smollm2.tokenize(FINANCE)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=smollm2.tokenizer.pad_token_id)
    session = runtime.session(inputs, prompt=FINANCE)
    with torch.no_grad():
        with session:
            first = smollm2.model.generate(**inputs, **kwargs)
            with pytest.raises(SessionReused, match="one generate"):
                smollm2.model.generate(**inputs, **kwargs)
        with session:  # entered again: a fresh set of hooks
            assert torch.equal(smollm2.model.generate(**inputs, **kwargs), first)
        with session, pytest.raises(SessionReused):
            smollm2.model(**inputs)
            smollm2.model(**inputs)  # a second forward pass of the prompt
        one = {k: v[:, :1] for k, v in inputs.items()}  # a one-token prompt looks like a step
        nudge = NudgeSession(smollm2, runtime.memories, inputs, strict=False)
        with pytest.raises(SessionReused, match="did not follow"), nudge:
            smollm2.model.generate(**inputs, **kwargs)
            smollm2.model(**one)
        with pytest.raises(SessionReused, match="entered before"), nudge:
            pass


def test_poisoned_memory_is_clipped_per_token(store_copy, smollm2):
    """A 1000x-norm value signed into the store (an insider past the screens): every token still
    moves by at most clip * ||h||, measured outside the hook, and the weight stays under the cap."""
    state = store_copy.read_layer(13)
    finance = next(r for r in state.records.values() if r.body.label == "finance")
    key = finance.body.key_vector()
    text = "poison " + finance.body.source_text
    value = finance.body.value_vector()
    body = RecordBody(layer=13, label="poison", source_text=text, source_sha256=sha256_text(text), origin="operator",
                      created_at=now(), model=finance.body.model, reference_id=state.reference_id, d_model=key.size,
                      key=encode_array(key), value=encode_array(value * 1000), null_mean=finance.body.null_mean,
                      null_std=finance.body.null_std, flags=["value-norm-outlier"])
    (poison_id,) = store_copy.append(13, [("record", body)])
    store_copy.decide(poison_id, "approve", override_flags=True)
    clip, cap = 0.2, 0.5
    runtime = _runtime(store_copy, smollm2, strength=1e6, clip=clip, weight_cap=cap)
    inputs = smollm2.tokenize([FINANCE])
    with torch.no_grad(), hooks.capture(smollm2, [13]) as before:
        with runtime.session(inputs) as session:
            with hooks.capture(smollm2, [13]) as after:
                smollm2.model(**inputs)
    pre, post = before.calls[13][-1], after[13]  # before also saw the session's clean pass
    h, moved = pre[0, 1:], (post - pre)[0, 1:]
    ratio = moved.norm(dim=-1) / h.norm(dim=-1)
    assert float(ratio.max()) <= clip * (1 + 1e-3)
    assert float(ratio.min()) > 0.9 * clip  # the poison was there, and the clip is what held it
    assert torch.equal(post[0, 0], pre[0, 0])  # position 0 is never nudged
    layer = session.entry.layers[0]
    assert poison_id in {r.id for r in layer.records}
    assert max(r.weight for r in layer.records) <= cap
    assert layer.tokens_clipped == layer.tokens_nudged > 0


@pytest.mark.parametrize("keys", ["deep", "local"])
def test_generation_never_writes_memory(store_copy, local_copy, smollm2, monkeypatch, keys):
    """Every way records or decisions get written raises while memory is loaded and used for
    generation (both query modes, with and without the cache, and `ab`); the only thing written is
    one audit line per generation."""
    from baldr_ops.memory import writer
    from baldr_ops.memory.compare import ab
    from baldr_ops.memory.store import AUDIT, MemoryStore

    def refuse(*args, **kwargs):
        raise AssertionError("the generation path tried to write memory")

    for name in ("add_texts", "add_vectors"):
        monkeypatch.setattr(writer, name, refuse)
    for name in ("append", "append_layers", "decide"):
        monkeypatch.setattr(MemoryStore, name, refuse)
    written = []
    real = MemoryStore.append_chained
    monkeypatch.setattr(MemoryStore, "append_chained",
                        lambda self, name, *a, **k: written.append(name) or real(self, name, *a, **k))
    store_copy = store_copy if keys == "deep" else local_copy
    files = {layer: (store_copy.directory / layer_file(layer)).read_bytes() for layer in store_copy.layers()}
    runtime = MemoryRuntime.load(store_copy, smollm2, [LayerSettings(layer=13), LayerSettings(
        layer=20, query="running" if keys == "local" else "prompt")])
    inputs = smollm2.tokenize(FINANCE)
    for use_cache in (True, False):
        with torch.no_grad(), runtime.session(inputs, prompt=FINANCE) as session:
            smollm2.model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=use_cache,
                                   pad_token_id=smollm2.tokenizer.pad_token_id)
        assert session.entry.influenced
    report = ab(smollm2, runtime, FINANCE, max_new_tokens=4)
    assert report.kl_next_token > 0
    assert written == [AUDIT] * 4  # two generations, and ab's generation and next-token pass
    assert files == {layer: (store_copy.directory / layer_file(layer)).read_bytes() for layer in store_copy.layers()}


def test_a_label_group_is_calibrated_as_a_record_is_written(store_copy, smollm2):
    """Recalling by label, a group's threshold is measured at load the way the writer measured each
    record's: a label shared by a record and its twin (the same key, so the group's key is that key)
    gets back the record's stored threshold; records whose label is not shared keep their own."""
    from baldr_ops.memory.keyspace import calibrated_thresholds
    from baldr_ops.memory.runtime import memory_from_records

    state = store_copy.read_layer(13)
    records = state.with_status("approved")
    stored = calibrated_thresholds(torch.tensor([r.body.null_mean for r in records]),
                                   torch.tensor([r.body.null_std for r in records]), 2.5)
    alone = [dataclasses.replace(r, body=r.body.model_copy(update={"label": None})) for r in records]
    twin = dataclasses.replace(records[0], id="twin", body=records[0].body.model_copy(update={"label": "twin"}))
    first = dataclasses.replace(alone[0], body=alone[0].body.model_copy(update={"label": "twin"}))
    memory = memory_from_records(LayerSettings(layer=13), [first, *alone[1:], twin], state.reference)
    assert memory.group_of.tolist() == [0] + [-1] * (len(records) - 1) + [0]
    assert float(memory.group_thresholds[0]) == pytest.approx(float(stored[0]), abs=1e-5)
    torch.testing.assert_close(memory.thresholds[:-1], stored, atol=0, rtol=0)
    memory = memory_from_records(LayerSettings(layer=13), alone, state.reference)
    assert memory.group_of is None and torch.equal(memory.thresholds, stored)
    labelled = memory_from_records(LayerSettings(layer=13), records, state.reference)
    labels = [r.body.label for r in records]
    pairs = set(zip(labelled.group_of.tolist(), labels, strict=True))  # one group per label, and back
    assert len(pairs) == len({g for g, _ in pairs}) == len(set(labels)) == 4
