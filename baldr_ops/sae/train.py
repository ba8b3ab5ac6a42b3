"""Train a TopK SAE on one layer's residual stream, from a text file streamed in chunks.

Pipeline, each stage bounded in memory:

    text file --(chunks of 64 K chars)--> token windows --(forward to layer L only)--> residuals
      --(first position and massive-norm tokens dropped)--> ActivationBuffer (fixed capacity,
      shuffled; half is served, then refilled) --> minibatches --> Adam on FVU + aux-k loss

When the whole text fits in the buffer, its activations are computed once and reshuffled every
pass; otherwise the file is re-read from the start when it runs out (another epoch).

The SAE (SAELens' TopK): a = relu(top_k((x - b_dec) @ W_enc + b_enc)), x_hat = a @ W_dec + b_dec.
Decoder rows are kept at unit norm (the gradient along each row is removed, then rows are
renormalised), so feature activations carry the scale. Init: random unit decoder rows,
W_enc = W_dec.T, b_enc = 0, b_dec = mean of the first buffer. Loss: FVU of the batch
(sum ||x - x_hat||^2 / sum ||x - mean||^2), plus ``auxk_alpha`` times the aux-k loss of
sparsify / OpenAI: the top ``d_in/2`` dead features (not fired for ``dead_after_tokens`` tokens)
are asked to reconstruct the residual error, which revives them.

Decoding gathers the k chosen decoder rows per token (``embedding_bag``) instead of a dense
[batch, d_sae] x [d_sae, d_in] product, and Adam runs fused: a step costs ~0.65x the dense
version on a CPU (bench/bench_sae_train.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from baldr_ops.errors import UserError
from baldr_ops.research.hooks import residuals
from baldr_ops.research.models import LanguageModel
from baldr_ops.sae.corpus import (
    DEFAULT_MASSIVE_FACTOR,
    TextSource,
    outlier_mask,
    pad_id,
    token_windows,
    window_batches,
)
from baldr_ops.sae.formats import save_saelens
from baldr_ops.sae.model import SAEConfig, SparseAutoencoder
from baldr_ops.schema import Document

TRAINING_RECORD = "baldr_training.json"  # written next to cfg.json; SAELens ignores unknown files


class TrainOptions(BaseModel):
    layer: int
    d_sae: int | None = None  # None: expansion * d_model
    expansion: int = 8
    k: int = 32
    steps: int = 1000
    batch_size: int = Field(1024, description="activations per optimiser step")
    lr: float | None = None  # None: 2e-4 / sqrt(d_sae / 2^14), sparsify's scaling rule
    seq_len: int = 128
    forward_batch: int = 8  # windows per model forward
    buffer_tokens: int = 32768
    max_text_tokens: int | None = None  # use only the first N tokens of the text
    exclude_outliers: bool = True
    massive_factor: float = DEFAULT_MASSIVE_FACTOR
    auxk_alpha: float = 1 / 32
    dead_after_tokens: int = 50_000
    seed: int = 0


class TrainReport(Document):
    """`baldr-ops sae train --json`, also saved as baldr_training.json in the output directory."""

    kind: Literal["sae-train"] = "sae-train"
    model: str
    text: str
    out: str
    hook_name: str
    options: TrainOptions
    d_in: int
    d_sae: int
    lr: float
    steps: int
    training_tokens: int  # activations consumed by the optimiser (steps x batch size)
    text_tokens: int  # distinct tokens read from the text (one epoch or less)
    activations_collected: int  # residual vectors computed (more than text tokens when re-read)
    excluded_tokens: int  # first positions and massive-norm tokens left out
    epochs: int  # times the text was read
    resident: bool  # the whole text's activations fitted the buffer and were computed once
    buffer_rows: int  # activations the buffer held: its capacity, or the whole text when resident
    final_loss: float
    final_fvu: float  # FVU of the last batches (training data, moving average)
    dead_fraction: float  # features not fired for dead_after_tokens tokens at the end
    seconds: float
    collect_seconds: float  # part of `seconds` spent running the model


# -- activations -----------------------------------------------------------------------------------
class ActivationStream:
    """Residual vectors at ``layer`` for one pass over the text, outlier tokens dropped."""

    def __init__(self, lm: LanguageModel, layer: int, source: TextSource, opts: TrainOptions):
        self.lm, self.layer, self.source, self.opts = lm, layer, source, opts
        self.text_tokens = self.collected = self.excluded = 0
        self.epochs = 0
        self.seconds = 0.0

    def epoch(self) -> Iterator[torch.Tensor]:
        self.epochs += 1
        o = self.opts
        windows = token_windows(self.lm.tokenizer, self.source.texts(), o.seq_len, o.max_text_tokens,
                                self.source.separator)
        for batch in window_batches(windows, o.forward_batch, pad_id(self.lm.tokenizer), self.lm.device):
            start = time.monotonic()
            x = residuals(self.lm, batch, [self.layer])[self.layer]
            valid = batch["attention_mask"].bool()
            keep = valid
            if o.exclude_outliers:
                first, massive = outlier_mask(x, valid, o.massive_factor)
                keep = valid & ~first & ~massive
            self.seconds += time.monotonic() - start
            if self.epochs == 1:
                self.text_tokens += int(valid.sum())
            self.collected += int(keep.sum())
            self.excluded += int((valid & ~keep).sum())
            yield x[keep].float().cpu()


class ActivationBuffer:
    """A fixed-capacity store of activations serving shuffled minibatches.

    Fill to capacity; then, repeatedly, draw a random permutation of the rows, serve half the
    rows (in that order) as minibatches and overwrite just those with fresh activations, so any
    batch mixes tokens from several fills. Batches are gathered copies: the buffer itself is never
    copied or moved. If the stream ends before the first fill is complete, the buffer holds the
    whole data set: it is kept and all of it served, in a new order, every pass ("resident").
    """

    def __init__(self, epochs: Callable[[], Iterator[torch.Tensor]], d_in: int, capacity: int,
                 batch_size: int, generator: torch.Generator):
        if capacity < 2 * batch_size:
            raise UserError(f"the buffer ({capacity} tokens) must hold at least two batches ({batch_size} each)")
        self.epochs = epochs
        self.data = torch.empty(capacity, d_in)
        self.capacity = capacity
        self.batch_size = batch_size
        self.generator = generator
        self.filled = 0  # rows holding activations (all of them after the first fill, unless resident)
        self.resident = False
        self._stream = epochs()
        self._pending: torch.Tensor | None = None  # the rest of a chunk that did not fit
        self._first_pass = True

    def _next_chunk(self) -> torch.Tensor | None:
        if self._pending is not None:
            chunk, self._pending = self._pending, None
            return chunk
        for attempt in range(2):
            try:
                return next(self._stream)
            except StopIteration:
                if self._first_pass:
                    return None  # the whole text is in the buffer
                if attempt:  # a fresh epoch gave nothing
                    raise UserError("the text yields no tokens to train on") from None
                self._stream = self.epochs()
        return None

    def _fill(self, rows: torch.Tensor) -> int:
        """Overwrite ``rows`` in order with the stream's next activations; returns how many were
        written (fewer only on the first pass, when the stream ends: then the buffer is resident)."""
        done = 0
        while done < len(rows):
            chunk = self._next_chunk()
            if chunk is None:
                self.resident = True
                break
            take = min(len(rows) - done, chunk.shape[0])
            self.data[rows[done:done + take]] = chunk[:take]
            done += take
            if take < chunk.shape[0]:
                self._pending = chunk[take:]  # at most one forward batch, kept for the next fill
        if self._first_pass and not self.resident and self._pending is None:
            # Filled exactly: look one chunk ahead, or a text of exactly `capacity` tokens would be
            # re-read (and its activations recomputed) on every refill.
            self._pending = self._next_chunk()
            self.resident = self._pending is None
        self._first_pass = False
        return done

    def first_fill(self) -> torch.Tensor:
        """Fill the buffer the first time; returns the filled rows (for the b_dec init)."""
        self.filled = self._fill(torch.arange(self.capacity))
        if self.filled < self.batch_size:
            raise UserError(f"the text gives only {self.filled} training tokens, fewer than one batch "
                            f"({self.batch_size})", hint="give more text or a smaller --batch-size")
        return self.data[: self.filled]

    def batches(self) -> Iterator[torch.Tensor]:
        bs = self.batch_size
        served = self.filled if self.resident else self.capacity // 2
        served -= served % bs
        while True:
            order = torch.randperm(self.filled, generator=self.generator)[:served]
            for i in range(0, served, bs):
                yield self.data[order[i:i + bs]]
            if not self.resident:
                self._fill(order)  # fresh activations replace the served rows; the rest stay to mix


# -- the model being trained -----------------------------------------------------------------------
class TopKTrainee(torch.nn.Module):
    """Trainable TopK SAE. The encoder is stored as rows [d_sae, d_in] (W_enc.T), like the decoder."""

    def __init__(self, d_in: int, d_sae: int, k: int, generator: torch.Generator):
        super().__init__()
        decoder = torch.randn(d_sae, d_in, generator=generator)
        decoder /= decoder.norm(dim=-1, keepdim=True)
        self.k = k
        self.W_dec = torch.nn.Parameter(decoder)
        self.enc_rows = torch.nn.Parameter(decoder.clone())  # W_enc = W_dec.T
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))

    def forward(self, x: torch.Tensor, dead: torch.Tensor | None = None):
        """(x_hat, indices of the k features, pre-activations of dead features' top-k or None)."""
        centred = x - self.b_dec
        pre = torch.addmm(self.b_enc, centred, self.enc_rows.T)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        x_hat = F.embedding_bag(indices, self.W_dec, per_sample_weights=torch.relu(values), mode="sum") + self.b_dec
        aux = None
        if dead is not None:
            k_aux = min(x.shape[1] // 2, int(dead.sum()))
            aux_values, aux_indices = pre.masked_fill(~dead, -math.inf).topk(k_aux, dim=-1, sorted=False)
            aux = F.embedding_bag(aux_indices, self.W_dec, per_sample_weights=torch.relu(aux_values), mode="sum")
        return x_hat, indices, aux

    @torch.no_grad()
    def constrain_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        if self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True)
            self.W_dec.grad -= along * self.W_dec

    def to_sae(self, config: SAEConfig) -> SparseAutoencoder:
        def copy(t: torch.Tensor) -> torch.Tensor:
            return t.detach().cpu().contiguous().clone()
        return SparseAutoencoder(config=config, W_enc=copy(self.enc_rows.T), b_enc=copy(self.b_enc),
                                 W_dec=copy(self.W_dec), b_dec=copy(self.b_dec))


def default_lr(d_sae: int) -> float:
    return 2e-4 / math.sqrt(d_sae / 2**14)


def _lr_factor(step: int, steps: int) -> float:
    """Constant, then a linear decay to 0 over the last 20 % of steps."""
    decay_from = int(steps * 0.8)
    return 1.0 if step < decay_from else max(0.0, (steps - step) / max(1, steps - decay_from))


# -- the loop ----------------------------------------------------------------------------------------
def train_sae(lm: LanguageModel, source: TextSource, opts: TrainOptions, *,
              progress: Callable[[dict], None] = lambda _: None, progress_every: int = 25
              ) -> tuple[SparseAutoencoder, TrainReport]:
    """Train a TopK SAE at ``opts.layer`` on ``source``; returns it and a report (not yet saved).
    ``progress`` gets {step, steps, tokens, loss, fvu, dead} every ``progress_every`` steps."""
    start = time.monotonic()
    layer = lm.check_layer(opts.layer)
    d_in = lm.d_model
    d_sae = opts.d_sae or opts.expansion * d_in
    if not 0 < opts.k <= d_sae:
        raise UserError(f"k must be between 1 and d_sae ({d_sae}), got {opts.k}")
    if opts.steps < 1 or opts.batch_size < 1:
        raise UserError("steps and batch size must be positive")
    lr = opts.lr or default_lr(d_sae)
    generator = torch.Generator().manual_seed(opts.seed)

    stream = ActivationStream(lm, layer, source, opts)
    buffer = ActivationBuffer(stream.epoch, d_in, opts.buffer_tokens, opts.batch_size, generator)
    first = buffer.first_fill()
    device = lm.device  # the buffer stays in host memory; each batch moves to the model's device
    sae = TopKTrainee(d_in, d_sae, opts.k, generator).to(device)
    with torch.no_grad():
        sae.b_dec.copy_(first.mean(0))
    optimiser = torch.optim.Adam(sae.parameters(), lr=lr, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: _lr_factor(step, opts.steps))
    since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    smooth_loss = smooth_fvu = None

    for step, x in enumerate(buffer.batches(), start=1):
        x = x.to(device)
        dead = since_fired >= opts.dead_after_tokens
        x_hat, indices, aux = sae(x, dead if opts.auxk_alpha > 0 and dead.any() else None)
        total_variance = (x - x.mean(0)).pow(2).sum()
        error = x - x_hat
        fvu = error.pow(2).sum() / total_variance
        loss = fvu
        if aux is not None:
            # Scaled down while few features are dead, as in sparsify.
            scale = min(int(dead.sum()) / (d_in // 2), 1.0)
            loss = loss + opts.auxk_alpha * scale * (aux - error.detach()).pow(2).sum() / total_variance
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_gradient()
        optimiser.step()
        scheduler.step()
        sae.constrain_decoder()

        fired = torch.zeros(d_sae, dtype=torch.bool, device=device)
        fired[indices.reshape(-1)] = True
        since_fired += x.shape[0]
        since_fired[fired] = 0
        loss_now, fvu_now = float(loss.detach()), float(fvu.detach())
        smooth_loss = loss_now if smooth_loss is None else 0.9 * smooth_loss + 0.1 * loss_now
        smooth_fvu = fvu_now if smooth_fvu is None else 0.9 * smooth_fvu + 0.1 * fvu_now
        if step % progress_every == 0 or step == opts.steps:
            progress({"step": step, "steps": opts.steps, "tokens": step * opts.batch_size,
                      "collected": stream.collected, "loss": smooth_loss, "fvu": smooth_fvu,
                      "dead": float((since_fired >= opts.dead_after_tokens).float().mean())})
        if step == opts.steps:
            break

    hook_name = f"blocks.{layer}.hook_resid_post"
    config = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=opts.k, model_name=lm.name,
                       hook_name=hook_name, layer=layer)
    report = TrainReport(
        model=lm.name, text=source.name, out="", hook_name=hook_name, options=opts, d_in=d_in, d_sae=d_sae,
        lr=lr, steps=opts.steps, training_tokens=opts.steps * opts.batch_size, text_tokens=stream.text_tokens,
        activations_collected=stream.collected, excluded_tokens=stream.excluded, epochs=stream.epochs,
        resident=buffer.resident, buffer_rows=buffer.filled, final_loss=smooth_loss, final_fvu=smooth_fvu,
        dead_fraction=float((since_fired >= opts.dead_after_tokens).float().mean()),
        seconds=round(time.monotonic() - start, 2), collect_seconds=round(stream.seconds, 2))
    return sae.to_sae(config), report


def check_out_dir(out: str | Path, force: bool) -> Path:
    """The output directory: new, empty, or (with ``force``) an existing one to overwrite."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"output {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UserError(f"output directory {path} exists and is not empty", hint="choose another --out or add --force")
    return path


def save_trained(sae: SparseAutoencoder, report: TrainReport, out: str | Path) -> TrainReport:
    """Write the SAE in SAELens' layout plus the training record; returns the report with ``out``."""
    path = save_saelens(sae, out)
    report = report.model_copy(update={"out": str(path)})
    (path / TRAINING_RECORD).write_text(report.to_json())
    return report
