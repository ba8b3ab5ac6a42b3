"""Write-time screens: is a new key/value pair shaped like clean activations at its layer?

Measured against the layer's reference (the pooled states of the built-in reference texts, centred):

* finite: NaN or infinite values are refused outright (never stored);
* norm z-score: (||x|| - mean ||ref||) / std ||ref||, two-sided; it flags values only (a key's norm
  plays no part in recall, which compares directions; its shape is screened by the next two). Limit:
  ``norm_z_max``, or ``norm_z_factor`` times the largest cross-validated |z| of the reference's own
  vectors where that is wider (deep layers, whose reference norms spread further), at most twice
  ``norm_z_max``;
* Mahalanobis distance under a Ledoit-Wolf shrunk covariance of the reference (n << d, so the plain
  sample covariance is singular). Its limit is calibrated per layer: ``mahalanobis_factor`` times the
  largest distance a held-out reference vector reaches in 8-fold cross-validation;
* subspace: the fraction of the vector's energy inside the span of the reference vectors. Clean
  activations live mostly in a low-dimensional subspace (on SmolLM2 layer 13 a held-out clean
  vector keeps ~45-75 % of its energy in the 95-dimensional span of 96 reference texts, a random
  direction ~16 %), which the shrunk Mahalanobis distance, dominated by its isotropic floor when
  n << d, barely sees. Limit: ``span_factor`` times the smallest cross-validated fraction;
* retrieval magnet: the fraction of generic probe prompts whose cosine with the key exceeds
  ``magnet_cosine`` (a key close to many unrelated prompts would be recalled for anything); for
  whitened and within keys, the probes' relevance in the whitened metric measured out of sample (as
  calibration measures it there) against ``magnet_relevance``, where its limit was measured;
* near-duplicate flood: more than ``max_near_duplicates`` existing keys within
  ``near_duplicate_cosine``.

When keys live at another layer than values (`keyspace`), the key is screened against the key
layer's reference and the value against the value layer's; the magnet and near-duplicate screens
compare keys as stored (centred, before any whitening).

A failed screen is a flag on the record; a flagged record is not written unless the operator keeps
it (``--keep-flagged``), and it is never approved without ``--override-flags``.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from baldr_ops.memory.config import ScreenSettings

CV_FOLDS = 8


class VectorScreen(BaseModel):
    model_config = ConfigDict(extra="forbid")

    finite: bool
    norm: float | None = None
    norm_z: float | None = None
    mahalanobis: float | None = None
    span_fraction: float | None = None


class ScreenReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: VectorScreen
    value: VectorScreen
    mahalanobis_limit: float  # the value's (and the key's, when both live at one layer)
    norm_z_limit: float | None = None  # the value's (absent from records written before it was calibrated)
    span_fraction_limit: float
    key_mahalanobis_limit: float | None = None  # the key's, when it lives at another layer
    key_span_fraction_limit: float | None = None
    magnet_fraction: float | None = None
    near_duplicates: int = 0
    flags: list[str]

    @property
    def finite(self) -> bool:
        return self.key.finite and self.value.finite


def shrunk_spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Ledoit-Wolf (2004) shrinkage of the covariance S of centred rows ``x`` [n, d] towards mu * I,
    as (directions [d, r], variances [r], floor): variance ``var_j`` along the orthonormal direction
    ``v_j`` of the rows' span and ``floor`` in every direction orthogonal to it.

    Everything goes through the n x n Gram matrix, never a d x d one: with n ~ 100 reference texts
    and d in the thousands that is the difference between milliseconds and seconds."""
    n, d = x.shape
    g = x @ x.T
    trace = float(np.trace(g)) / n  # tr S
    mu = trace / d
    fro2 = float(np.sum(g * g)) / (n * n)  # ||S||_F^2
    delta2 = (fro2 - 2 * mu * trace + mu * mu * d) / d
    sq = np.diag(g)
    # sum_k ||x_k x_k^T - S||_F^2 = sum_k (||x_k||^4 - 2 x_k^T S x_k) + n ||S||_F^2, x_k^T S x_k = sum_j g_kj^2 / n
    beta2 = (float(np.sum(sq * sq)) - 2 * float(np.sum(g * g)) / n + n * fro2) / (n * n * d)
    shrink = 1.0 if delta2 <= 0 else min(1.0, max(0.0, beta2 / delta2))
    lam, u = np.linalg.eigh(g)
    keep = lam > 1e-9 * max(float(lam.max()), 1e-30)
    directions = x.T @ (u[:, keep] / np.sqrt(lam[keep]))
    floor = max(shrink * mu, 1e-12 * max(mu, 1e-30))
    return directions, floor + (1 - shrink) * lam[keep] / n, floor


class _Whitener:
    """x -> Mahalanobis distance from the rows' mean under their shrunk covariance."""

    def __init__(self, rows: np.ndarray):
        self.centre = rows.mean(axis=0)
        self.directions, self.variances, self.floor = shrunk_spectrum(rows - self.centre)

    def distance(self, x: np.ndarray) -> np.ndarray:
        return self.measure(x)[0]

    def measure(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mahalanobis distances and the fraction of each vector's energy inside the rows' span."""
        z = np.atleast_2d(x) - self.centre
        along = z @ self.directions
        inside = np.sum(along * along, axis=1)
        total = np.sum(z * z, axis=1)
        rest = np.maximum(total - inside, 0.0)
        distance = np.sqrt(np.sum(along * along / self.variances, axis=1) + rest / self.floor)
        return distance, inside / np.maximum(total, 1e-30)


class ReferenceScreen:
    """The screens of one layer, fitted once from its reference entry."""

    def __init__(self, reference: np.ndarray, probes: np.ndarray, settings: ScreenSettings | None = None,
                 keys: ReferenceScreen | None = None):
        """``keys``: the screen of the key layer, when keys live at another layer than values."""
        self.settings = settings or ScreenSettings()
        self.keys = keys
        ref = np.asarray(reference, dtype=np.float64)
        norms = np.linalg.norm(ref, axis=1)
        self.norm_mean, self.norm_std = float(norms.mean()), float(max(norms.std(), 1e-12))
        self.whitener = _Whitener(ref)
        self.cv_distances, self.cv_span_fractions, self.cv_norm_z = self._cross_validated(ref, norms)
        self.mahalanobis_limit = float(self.settings.mahalanobis_factor * self.cv_distances.max())
        widened = self.settings.norm_z_factor * float(np.abs(self.cv_norm_z).max())
        self.norm_z_limit = float(min(2 * self.settings.norm_z_max, max(self.settings.norm_z_max, widened)))
        self.span_fraction_limit = float(self.settings.span_factor * self.cv_span_fractions.min())
        self.probes = _unit(np.asarray(probes, dtype=np.float64))

    @staticmethod
    def _cross_validated(ref: np.ndarray, norms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each reference vector's Mahalanobis distance, span fraction and norm z-score (``norms``:
        the rows' norms), measured against the reference without its fold."""
        folds = np.arange(len(ref)) % CV_FOLDS
        distances, fractions, norm_z = np.empty(len(ref)), np.empty(len(ref)), np.empty(len(ref))
        for fold in range(CV_FOLDS):
            held = folds == fold
            distances[held], fractions[held] = _Whitener(ref[~held]).measure(ref[held])
            norm_z[held] = (norms[held] - norms[~held].mean()) / max(norms[~held].std(), 1e-12)
        return distances, fractions, norm_z

    def vector(self, x: np.ndarray) -> VectorScreen:
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            return VectorScreen(finite=False)
        norm = float(np.linalg.norm(x))
        distance, fraction = self.whitener.measure(x)
        return VectorScreen(finite=True, norm=norm, norm_z=(norm - self.norm_mean) / self.norm_std,
                            mahalanobis=float(distance[0]), span_fraction=float(fraction[0]))

    def screen(self, key: np.ndarray, value: np.ndarray, existing_keys: np.ndarray | None = None,
               probe_relevance: np.ndarray | None = None) -> ScreenReport:
        """``probe_relevance``: the key's relevance to each probe in a whitened key metric, out of
        sample (None: plain cosine with the probes as stored)."""
        s = self.settings
        keys = self.keys or self
        report = ScreenReport(key=keys.vector(key), value=self.vector(value),
                              mahalanobis_limit=self.mahalanobis_limit, norm_z_limit=self.norm_z_limit,
                              span_fraction_limit=self.span_fraction_limit, flags=[])
        if self.keys is not None:
            report.key_mahalanobis_limit = keys.mahalanobis_limit
            report.key_span_fraction_limit = keys.span_fraction_limit
        for name, part, screen in (("key", report.key, keys), ("value", report.value, self)):
            if not part.finite:
                report.flags.append(f"{name}-not-finite")
                continue
            if name == "value" and abs(part.norm_z) > self.norm_z_limit:
                report.flags.append(f"{name}-norm-outlier")
            if part.mahalanobis > screen.mahalanobis_limit:
                report.flags.append(f"{name}-mahalanobis-outlier")
            if part.span_fraction < screen.span_fraction_limit:
                report.flags.append(f"{name}-off-subspace")
        if report.key.finite and report.key.norm > 0:
            unit = np.asarray(key, dtype=np.float64) / report.key.norm
            report.magnet_fraction = float(np.mean(keys.probes @ unit > s.magnet_cosine) if probe_relevance is None
                                           else np.mean(np.asarray(probe_relevance) > s.magnet_relevance))
            if report.magnet_fraction > s.magnet_fraction:
                report.flags.append("retrieval-magnet")
            if existing_keys is not None and len(existing_keys):
                close = _unit(np.asarray(existing_keys, dtype=np.float64)) @ unit > s.near_duplicate_cosine
                report.near_duplicates = int(close.sum())
                if report.near_duplicates > s.max_near_duplicates:
                    report.flags.append("near-duplicate-flood")
        return report


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
