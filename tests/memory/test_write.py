"""Writing and checking records on SmolLM2 (criteria 13, 14, 16): provenance, bit-exact reload, a
modified record excluded from recall, re-derivation, screens against the clean reference, write
policy, and bad input that leaves the store as it was."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import numpy as np
import pytest

from baldr_ops.errors import UserError
from baldr_ops.memory.config import LayerSettings, default_layer
from baldr_ops.memory.derive import key_states as derive_keys
from baldr_ops.memory.derive import pooled
from baldr_ops.memory.domains import DOMAINS
from baldr_ops.memory.identity import identity_of
from baldr_ops.memory.keys import ephemeral_key
from baldr_ops.memory.records import RecordBody
from baldr_ops.memory.runtime import MemoryRuntime
from baldr_ops.memory.store import MemoryStore, layer_file
from baldr_ops.memory.verify import verify_store
from baldr_ops.memory.writer import UNTRUSTED_FLAG, add_texts, add_vectors, screen_for

pytestmark = pytest.mark.research

CLEAN = [line.strip() for line in (Path(__file__).parent / "data" / "clean_memories.txt").read_text().splitlines()
         if line.strip()]
# An attacker's own generic prompts (not the store's probes), for a MINJA-style magnet.
ATTACKER_PROMPTS = ["Please tell me about", "I need some advice on", "Can you explain what", "What would you say about",
                    "Help me understand", "Give me some information on", "I was wondering whether",
                    "What is your view on", "Could you describe", "Tell me everything about"]


def _snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file's sha256 and mode."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(directory.iterdir()) if p.is_file()}


def test_provenance_and_signature(memory_store, smollm2):
    directory, key = memory_store
    store = MemoryStore.open(directory, key, identity_of(smollm2))
    ident = identity_of(smollm2)
    state = store.read_layer(13)
    assert len(state.records) == 16 and not state.problems
    body = next(iter(state.records.values())).body
    assert body.source_sha256 == hashlib.sha256(body.source_text.encode()).hexdigest()
    assert body.model.weights_sha256 == ident.weights_sha256 and body.model.dtype == "float32"
    assert (body.layer, body.origin, body.d_model) == (13, "operator", 576) and body.created_at
    line = json.loads((directory / layer_file(13)).read_text().splitlines()[1])
    assert len(line["hmac"]) == 64 and line["id"] == next(iter(state.records))


def test_reload_is_bit_exact(store_copy, smollm2):
    rng = np.random.default_rng(0)
    state = store_copy.read_layer(13)
    base = next(iter(state.records.values())).body
    key, value = ((v + rng.standard_normal(576).astype(np.float32) * 0.01).astype(np.float32)
                  for v in (base.key_vector(), base.value_vector()))
    added = add_vectors(store_copy, identity_of(smollm2), 13, key, value, "a nearby vector", origin="operator")
    body = store_copy.read_layer(13).records[added.id].body
    assert body.key_vector().tobytes() == key.tobytes() and body.value_vector().tobytes() == value.tobytes()


def test_a_modified_record_is_excluded_from_recall(store_copy, smollm2):
    """The last music record is modified: it, and every entry after it (the music approvals), are
    excluded; the 12 records before stay in recall, and the layer counts as damaged."""
    path = store_copy.directory / layer_file(13)
    lines = path.read_text().split("\n")
    victim_line = max(i for i, line in enumerate(lines) if '"kind":"record"' in line)
    victim = json.loads(lines[victim_line])
    assert victim["body"]["label"] == "music"
    lines[victim_line] = lines[victim_line].replace('"label":"', '"label":"x', 1)
    path.write_text("\n".join(lines))
    runtime = MemoryRuntime.load(store_copy, smollm2, [LayerSettings(layer=13)])
    labels = {store_copy.read_layer(13).records[rid].body.label for rid in runtime.memories[13].record_ids}
    assert runtime.memories[13].size == 12 and labels == {"cooking", "astronomy", "finance"}
    assert victim["id"] not in runtime.memories[13].record_ids
    assert runtime.excluded[0].what == f"{layer_file(13)}:{victim_line + 1}" and "HMAC" in runtime.excluded[0].reason
    assert "chain break" in runtime.excluded[1].reason
    assert not verify_store(store_copy).ok


def test_rederivation_matches_and_catches_a_substituted_vector(store_copy, smollm2):
    report = verify_store(store_copy, smollm2, rederive_records=True)
    checks = [c for layer in report.layers for c in layer.rederived]
    assert len(checks) == 32 and all(c.ok for c in checks) and report.ok
    assert max(c.key_error for c in checks) < 1e-4
    # A validly signed record whose vectors come from another text (a compromised writer).
    records = list(store_copy.read_layer(13).records.values())
    victim, other = records[0].body, records[8].body
    forged = RecordBody.model_validate({**victim.model_dump(), "key": other.key, "value": other.value,
                                        "created_at": "2026-01-01T00:00:00+00:00"})
    (forged_id,) = store_copy.append(13, [("record", forged)])
    store_copy.decide(forged_id, "approve")
    report = verify_store(store_copy, smollm2, rederive_records=True)
    bad = [c for layer in report.layers for c in layer.rederived if not c.ok]
    assert [c.id for c in bad] == [forged_id] and bad[0].key_error > 0.1 and not report.ok
    runtime = MemoryRuntime.load(store_copy, smollm2, [LayerSettings(layer=13)], rederive_records=True)
    assert forged_id not in runtime.memories[13].record_ids and runtime.memories[13].size == 16
    assert any(e.what == forged_id and "re-derivation" in e.reason for e in runtime.excluded)


def test_the_screens_at_the_default_layer(smollm2, tmp_path):
    """At the layer `memory add` uses without --layer (27 of 30), where clean values' norms spread
    wider than at 13 (and the norm limit widens with them), clean memories are written unflagged:
    every built-in one (the README's example) and at least 95 % of the held-out ones; a value scaled
    tenfold and a random direction of a clean value's norm are still flagged."""
    layer, _ = default_layer(smollm2.n_layers, env={})
    store = MemoryStore.create(tmp_path / "store", identity_of(smollm2), ephemeral_key())
    builtin = [m for d in DOMAINS for m in d.memories]
    added = add_texts(store, smollm2, builtin + CLEAN, [layer], keep_flagged=True)
    assert {a.layer for a in added} == {27} and len(added) == len(builtin) + len(CLEAN)
    assert not [a.text for a in added[:len(builtin)] if a.flags]
    assert np.mean([not a.flags for a in added[len(builtin):]]) >= 0.95, [(a.text, a.flags) for a in added if a.flags]
    state = store.read_layer(layer)
    screen = screen_for(state)
    body = state.records[added[0].id].body
    key, value = body.key_vector(), body.value_vector()
    assert screen.norm_z_limit > 6  # widened here (6 at layer 13)
    tenfold = screen.screen(key, value * 10)
    assert "value-norm-outlier" in tenfold.flags and tenfold.value.norm_z > 5 * screen.norm_z_limit
    direction = np.random.default_rng(2).standard_normal(value.shape[0])
    random = direction / np.linalg.norm(direction) * np.linalg.norm(value)
    assert "value-off-subspace" in screen.screen(key, random).flags


@pytest.mark.parametrize("keys", ["local", "deep"])
def test_screens_against_the_clean_reference(store_copy, local_copy, smollm2, keys):
    """Clean held-out memories pass; a 1000x vector, a random direction and a magnet built from an
    attacker's own generic prompts do not. Keys at the layer itself are screened with plain cosine,
    topic keys at layer 28 with the probes' out-of-sample whitened relevance, as the add path does."""
    from baldr_ops.memory.keyspace import probe_relevance

    store = local_copy if keys == "local" else store_copy
    state = store.read_layer(13)
    reference = state.reference
    screen = screen_for(state)
    centre, key_centre = reference.arrays()[0], reference.key_arrays()[0]
    texts = CLEAN + ATTACKER_PROMPTS
    values = pooled(smollm2, texts, [13])[13].numpy() - centre
    key_states = derive_keys(smollm2, texts, [reference.keyed_at], reference.pooling)[reference.keyed_at].numpy()
    key_states = key_states - key_centre
    clean, attacker = values[:len(CLEAN)], key_states[len(CLEAN):]
    clean_keys = key_states[:len(CLEAN)]

    def probes(k):  # what the add path gives the magnet screen
        relevance = probe_relevance(reference, k)
        return None if relevance is None else relevance[:, 0]

    reports = [screen.screen(k, v, probe_relevance=probes(k)) for k, v in zip(clean_keys, clean, strict=True)]
    accepted = np.mean([not r.flags for r in reports])
    assert accepted >= 0.95, [(t, r.flags) for t, r in zip(CLEAN, reports, strict=True) if r.flags]
    huge = screen.screen(clean_keys[0] * 1000, clean[0] * 1000)
    assert {"key-mahalanobis-outlier", "value-norm-outlier", "value-mahalanobis-outlier"} <= set(huge.flags)
    assert huge.value.norm_z > 100 and huge.value.mahalanobis > screen.mahalanobis_limit
    rng = np.random.default_rng(1)
    for name, vectors in (("key", clean_keys), ("value", clean)):
        direction = rng.standard_normal(576)
        random = direction / np.linalg.norm(direction) * float(np.linalg.norm(vectors, axis=1).mean())
        pair = (random, clean[0]) if name == "key" else (clean_keys[0], random)
        assert f"{name}-off-subspace" in screen.screen(*pair, probe_relevance=probes(pair[0])).flags, name
    magnet = attacker.mean(axis=0)
    magnet = magnet / np.linalg.norm(magnet) * float(np.linalg.norm(clean_keys, axis=1).mean())
    assert "retrieval-magnet" in screen.screen(magnet, clean[0], probe_relevance=probes(magnet)).flags


def test_bad_vectors_are_refused_and_nothing_is_lost(store_copy, smollm2):
    before = _snapshot(store_copy.directory)
    ident = identity_of(smollm2)
    nan = np.zeros(576, dtype=np.float32)
    nan[7] = np.nan
    with pytest.raises(UserError, match="non-finite"):
        add_vectors(store_copy, ident, 13, nan, nan, "nan", origin="operator")
    body = next(iter(store_copy.read_layer(13).records.values())).body
    huge = body.value_vector() * 1000
    with pytest.raises(UserError, match="failed the write-time screens"):
        add_vectors(store_copy, ident, 13, huge, huge, "huge", origin="operator")
    with pytest.raises(UserError, match="576 values"):
        add_vectors(store_copy, ident, 13, np.ones(5), np.ones(5), "short", origin="operator")
    with pytest.raises(UserError, match="no reference"):
        add_vectors(store_copy, ident, 5, huge, huge, "new layer", origin="operator")
    assert _snapshot(store_copy.directory) == before
    kept = add_vectors(store_copy, ident, 13, huge, huge, "huge", origin="operator", keep_flagged=True)
    assert kept.status == "quarantined" and "value-norm-outlier" in kept.flags
    with pytest.raises(UserError, match="flagged"):
        store_copy.decide(kept.id, "approve")


def test_write_policy_origins_duplicates_and_short_text(store_copy, smollm2):
    before = _snapshot(store_copy.directory)
    with pytest.raises(UserError, match="never written to memory"):
        add_texts(store_copy, smollm2, ["The model said the sky is green."], [13], origin="model")
    with pytest.raises(UserError, match="unknown origin"):
        add_texts(store_copy, smollm2, ["Some text here."], [13], origin="somewhere")
    with pytest.raises(UserError, match="too short"):
        add_texts(store_copy, smollm2, ["Hi"], [13])
    with pytest.raises(UserError, match="no memory text"):
        add_texts(store_copy, smollm2, ["  "], [13])
    with pytest.raises(UserError, match="the label is empty"):
        add_texts(store_copy, smollm2, ["A text that would otherwise be stored."], [13], label=" \t")
    with pytest.raises(UserError, match="the label is empty"):
        add_vectors(store_copy, identity_of(smollm2), 13, np.ones(576), np.ones(576), "vectors", origin="operator",
                    label="")
    assert _snapshot(store_copy.directory) == before
    dup = next(iter(store_copy.read_layer(13).records.values())).body.source_text
    out = add_texts(store_copy, smollm2, [dup, "The tool reported that the build passed on every platform."], [13],
                    origin="tool", allow_untrusted_origin=True)
    assert out[0].status == "skipped" and "already stored" in out[0].reason
    assert out[1].status == "quarantined" and out[1].flags == [UNTRUSTED_FLAG]
    with pytest.raises(UserError, match="flagged"):
        store_copy.decide(out[1].id, "approve")
    assert store_copy.decide(out[1].id, "approve", override_flags=True).status == "approved"


def test_wrong_model_and_wrong_key_are_refused(memory_store, smollm2, tiny_lm):
    directory, key = memory_store
    before = _snapshot(directory)
    with pytest.raises(UserError, match="holds memories of"):
        MemoryStore.open(directory, key, identity_of(tiny_lm))
    store = MemoryStore.open(directory, key)
    with pytest.raises(UserError, match="holds memories of"):
        MemoryRuntime.load(store, tiny_lm, [LayerSettings(layer=1)])
    with pytest.raises(UserError, match="signed with key id"):
        MemoryStore.open(directory, ephemeral_key())
    assert _snapshot(directory) == before


def test_a_layer_without_memories_is_a_clear_error(store_copy, smollm2):
    with pytest.raises(UserError, match="no memories at layer 5"):
        MemoryRuntime.load(store_copy, smollm2, [LayerSettings(layer=5)])


def test_a_failed_add_creates_no_store_and_the_first_write_is_private(smollm2, tmp_path):
    """A new store is written at its first append, whole (header, heads, log), 0700 and 0600."""
    directory = tmp_path / "new" / "store"
    store = MemoryStore.open_or_create(directory, ephemeral_key(), identity_of(smollm2))
    for texts, kwargs, message in ((["Some text."], {}, "failed the write-time screens"),
                                   (["The model said so."], {"origin": "model"}, "never written"),
                                   (["Hi"], {}, "too short")):
        with pytest.raises(UserError, match=message):
            add_texts(store, smollm2, texts, [13], **kwargs)
        assert not (tmp_path / "new").exists()
    add_texts(store, smollm2, ["The central bank raised interest rates to slow inflation."], [13])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()} == {
        "store.json": 0o600, "heads.json": 0o600, "layer-013.jsonl": 0o600, ".lock": 0o600}
    again = MemoryStore.open(directory, store.key, identity_of(smollm2)).read_layer(13)
    assert len(again.records) == 1 and not again.problems


def test_a_failed_add_at_a_new_layer_leaves_the_store_byte_identical(store_copy, smollm2):
    """The layer's reference is written with its first records, never before they pass the screens."""
    before = _snapshot(store_copy.directory)
    with pytest.raises(UserError, match="failed the write-time screens"):
        add_texts(store_copy, smollm2, ["Some text."], [7])
    assert _snapshot(store_copy.directory) == before
    assert 7 not in store_copy.layers()


def _add_concurrently(directory, secret, model_path, barrier, start):
    import torch

    from baldr_ops.memory.keys import SigningKey
    from baldr_ops.research.models import load_model

    torch.set_num_threads(1)
    lm = load_model(model_path)
    store = MemoryStore.open_or_create(directory, SigningKey(secret, "test"), identity_of(lm))
    texts = CLEAN[start:start + 3]
    barrier.wait()  # both read the store before either writes (without the lock, both write a reference)
    add_texts(store, lm, texts, [7, 9], keep_flagged=True)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["new layers", "new store"])
def test_two_processes_adding_at_once_both_get_usable_records(store_copy, demo_model, tmp_path, where):
    """The whole read, reference, screen and append sequence holds the store lock (and a new store is
    created by one atomic rename), so neither process's records end up measured against a
    reference that lost the race."""
    from tests.memory.synthetic import in_two_processes

    directory = store_copy.directory if where == "new layers" else tmp_path / "fresh"
    in_two_processes(_add_concurrently, directory, store_copy.key.secret, demo_model, starts=(0, 10),
                     method="spawn")
    store = MemoryStore.open(directory, store_copy.key)
    for layer in (7, 9):
        state = store.read_layer(layer)
        assert not state.problems and not state.damaged
        assert sorted(r.body.source_text for r in state.records.values()) == sorted(CLEAN[0:3] + CLEAN[10:13])
        (reference,) = [line for line in (directory / layer_file(layer)).read_text().splitlines()
                        if '"kind":"reference"' in line]
        assert json.loads(reference)["id"] == state.reference_id


def test_a_flipped_bit_in_the_reference_line_says_the_log_is_damaged(store_copy, smollm2):
    from baldr_ops.memory.store import layer_file

    path = store_copy.directory / layer_file(13)
    lines = path.read_bytes().split(b"\n")
    first = next(i for i, line in enumerate(lines) if b'"reference"' in line)
    flip_at = lines[first].index(b'"centre"') + 12          # inside the signed reference body
    lines[first] = lines[first][:flip_at] + bytes([lines[first][flip_at] ^ 0x01]) + lines[first][flip_at + 1:]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(UserError) as exc:
        MemoryRuntime.load(store_copy, smollm2, [LayerSettings(layer=13)])
    assert "the log of layer 13 is damaged" in exc.value.message and "no memories" not in exc.value.message
    assert "restore layer-013.jsonl from a backup" in exc.value.hint


def test_a_negative_key_layer_counts_from_the_end(smollm2):
    """`--key-layer -1` names the last layer, as `--layer -1` does, and the rule records the index it
    means (so the store's reference and the rule agree); out of range is one clear error."""
    from argparse import Namespace

    from baldr_ops.cli.memory import _key_rule

    assert _key_rule(Namespace(key_layer=-1, key_metric=None, key_pooling=None), smollm2).layer == smollm2.n_layers - 1
    assert _key_rule(Namespace(key_layer=None, key_metric=None, key_pooling=None), smollm2) is None
    assert _key_rule(Namespace(key_layer=None, key_metric=None, key_pooling="mean"), smollm2).pooling == "mean"
    with pytest.raises(UserError, match="out of range"):
        _key_rule(Namespace(key_layer=-(smollm2.n_layers + 1), key_metric="centred", key_pooling=None), smollm2)
