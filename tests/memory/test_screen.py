"""Write-time screen maths (without a model): the Gram-matrix Ledoit-Wolf distance equals the
textbook d x d computation, limits come from cross-validation, and each screen flags its case."""

from __future__ import annotations

import numpy as np
import pytest

from baldr_ops.memory.screen import ReferenceScreen, _Whitener

pytestmark = pytest.mark.research


def _ledoit_wolf_full(x):
    n, d = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / d
    delta2 = np.sum((s - mu * np.eye(d)) ** 2) / d
    beta2 = sum(np.sum((np.outer(r, r) - s) ** 2) for r in x) / (n * n * d)
    shrink = min(1.0, beta2 / delta2)
    return shrink * mu * np.eye(d) + (1 - shrink) * s


@pytest.mark.parametrize("n, d", [(12, 30), (40, 20)])
def test_gram_route_equals_full_ledoit_wolf(n, d):
    rng = np.random.default_rng(n)
    rows = rng.standard_normal((n, d)) * np.linspace(0.2, 3, d)
    x = rng.standard_normal((5, d))
    cov = _ledoit_wolf_full(rows - rows.mean(0))
    z = x - rows.mean(0)
    expected = np.sqrt(np.einsum("bi,ij,bj->b", z, np.linalg.inv(cov), z))
    np.testing.assert_allclose(_Whitener(rows).distance(x), expected, rtol=1e-6)


def _low_rank(n, basis, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, basis.shape[0])) * 5 @ basis + 0.1 * rng.standard_normal((n, basis.shape[1]))


@pytest.mark.parametrize("d", [64, 256])  # reference span full (n > d) or partial (n < d)
def test_each_screen_flags_its_case(d):
    rng = np.random.default_rng(d)
    basis = np.linalg.qr(rng.standard_normal((d, 6)))[0].T
    ref = _low_rank(96, basis, 0)
    probes = rng.standard_normal((10, d)) + 2 * rng.standard_normal(d)  # generic prompts share a direction
    screen = ReferenceScreen(ref - ref.mean(0), probes)
    clean = _low_rank(40, basis, 1)
    assert np.mean([not screen.screen(v, v).flags for v in clean]) >= 0.95, [screen.screen(v, v).flags for v in clean]
    typical = np.linalg.norm(clean, axis=1).mean()
    # A huge value is flagged for its norm; a huge key for its shape (its norm plays no part in recall).
    assert {"value-norm-outlier", "value-mahalanobis-outlier"} <= set(screen.screen(clean[0], clean[0] * 1000).flags)
    assert set(screen.screen(clean[0] * 1000, clean[0]).flags) == {"key-mahalanobis-outlier"}
    off = rng.standard_normal(d)
    off *= typical / np.linalg.norm(off)
    assert {"key-mahalanobis-outlier", "key-off-subspace"} & set(screen.screen(off, off).flags)
    magnet = probes.mean(0) / np.linalg.norm(probes.mean(0)) * typical
    assert "retrieval-magnet" in screen.screen(magnet, magnet).flags
    nan = clean[0].copy()
    nan[3] = np.nan
    report = screen.screen(nan, clean[0])
    assert report.flags == ["key-not-finite"] and not report.finite
    assert "near-duplicate-flood" in screen.screen(clean[1], clean[1], np.stack([clean[1]] * 4)).flags
    assert screen.mahalanobis_limit == pytest.approx(1.5 * screen.cv_distances.max())


def test_keys_at_another_layer_are_screened_against_that_layer():
    """With keys pooled elsewhere, a key is judged by the key layer's reference and a value by its own;
    a whitened key's magnet screen reads the probes' relevance it is given."""
    rng = np.random.default_rng(3)
    d = 48
    value_basis, key_basis = (np.linalg.qr(rng.standard_normal((d, 5)))[0].T for _ in range(2))
    ref_v, ref_k = _low_rank(96, value_basis, 0), _low_rank(96, key_basis, 1)
    keys = ReferenceScreen(ref_k - ref_k.mean(0), rng.standard_normal((10, d)))
    screen = ReferenceScreen(ref_v - ref_v.mean(0), rng.standard_normal((10, d)), keys=keys)
    v, k = _low_rank(1, value_basis, 2)[0], _low_rank(1, key_basis, 3)[0]
    assert screen.screen(k, v).flags == []
    # the value layer's kind of vector, offered as a key, is not shaped like the key layer's
    assert {"key-off-subspace", "key-mahalanobis-outlier"} & set(screen.screen(v * np.linalg.norm(k) / np.linalg.norm(v),
                                                                               v).flags)
    assert screen.screen(k, v).key_mahalanobis_limit == keys.mahalanobis_limit
    relevance = np.zeros(10)
    assert screen.screen(k, v, probe_relevance=relevance).magnet_fraction == 0
    relevance[:5] = 0.9  # half the probes would recall it
    report = screen.screen(k, v, probe_relevance=relevance)
    assert report.magnet_fraction == 0.5 and "retrieval-magnet" in report.flags


def test_the_norm_limit_widens_where_the_references_own_norms_spread():
    """The value-norm screen holds z 6 unless held-out reference vectors themselves reach further;
    then it allows 1.5 times the furthest, and a value scaled far past it is still flagged."""
    rng = np.random.default_rng(5)
    d = 32
    directions = rng.standard_normal((96, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)

    def screen_of(norms):
        ref = directions * norms[:, None]
        return ReferenceScreen(ref, ref[:4])

    narrow = screen_of(np.full(96, 10.0) + rng.standard_normal(96) * 0.5)
    assert narrow.norm_z_limit == 6.0
    # A skewed spread: a few long references, as deep layers show (5 of 96 at +6 std of the rest).
    skewed = np.full(96, 10.0) + rng.standard_normal(96) * 0.5
    skewed[:5] = 16.0
    wide = screen_of(skewed)
    furthest = float(np.abs(wide.cv_norm_z).max())
    assert furthest > 4 and wide.norm_z_limit == pytest.approx(1.5 * furthest)
    between = (6.0 + wide.norm_z_limit) / 2  # past 6, inside the widened limit
    value = directions[7] * (wide.norm_mean + between * wide.norm_std)
    assert "value-norm-outlier" not in wide.screen(value, value).flags
    assert "value-norm-outlier" in wide.screen(value, value * 10).flags
    same_z = directions[7] * (narrow.norm_mean + between * narrow.norm_std)
    assert "value-norm-outlier" in narrow.screen(same_z, same_z).flags
    # One stray row a hundred times longer than the rest would widen it without end: it stops at 12.
    stray = skewed.copy()
    stray[0] = 1000.0
    assert screen_of(stray).norm_z_limit == 12.0
