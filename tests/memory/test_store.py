"""The store on disk (criterion 13, without a model): signed append-only logs, exact reload, a
modified or torn line detected and excluded without touching the others, wrong key / wrong model /
modified header refused, decisions, kill switch, concurrent appends."""

from __future__ import annotations

import json
import multiprocessing
import os

import numpy as np
import pytest

from baldr_ops.errors import UserError
from baldr_ops.memory.keys import ephemeral_key
from baldr_ops.memory.store import HEADER, KILL_ENV, MemoryStore, layer_file
from tests.memory import synthetic

pytestmark = pytest.mark.research


@pytest.fixture
def key():
    return ephemeral_key()


@pytest.fixture
def store(tmp_path, key):
    s = MemoryStore.create(tmp_path / "store", synthetic.identity(), key)
    (ref_id,) = s.append(1, [("reference", synthetic.reference())])
    s.ref_id = ref_id
    return s


def _add(store, n, start=0):
    return store.append(1, [("record", synthetic.record(store.ref_id, f"text {i}", seed=i)) for i in range(start, start + n)])


def test_reload_is_bit_exact_and_signed(store, key):
    ids = _add(store, 3)
    again = MemoryStore.open(store.directory, key, synthetic.identity())
    state = again.read_layer(1)
    assert list(state.records) == ids and not state.problems
    for i, rid in enumerate(ids):
        body = state.records[rid].body
        expected = synthetic.record(store.ref_id, f"text {i}", seed=i)
        assert body.key_vector().tobytes() == expected.key_vector().tobytes()
        assert state.records[rid].status == "quarantined"
    assert again.layers() == [1]


def _flip(path, line_no, old: bytes, new: bytes):
    lines = path.read_bytes().split(b"\n")
    assert old in lines[line_no - 1]
    lines[line_no - 1] = lines[line_no - 1].replace(old, new, 1)
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize("target", ["vector", "metadata", "hmac"])
def test_one_modified_byte_excludes_only_that_record(store, target):
    ids = _add(store, 3)
    path = store.directory / layer_file(1)
    line = json.loads(path.read_bytes().split(b"\n")[2])  # line 3 = the second record
    if target == "vector":
        b64 = line["body"]["key"]
        old = b64[10:14].encode()
        new = (b64[10:13] + ("A" if b64[13] != "A" else "B")).encode()
    elif target == "metadata":
        old, new = b'"origin":"operator"', b'"origin":"operatoR"'
    else:
        old = line["hmac"][:8].encode()
        new = (("0" if line["hmac"][0] != "0" else "1") + line["hmac"][1:8]).encode()
    _flip(path, 3, old, new)
    state = store.read_layer(1)
    assert set(state.records) == {ids[0], ids[2]}
    assert [p.line for p in state.problems] == [3]
    assert "HMAC" in state.problems[0].reason or "not a log entry" in state.problems[0].reason


def test_a_non_ascii_signature_is_an_excluded_line_not_a_crash(store, key):
    """hmac.compare_digest raises TypeError on non-ASCII str: such a line (or header) is just invalid."""
    from baldr_ops.memory.verify import verify_store

    ids = _add(store, 2)
    path = store.directory / layer_file(1)
    lines = path.read_bytes().split(b"\n")
    raw = json.loads(lines[1])
    raw["hmac"] = "\u00e9" * 64
    lines[1] = json.dumps(raw, ensure_ascii=False).encode()
    path.write_bytes(b"\n".join(lines))
    state = store.read_layer(1)
    assert ids[0] not in state.records and [p.line for p in state.problems][:1] == [2]
    assert "HMAC" in state.problems[0].reason
    assert not verify_store(store).ok
    header = json.loads((store.directory / HEADER).read_text())
    header["hmac"] = "\u00e9"
    (store.directory / HEADER).write_text(json.dumps(header, ensure_ascii=False))
    with pytest.raises(UserError, match="fails its HMAC"):
        MemoryStore.open(store.directory, key)


def test_torn_tail_is_skipped_and_the_next_append_starts_clean(store):
    ids = _add(store, 2)
    path = store.directory / layer_file(1)
    before = path.read_bytes()
    with open(path, "ab") as fh:  # a crash half-way through an append
        fh.write(b'{"kind": "record", "id": "x", "bo')
    state = store.read_layer(1)
    assert list(state.records) == ids
    assert "torn" in state.problems[0].reason
    (late,) = _add(store, 1, start=5)
    state = store.read_layer(1)
    assert list(state.records) == ids + [late]
    assert len(state.problems) == 1 and "torn" not in state.problems[0].reason  # now a complete bad line
    assert path.read_bytes().startswith(before)  # nothing earlier was touched


def test_wrong_key_is_named(store):
    with pytest.raises(UserError, match="signed with key id") as err:
        MemoryStore.open(store.directory, ephemeral_key())
    assert "key the store was made with" in err.value.hint


def test_store_for_one_model_refuses_another(store, key):
    for change in ({"weights_sha256": "f" * 64}, {"d_model": 32}, {"dtype": "bfloat16"}, {"tokenizer_sha256": "0" * 64}):
        with pytest.raises(UserError, match="model-specific|holds memories"):
            MemoryStore.open(store.directory, key, synthetic.identity(**change))
    MemoryStore.open(store.directory, key, synthetic.identity(name="renamed"))  # the name alone is not identity


def test_modified_or_corrupt_header_is_refused(store, key):
    path = store.directory / HEADER
    original = path.read_text()
    path.write_text(original.replace('"toy"', '"other"'))
    with pytest.raises(UserError, match="fails its HMAC"):
        MemoryStore.open(store.directory, key)
    path.write_text(original[:40])
    with pytest.raises(UserError, match="unreadable or corrupt"):
        MemoryStore.open(store.directory, key)


def test_create_refuses_non_empty_directories(tmp_path, key):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(UserError, match="not an empty directory"):
        MemoryStore.create(tmp_path / "busy", synthetic.identity(), key)
    with pytest.raises(UserError, match="not a memory store"):
        MemoryStore.open(tmp_path / "busy", key)


def test_decisions_approve_revoke_and_flags(store):
    plain, = _add(store, 1)
    (flagged,) = store.append(1, [("record", synthetic.record(store.ref_id, "odd", seed=9, flags=["key-norm-outlier"]))])
    assert store.decide(plain[:8], "approve").status == "approved"  # an id prefix is enough
    with pytest.raises(UserError, match="flagged"):
        store.decide(flagged, "approve")
    assert store.read_layer(1).records[flagged].status == "quarantined"
    assert store.decide(flagged, "approve", override_flags=True).status == "approved"
    assert store.decide(plain, "revoke").status == "revoked"
    with pytest.raises(UserError, match="revocation is final"):
        store.decide(plain, "approve")
    with pytest.raises(UserError, match="no record"):
        store.decide("ffffffff", "approve")


def test_kill_switch_flag_and_env(store):
    assert store.disabled_reason(env={}) is None
    assert "BALDR_MEMORY_DISABLE" in store.disabled_reason(env={KILL_ENV: "1"})
    store.set_disabled(True, note="test")
    assert "kill switch" in store.disabled_reason(env={})
    store.set_disabled(False)
    assert store.disabled_reason(env={}) is None


def _appender(directory, secret, start):
    from baldr_ops.memory.keys import SigningKey

    s = MemoryStore.open(directory, SigningKey(secret, "test"))
    ref_id = s.read_layer(1).reference_id
    for i in range(start, start + 40):
        s.append(1, [("record", synthetic.record(ref_id, f"text {i}", seed=i))])


def test_concurrent_appends_from_two_processes_all_survive(store, key):
    ctx = multiprocessing.get_context("spawn" if os.environ.get("BALDR_TEST_SPAWN") else "fork")
    procs = [ctx.Process(target=_appender, args=(store.directory, key.secret, s)) for s in (0, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    state = store.read_layer(1)
    assert len(state.records) == 80 and not state.problems
    assert np.all([r.status == "quarantined" for r in state.records.values()])
