"""SAE evaluation metrics: definitions against numpy references, the outlier rule, padding, and
criterion 8's exact cases on SmolLM2 (identity SAE: nothing lost; zero SAE: nothing recovered)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baldr_ops.sae.corpus import TextSource, outlier_mask, text_source
from baldr_ops.sae.metrics import _Sums, evaluate
from baldr_ops.sae.model import SAEConfig, SparseAutoencoder

pytestmark = pytest.mark.research

LAYER = 12


def identity_sae(d: int, layer: int = LAYER) -> SparseAutoencoder:
    """An exact identity under ReLU: features +x_i and -x_i (d_sae = 2 d), decoded as their difference.
    Every product is by 1 or 0, so x_hat == x bit for bit."""
    eye = torch.eye(d)
    config = SAEConfig(d_in=d, d_sae=2 * d, architecture="relu", layer=layer, model_name="identity")
    return SparseAutoencoder(config=config, W_enc=torch.cat([eye, -eye], 1), b_enc=torch.zeros(2 * d),
                             W_dec=torch.cat([eye, -eye], 0), b_dec=torch.zeros(d))


def zero_sae(d: int, layer: int = LAYER) -> SparseAutoencoder:
    config = SAEConfig(d_in=d, d_sae=4, architecture="relu", layer=layer)
    return SparseAutoencoder(config=config, W_enc=torch.zeros(d, 4), b_enc=torch.zeros(4), W_dec=torch.zeros(4, d),
                             b_dec=torch.zeros(d))


def test_reconstruction_sums_match_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) * rng.uniform(0.5, 3, size=(50, 1)) + 2.0
    x_hat = x + rng.normal(scale=0.3, size=x.shape)
    active = rng.uniform(size=(50, 10)) < np.linspace(0, 0.5, 10)  # feature 0 never fires, 6.. are dense
    sums = _Sums(6, 10)
    for rows in (slice(0, 17), slice(17, 50)):  # two batches: the sums must stream
        sums.add_reconstruction(torch.tensor(x[rows]), torch.tensor(x_hat[rows]), torch.tensor(active[rows]))
    m = sums.result(6)
    sse = ((x - x_hat) ** 2).sum()
    tv = ((x - x.mean(0)) ** 2).sum()
    assert m.tokens == 50
    assert m.explained_variance == pytest.approx(1 - sse / tv, rel=1e-12)
    assert m.fvu == pytest.approx(sse / tv, rel=1e-12)
    assert m.mse == pytest.approx(((x - x_hat) ** 2).mean(), rel=1e-12)
    cos = (x * x_hat).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(x_hat, axis=1)
    assert m.cosine == pytest.approx(cos.mean(), rel=1e-12)
    assert m.l2_ratio == pytest.approx((np.linalg.norm(x_hat, axis=1) / np.linalg.norm(x, axis=1)).mean())
    assert m.l0 == pytest.approx(active.sum(1).mean())
    fired = active.mean(0)
    assert m.dead_fraction == pytest.approx((active.sum(0) == 0).mean())
    assert m.dense_fraction == pytest.approx((fired > 0.1).mean())
    assert m.ce_clean is None and m.ce_recovered is None  # no downstream sums were added


def test_outlier_rule_drops_first_position_and_massive_norms_only():
    hidden = torch.ones(2, 5, 3)
    hidden[:, 0] *= 150  # the attention sink
    hidden[1, 3] *= 11  # above 10x the median norm
    hidden[0, 2] *= 9  # below it
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    hidden[1, 4] *= 1000  # padding: never counted, never flagged
    first, massive = outlier_mask(hidden, valid, 10.0)
    assert first.tolist() == [[True, False, False, False, False], [True, False, False, False, False]]
    assert massive.nonzero().tolist() == [[1, 3]]


def _small_eval(lm, sae, **kw):
    return evaluate(lm, sae, text_source(None), max_tokens=kw.pop("max_tokens", 192), seq_len=kw.pop("seq_len", 64),
                    batch_size=kw.pop("batch_size", 3), **kw)


def test_identity_sae_loses_nothing(smollm2):
    report = _small_eval(smollm2, identity_sae(smollm2.d_model))
    assert report.layer == LAYER and report.first_positions == report.windows == 3
    for m in (report.all, report.excluding_outliers):
        assert m.fvu == 0.0 and m.explained_variance == 1.0 and m.mse == 0.0
        assert m.delta_ce == 0.0 and m.ce_recovered == 1.0 and m.kl_spliced == 0.0
        assert m.cosine == pytest.approx(1.0) and m.l2_ratio == pytest.approx(1.0)
        assert m.ce_ablated > m.ce_clean + 1  # zeroing layer 12 hurts, so "recovered" means something
    # The first positions carry the outlier norms: dropping them lowers the mean norm a lot.
    assert report.all.tokens - report.excluding_outliers.tokens == report.first_positions
    assert report.all.mean_norm > 1.5 * report.excluding_outliers.mean_norm


def test_zero_sae_recovers_nothing(smollm2):
    report = _small_eval(smollm2, zero_sae(smollm2.d_model))
    for m in (report.all, report.excluding_outliers):
        assert m.ce_recovered == 0.0 and m.ce_spliced == m.ce_ablated
        assert m.l0 == 0 and m.dead_fraction == 1.0
        assert m.explained_variance < 0 and m.cosine == 0.0


def test_outliers_inflate_all_token_scores(smollm2):
    """An SAE whose error is the same vector e on every token (identity with b_enc = [e, -e]:
    relu(x + e) - relu(-x - e) = x + e). The same error looks small next to the huge first-position
    vectors, so over all tokens EV and cosine look better than without the outliers."""
    sae = identity_sae(smollm2.d_model)
    e = torch.randn(smollm2.d_model, generator=torch.Generator().manual_seed(0))
    e *= 40 / e.norm()  # ~0.3x the median norm at layer 12
    sae.b_enc = torch.cat([e, -e])
    report = _small_eval(smollm2, sae)
    every, kept = report.all, report.excluding_outliers
    assert every.mse == pytest.approx(kept.mse, rel=1e-3)  # the same error per token...
    assert every.explained_variance > kept.explained_variance + 0.05  # ...explains more of "all"
    assert every.cosine > kept.cosine
    assert every.mean_norm > 1.5 * kept.mean_norm


def test_padding_is_masked(smollm2):
    """Windows of 32, 32 and 16 tokens: one padded batch of 3 gives the sums of three unpadded runs."""
    sae = identity_sae(smollm2.d_model, layer=4)
    sae.W_dec = sae.W_dec * 0.5  # x_hat = x / 2: reconstruction and loss both change
    # The massive-norm median is per batch; only the padding may differ here, so switch that rule off.
    padded = _small_eval(smollm2, sae, max_tokens=80, seq_len=32, batch_size=3, massive_factor=1e3)
    single = _small_eval(smollm2, sae, max_tokens=80, seq_len=32, batch_size=1, massive_factor=1e3)
    assert padded.windows == single.windows == 3 and padded.all.tokens == 80
    for a, b in ((padded.all, single.all), (padded.excluding_outliers, single.excluding_outliers)):
        assert a.tokens == b.tokens and a.ce_positions == b.ce_positions == a.tokens - 3
        for field in ("explained_variance", "cosine", "l2_ratio", "ce_clean", "ce_spliced", "ce_ablated",
                      "kl_spliced"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-4, abs=1e-5), field


def test_report_names_corpus_and_layer(smollm2, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    source = text_source(path)
    assert isinstance(source, TextSource) and source.name == str(path)
    report = evaluate(smollm2, identity_sae(smollm2.d_model, layer=2), source, max_tokens=64, seq_len=32)
    assert report.corpus == str(path) and report.layer == 2 and report.hook_name == "blocks.2.hook_resid_post"
    assert report.all.tokens == 64 and report.massive_factor == 10.0
