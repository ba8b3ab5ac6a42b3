"""The evaluation protocol (criterion 17) on SmolLM2, and its statistics helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from baldr_ops.memory import evaluate

pytestmark = pytest.mark.research


def test_auroc_bootstrap_selectivity_helpers():
    assert evaluate.auroc(np.array([3.0, 2, 1, 0]), np.array([True, True, False, False])) == 1.0
    assert evaluate.auroc(np.array([1.0, 1]), np.array([True, False])) == 0.5
    ci = evaluate.bootstrap_mean(np.array([1.0, -1, 1, -1]), np.array([0, 0, 1, 1]), 200, 0)
    assert ci.mean == 0 and ci.low <= 0 <= ci.high
    shifts = np.zeros((2, 2, 2))
    shifts[:, 0, 0] = shifts[:, 1, 1] = 1.0
    shifts[1, 1, 1] = -1.0
    sel = evaluate.selectivity(shifts)
    assert (sel.pairs, sel.selective) == (4, 3) and sel.low is None
    sel = evaluate.selectivity(shifts, 500, 0)  # query 0 is selective in both domains, query 1 in one
    assert sel.low == 0.5 and sel.high == 1.0
    assert evaluate.spearman([1, 2, 3, 4], [1, 2, 3, 5]).rho == pytest.approx(1.0)
    assert evaluate.spearman([1, 1], [1, 2]).rho is None


@pytest.mark.slow
def test_criterion_17_on_smollm2(smollm2, monkeypatch):
    from baldr_ops.memory.config import PROFILE_ENV

    monkeypatch.delenv(PROFILE_ENV, raising=False)  # the default layer, whatever the environment names
    report = evaluate.run(smollm2)
    checks = {c.name: c for c in report.checks}
    assert report.layer == 13 and len(report.domains) == 4 and report.memories == 16 and report.queries >= 10
    # Held-out vocabularies: derived from text the memories do not contain.
    from baldr_ops.memory.domains import DOMAINS
    assert not set(report.vocabularies["cooking"]) <= {w for m in DOMAINS[0].memories for w in m.lower().split()}
    fixed = report.fixed
    pairs = 4 * report.queries
    assert fixed.pairs == pairs and fixed.low <= fixed.fraction <= fixed.high
    # What holds: selectivity at fixed strength is far above chance (~50 %) over every resample of the
    # queries (measured 109/128 = 85.2 %, 95 % interval 76-93 %). What does not hold: the 90 % target,
    # which the interval's lower end misses; the report says so (docs/memory.md, Evaluation).
    assert fixed.low > 0.6
    selectivity = checks["selectivity at fixed strength (95% CI over queries)"]
    assert selectivity.passed == (fixed.low >= 0.9) and "CI lower end" in selectivity.target
    # Random directions of the same norm: no own-domain shift to speak of, and a small fraction of what
    # the memories give at the same strength (whose interval lies above 0) -- noise alone cannot pass.
    assert checks["random control: own-domain shift 95% CI includes 0"].passed, report.random_control
    assert report.own_shift_fixed.low > 0
    assert abs(report.random_control.mean) < 0.25 * report.own_shift_fixed.mean  # measured 2 %
    assert checks["memories against the random control, same strength"].passed
    assert report.dose_monotone and report.dose[0].own_mean == 0 and report.dose[0].kl_mean == 0
    assert [d.strength for d in report.dose] == [0, 0.5, 1, 2, 4]
    for value in (report.kl_fixed, report.kl_gated, report.perplexity_base, report.perplexity_gated,
                  report.perplexity_fixed, report.auroc):
        assert math.isfinite(value)
    assert 0.5 < report.auroc <= 1
    assert report.spearman_fixed.pairs == pairs and report.spearman_fixed.rho is not None
    assert 0 < report.spearman_gated.pairs < pairs  # only the pairs the gate let through (measured 21)
    # Every other check passes.
    assert [c.name for c in report.checks if c.passed is False and c is not selectivity] == []
