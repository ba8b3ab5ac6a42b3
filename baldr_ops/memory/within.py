"""The within-topic rows: how texts on one subject vary, as a model's key states show it.

The within key metric (`keyspace`) divides down the covariance of these rows: the key states of the
topic corpus (`domains.topic_groups`, 330 texts on 30 subjects) at the key layer, each subject
centred on its own mean. They depend only on the model (weights, tokenizer, dtype, device), the key
layer and pooling, and the corpus, yet reading them is most of a new store's first write (about 19 s
of SmolLM2 on 2 CPU cores). So they are measured once per such combination and kept in the user
cache (`paths.cache_root`), like the weight fingerprints; every store still carries its own signed
copy, so a store never depends on the cache after it is written. A cache file that does not read
back as a finite array of the expected shape is measured again and replaced. Whoever can write the
user cache can choose the rows signed into the next new store, the same trust the weight
fingerprints in that cache already carry.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from baldr_ops.atomic import atomic_write
from baldr_ops.memory.derive import MAX_TOKENS, TOPIC_SUFFIX, key_states
from baldr_ops.memory.domains import topic_corpus_fingerprint, topic_groups
from baldr_ops.memory.identity import ModelIdentity, identity_of
from baldr_ops.paths import cache_root

# Bump when the rows of the same inputs would come out different (a change to how states are read).
ROWS_VERSION = 1


def cache_path(identity: ModelIdentity, device: str, key_layer: int, pooling: str) -> Path:
    """Where the rows of this model (on this device type), key layer and pooling are kept: named by
    a hash of everything they depend on."""
    what = [ROWS_VERSION, identity.weights_sha256, identity.tokenizer_sha256, identity.dtype, device,
            key_layer, pooling, topic_corpus_fingerprint(), TOPIC_SUFFIX, MAX_TOKENS]
    return cache_root() / "within-rows" / f"{hashlib.sha256(json.dumps(what).encode()).hexdigest()[:32]}.npy"


def within_rows(lm, key_layer: int, pooling: str, progress: Callable[[str], None] = lambda _: None,
                identity: ModelIdentity | None = None) -> np.ndarray:
    """The topic corpus's key states at ``key_layer``, each subject centred on its own mean,
    float32 [texts, d_model]: from the cache, else measured and cached. ``identity``: the model's,
    where the caller holds it already (hashing the tokenizer costs ~0.1 s)."""
    groups = topic_groups()
    texts = [t for group in groups for t in group]
    path = cache_path(identity or identity_of(lm), lm.device.type, key_layer, pooling)
    cached = _read(path, (len(texts), lm.d_model))
    if cached is not None:
        return cached
    progress(f"reading the topic corpus ({len(groups)} subjects, {len(texts)} texts) for the within-topic "
             f"metric (once per model and key layer; kept in {path.parent})")
    states = key_states(lm, texts, [key_layer], pooling, progress=progress)[key_layer].numpy()
    rows, start = [], 0
    for group in groups:
        part = states[start:start + len(group)]
        rows.append(part - part.mean(axis=0))
        start += len(group)
    out = np.concatenate(rows).astype(np.float32)
    _write(path, out)
    return out


def _read(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached rows, or None for anything else: a missing file, another format (a zip archive
    loads as an NpzFile), a header whose shape the file does not hold (mapped, so a forged shape
    allocates nothing), another shape or dtype, a non-finite value."""
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(rows, np.ndarray) or rows.shape != shape or rows.dtype != np.float32:
            return None
        rows = np.array(rows)
    except Exception:  # noqa: BLE001 - whatever the damage, the rows are measured again
        return None
    return rows if np.isfinite(rows).all() else None


def _write(path: Path, rows: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, rows, allow_pickle=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buffer.getvalue())
    except OSError:
        pass  # a read-only cache only costs the next store the measurement again
