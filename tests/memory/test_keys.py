"""The operator-held HMAC key: file permissions, sources, ids, never overwritten, never in the store."""

from __future__ import annotations

import os
import stat

import pytest

from baldr_ops.errors import UserError
from baldr_ops.memory import keys

pytestmark = pytest.mark.research


def test_generated_key_is_private_and_never_overwritten(tmp_path):
    path = tmp_path / "memory.key"
    key = keys.generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.read_key_file(path).secret == key.secret
    assert keys.read_key_file(path).key_id == key.key_id
    with pytest.raises(UserError, match="not overwriting"):
        keys.generate_key(path)
    assert keys.read_key_file(path).secret == key.secret
    assert key.secret.hex() not in repr(key)


def test_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "memory.key"
    keys.generate_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(UserError, match="readable by others") as err:
        keys.read_key_file(path)
    assert "chmod 600" in err.value.hint


def test_key_sources_in_order(tmp_path):
    file_key = keys.generate_key(tmp_path / "a.key")
    env = {keys.KEY_ENV: "ab" * 32}
    assert keys.load_key(env=env).secret == bytes.fromhex("ab" * 32)
    assert keys.load_key(tmp_path / "a.key", env=env).secret == file_key.secret  # explicit file wins
    assert keys.load_key(env={keys.KEY_FILE_ENV: str(tmp_path / "a.key")}).secret == file_key.secret
    default = keys.generate_key(tmp_path / "cfg" / "baldr-ops" / "memory.key", create_parent=True)
    assert keys.load_key(env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")}).secret == default.secret


@pytest.mark.parametrize("text, message", [("zz", "not hex"), ("abcd", "at least 16")])
def test_bad_keys_are_clear_errors(text, message):
    with pytest.raises(UserError, match=message):
        keys.load_key(env={keys.KEY_ENV: text})


def test_missing_key_names_keygen(tmp_path):
    with pytest.raises(UserError, match="no memory key") as err:
        keys.load_key(tmp_path / "absent.key", env={})
    assert "keygen" in err.value.hint


def test_key_inside_the_store_is_refused(tmp_path):
    (tmp_path / "store").mkdir(exist_ok=True)
    keys.generate_key(tmp_path / "store" / "memory.key")
    with pytest.raises(UserError, match="inside the store"):
        keys.load_key(tmp_path / "store" / "memory.key", env={}, store_dir=tmp_path / "store")


def test_signatures_depend_on_the_key():
    a, b = keys.ephemeral_key(), keys.ephemeral_key()
    sig = a.sign(b"message")
    assert a.verify(b"message", sig)
    assert not b.verify(b"message", sig)
    assert not a.verify(b"message!", sig)
    assert a.key_id != b.key_id


@pytest.mark.parametrize("signature", ["\u00e9" * 64, "ü", None, 42, ["ab"], b"\xff" * 32])
def test_non_ascii_or_non_string_signatures_are_invalid_not_errors(signature):
    key = keys.ephemeral_key()
    assert key.verify(b"message", signature) is False
    assert key.verify(b"message", key.sign(b"message")) is True


def test_a_key_file_in_a_missing_directory_is_refused_not_created(tmp_path):
    from baldr_ops.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        keys.generate_key(tmp_path / "missing" / "dir" / "k")
    assert not (tmp_path / "missing").exists()
