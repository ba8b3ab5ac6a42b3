"""Where a layer's keys live and how a query is compared with them: the store's key rule.

A record's key is its text's state at the *key layer*, by the rule's key pooling (`derive.key_states`:
"topic", the state where the model is asked the text's subject, or "mean", the mean over its
tokens), minus that layer's reference centre (the same for the built-in reference texts); a query is
read and centred the same way. The key layer need not be the layer that is nudged: on SmolLM2 topic
states near the top (layer 28 of 30) separate unseen domains better than mean states at 80 % depth,
and both better than at the middle layers (docs/memory.md, "Keys").

Relevance is the cosine of the two after a linear map W, the key metric:

* ``centred``: W = I (the rule of store format v2);
* ``whitened``: W = S^-1/2, S the Ledoit-Wolf shrunk covariance (`screen.shrunk_spectrum`) of the
  generic texts' key states at the key layer (the reference texts and the probe prompts). Key
  residual states share a few high-variance directions every text moves along; whitening divides
  each direction by its spread in generic text, so relevance counts how unusual the shared
  direction is rather than how large (format v3-v4).
* ``within``: W = S_w^-1/2, S_w the same shrunk covariance of the *topic corpus* (`domains.topic_groups`:
  30 subjects, each a group of statements and unfinished prompts), each group centred on its own
  mean. S_w holds how texts on one subject differ (wording, style, statement or prompt); dividing
  those directions down leaves what differs between subjects. This is within-class covariance
  normalisation, as in speaker verification. The default of format v5: on the development sets it
  raised the mean AUROC of own against other domains from 0.926 to 0.953 (docs/memory.md).

Calibration: each key's relevance to the generic texts, each measured out of sample (8-fold
cross-validation: a whitening refitted without the fold; the within metric does not see the generic
texts, so it needs no folds), is the key's null distribution; its mean
and standard deviation are stored with the record, and its calibrated threshold is
``max(0, mean + z * std)`` (`calibrated_thresholds`). A key that resembles generic text (a retrieval
magnet) gets a high threshold by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from baldr_ops.memory.index import unit
from baldr_ops.memory.records import KeyMetric, KeyPooling, ReferenceBody
from baldr_ops.memory.screen import shrunk_spectrum

KEY_METRICS: tuple[str, ...] = get_args(KeyMetric)
KEY_POOLINGS: tuple[str, ...] = get_args(KeyPooling)
DEFAULT_KEY_METRIC: KeyMetric = "within"
DEFAULT_KEY_POOLING: KeyPooling = "topic"
DEFAULT_KEY_DEPTH = 0.8  # mean pooling: key layer int(0.8 * n_layers) when none is given, 24 of 30 on SmolLM2
CALIBRATION_FOLDS = 8


def default_key_layer(n_layers: int, pooling: KeyPooling) -> int:
    """Topic states: the second-to-last layer (the last one's state is already shaped into the next
    token's logits); mean states: 80 % depth."""
    if pooling == "topic":
        return max(0, n_layers - 2)
    return min(n_layers - 1, int(DEFAULT_KEY_DEPTH * n_layers))


class KeyRule(BaseModel):
    """A store option, fixed for a layer when it gets its first record (recorded in its reference
    entry): the layer keys are read at (None: `default_key_layer`), the key pooling and the key metric."""

    model_config = ConfigDict(extra="forbid")

    layer: int | None = None
    metric: KeyMetric = DEFAULT_KEY_METRIC
    pooling: KeyPooling = DEFAULT_KEY_POOLING

    def key_layer(self, n_layers: int) -> int:
        return default_key_layer(n_layers, self.pooling) if self.layer is None else self.layer

    def describe(self, n_layers: int) -> str:
        return f"{self.pooling} keys at layer {self.key_layer(n_layers)}, {self.metric}"


def rule_of(reference: ReferenceBody) -> KeyRule:
    """The key rule a layer's reference records (a v2 reference: centred mean keys at the layer itself)."""
    return KeyRule(layer=reference.keyed_at, metric=reference.key_metric or "centred", pooling=reference.pooling)


@dataclass(frozen=True)
class KeySpace:
    """The map x -> W x of a key metric, for vectors already centred at the key layer. ``directions``
    [d, r] span the generic texts, ``scales`` [r] are 1/sqrt(variance) along them, ``floor_scale`` is
    1/sqrt(variance) in every other direction; the centred metric is the identity."""

    metric: KeyMetric
    directions: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    floor_scale: float = 1.0

    @classmethod
    def fit(cls, metric: KeyMetric, generic: np.ndarray, within: np.ndarray | None = None) -> KeySpace:
        """From the generic texts' centred key states [n, d] at the key layer (whitened) or the topic
        corpus's group-centred ones (within)."""
        if metric == "centred":
            return cls("centred")
        if metric == "within":
            if within is None:
                raise ValueError("the within metric needs the topic corpus's key states")
            rows = np.asarray(within, dtype=np.float64)   # centred per group already
        else:
            rows = np.asarray(generic, dtype=np.float64)
            rows = rows - rows.mean(axis=0)
        directions, variances, floor = shrunk_spectrum(rows)
        return cls(metric, torch.from_numpy(directions).to(torch.float32),
                   torch.from_numpy(1.0 / np.sqrt(variances)).to(torch.float32), float(1.0 / np.sqrt(floor)))

    @classmethod
    def of(cls, reference: ReferenceBody) -> KeySpace:
        """The key space of a layer's reference."""
        return cls.fit(reference.key_metric or "centred", reference.generic_keys(), reference.within_rows())

    def to(self, device: torch.device | str) -> KeySpace:
        if self.directions is None:
            return self
        return KeySpace(self.metric, self.directions.to(device), self.scales.to(device), self.floor_scale)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """W x for centred vectors x [..., d] (float32, on the space's device)."""
        if self.directions is None:
            return x
        along = x @ self.directions
        return (along * self.scales) @ self.directions.T + (x - along @ self.directions.T) * self.floor_scale


def null_scores(metric: KeyMetric, generic: np.ndarray, keys: np.ndarray, folds: int = CALIBRATION_FOLDS,
                within: np.ndarray | None = None) -> np.ndarray:
    """[n_generic, n_keys]: each key's relevance to each generic text (centred rows [n, d]), every
    generic text scored by a key space fitted without its fold (out of sample; the within metric,
    fitted to ``within`` alone, in one go)."""
    generic = np.asarray(generic, dtype=np.float64)
    keys_t = torch.from_numpy(np.asarray(keys, dtype=np.float64).reshape(-1, generic.shape[1]))
    scores = torch.empty((len(generic), keys_t.shape[0]), dtype=torch.float64)
    if metric == "within":  # fitted to the corpus alone: every generic text is out of sample at once
        space = _double(KeySpace.fit(metric, generic, within))
        return (unit(space.apply(torch.from_numpy(generic))) @ unit(space.apply(keys_t)).T).numpy()
    fold = np.arange(len(generic)) % folds
    for f in range(folds):
        held = fold == f
        space = _double(KeySpace.fit(metric, generic[~held]))
        scores[torch.from_numpy(held)] = unit(space.apply(torch.from_numpy(generic[held]))) @ unit(
            space.apply(keys_t)).T
    return scores.numpy()


def _double(space: KeySpace) -> KeySpace:
    """The space in float64, as calibration computes."""
    if space.directions is None:
        return space
    return KeySpace(space.metric, space.directions.double(), space.scales.double(), space.floor_scale)


def probe_relevance(reference: ReferenceBody, keys: np.ndarray, null: np.ndarray | None = None) -> np.ndarray | None:
    """[n_probes, n_keys]: each key's out-of-sample relevance to the probe prompts in the *whitened*
    metric, what the retrieval-magnet screen reads whatever metric recall uses (its limit was measured
    there); None for the centred metric, whose screen takes plain cosines. ``null``: the keys'
    `reference_null_scores`, reused when the metric is whitened (they are the same scores)."""
    metric = reference.key_metric or "centred"
    if metric == "centred":
        return None
    if metric != "whitened" or null is None:
        null = null_scores("whitened", reference.generic_keys(), keys)
    return null[reference.n_reference:]


def reference_null_scores(reference: ReferenceBody, keys: np.ndarray) -> np.ndarray:
    """`null_scores` of ``keys`` under a layer's reference and its key metric."""
    return null_scores(reference.key_metric or "centred", reference.generic_keys(), keys,
                       within=reference.within_rows())


def summarise_null(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (sample) standard deviation over axis 0 of null scores [n_generic, ...]: what a record
    stores as its calibration."""
    return scores.mean(axis=0), scores.std(axis=0, ddof=1)


def calibrated_thresholds(null_mean: torch.Tensor, null_std: torch.Tensor, z: float) -> torch.Tensor:
    """Each record's threshold: its null mean plus ``z`` null standard deviations, never below 0 (a
    key is never recalled by a query it is uncorrelated with, whatever its statistics say)."""
    return (null_mean + z * null_std).clamp_min(0.0)
