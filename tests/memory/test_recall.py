"""The weighting rule: w = min(cap, strength * relu(r - threshold)); fixed gate; nothing above the
threshold recalls nothing."""

from __future__ import annotations

import pytest
import torch

from baldr_ops.memory.config import LayerSettings
from baldr_ops.memory.recall import LayerMemory

pytestmark = pytest.mark.research


def _memory(**settings):
    keys = torch.eye(4, 8)  # four orthogonal keys
    values = torch.arange(32, dtype=torch.float32).view(4, 8)
    return LayerMemory(LayerSettings(layer=0, **settings), ["a", "b", "c", "d"], keys, values, torch.zeros(8))


def test_weights_follow_relevance_above_threshold():
    memory = _memory(strength=2.0, threshold=0.25, top_k=4, weight_cap=10.0)
    q = torch.zeros(1, 8)
    q[0, 0], q[0, 1] = 0.8, 0.6  # cos 0.8 with a, 0.6 with b, 0 with c and d
    recall = memory.recall(q)
    assert recall.record_ids == [["a", "b"]]
    assert recall.weights[0] == pytest.approx([2 * 0.55, 2 * 0.35])
    torch.testing.assert_close(recall.delta[0], 1.1 * memory.values[0] + 0.7 * memory.values[1])


def test_weight_cap_and_top_k():
    memory = _memory(strength=1000.0, threshold=0.0, top_k=1, weight_cap=0.3)
    q = torch.ones(1, 8)
    recall = memory.recall(q)
    assert len(recall.record_ids[0]) == 1 and recall.weights[0] == [pytest.approx(0.3)]


def test_nothing_above_threshold_recalls_nothing():
    memory = _memory(threshold=0.99)
    recall = memory.recall(torch.ones(2, 8))
    assert not recall.active and torch.equal(recall.delta, torch.zeros(2, 8))
    assert len(recall.top_relevance[0]) == 4  # the candidates are still reported


def test_fixed_gate_ignores_relevance():
    memory = _memory(gate="fixed", strength=2.0, top_k=4)
    recall = memory.recall(-torch.ones(1, 8))  # negative relevance everywhere
    assert recall.weights[0] == pytest.approx([0.5] * 4)
    torch.testing.assert_close(recall.delta[0], 0.5 * memory.values.sum(0))


def test_zero_strength_or_empty_memory_is_inactive():
    assert not _memory(strength=0.0).recall(torch.ones(1, 8)).active
    empty = LayerMemory(LayerSettings(layer=0), [], torch.zeros(0, 8), torch.zeros(0, 8), torch.zeros(8))
    assert empty.size == 0 and not empty.recall(torch.ones(1, 8)).active
