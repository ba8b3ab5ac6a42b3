"""The operator-held HMAC key that signs every record, approval and audit line of a store.

The key never lives in the store. It comes from, in this order: an explicit key file (``--key-file``),
$BALDR_MEMORY_KEY (hex), the file named by $BALDR_MEMORY_KEY_FILE, or the default file
``$XDG_CONFIG_HOME/baldr-ops/memory.key``. A key file must be readable by its owner only (0600, as
ssh demands of private keys). A store records the key's id (an HMAC of a fixed label, not the key),
so a wrong key is named as such instead of every record failing verification.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from baldr_ops.errors import UserError
from baldr_ops.paths import config_root

KEY_ENV = "BALDR_MEMORY_KEY"
KEY_FILE_ENV = "BALDR_MEMORY_KEY_FILE"
KEY_BYTES = 32
MIN_KEY_BYTES = 16
_ID_LABEL = b"baldr-ops memory key id v1"


@dataclass(frozen=True)
class SigningKey:
    """An HMAC-SHA256 key and where it came from (for messages; never the key itself)."""

    secret: bytes
    origin: str

    @property
    def key_id(self) -> str:
        return hmac.new(self.secret, _ID_LABEL, hashlib.sha256).hexdigest()[:16]

    def sign(self, message: bytes) -> str:
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def verify(self, message: bytes, signature: object) -> bool:
        """Whether ``signature`` is this key's HMAC of ``message``. Anything but an ASCII string is
        simply invalid (`hmac.compare_digest` raises TypeError on non-ASCII str), so a line or header
        with a strange signature is excluded and reported, never a crash."""
        if not isinstance(signature, str) or not signature.isascii():
            return False
        return hmac.compare_digest(self.sign(message).encode("ascii"), signature.encode("ascii"))

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"SigningKey(id={self.key_id}, origin={self.origin!r})"


def default_key_path(env: dict | None = None) -> Path:
    return config_root(env) / "memory.key"


def _parse(text: str, origin: str) -> bytes:
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise UserError(f"the memory key from {origin} is not hex",
                        hint="make one with 'baldr-ops memory keygen'") from exc
    if len(secret) < MIN_KEY_BYTES:
        raise UserError(f"the memory key from {origin} is {len(secret)} bytes; at least {MIN_KEY_BYTES} are needed",
                        hint="make one with 'baldr-ops memory keygen'")
    return secret


def read_key_file(path: Path) -> SigningKey:
    path = Path(path).expanduser()
    try:
        info = path.stat()
    except OSError as exc:
        raise UserError(f"no memory key at {path}",
                        hint=f"make one with 'baldr-ops memory keygen --key-file {path}', or set {KEY_ENV}") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"the memory key {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o})",
                        hint=f"chmod 600 {path}")
    return SigningKey(_parse(path.read_text(), str(path)), str(path))


def load_key(key_file: str | os.PathLike | None = None, env: dict | None = None,
             store_dir: Path | None = None) -> SigningKey:
    """The operator's key, from the first source that is set (see the module docstring)."""
    env = os.environ if env is None else env
    if key_file is None and env.get(KEY_ENV):
        return SigningKey(_parse(env[KEY_ENV], f"${KEY_ENV}"), f"${KEY_ENV}")
    path = Path(key_file or env.get(KEY_FILE_ENV) or default_key_path(env)).expanduser()
    if store_dir is not None and _inside(path, store_dir):
        raise UserError(f"the memory key {path} is inside the store {store_dir}",
                        hint="keep the key outside the store: whoever can write the store must not hold it")
    return read_key_file(path)


def generate_key(path: str | os.PathLike, create_parent: bool = False) -> SigningKey:
    """Write a new random key to ``path`` (0600, never overwriting) and return it. The parent
    directory must exist unless ``create_parent`` (the default key's own directory)."""
    path = Path(path).expanduser()
    if create_parent:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    elif not path.parent.is_dir():
        raise UserError(f"the directory of {path} does not exist", hint=f"create {path.parent} first, or give another --key-file")
    secret = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise UserError(f"{path} already exists; not overwriting a key",
                        hint="records signed with the old key need it: give another --key-file") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return SigningKey(secret, str(path))


def ephemeral_key() -> SigningKey:
    """A random in-memory key, for throw-away stores (evaluation, benchmarks)."""
    return SigningKey(secrets.token_bytes(KEY_BYTES), "ephemeral")


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(Path(directory).resolve())
    except ValueError:
        return False
    return True
