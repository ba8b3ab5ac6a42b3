"""The store on disk (criterion 13, without a model): signed append-only logs, exact reload, a
modified or torn line detected and excluded without touching the others, wrong key / wrong model /
modified header refused, decisions, kill switch, concurrent appends."""

from __future__ import annotations

import json

import numpy as np
import pytest

from baldr_ops.errors import UserError
from baldr_ops.memory.keys import ephemeral_key
from baldr_ops.memory.audit import AuditEntry, AuditLog
from baldr_ops.memory.records import make_entry, now
from baldr_ops.memory.store import AUDIT, HEADER, HEADS, KILL_ENV, MemoryStore, layer_file
from baldr_ops.memory.verify import verify_store
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
def test_one_modified_byte_excludes_that_record_and_breaks_the_chain(store, target):
    """A modified line is indistinguishable from a deleted one (it might have been a revocation), so
    the chain breaks there: the entries before stay, that one and every later one are excluded."""
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
    assert set(state.records) == {ids[0]} and state.reference is not None
    assert [p.line for p in state.problems] == [3, 4, None]  # None: the log as a whole
    assert "HMAC" in state.problems[0].reason and "1 missing" in state.problems[2].reason
    assert "chain break" in state.problems[1].reason and "entry #2 missing" in state.problems[1].reason
    assert state.damaged and state.entries == 2
    assert not verify_store(store).ok


def test_a_non_ascii_signature_is_an_excluded_line_not_a_crash(store, key):
    """hmac.compare_digest raises TypeError on non-ASCII str: such a line (or header) is just invalid."""
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


def _appender(directory, secret, barrier, start):
    from baldr_ops.memory.keys import SigningKey

    s = MemoryStore.open(directory, SigningKey(secret, "test"))
    ref_id = s.read_layer(1).reference_id
    for i in range(start, start + 40):
        s.append(1, [("record", synthetic.record(ref_id, f"text {i}", seed=i))])


def test_concurrent_appends_from_two_processes_all_survive(store, key):
    synthetic.in_two_processes(_appender, store.directory, key.secret)
    state = store.read_layer(1)
    assert len(state.records) == 80 and not state.problems
    assert np.all([r.status == "quarantined" for r in state.records.values()])


# -- the chain and the signed head (deleting, truncating, reordering, replaying lines) -------------
def _lines(store, layer=1):
    return (store.directory / layer_file(layer)).read_bytes().split(b"\n")[:-1]


def _write(store, lines, layer=1):
    (store.directory / layer_file(layer)).write_bytes(b"".join(line + b"\n" for line in lines))


def _approve_two_revoke_one(store):
    ids = _add(store, 2)
    for rid in ids:
        store.decide(rid, "approve")
    store.decide(ids[0], "revoke")  # the last line
    return ids


def test_deleting_the_last_revocation_is_detected_and_the_revocation_holds(store):
    ids = _approve_two_revoke_one(store)
    lines = _lines(store)
    assert b'"revoke"' in lines[-1]
    _write(store, lines[:-1])
    state = store.read_layer(1)
    assert state.records[ids[0]].status == "revoked"  # the signed head keeps every revoked id
    assert state.records[ids[1]].status == "approved"  # the entries before the damage stay usable
    assert state.damaged and any("6 entries, the log holds 5" in p.reason for p in state.problems)
    report = verify_store(store)
    assert not report.ok and report.layers[0].damaged


def test_deleting_a_revocation_in_the_middle_breaks_the_chain_and_it_still_holds(store):
    ids = _approve_two_revoke_one(store)
    (late,) = _add(store, 1, start=7)
    lines = _lines(store)
    revoke = next(i for i, line in enumerate(lines) if b'"revoke"' in line)
    _write(store, lines[:revoke] + lines[revoke + 1:])
    state = store.read_layer(1)
    assert state.records[ids[0]].status == "revoked" and state.records[ids[1]].status == "approved"
    assert late not in state.records  # after the break: excluded
    (problem,) = [p for p in state.problems if p.line is not None]
    assert problem.line == revoke + 1 and "entry #5 missing" in problem.reason
    assert not verify_store(store).ok


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_truncating_at_a_line_boundary_is_detected(store, keep):
    ids = _add(store, 3)
    _write(store, _lines(store)[:keep])
    state = store.read_layer(1)
    assert list(state.records) == ids[:keep - 1] and state.damaged
    assert [p.reason for p in state.problems] == [f"its signed head records 4 entries, the log holds {keep}: "
                                                  f"{4 - keep} missing (the log was cut short, or lines were deleted)"]
    assert not verify_store(store).ok


def test_a_deleted_layer_log_is_still_listed_and_reported(store):
    _add(store, 1)
    (store.directory / layer_file(1)).unlink()
    assert store.layers() == [1]
    report = verify_store(store)
    assert not report.ok and not report.layers[0].reference and report.layers[0].damaged


@pytest.mark.parametrize("change", ["swap", "replay", "splice"])
def test_reordered_replayed_or_spliced_lines_break_the_chain(store, key, tmp_path, change):
    ids = _add(store, 3)
    lines = _lines(store)
    if change == "swap":
        lines[2], lines[3] = lines[3], lines[2]
    elif change == "replay":
        lines.append(lines[1])
    else:  # a genuine entry #2 from another copy of the store that went another way
        prev = json.loads(lines[1])["hmac"]
        _, _, forked = make_entry(store.header.store_id, layer_file(1), 2, prev, "record",
                                  synthetic.record(store.ref_id, "forked", seed=50), key)
        lines[2] = forked.rstrip(b"\n")
    _write(store, lines)
    state = store.read_layer(1)
    assert state.damaged and not verify_store(store).ok
    broken = next(p for p in state.problems if "chain break" in p.reason)
    if change == "swap":
        assert broken.line == 3 and "entry #2 missing" in broken.reason
    elif change == "replay":
        assert broken.line == 5 and "comes again or out of order" in broken.reason
        assert list(state.records) == ids  # everything before the replayed line is intact
    else:
        assert broken.line == 4 and "does not follow entry #2" in broken.reason


def test_a_damaged_layer_takes_revocations_only(store):
    ids = _add(store, 2)
    store.decide(ids[0], "approve")
    _write(store, _lines(store)[:-1])  # lose the approval
    with pytest.raises(UserError, match="damaged"):
        store.decide(ids[1], "approve")
    with pytest.raises(UserError, match="damaged"):
        _add(store, 1, start=9)
    assert store.decide(ids[1], "revoke").status == "revoked"
    state = store.read_layer(1)
    assert state.records[ids[1]].status == "revoked" and state.damaged  # still damaged: the head is not lowered


def test_a_missing_or_modified_head_is_reported(store, key):
    ids = _add(store, 2)
    heads = store.directory / HEADS
    original = heads.read_bytes()
    heads.write_bytes(original.replace(b'"count":3', b'"count":2'))
    state = store.read_layer(1)
    assert list(state.records) == ids and "fails its HMAC" in state.damaged
    assert not verify_store(store).ok
    with pytest.raises(UserError, match="damaged"):
        _add(store, 1, start=5)
    heads.unlink()
    assert "missing" in store.read_layer(1).damaged
    heads.write_bytes(original)
    assert not store.read_layer(1).problems


def test_torn_line_after_a_crash_keeps_the_chain(store):
    """A crash between the log write and the head: the log is ahead of its head, and fine."""
    ids = _add(store, 2)
    head = (store.directory / HEADS).read_bytes()
    (late,) = _add(store, 1, start=5)
    (store.directory / HEADS).write_bytes(head)  # as if the crash came before the new head
    with open(store.directory / layer_file(1), "ab") as fh:
        fh.write(b'{"kind": "record", "id": "x", "bo')
    state = store.read_layer(1)
    assert list(state.records) == ids + [late] and not state.damaged
    (after,) = _add(store, 1, start=6)
    state = store.read_layer(1)
    assert list(state.records) == ids + [late, after] and not state.damaged
    assert len(state.problems) == 1 and "not a log entry" in state.problems[0].reason


def _audit_entry(i: int) -> AuditEntry:
    return AuditEntry(generation_id=f"g{i}", started_at=now(), finished_at=now(), prompt_sha256=None, disabled=None,
                      layers=[])


def test_audit_trail_is_chained(store):
    log = AuditLog(store)
    for i in range(4):
        log.append(_audit_entry(i))
    entries, problems = log.read()
    assert [e.generation_id for e in entries] == ["g0", "g1", "g2", "g3"] and not problems
    path = store.directory / AUDIT
    lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"".join(line + b"\n" for line in lines[:1] + lines[2:]))  # delete generation g1
    entries, problems = log.read()
    assert [e.generation_id for e in entries] == ["g0"]
    assert problems[0][0] == 2 and "chain break" in problems[0][1]
    assert not verify_store(store).ok
    path.write_bytes(b"".join(line + b"\n" for line in lines[:3]))  # cut off g3
    entries, problems = log.read()
    assert len(entries) == 3 and problems == [(None, "its signed head records 4 entries, the log holds 3: 1 missing "
                                                     "(the log was cut short, or lines were deleted)")]
    log.append(_audit_entry(9))  # still recorded, after the head: the damage stays visible
    entries, problems = log.read()
    assert len(entries) == 3 and problems and "chain break" in problems[0][1]


def _audit_appender(directory, secret, barrier, start):
    from baldr_ops.memory.keys import SigningKey

    log = AuditLog(MemoryStore.open(directory, SigningKey(secret, "test")))
    for i in range(start, start + 25):
        log.append(_audit_entry(i))


def test_concurrent_audit_appends_keep_one_chain(store, key):
    synthetic.in_two_processes(_audit_appender, store.directory, key.secret)
    entries, problems = AuditLog(store).read()
    assert len(entries) == 50 and not problems
