"""The weighting rule: w = min(cap, strength * relu(r - t)) with t fixed or each record's calibrated
threshold; relevance in the key space; fixed gate; nothing above the threshold recalls nothing."""

from __future__ import annotations

import numpy as np
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


def test_calibrated_thresholds_are_per_record():
    """Without a fixed threshold each record is held against its own: null mean + z null std, never
    below 0."""
    keys = torch.eye(4, 8)
    values = torch.arange(32, dtype=torch.float32).view(4, 8)
    null = (torch.tensor([0.1, 0.5, -0.9, 0.0]), torch.tensor([0.1, 0.1, 0.1, 0.0]))
    memory = LayerMemory(LayerSettings(layer=0, strength=1.0, threshold_z=2.0, top_k=4, weight_cap=10.0),
                         ["a", "b", "c", "d"], keys, values, torch.zeros(8), null=null)
    q = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0]])  # cos 0.5 with every key
    recall = memory.recall(q)
    # thresholds 0.3, 0.7, max(0, -0.7) = 0, 0: a, c and d pass by 0.2, 0.5 and 0.5; b does not
    assert sorted(zip(recall.record_ids[0], recall.weights[0], strict=True)) == [("a", pytest.approx(0.2)),
                                                                    ("c", pytest.approx(0.5)),
                                                                    ("d", pytest.approx(0.5))]
    with pytest.raises(ValueError, match="no calibration"):
        LayerMemory(LayerSettings(layer=0), ["a"], keys[:1], values[:1], torch.zeros(8))


def test_queries_and_keys_meet_in_the_key_space():
    """A key space maps keys and (centred) queries alike before the cosine."""
    from baldr_ops.memory.keyspace import KeySpace

    scale = torch.tensor([1.0, 100.0, 1.0, 1.0])
    space = KeySpace("whitened", torch.eye(4), 1 / scale, 1.0)  # divide dimension 1 by 100
    keys = torch.tensor([[1.0, 0, 0, 0], [0, 100.0, 0, 0]])
    memory = LayerMemory(LayerSettings(layer=0, threshold=0.5, strength=1.0, top_k=2), ["x", "y"], keys, keys.clone(),
                         torch.ones(4), key_space=space)
    q = torch.tensor([[2.0, 101.0, 1.0, 1.0]])  # centred: (1, 100, 0, 0); whitened: (1, 1, 0, 0)
    recall = memory.recall(q)
    assert recall.record_ids == [["x", "y"]]  # plain cosine would give x only 0.01
    assert [r for _, r in recall.top_relevance[0]] == pytest.approx([2 ** -0.5] * 2)


def test_the_within_metric_divides_down_how_one_subject_varies():
    """Two subjects that differ along dimension 1 and whose texts vary along dimension 0: fitted to
    such groups, the within metric makes a text and another of its subject alike, and keeps texts of
    two subjects apart, where plain cosine finds the cross-subject pair closer.
    Its null scores need no folds: the space never sees the generic texts."""
    from baldr_ops.memory.keyspace import KeySpace, null_scores

    rng = np.random.default_rng(0)
    wording = rng.normal(size=(200, 1)) * 10.0            # large, within every subject
    noise = rng.normal(size=(200, 3)) * 0.1
    groups = np.concatenate([wording, np.zeros((200, 2))], axis=1) + noise
    within = np.concatenate([groups[:100] - groups[:100].mean(0), groups[100:] - groups[100:].mean(0)])
    space = KeySpace.fit("within", np.zeros((4, 3)), within)
    a1, a2, b = (torch.tensor(v, dtype=torch.float32) for v in ([2.0, 1, 0], [-2.0, 1, 0], [2.0, -1, 0]))

    def cos(x, y, s):
        x, y = s.apply(x), s.apply(y)
        return float(x @ y / (x.norm() * y.norm()))

    plain = KeySpace("centred")
    assert cos(a1, a2, plain) < 0 < cos(a1, b, plain)     # wording dominates the plain cosine
    assert cos(a1, a2, space) > 0.9 and cos(a1, b, space) < -0.9
    generic = rng.normal(size=(16, 3))
    scores = null_scores("within", generic, a1.numpy()[None].astype(np.float64), within=within)
    direct = (space.apply(torch.from_numpy(generic).float()) @ space.apply(a1)).numpy() / (
        np.linalg.norm(space.apply(torch.from_numpy(generic).float()).numpy(), axis=1) * float(space.apply(a1).norm()))
    assert scores[:, 0] == pytest.approx(direct, abs=1e-5)
    with pytest.raises(ValueError, match="topic corpus"):
        KeySpace.fit("within", generic)


def test_a_within_reference_needs_its_corpus_rows():
    """A reference whose metric is within but that carries no corpus rows (or rows under another
    metric) does not parse: the store then reports the entry as corrupt instead of failing at recall."""
    from pydantic import ValidationError

    from baldr_ops.memory.records import ReferenceBody, encode_array

    one = encode_array(np.zeros((1, 2), dtype=np.float32))
    base = dict(layer=0, corpus_sha256="x", created_at="t", d_model=2, n_reference=1, n_probes=1,
                centre=encode_array(np.zeros(2, dtype=np.float32)), reference=one, probes=one)
    assert ReferenceBody(**base, key_metric="within", key_within=one, n_within=1).within_rows().shape == (1, 2)
    assert ReferenceBody(**base, key_metric="whitened").within_rows() is None
    for broken in ({"key_metric": "within"}, {"key_metric": "whitened", "key_within": one, "n_within": 1},
                   {"key_metric": "within", "key_within": one}):
        with pytest.raises(ValidationError, match="topic-corpus rows"):
            ReferenceBody(**base, **broken)


def test_zero_strength_or_empty_memory_is_inactive():
    assert not _memory(strength=0.0, threshold=0.0).recall(torch.ones(1, 8)).active
    empty = LayerMemory(LayerSettings(layer=0), [], torch.zeros(0, 8), torch.zeros(0, 8), torch.zeros(8))
    assert empty.size == 0 and not empty.recall(torch.ones(1, 8)).active


def _grouped(labels, threshold=0.3, top_k=4, keys=None, **settings):
    """By default four keys: a and b at 60 degrees either side of axis 0 (their mean lies on it), c on
    axis 2, d on axis 3; values one-hot so a delta shows each record's weight."""
    from baldr_ops.memory.recall import Groups, label_groups

    s3 = 3 ** 0.5 / 2
    if keys is None:
        keys = torch.tensor([[0.5, s3, 0, 0, 0, 0, 0, 0], [0.5, -s3, 0, 0, 0, 0, 0, 0],
                             [0, 0, 1.0, 0, 0, 0, 0, 0], [0, 0, 0, 1.0, 0, 0, 0, 0]])
    found = label_groups(labels, keys)
    ids = [chr(ord("a") + i) for i in range(len(keys))]
    return LayerMemory(LayerSettings(layer=0, threshold=threshold, top_k=top_k, strength=1.0, weight_cap=10.0,
                                     **settings), ids, keys, torch.eye(len(keys), 8), torch.zeros(8),
                       groups=None if found is None else Groups(*found))


def test_label_groups_one_per_shared_label_and_their_mean_keys():
    from baldr_ops.memory.recall import label_groups

    keys = torch.arange(10, dtype=torch.float32).view(5, 2)
    of, means = label_groups(["x", None, "y", "x", "y"], keys)
    assert of.tolist() == [0, -1, 1, 0, 1]
    torch.testing.assert_close(means, torch.tensor([[3.0, 4.0], [6.0, 7.0]]))  # rows 0, 3 and rows 2, 4
    of, _ = label_groups(["x", "lonely", "x"], keys[:3])
    assert of.tolist() == [0, -1, 0]  # a label no other record shares is gated alone
    assert label_groups([None, "x", "y"], keys[:3]) is None


def test_a_label_group_is_recalled_by_its_mean_key_and_shares_one_weight():
    """A query on axis 0 is at cos 0.5 from a and from b, each just above a 0.3 threshold alone, but
    at cos 1 from their group's key: by label both are recalled with the group's margin (0.7), shared
    between the two; by record each gets its own (0.2)."""
    q = torch.zeros(1, 8)
    q[0, 0] = 1.0
    memory = _grouped(["fin", "fin", "music", None])
    by_label = memory.recall(q)
    assert sorted(zip(by_label.record_ids[0], by_label.weights[0], strict=True)) == [
        ("a", pytest.approx(0.35)), ("b", pytest.approx(0.35))]
    shown = {rid: g for (rid, _), g in zip(by_label.top_relevance[0], by_label.top_group_relevance[0], strict=True)}
    assert shown["a"] == shown["b"] == pytest.approx(1.0) and shown["c"] == pytest.approx(0.0)
    assert memory.threshold_of("a") == pytest.approx(0.3)
    by_record = _grouped(["fin", "fin", "music", None], recall_by="record").recall(q)
    assert sorted(zip(by_record.record_ids[0], by_record.weights[0], strict=True)) == [
        ("a", pytest.approx(0.2)), ("b", pytest.approx(0.2))]


def test_a_record_close_to_the_query_is_not_recalled_when_its_group_is_not():
    """The query lies on a's key (cos 1; cos -0.5 with b): alone a would be recalled, but its group's
    key is at cos 0.5 (a threshold of 0.6 holds it back), so by label nothing is recalled."""
    q = torch.tensor([[0.5, 3 ** 0.5 / 2, 0, 0, 0, 0, 0, 0]])
    assert not _grouped(["fin", "fin", "music", None], threshold=0.6).recall(q).active
    assert _grouped(["fin", "fin", "music", None], threshold=0.6, recall_by="record").recall(q).record_ids == [["a"]]


def test_a_label_that_fails_cannot_crowd_out_one_that_passes():
    """Label A: four records close to the query one by one, four opposite, so its mean key is at 0;
    label B: two records further away whose mean clears the threshold. With top_k 4 the four best
    records by relevance are A's, yet B's two are the ones recalled."""
    keys = torch.zeros(10, 8)
    keys[0:4, 0], keys[0:4, 1:5] = 0.9, torch.eye(4) * 0.436   # A, cos 0.9 with the query
    keys[4:8, 0], keys[4:8, 1:5] = -0.9, torch.eye(4) * 0.436  # A, opposite
    keys[8:10, 0], keys[8:10, 5], keys[9, 5] = 0.8, 0.6, -0.6   # B, cos 0.8, mean on the query
    q = torch.zeros(1, 8)
    q[0, 0] = 1.0
    memory = _grouped(["A"] * 8 + ["B"] * 2, threshold=0.5, keys=keys)
    recall = memory.recall(q)
    assert sorted(recall.record_ids[0]) == ["i", "j"]
    assert recall.weights[0] == pytest.approx([0.25, 0.25])  # B's margin 0.5, shared by two


def test_a_record_alone_is_gated_by_its_own_relevance_beside_groups():
    q = torch.zeros(1, 8)
    q[0, 0], q[0, 3] = 1.0, 1.0  # cos 0.707 with the fin group's key and with d, which is alone
    memory = _grouped(["fin", "fin", "music", None])
    recall = memory.recall(q)
    weights = dict(zip(recall.record_ids[0], recall.weights[0], strict=True))
    margin = 2 ** -0.5 - 0.3
    assert weights == {"a": pytest.approx(margin / 2), "b": pytest.approx(margin / 2), "d": pytest.approx(margin)}
    assert memory.margins(q)[0].tolist() == pytest.approx([margin, margin, -0.3, margin], abs=1e-6)


def test_unlabelled_records_recall_as_by_record():
    q = torch.tensor([[0.6, 0.2, 0.7, 0.3, 0, 0, 0, 0]])
    by_label = _grouped([None] * 4, threshold=0.1).recall(q)
    by_record = _grouped([None] * 4, threshold=0.1, recall_by="record").recall(q)
    assert by_label.record_ids == by_record.record_ids and by_label.weights[0] == pytest.approx(by_record.weights[0])
    torch.testing.assert_close(by_label.delta, by_record.delta)
    assert by_label.group_scores is None and by_label.top_group_relevance is None  # no group: no group view


def test_the_share_counts_only_the_groups_records_among_the_top_k():
    """top_k 1: only a is a candidate, so it carries its whole group's weight."""
    q = torch.tensor([[1.0, 0.1, 0, 0, 0, 0, 0, 0]])
    recall = _grouped(["fin", "fin", "music", None], top_k=1).recall(q)
    margin = float(torch.nn.functional.normalize(q, dim=1)[0, 0]) - 0.3
    assert recall.record_ids == [["a"]] and recall.weights[0] == [pytest.approx(margin)]


def test_a_batch_recalls_row_by_row_and_an_empty_row_recalls_nothing():
    q = torch.zeros(3, 8)
    q[0, 0] = 1.0          # the fin group
    q[1, 3] = 1.0          # d alone
    q[2, 0] = 1.0          # like row 0, but marked as having pooled nothing
    recall = _grouped(["fin", "fin", "music", None]).recall(q, valid=torch.tensor([True, True, False]))
    assert [sorted(r) for r in recall.record_ids] == [["a", "b"], ["d"], []]
    torch.testing.assert_close(recall.delta[1], torch.eye(4, 8)[3] * 0.7)
    assert not recall.delta[2].any()
