"""Store format v5 (the key rule with its pooling and the within-topic metric) and the migration of
v2, v3 and v4 stores: an older store is refused with a hint, `memory migrate` re-derives its records
into a new store under the v5 key rule, keeping labels, origins and decisions (revoked records stay behind), and leaves the old
store untouched."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from baldr_ops.cli import main
from baldr_ops.errors import UserError
from baldr_ops.memory import store as store_module
from baldr_ops.memory import writer as writer_module
from baldr_ops.memory.config import LayerSettings
from baldr_ops.memory.derive import pooled
from baldr_ops.memory.domains import DOMAINS
from baldr_ops.memory.identity import identity_of
from baldr_ops.memory.keyspace import KeyRule
from baldr_ops.memory.migrate import migrate_store
from baldr_ops.memory.records import RecordBody, encode_array, now, sha256_text
from baldr_ops.memory.runtime import MemoryRuntime
from baldr_ops.memory.store import MIGRATABLE, MemoryStore
from baldr_ops.memory.writer import measure_references

pytestmark = pytest.mark.research

FINANCE_PROMPT = "When interest rates go up, investors usually"


def _v2_store(lm, key, directory, monkeypatch):
    """A store as format v2 wrote it: header v2, a reference without a key rule, records whose key is
    the value (centred state at the layer) and no calibration."""
    monkeypatch.setattr(store_module, "FORMAT", store_module.FORMAT_V2)
    store = MemoryStore.create(directory, identity_of(lm), key)
    rule = KeyRule(layer=13, pooling="mean", metric="centred")  # a v2 reference had no key rule and no corpus
    reference = measure_references(lm, [13], rule)[13].model_copy(
        update={"key_layer": None, "key_metric": None, "key_pooling": None})
    (reference_id,) = store.append(13, [("reference", reference)])
    centre = reference.arrays()[0]
    texts = [(d.name, t) for d in DOMAINS[:3:2] for t in d.memories]  # cooking and finance
    states = pooled(lm, [t for _, t in texts], [13])[13].numpy() - centre
    bodies = [RecordBody(layer=13, label=label, source_text=text, source_sha256=sha256_text(text), origin="operator",
                         created_at=now(), model=identity_of(lm), reference_id=reference_id, d_model=576,
                         key=encode_array(v), value=encode_array(v), rule="v1")
              for (label, text), v in zip(texts, states, strict=True)]
    ids = store.append(13, [("record", b) for b in bodies])
    for rid in ids[:6]:
        store.decide(rid, "approve")
    store.decide(ids[6], "revoke")  # ids[7] stays quarantined
    store.set_disabled(True, note="paused")
    monkeypatch.undo()
    return ids


def _snapshot(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def test_a_v2_store_is_migrated_not_read(smollm2, session_key, tmp_path, monkeypatch):
    old, new = tmp_path / "old", tmp_path / "new"
    ids = _v2_store(smollm2, session_key, old, monkeypatch)
    with pytest.raises(UserError, match="v2") as refused:
        MemoryStore.open(old, session_key)
    assert "memory migrate" in refused.value.hint
    before = _snapshot(old)
    report = migrate_store(old, new, session_key, smollm2)
    assert _snapshot(old) == before  # the old store is left as it was
    status = {r.old_id: r.status for r in report.records}
    assert [status[i] for i in ids] == ["approved"] * 6 + ["not carried", "quarantined"]
    assert report.disabled and "kill switch" in report.disabled  # the kill switch comes along
    assert "paused" in json.loads((new / "DISABLED").read_text())["note"]
    store = MemoryStore.open(new, session_key, identity_of(smollm2))
    state = store.read_layer(13)
    # The default v5 rule: topic keys at the second-to-last of SmolLM2's 30 layers, within-topic metric.
    assert not state.problems and (state.reference.keyed_at, state.reference.pooling, state.reference.key_metric) == (
        28, "topic", "within")
    assert state.reference.within_rows().shape == (330, 576)
    new_ids = {r.old_id: r.new_id for r in report.records}
    for old_id in ids[:6]:
        body = state.records[new_ids[old_id]].body
        assert state.records[new_ids[old_id]].status == "approved" and body.null_std > 0
        assert body.label in ("cooking", "finance") and body.origin == "operator"
    # It recalls: the finance prompt brings back finance memories, and only those.
    store.set_disabled(False)
    runtime = MemoryRuntime.load(store, smollm2, [LayerSettings(layer=13)])
    inputs = smollm2.tokenize(FINANCE_PROMPT)
    with runtime.session(inputs) as session:
        pass
    recalled = session.recalls[13].record_ids[0]
    assert recalled and {state.records[r].body.label for r in recalled} == {"finance"}
    # A target that is not empty is refused before anything is written.
    with pytest.raises(UserError, match="not an empty directory|already a memory store"):
        migrate_store(old, new, session_key, smollm2)
    # A v5 store as the source: nothing to migrate, said as such (not "v5 is in format v5").
    with pytest.raises(UserError, match="already in format .*v5.*nothing to migrate"):
        migrate_store(new, tmp_path / "again", session_key, smollm2)
    assert not (tmp_path / "again").exists()


def test_migrate_on_the_command_line(smollm2, demo_model, session_key, tmp_path, monkeypatch, capsys):
    key_file = tmp_path / "memory.key"
    key_file.write_text(session_key.secret.hex())
    key_file.chmod(0o600)
    old, new = tmp_path / "old", tmp_path / "new"
    _v2_store(smollm2, session_key, old, monkeypatch)
    code = main(["memory", "list", "--store", str(old), "--key-file", str(key_file)])
    err = capsys.readouterr().err
    assert code == 2 and "memory migrate" in err
    code = main(["memory", "migrate", "--store", str(old), "--out", str(new), "--key-file", str(key_file),
                 "--key-layer", "22", "--key-pooling", "mean", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(out)
    assert (report["key_rule"]["layer"], report["key_rule"]["pooling"]) == (22, "mean")
    assert sum(r["status"] == "approved" for r in report["records"]) == 6
    state = MemoryStore.open(new, session_key).read_layer(13)
    assert (state.reference.keyed_at, state.reference.pooling) == (22, "mean")
    assert np.isfinite([r.body.null_mean for r in state.records.values()]).all()


@pytest.mark.parametrize("version, rule", [("v3", {"layer": 24, "pooling": "mean", "metric": "whitened"}),
                                           ("v4", {"pooling": "topic", "metric": "whitened"})])
def test_a_v3_or_v4_store_is_migrated_to_the_v5_rule(smollm2, session_key, tmp_path, monkeypatch, version, rule):
    """A v3 store (whitened mean keys at layer 24) or a v4 one (whitened topic keys at 28) is refused
    for use and migrated: the same records, now with topic keys in the within-topic metric, and the
    finance prompt still recalls finance."""
    from baldr_ops.memory.writer import add_texts

    old, new = tmp_path / "old", tmp_path / "new"
    monkeypatch.setattr(store_module, "FORMAT", getattr(store_module, f"FORMAT_{version.upper()}"))
    store = MemoryStore.create(old, identity_of(smollm2), session_key)
    for domain in DOMAINS[:3:2]:
        for added in add_texts(store, smollm2, domain.memories, [13], label=domain.name, key_rule=KeyRule(**rule)):
            store.decide(added.id, "approve")
    monkeypatch.undo()
    with pytest.raises(UserError, match=version) as refused:
        MemoryStore.open(old, session_key)
    assert "memory migrate" in refused.value.hint
    report = migrate_store(old, new, session_key, smollm2)
    assert [r.status for r in report.records] == ["approved"] * 8
    store = MemoryStore.open(new, session_key, identity_of(smollm2))
    state = store.read_layer(13)
    assert (state.reference.keyed_at, state.reference.pooling, state.reference.key_metric) == (28, "topic", "within")
    runtime = MemoryRuntime.load(store, smollm2, [LayerSettings(layer=13)])
    with runtime.session(smollm2.tokenize(FINANCE_PROMPT)) as session:
        pass
    recalled = session.recalls[13].record_ids[0]
    assert recalled and {state.records[r].body.label for r in recalled} == {"finance"}


def test_migrating_a_v4_store_with_its_own_metric_keeps_its_keys(smollm2, session_key, tmp_path, monkeypatch):
    """`migrate --key-metric whitened` on a v4 store re-derives the same keys, values and calibration
    (the v4 rule under a v5 header), and measures no topic corpus."""
    from baldr_ops.memory.writer import add_texts

    old, new = tmp_path / "old", tmp_path / "new"
    v4_rule = KeyRule(pooling="topic", metric="whitened")
    monkeypatch.setattr(store_module, "FORMAT", store_module.FORMAT_V4)
    store = MemoryStore.create(old, identity_of(smollm2), session_key)
    for added in add_texts(store, smollm2, DOMAINS[2].memories, [13], label=DOMAINS[2].name, key_rule=v4_rule):
        store.decide(added.id, "approve")
    monkeypatch.undo()
    before = MemoryStore.open(old, session_key, formats=MIGRATABLE).read_layer(13)

    def no_corpus(*_a, **_k):
        raise AssertionError("the topic corpus was read for a whitened store")

    monkeypatch.setattr(writer_module, "within_rows", no_corpus)
    report = migrate_store(old, new, session_key, smollm2, key_rule=v4_rule)
    assert [r.status for r in report.records] == ["approved"] * 4
    after = MemoryStore.open(new, session_key, identity_of(smollm2)).read_layer(13)
    assert (after.reference.keyed_at, after.reference.pooling, after.reference.key_metric) == (28, "topic", "whitened")
    assert after.reference.key_within is None
    old_records = {r.body.source_text: r.body for r in before.records.values()}
    for record in after.records.values():
        was = old_records[record.body.source_text]
        np.testing.assert_allclose(record.body.key_vector(), was.key_vector(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(record.body.value_vector(), was.value_vector(), rtol=1e-5, atol=1e-6)
        assert abs(record.body.null_mean - was.null_mean) < 1e-6 and abs(record.body.null_std - was.null_std) < 1e-6
