"""Feature labels and their evidence, in the style of the ``Adam1010/gemma-4-31b-sae-features``
dataset: one record per (layer, feature) with dual auto-interpretation labels, held-out
cross-validation, a linear probe and a confidence tier, plus a per-layer ``layer_stats`` summary.

The published files do not share one schema (per-layer feature files beside a summary file), so the
reader is lenient: every field but ``feature_id`` and ``layer`` may be missing (``layer`` may come
from a per-layer file's name), unknown fields are kept, and rows that are not records (summaries)
are read as layer stats or listed in ``skipped`` rather than failing the load.

    catalog = FeatureCatalog.load("features/")       # a .json, a .jsonl or a directory of them
    catalog.label(layer=12, feature_id=4071)          # 'legal contracts' or None
    catalog.filter(min_tier="medium")                 # records rated medium or high
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from baldr_ops.errors import UserError, first_invalid_field

# Best first. Tiers outside this list rank below "low".
TIERS = ("high", "medium", "low")
_STATS_FIELDS = {"n_features", "avg_confidence", "high", "medium", "low"}
# A per-layer file's name: layer_12.json, layer12_features.jsonl, features_layer_12.json
_LAYER_IN_FILE_NAME = re.compile(r"(?:^|[^a-z])layers?[._-]?(\d+)(?!\d)", re.IGNORECASE)


class _Lenient(BaseModel):
    """Missing fields are None, unknown ones are kept (``model_extra``)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class ActivationExample(_Lenient):
    activation: float | None = None
    token_idx: int | None = None
    context: str | None = None


class ProbeMetrics(_Lenient):
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    n_positive: int | None = None
    n_negative: int | None = None
    n_train: int | None = None
    n_test: int | None = None


class ConfidenceScores(_Lenient):
    """The parts of the composite confidence."""

    agreement: float | None = None
    cv: float | None = None
    probe: float | None = None
    activation: float | None = None


class FeatureRecord(_Lenient):
    """One labelled feature. Only the two keys are required."""

    feature_id: int
    layer: int
    model: str | None = None
    # activation statistics
    freq: float | None = None
    mean_activation: float | None = None
    max_activation: float | None = None
    n_active: int | None = None
    # dual auto-interpretation
    claude_label: str | None = None
    claude_category: str | None = None
    gpt_label: str | None = None
    gpt_category: str | None = None
    agreement: float | None = None
    examples: list[ActivationExample] = []
    # cross-validation of the label on held-out activations
    cv_validated: bool | None = None
    cv_precision: float | None = None
    cv_matches: Any = None  # a count or a list of examples, depending on the file
    cv_mismatches: Any = None
    cv_assessment: str | None = None
    cv_notes: str | None = None
    # linear probe
    probe_accuracy: float | None = None
    probe_metrics: ProbeMetrics | None = None
    probe_status: str | None = None
    # composite
    confidence: float | None = None
    confidence_scores: ConfidenceScores | None = None
    confidence_tier: str | None = None

    @property
    def label(self) -> str | None:
        """The label to show: Claude's, else GPT's, else a plain ``label`` field some files use."""
        extra = self.model_extra or {}
        return self.claude_label or self.gpt_label or extra.get("label")

    @property
    def category(self) -> str | None:
        return self.claude_category or self.gpt_category

    def meets(self, min_tier: str | None) -> bool:
        return min_tier is None or tier_rank(self.confidence_tier) >= tier_rank(check_tier(min_tier))


class LayerStats(_Lenient):
    """One layer's summary: how many features were labelled and how confident they are."""

    n_features: int | None = None
    avg_confidence: float | None = None
    high: int | None = None
    medium: int | None = None
    low: int | None = None


def tier_rank(tier: str | None) -> int:
    """high 3, medium 2, low 1; anything else (or none) 0."""
    tier = (tier or "").strip().lower()
    return len(TIERS) - TIERS.index(tier) if tier in TIERS else 0


def check_tier(tier: str) -> str:
    if tier.strip().lower() not in TIERS:
        raise UserError(f"unknown confidence tier {tier!r}", hint=f"choose one of: {', '.join(TIERS)}")
    return tier.strip().lower()


class FeatureCatalog:
    """Records keyed by (layer, feature_id), and per-layer stats, from any number of files."""

    def __init__(self) -> None:
        self.records: dict[tuple[int, int], FeatureRecord] = {}
        self.layer_stats: dict[int, LayerStats] = {}
        self.sources: list[Path] = []
        self.skipped: list[str] = []  # "file:row: why", for rows that were neither record nor stats
        self.duplicates = 0  # records seen again (the later file wins)

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> FeatureCatalog:
        """A .json or .jsonl file, or a directory of them (searched recursively)."""
        path = Path(path).expanduser()
        if not path.exists():
            raise UserError(f"feature metadata {path} does not exist")
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file()) \
            if path.is_dir() else [path]
        if not files:
            raise UserError(f"{path} holds no .json or .jsonl files")
        catalog = cls()
        for file in files:
            catalog.add_file(file)
        if not catalog.records and not catalog.layer_stats:
            raise UserError(f"no feature records in {path}",
                            hint="records need feature_id and layer (or a per-layer file name such as layer_12.json)")
        return catalog

    def add_file(self, file: Path) -> None:
        self.sources.append(file)
        match = _LAYER_IN_FILE_NAME.search(file.stem)
        default_layer = int(match.group(1)) if match else None
        for where, item in _items(file):
            self._add_item(item, where, default_layer)

    def _add_item(self, item: Any, where: str, default_layer: int | None) -> None:
        if not isinstance(item, dict):
            self.skipped.append(f"{where}: not an object")
            return
        if "feature_id" not in item:
            if isinstance(item.get("layer_stats"), dict):
                self._add_stats(item["layer_stats"], where)
            elif _STATS_FIELDS & item.keys() and "layer" in item:
                self._add_stats({item["layer"]: item}, where)
            elif item and all(str(k).isdigit() and isinstance(v, dict | None) for k, v in item.items()):
                self._add_stats(item, where)  # a bare {"0": {...}, "1": {...}} stats file
            else:
                self.skipped.append(f"{where}: no feature_id")
            return
        if item.get("layer") is None and default_layer is not None:
            item = {**item, "layer": default_layer}
        try:
            record = FeatureRecord.model_validate(item)
        except ValidationError as exc:
            field, message = first_invalid_field(exc)
            self.skipped.append(f"{where}: {field or 'record'}: {message}")
            return
        key = (record.layer, record.feature_id)
        self.duplicates += key in self.records
        self.records[key] = record

    def _add_stats(self, stats: dict, where: str) -> None:
        for layer, value in stats.items():
            if value is None:
                continue  # a struct column leaves absent layers null
            try:
                self.layer_stats[int(layer)] = LayerStats.model_validate(value)
            except (ValueError, TypeError, ValidationError) as exc:
                self.skipped.append(f"{where}: layer_stats[{layer}]: {str(exc).splitlines()[0]}")

    # -- asking -------------------------------------------------------------------------------
    def get(self, layer: int, feature_id: int) -> FeatureRecord | None:
        return self.records.get((layer, feature_id))

    def label(self, layer: int, feature_id: int, min_tier: str | None = None) -> str | None:
        record = self.get(layer, feature_id)
        return record.label if record is not None and record.meets(min_tier) else None

    def filter(self, *, tiers: Iterable[str] | None = None, min_tier: str | None = None,
               layer: int | None = None) -> list[FeatureRecord]:
        """Records at exactly ``tiers``, and/or at ``min_tier`` or better, optionally of one layer;
        ordered by layer then feature id."""
        wanted = {check_tier(t) for t in tiers} if tiers is not None else None
        out = []
        for (rec_layer, _), record in sorted(self.records.items()):
            if layer is not None and rec_layer != layer:
                continue
            if wanted is not None and (record.confidence_tier or "").lower() not in wanted:
                continue
            if record.meets(min_tier):
                out.append(record)
        return out

    @property
    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.records} | set(self.layer_stats))

    def __len__(self) -> int:
        return len(self.records)


def _items(file: Path) -> Iterator[tuple[str, Any]]:
    """(where, item) for each row of a JSON file (a list, an object of features, one record) or
    a JSONL file (one row a line)."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read feature metadata {file}: {exc}") from exc
    if file.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield f"{file}:{number}", json.loads(line)
            except ValueError as exc:
                raise UserError(f"{file}:{number} is not valid JSON: {exc}") from exc
        return
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{file} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("features"), list):
        # {"features": [...], "layer_stats": {...}}: a release bundled in one file
        if isinstance(data.get("layer_stats"), dict):
            yield f"{file}:layer_stats", {"layer_stats": data["layer_stats"]}
        data = data["features"]
    if isinstance(data, list):
        for index, item in enumerate(data):
            yield f"{file}[{index}]", item
    else:
        yield str(file), data
