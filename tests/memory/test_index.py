"""Exact cosine top-k against a brute-force numpy reference (criterion 15), and the approximate-index
interface beyond the exact limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baldr_ops.errors import UserError
from baldr_ops.memory.index import ExactIndex, build_index

pytestmark = pytest.mark.research


def _brute(keys: np.ndarray, queries: np.ndarray, k: int):
    kn = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = qn.astype(np.float64) @ kn.T.astype(np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("n, block", [(7, 65_536), (5000, 65_536), (5000, 333)])
def test_exact_topk_matches_brute_force(n, block):
    rng = np.random.default_rng(n)
    keys = rng.standard_normal((n, 64)).astype(np.float32)
    queries = rng.standard_normal((9, 64)).astype(np.float32)
    k = 10
    scores, ids = ExactIndex(torch.from_numpy(keys), block_rows=block).search(torch.from_numpy(queries), k)
    ref_scores, ref_ids = _brute(keys, queries, k)
    np.testing.assert_allclose(scores.numpy(), ref_scores[:, :min(k, n)], atol=1e-5)
    assert (ids.numpy() == ref_ids[:, :min(k, n)]).all()  # random data: no ties


def test_100k_entries_in_one_layer_match(tmp_path):
    rng = np.random.default_rng(1)
    keys = rng.standard_normal((100_000, 576)).astype(np.float32)
    queries = rng.standard_normal((2, 576)).astype(np.float32)
    index = build_index(torch.from_numpy(keys))
    assert isinstance(index, ExactIndex) and index.size == 100_000
    scores, ids = index.search(torch.from_numpy(queries), 4)
    ref_scores, ref_ids = _brute(keys, queries, 4)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)
    assert (ids.numpy() == ref_ids).all()


def test_above_the_exact_limit_an_approximate_index_is_required():
    keys = torch.randn(50, 8)
    with pytest.raises(UserError, match="more than the exact index"):
        build_index(keys, limit=10)
    seen = {}

    class Approx:
        def __init__(self, unit_keys):
            seen["norms"] = unit_keys.norm(dim=1)
            self.inner = ExactIndex(unit_keys)
            self.size = self.inner.size

        def search(self, queries, k):
            return self.inner.search(queries, k)

    index = build_index(keys, approximate=Approx, limit=10)
    assert isinstance(index, Approx)
    torch.testing.assert_close(seen["norms"], torch.ones(50))


def test_empty_and_oversized_k():
    index = ExactIndex(torch.randn(3, 4))
    scores, ids = index.search(torch.randn(2, 4), 10)
    assert scores.shape == (2, 3) and sorted(ids[0].tolist()) == [0, 1, 2]
