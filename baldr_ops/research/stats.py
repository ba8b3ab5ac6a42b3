"""Pooled means with intervals from resampling whole groups (prompts, queries): tokens of one prompt
are not independent, so the bootstrap draws prompts, not tokens. Used by `sae profile` and
`memory eval`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GroupedSums:
    """Per-group sums and counts of one quantity; the pooled mean is sum(sums) / sum(counts)."""

    sums: np.ndarray  # [n_groups]
    counts: np.ndarray  # [n_groups]

    @classmethod
    def of(cls, values: np.ndarray, groups: np.ndarray) -> GroupedSums:
        """From one value per item and the group each item belongs to (any labels; groups ordered by label)."""
        ids, index = np.unique(groups, return_inverse=True)
        sums = np.bincount(index, weights=np.asarray(values, dtype=float), minlength=len(ids))
        return cls(sums, np.bincount(index, minlength=len(ids)).astype(float))

    def pooled(self) -> float:
        total = self.counts.sum()
        return float(self.sums.sum() / total) if total else float("nan")

    def resampled(self, draws: np.ndarray) -> np.ndarray:
        """Pooled means for each row of group indices, [B]."""
        counts = self.counts[draws].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums[draws].sum(1) / counts


def group_draws(rng: np.random.Generator, n_groups: int, n: int) -> np.ndarray:
    """``n`` resamples of ``n_groups`` group indices with replacement, [n, n_groups]."""
    return rng.integers(0, n_groups, size=(n, n_groups))


def percentile_interval(boot: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap values (NaN draws ignored)."""
    if not np.isfinite(boot).any():
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(boot, [alpha, 1 - alpha])
    return float(lo), float(hi)
