"""How good an SAE is at layer L, over a text corpus: sparsity, reconstruction, downstream loss.

Per batch of token windows the model runs five times: clean (recording the residual x at the
output of layer L), then with that output replaced by the SAE reconstruction x_hat ("spliced") or
by zeros ("ablated"), each over all positions and over the kept positions only. Sums are
accumulated in float64, so memory is one batch whatever the corpus size.

Every metric is reported over two token sets:

* ``all``: every real (non-padding) token;
* ``excluding_outliers``: without the first position of each window and without massive-norm
  tokens (norm > ``massive_factor`` x the batch's median norm; `corpus.outlier_mask`). For
  downstream metrics, excluded positions are neither replaced nor scored.

On SmolLM2 the first position's norm is ~150x the others' from layer ~8 on: over all tokens it
holds most of the variance, so EV over ``all`` mostly says whether that one vector is reproduced.

Definitions (x, x_hat per token, n tokens in the set, mean = the set's mean of x):

* L0 = mean number of features with activation > 0 (exactly k for a TopK SAE whose top k are > 0);
* MSE = mean ||x - x_hat||^2 / d_in;
* EV = 1 - SSE / TV with SSE = sum ||x - x_hat||^2, TV = sum ||x - mean||^2; FVU = 1 - EV;
* cosine = mean cos(x, x_hat) (0 where x_hat = 0); l2 ratio = mean ||x_hat|| / ||x||;
* dead fraction: features that never fired on the set's tokens; dense: fired on > 10 % of them;
* CE = mean next-token cross-entropy (nats) at positions t with a real token t+1;
  delta CE = CE_spliced - CE_clean; CE recovered = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean);
* KL = mean over real positions of KL(p_clean || p_spliced) (nats), also KL(p_clean || p_ablated),
  KL score = 1 - KL_spliced / KL_ablated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel

from baldr_ops.errors import UserError
from baldr_ops.research.hooks import capture, edit_residual
from baldr_ops.research.models import LanguageModel
from baldr_ops.sae.corpus import (
    DEFAULT_MASSIVE_FACTOR,
    TextSource,
    outlier_mask,
    pad_id,
    token_windows,
    window_batches,
)
from baldr_ops.sae.model import SparseAutoencoder
from baldr_ops.schema import Document

DENSE_THRESHOLD = 0.1  # a feature firing on more than this fraction of tokens is "dense"
SUBSETS = ("all", "excluding_outliers")


class SubsetMetrics(BaseModel):
    """The metrics over one set of tokens (see the module docstring for exact definitions)."""

    tokens: int
    mean_norm: float  # mean ||x||: shows how much the outliers weigh
    l0: float
    mse: float
    explained_variance: float | None  # None when the set has no variance (fewer than 2 tokens)
    fvu: float | None
    cosine: float
    l2_ratio: float
    dead_fraction: float
    dense_fraction: float
    ce_positions: int
    ce_clean: float | None
    ce_spliced: float | None
    ce_ablated: float | None
    delta_ce: float | None
    ce_recovered: float | None  # None when ablation does not change the loss
    kl_spliced: float | None
    kl_ablated: float | None
    kl_score: float | None


class EvalReport(Document):
    """`baldr-ops sae eval --json`."""

    kind: Literal["sae-eval"] = "sae-eval"
    model: str
    sae: str
    layer: int
    sae_layer: int | None  # the layer the SAE's config names, when it names one
    hook_name: str
    architecture: str
    d_in: int
    d_sae: int
    k: int | None
    corpus: str
    windows: int
    seq_len: int
    massive_factor: float
    first_positions: int  # tokens excluded as the first of a window
    massive_tokens: int  # tokens excluded for their norm
    all: SubsetMetrics
    excluding_outliers: SubsetMetrics
    seconds: float


class _Sums:
    """Running float64 sums over one token set."""

    def __init__(self, d_in: int, d_sae: int):
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq = 0.0
        self.sse = 0.0
        self.cosine = 0.0
        self.l2_ratio = 0.0
        self.norm = 0.0
        self.l0 = 0.0
        self.fires = torch.zeros(d_sae, dtype=torch.int64)
        self.ce_n = 0
        self.ce = {"clean": 0.0, "spliced": 0.0, "ablated": 0.0}
        self.kl_n = 0
        self.kl = {"spliced": 0.0, "ablated": 0.0}

    def add_reconstruction(self, x: torch.Tensor, x_hat: torch.Tensor, active: torch.Tensor) -> None:
        x, x_hat = x.double().cpu(), x_hat.double().cpu()
        self.n += x.shape[0]
        self.sum_x += x.sum(0)
        self.sum_sq += float((x * x).sum())
        self.sse += float(((x - x_hat) ** 2).sum())
        x_norm, hat_norm = x.norm(dim=-1), x_hat.norm(dim=-1)
        self.norm += float(x_norm.sum())
        self.cosine += float(((x * x_hat).sum(-1) / (x_norm * hat_norm).clamp_min(1e-12)).sum())
        self.l2_ratio += float((hat_norm / x_norm.clamp_min(1e-12)).sum())
        self.l0 += float(active.sum())
        self.fires += active.sum(0).cpu()

    def result(self, d_in: int) -> SubsetMetrics:
        n = max(self.n, 1)
        total_variance = self.sum_sq - float(self.sum_x @ self.sum_x) / n
        ev = 1.0 - self.sse / total_variance if self.n > 1 and total_variance > 0 else None
        ce = {k: v / self.ce_n if self.ce_n else None for k, v in self.ce.items()}
        kl = {k: v / self.kl_n if self.kl_n else None for k, v in self.kl.items()}
        recovered = delta = kl_score = None
        if self.ce_n:
            delta = ce["spliced"] - ce["clean"]
            gap = ce["ablated"] - ce["clean"]
            recovered = (ce["ablated"] - ce["spliced"]) / gap if gap != 0 else None
        if self.kl_n and kl["ablated"]:
            kl_score = 1.0 - kl["spliced"] / kl["ablated"]
        fired = self.fires / n
        return SubsetMetrics(
            tokens=self.n, mean_norm=self.norm / n, l0=self.l0 / n, mse=self.sse / n / d_in,
            explained_variance=ev, fvu=None if ev is None else 1.0 - ev, cosine=self.cosine / n,
            l2_ratio=self.l2_ratio / n, dead_fraction=float((self.fires == 0).double().mean()),
            dense_fraction=float((fired > DENSE_THRESHOLD).double().mean()) if self.n else 0.0,
            ce_positions=self.ce_n, ce_clean=ce["clean"], ce_spliced=ce["spliced"], ce_ablated=ce["ablated"],
            delta_ce=delta, ce_recovered=recovered, kl_spliced=kl["spliced"], kl_ablated=kl["ablated"],
            kl_score=kl_score)


def _logits_with(lm: LanguageModel, batch: dict, layer: int, replacement: torch.Tensor) -> torch.Tensor:
    """Logits with the output of ``layer`` replaced by ``replacement`` ([batch, seq, d_model])."""
    def edit(hidden: torch.Tensor, _call) -> torch.Tensor:
        if hidden.shape != replacement.shape:  # one full-sequence call is all this expects
            raise RuntimeError(f"layer {layer} output {tuple(hidden.shape)} != {tuple(replacement.shape)}")
        return replacement.to(hidden.dtype)

    with edit_residual(lm, {layer: edit}):
        return lm.model(**batch, use_cache=False).logits


def _token_losses(clean: torch.Tensor, other: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: cross-entropy of ``other`` on the next token [batch, seq - 1] and
    KL(p_clean || p_other) [batch, seq]. One row at a time, so only [seq, vocab] is ever extra."""
    ces, kls = [], []
    for row in range(ids.shape[0]):
        log_clean = torch.log_softmax(clean[row].float(), -1)
        log_other = torch.log_softmax(other[row].float(), -1)
        ces.append(-log_other[:-1].gather(-1, ids[row, 1:, None]).squeeze(-1))
        kls.append((log_clean.exp() * (log_clean - log_other)).sum(-1))
    return torch.stack(ces), torch.stack(kls)


def resolve_layer(lm: LanguageModel, sae: SparseAutoencoder, layer: int | None) -> int:
    if sae.d_in != lm.d_model:
        raise UserError(f"the SAE reads d_in {sae.d_in} but {lm.name} has d_model {lm.d_model}",
                        hint="use an SAE trained on this model")
    if layer is None:
        layer = sae.config.layer
        if layer is None:
            raise UserError("the SAE's config names no layer (hook_name)", hint="give --layer L")
    return lm.check_layer(layer)


def evaluate(lm: LanguageModel, sae: SparseAutoencoder, source: TextSource, *, layer: int | None = None,
             max_tokens: int = 4096, seq_len: int = 128, batch_size: int = 8,
             massive_factor: float = DEFAULT_MASSIVE_FACTOR, sae_name: str = "",
             progress: Callable[[str], None] = lambda _: None) -> EvalReport:
    """All metrics of ``sae`` at ``layer`` (default: the SAE's own) over the first ``max_tokens``
    tokens of ``source``."""
    start = time.monotonic()
    index = resolve_layer(lm, sae, layer)
    if sae.W_dec is None:
        raise UserError("evaluation needs the SAE's decoder; it was loaded encoder-only")
    sae = sae.to(device=lm.device)
    sums = {name: _Sums(sae.d_in, sae.d_sae) for name in SUBSETS}
    windows = first_count = massive_count = 0
    batches = window_batches(token_windows(lm.tokenizer, source.texts(), seq_len, max_tokens, source.separator),
                             batch_size, pad_id(lm.tokenizer), lm.device)
    with torch.no_grad():
        for batch in batches:
            with capture(lm, [index]) as record:
                clean = lm.model(**batch, use_cache=False).logits
            x = record[index]
            valid = batch["attention_mask"].bool()
            first, massive = outlier_mask(x, valid, massive_factor)
            keep = valid & ~first & ~massive
            acts = sae.encode(x[valid])
            x_hat = x.clone()
            x_hat[valid] = sae.decode(acts).to(x.dtype)
            zeros = torch.zeros_like(x)
            ids = batch["input_ids"]
            has_target = valid[:, 1:] & valid[:, :-1]
            ce_clean = -torch.log_softmax(clean[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            for name, chosen in (("all", valid), ("excluding_outliers", keep)):
                s = sums[name]
                in_valid = chosen[valid]
                s.add_reconstruction(x[chosen], x_hat[chosen], acts[in_valid] > 0)
                scored = has_target & chosen[:, :-1]
                s.ce_n += int(scored.sum())
                s.ce["clean"] += float(ce_clean[scored].double().sum())
                s.kl_n += int(chosen.sum())
                where = chosen[..., None]
                for kind, replacement in (("spliced", torch.where(where, x_hat, x)),
                                          ("ablated", torch.where(where, zeros, x))):
                    ce, kl = _token_losses(clean, _logits_with(lm, batch, index, replacement), ids)
                    s.ce[kind] += float(ce[scored].double().sum())
                    s.kl[kind] += float(kl[chosen].double().sum())
            windows += ids.shape[0]
            first_count += int(first.sum())
            massive_count += int(massive.sum())
            progress(f"evaluated {sums['all'].n} tokens ({windows} windows)")
    if windows == 0:
        raise UserError(f"{source.name} has no text to evaluate on")
    c = sae.config
    return EvalReport(
        model=lm.name, sae=sae_name, layer=index, sae_layer=c.layer,
        hook_name=c.hook_name or f"blocks.{index}.hook_resid_post", architecture=c.architecture, d_in=c.d_in,
        d_sae=c.d_sae, k=c.k, corpus=source.name, windows=windows, seq_len=seq_len,
        massive_factor=massive_factor, first_positions=first_count, massive_tokens=massive_count,
        all=sums["all"].result(sae.d_in), excluding_outliers=sums["excluding_outliers"].result(sae.d_in),
        seconds=round(time.monotonic() - start, 2))
