"""Feature metadata in the Adam1010/gemma-4-31b-sae-features style (criterion 10): full, partial and
extended records, the per-layer layer_stats file, JSON/JSONL/directories, tier filters, look-ups."""

from __future__ import annotations

import json

import pytest

from baldr_ops.errors import UserError
from baldr_ops.sae.metadata import FeatureCatalog, FeatureRecord, tier_rank

pytestmark = pytest.mark.research


def full_record(layer: int, feature_id: int, tier: str = "high", label: str = "legal contracts") -> dict:
    """Every field the dataset's schema lists (research notes §2.4)."""
    return {
        "feature_id": feature_id, "layer": layer, "freq": 0.0123, "mean_activation": 2.5, "max_activation": 11.0,
        "n_active": 412, "claude_label": label, "claude_category": "law", "gpt_label": f"{label} (gpt)",
        "gpt_category": "legal", "agreement": 0.82,
        "examples": [{"activation": 11.0, "token_idx": 7, "context": "the party of the first part"},
                     {"activation": 9.5, "token_idx": 3, "context": "hereinafter the Licensee"}],
        "cv_validated": True, "cv_precision": 0.9, "cv_matches": 9, "cv_mismatches": 1,
        "cv_assessment": "consistent", "cv_notes": "",
        "probe_accuracy": 0.94, "probe_metrics": {"accuracy": 0.94, "precision": 0.93, "recall": 0.95, "f1": 0.94,
                                                  "n_positive": 200, "n_negative": 200, "n_train": 320, "n_test": 80},
        "probe_status": "ok", "confidence": 0.88,
        "confidence_scores": {"agreement": 0.82, "cv": 0.9, "probe": 0.94, "activation": 0.85},
        "confidence_tier": tier, "model": "google/gemma-4-31b-it",
    }


LAYER_STATS = {"layer_stats": {str(i): {"n_features": 50, "avg_confidence": 0.6 + i / 1000, "high": 20,
                                        "medium": 20, "low": 10} for i in range(60)}}


def test_full_record_keeps_every_field():
    record = FeatureRecord.model_validate(full_record(12, 4071))
    assert record.label == "legal contracts" and record.category == "law"
    assert record.examples[0].context == "the party of the first part" and record.examples[1].token_idx == 3
    assert record.probe_metrics.n_test == 80 and record.confidence_scores.cv == 0.9
    assert record.model == "google/gemma-4-31b-it" and record.cv_validated is True


def test_missing_and_extra_fields_are_tolerated(tmp_path):
    rows = [
        {"feature_id": 1, "layer": 3},  # nothing else
        {"feature_id": 2, "layer": 3, "gpt_label": "only gpt", "sipit_divergence": 0.4,
         "examples": [{"context": "x", "surprise": True}]},  # fields the schema does not list
        {"feature_id": 3, "layer": 3, "label": "plain label field", "confidence_tier": "Medium"},
    ]
    (tmp_path / "f.json").write_text(json.dumps(rows))
    catalog = FeatureCatalog.load(tmp_path / "f.json")
    assert len(catalog) == 3 and catalog.skipped == []
    assert catalog.get(3, 1).label is None and catalog.get(3, 1).examples == []
    two = catalog.get(3, 2)
    assert two.label == "only gpt" and two.model_extra["sipit_divergence"] == 0.4
    assert two.examples[0].model_extra == {"surprise": True}
    assert catalog.label(3, 3) == "plain label field" and catalog.get(3, 3).meets("medium")


def test_jsonl_with_layer_stats_row_and_junk(tmp_path):
    lines = [json.dumps(full_record(5, 10, "high")), "", json.dumps(full_record(5, 11, "low", "weather")),
             json.dumps(LAYER_STATS), json.dumps({"note": "a summary row"}),
             json.dumps({"feature_id": "not a number", "layer": 5})]
    (tmp_path / "all.jsonl").write_text("\n".join(lines))
    catalog = FeatureCatalog.load(tmp_path / "all.jsonl")
    assert len(catalog) == 2 and catalog.label(5, 11) == "weather"
    assert len(catalog.layer_stats) == 60 and catalog.layer_stats[59].avg_confidence == pytest.approx(0.659)
    why = [s.split(": ", 1)[1] for s in catalog.skipped]
    assert why[0] == "no feature_id" and why[1].startswith("feature_id: ") and len(why) == 2
    assert catalog.skipped[0].startswith(f"{tmp_path / 'all.jsonl'}:5")


def test_directory_of_per_layer_files(tmp_path):
    """Per-layer feature files (layer taken from the name where rows omit it) beside a summary."""
    d = tmp_path / "gemma-4-31b-sae-features"
    (d / "features").mkdir(parents=True)
    for layer in (0, 12, 59):
        rows = [full_record(layer, fid, tier) for fid, tier in ((1, "high"), (2, "medium"), (3, "low"))]
        for row in rows:
            del row["layer"]
        (d / "features" / f"layer_{layer}.json").write_text(json.dumps(rows))
    (d / "layer_stats.json").write_text(json.dumps(LAYER_STATS["layer_stats"]))  # bare {"0": {...}}
    (d / "README.md").write_text("not metadata")
    catalog = FeatureCatalog.load(d)
    assert len(catalog) == 9 and catalog.layers == list(range(60))
    assert catalog.get(59, 2).layer == 59 and catalog.layer_stats[12].n_features == 50
    assert len(catalog.sources) == 4 and catalog.skipped == []


def test_filter_by_tier_and_look_up(tmp_path):
    rows = [full_record(layer, fid, tier, f"L{layer}F{fid}") for layer in (1, 2)
            for fid, tier in ((1, "high"), (2, "medium"), (3, "low"), (4, None))]
    (tmp_path / "f.json").write_text(json.dumps({"features": rows, "layer_stats": {"1": None, "2": {"high": 1}}}))
    catalog = FeatureCatalog.load(tmp_path / "f.json")
    key = [(r.layer, r.feature_id) for r in catalog.filter(tiers=["high"])]
    assert key == [(1, 1), (2, 1)]
    assert [(r.layer, r.feature_id) for r in catalog.filter(min_tier="medium", layer=2)] == [(2, 1), (2, 2)]
    assert len(catalog.filter(tiers=["low", "medium"])) == 4 and len(catalog.filter()) == 8
    assert catalog.label(2, 3) == "L2F3" and catalog.label(2, 3, min_tier="medium") is None
    assert catalog.label(2, 99) is None and catalog.label(7, 1) is None
    assert list(catalog.layer_stats) == [2]  # the null layer is skipped
    assert tier_rank("high") > tier_rank("medium") > tier_rank("low") > tier_rank(None) == tier_rank("??")
    with pytest.raises(UserError, match="unknown confidence tier 'top'"):
        catalog.filter(min_tier="top")


def test_bad_metadata_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        FeatureCatalog.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(UserError, match="bad.json is not valid JSON"):
        FeatureCatalog.load(tmp_path / "bad.json")
    (tmp_path / "bad.jsonl").write_text('{"feature_id": 1, "layer": 1}\n{oops\n')
    with pytest.raises(UserError, match="bad.jsonl:2 is not valid JSON"):
        FeatureCatalog.load(tmp_path / "bad.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no .json"):
        FeatureCatalog.load(tmp_path / "empty")
    (tmp_path / "nothing.json").write_text(json.dumps([{"feature_id": 3}]))  # no layer anywhere
    with pytest.raises(UserError, match="no feature records"):
        FeatureCatalog.load(tmp_path / "nothing.json")
