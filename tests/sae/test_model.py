"""The SAE maths against hand-written references, and the SAELens round trip (criterion 5)."""

from __future__ import annotations

import pytest
import torch

from baldr_ops.errors import UserError
from baldr_ops.sae.errors import SAEError
from baldr_ops.sae.formats import load_sae, save_saelens
from baldr_ops.sae.model import SAEConfig, SparseAutoencoder

pytestmark = pytest.mark.research

D_IN, D_SAE = 16, 48


def random_sae(architecture: str, seed: int = 0, k: int = 5, **extra) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    config = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=architecture,
                       k=k if architecture == "topk" else None, layer=3, model_name="tiny", **extra)
    return SparseAutoencoder(
        config=config, W_enc=torch.randn(D_IN, D_SAE, generator=g), b_enc=torch.randn(D_SAE, generator=g) * 0.1,
        W_dec=torch.randn(D_SAE, D_IN, generator=g), b_dec=torch.randn(D_IN, generator=g) * 0.1,
        threshold=torch.rand(D_SAE, generator=g) if architecture == "jumprelu" else None)


def _reference_encode(sae, x):
    """Written out per architecture, element by element where it matters."""
    c = sae.config
    pre = (x - (sae.b_dec if c.apply_b_dec_to_input else 0)) @ sae.W_enc + sae.b_enc
    if c.architecture == "relu":
        return pre.clamp(min=0)
    if c.architecture == "jumprelu":
        return torch.where(pre > sae.threshold, pre, torch.zeros_like(pre)).clamp(min=0)
    out = torch.zeros_like(pre)
    for row in range(pre.shape[0]):
        order = sorted(range(D_SAE), key=lambda j: -float(pre[row, j]))[: c.k]
        for j in order:
            out[row, j] = max(float(pre[row, j]), 0.0)
    return out


@pytest.mark.parametrize("architecture", ["relu", "topk", "jumprelu"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_encode_decode_match_reference(architecture, apply_b_dec):
    sae = random_sae(architecture, apply_b_dec_to_input=apply_b_dec)
    x = torch.randn(6, D_IN, generator=torch.Generator().manual_seed(9))
    acts = sae.encode(x)
    torch.testing.assert_close(acts, _reference_encode(sae, x), atol=1e-6, rtol=0)
    torch.testing.assert_close(sae.decode(acts), acts @ sae.W_dec + sae.b_dec, atol=1e-6, rtol=0)
    if architecture == "topk":
        assert ((acts > 0).sum(-1) <= 5).all()


def test_topk_rescaled_by_decoder_norm_is_saelens_semantics():
    sae = random_sae("topk", rescale_acts_by_decoder_norm=True)
    x = torch.randn(4, D_IN, generator=torch.Generator().manual_seed(2))
    norms = sae.W_dec.norm(dim=-1)
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc) * norms
    vals, idx = pre.topk(5, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, idx, vals.clamp(min=0))
    acts = sae.encode(x)
    torch.testing.assert_close(acts, expected)
    torch.testing.assert_close(sae.decode(acts), (acts / norms) @ sae.W_dec + sae.b_dec, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["relu", "topk", "jumprelu"])
def test_saelens_round_trip_is_bit_exact(tmp_path, architecture):
    sae = random_sae(architecture)
    save_saelens(sae, tmp_path / "sae")
    back = load_sae(tmp_path / "sae")
    assert back.config.source_format == "saelens" and back.config.layer == 3
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name))
    x = torch.randn(5, D_IN)
    assert torch.equal(back.encode(x), sae.encode(x))


def test_bad_inputs_are_clear(tmp_path):
    # The maths says what is wrong in the library's own error (a ValueError), not the CLI's.
    with pytest.raises(SAEError, match="needs 0 < k"):
        random_sae("topk", k=0)
    sae = random_sae("relu")
    with pytest.raises(SAEError, match="d_model 7 but the SAE expects d_in 16") as exc:
        sae.encode(torch.zeros(2, 7))
    assert isinstance(exc.value, ValueError) and not isinstance(exc.value, UserError)
    with pytest.raises(SAEError, match="encoder-only"):
        sae.encoder_only().decode(torch.zeros(1, D_SAE))
    save_saelens(sae, tmp_path / "s")
    with pytest.raises(UserError, match="model's d_model is 576"):
        load_sae(tmp_path / "s", expect_d_in=576)
    with pytest.raises(UserError, match="unknown SAE format"):
        load_sae(tmp_path)


def test_the_command_line_says_a_library_error_in_one_line():
    from baldr_ops.cli.sae import _one_line_errors

    def run(_args):
        raise SAEError("activations have d_model 7 but the SAE expects d_in 16", hint="use the SAE's model")

    with pytest.raises(UserError) as exc:
        _one_line_errors(run)(None)
    assert (exc.value.message, exc.value.hint) == ("activations have d_model 7 but the SAE expects d_in 16",
                                                   "use the SAE's model")
