"""Memory tests need the research extra; the demo-model fixtures come from tests/research.

`memory_store` is built once per session: the 16 built-in domain memories at layers 13 and 20 of
SmolLM2, approved, labelled by domain. Tests that change a store work on `store_copy`.
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    from tests.research.conftest import smollm2, tiny_lm  # noqa: F401  (shared fixtures)

LAYERS = (13, 20)


@pytest.fixture(scope="session")
def session_key():
    from baldr_ops.memory.keys import ephemeral_key

    return ephemeral_key()


@pytest.fixture(scope="session")
def memory_store(smollm2, session_key, tmp_path_factory):
    """(directory, key) of a store holding the built-in domain memories, approved."""
    from baldr_ops.memory.domains import DOMAINS
    from baldr_ops.memory.identity import identity_of
    from baldr_ops.memory.store import MemoryStore
    from baldr_ops.memory.writer import add_texts

    directory = tmp_path_factory.mktemp("memory") / "store"
    store = MemoryStore.create(directory, identity_of(smollm2), session_key)
    for domain in DOMAINS:
        for added in add_texts(store, smollm2, domain.memories, LAYERS, label=domain.name):
            store.decide(added.id, "approve")
    return directory, session_key


@pytest.fixture
def store_copy(memory_store, tmp_path):
    from baldr_ops.memory.store import MemoryStore

    directory, key = memory_store
    target = tmp_path / "store"
    shutil.copytree(directory, target)
    return MemoryStore.open(target, key)
