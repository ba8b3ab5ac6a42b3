"""The grouped bootstrap shared by `sae profile` and `memory eval`, against a direct reading of its
definition: each resample draws whole groups with replacement and pools their items."""

from __future__ import annotations

import numpy as np
import pytest

from baldr_ops.research.stats import GroupedSums, group_draws, percentile_interval


def test_grouped_sums_pool_items_and_resample_whole_groups():
    values = np.array([1.0, 3.0, 10.0, -2.0, 4.0])
    groups = np.array([7, 7, 2, 5, 5])  # ids need not be contiguous; order follows sorted ids
    stat = GroupedSums.of(values, groups)
    np.testing.assert_array_equal(stat.sums, [10.0, 2.0, 4.0])
    np.testing.assert_array_equal(stat.counts, [1.0, 2.0, 2.0])
    assert stat.pooled() == pytest.approx(values.mean())

    draws = group_draws(np.random.default_rng(3), 3, 200)
    assert draws.shape == (200, 3) and draws.min() >= 0 and draws.max() <= 2
    members = [values[groups == g] for g in (2, 5, 7)]
    direct = [np.concatenate([members[i] for i in row]).mean() for row in draws]
    np.testing.assert_allclose(stat.resampled(draws), direct)


def test_percentile_interval():
    boot = np.arange(101, dtype=float)
    assert percentile_interval(boot, 0.9) == pytest.approx((5.0, 95.0))
    assert percentile_interval(np.append(boot, np.nan), 0.9) == pytest.approx((5.0, 95.0))
    lo, hi = percentile_interval(np.array([np.nan, np.nan]))
    assert np.isnan(lo) and np.isnan(hi)
