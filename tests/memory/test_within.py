"""The within-topic rows are measured once per model and key rule and read back from the user cache.

The corpus is cut to three small subjects here so that each measurement takes a second, not the
shipped corpus's ~19 s; what is tested is the caching, not the corpus."""

from __future__ import annotations

import numpy as np
import pytest

from baldr_ops.memory import within
from baldr_ops.memory.derive import key_states

pytestmark = pytest.mark.research

GROUPS = (("Bread rises because yeast makes gas.", "Knead the dough for ten minutes.", "A sourdough starter needs"),
          ("The goalkeeper saved a penalty.", "Offside is called when", "The striker scored twice."),
          ("Tides follow the moon.", "Waves break on the shore.", "The deepest trench in the ocean is"))


@pytest.fixture
def small_corpus(monkeypatch, tmp_path):
    monkeypatch.setenv("BALDR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(within, "topic_groups", lambda: GROUPS)
    monkeypatch.setattr(within, "topic_corpus_fingerprint", lambda: "small-corpus")
    return tmp_path / "cache"


def path_of(lm, layer: int, pooling: str):
    return within.cache_path(within.identity_of(lm), lm.device.type, layer, pooling)


def _expected(lm, layer: int, pooling: str) -> np.ndarray:
    """Each subject's key states minus the subject's mean, read directly."""
    texts = [t for g in GROUPS for t in g]
    states = key_states(lm, texts, [layer], pooling)[layer].numpy()
    return np.concatenate([states[i:i + 3] - states[i:i + 3].mean(axis=0) for i in range(0, len(texts), 3)])


def test_rows_are_measured_once_then_read_from_the_cache(smollm2, small_corpus, monkeypatch):
    first = within.within_rows(smollm2, 28, "topic")
    np.testing.assert_allclose(first, _expected(smollm2, 28, "topic"), atol=1e-5)
    assert list(small_corpus.glob("within-rows/*.npy")) == [path_of(smollm2, 28, "topic")]

    def no_model(*_a, **_k):
        raise AssertionError("the model was run although the rows are cached")

    monkeypatch.setattr(within, "key_states", no_model)
    again = within.within_rows(smollm2, 28, "topic")
    assert np.array_equal(again, first)
    with pytest.raises(AssertionError, match="cached"):  # another key layer is not the same rows
        within.within_rows(smollm2, 24, "topic")


def test_rows_depend_on_layer_pooling_corpus_device_and_model(smollm2, small_corpus, monkeypatch):
    identity = within.identity_of(smollm2)
    paths = {path_of(smollm2, 28, "topic"), path_of(smollm2, 24, "topic"), path_of(smollm2, 28, "mean"),
             within.cache_path(identity, "cuda", 28, "topic")}
    for change in ({"dtype": "bfloat16"}, {"weights_sha256": "0" * 64}, {"tokenizer_sha256": "1" * 64}):
        paths.add(within.cache_path(identity.model_copy(update=change), "cpu", 28, "topic"))
    monkeypatch.setattr(within, "topic_corpus_fingerprint", lambda: "another corpus")
    paths.add(path_of(smollm2, 28, "topic"))
    assert len(paths) == 8


def test_a_caller_holding_the_identity_is_not_hashed_again(smollm2, small_corpus, monkeypatch):
    identity = within.identity_of(smollm2)

    def hashed(_lm):
        raise AssertionError("identity_of called although the caller gave the identity")

    monkeypatch.setattr(within, "identity_of", hashed)
    rows = within.within_rows(smollm2, 28, "topic", identity=identity)
    assert list(small_corpus.glob("within-rows/*.npy")) == [within.cache_path(identity, "cpu", 28, "topic")]
    assert rows.shape == (9, smollm2.d_model)


@pytest.mark.parametrize("damage", ["garbage", "wrong shape", "not finite", "empty", "zip", "huge header"])
def test_a_damaged_cache_file_is_measured_again_and_replaced(smollm2, small_corpus, damage):
    path = path_of(smollm2, 28, "topic")
    path.parent.mkdir(parents=True)
    good = _expected(smollm2, 28, "topic").astype(np.float32)
    if damage == "garbage":
        path.write_bytes(b"\x93NUMPY not really")
    elif damage == "wrong shape":
        np.save(path, good[:-1])
    elif damage == "not finite":
        bad = good.copy()
        bad[0, 0] = np.nan
        np.save(path, bad)
    elif damage == "zip":
        with open(path, "wb") as fh:
            np.savez(fh, rows=good)
    elif damage == "huge header":
        header = np.lib.format.header_data_from_array_1_0(good)
        header["shape"] = (10**9, 10**6)
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            fh.write(good.tobytes())
    else:
        path.write_bytes(b"")
    rows = within.within_rows(smollm2, 28, "topic")
    np.testing.assert_allclose(rows, good, atol=1e-5)
    np.testing.assert_array_equal(np.load(path), rows)


def test_a_cache_that_cannot_be_written_still_gives_the_rows(smollm2, small_corpus, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("BALDR_CACHE_DIR", str(blocker / "cache"))
    rows = within.within_rows(smollm2, 28, "topic")
    np.testing.assert_allclose(rows, _expected(smollm2, 28, "topic"), atol=1e-5)
