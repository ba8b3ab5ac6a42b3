"""Memory tests need the research extra; the demo-model fixtures come from tests/research.

`memory_store` is built once per session: the 16 built-in domain memories at layers 13 and 20 of
SmolLM2, approved, labelled by domain, under the default key rule (topic keys at layer 28,
whitened). `local_store` holds the same memories with mean keys at each layer itself, which
the running query and sessions without the prompt's inputs need. Tests that change a store work on
`store_copy` or `local_copy`.
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


def _build_store(lm, key, directory, rules):
    from baldr_ops.memory.domains import DOMAINS
    from baldr_ops.memory.identity import identity_of
    from baldr_ops.memory.store import MemoryStore
    from baldr_ops.memory.writer import add_texts

    store = MemoryStore.create(directory, identity_of(lm), key)
    for layers, rule in rules:
        for domain in DOMAINS:
            for added in add_texts(store, lm, domain.memories, layers, label=domain.name, key_rule=rule):
                store.decide(added.id, "approve")
    return directory, key


@pytest.fixture(scope="session")
def memory_store(smollm2, session_key, tmp_path_factory):
    """(directory, key) of a store holding the built-in domain memories, approved (default key rule)."""
    return _build_store(smollm2, session_key, tmp_path_factory.mktemp("memory") / "store", [(LAYERS, None)])


@pytest.fixture(scope="session")
def local_store(smollm2, session_key, tmp_path_factory):
    """The same, with each layer's keys pooled at the layer itself."""
    from baldr_ops.memory.keyspace import KeyRule

    return _build_store(smollm2, session_key, tmp_path_factory.mktemp("memory") / "local",
                        [([layer], KeyRule(layer=layer, pooling="mean")) for layer in LAYERS])


def _copy(source, target):
    from baldr_ops.memory.store import MemoryStore

    directory, key = source
    shutil.copytree(directory, target)
    return MemoryStore.open(target, key)


@pytest.fixture
def store_copy(memory_store, tmp_path):
    return _copy(memory_store, tmp_path / "store")


@pytest.fixture
def local_copy(local_store, tmp_path):
    return _copy(local_store, tmp_path / "local")
