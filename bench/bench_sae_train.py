"""SAE training cost on the demo model (SmolLM2-135M-Instruct, d_model 576), in one run:

1. activation collection: tokens/s of `hooks.residuals` up to layer 6 and 12 (the forward stops
   after the layer) against a full forward pass, 1024 tokens a batch (8 windows of 128);
2. one optimiser step of the 576 x 4608 TopK (k=32) trainer, batch 512 and 1024: ours (decoder
   as a gather of k rows, `embedding_bag`; fused Adam) against the plain dense version (a dense
   [batch, d_sae] x [d_sae, d_in] decode; for-each Adam), in adjacent pairs whose order alternates.

No pass/fail on timings; it prints the figures and the ratios.

    .venv/bin/python -m bench sae_train
    BENCH_SAE_TRAIN_ROUNDS=9 .venv/bin/python -m bench sae_train
"""

from __future__ import annotations

import os
import platform
import statistics
import time

ROUNDS = int(os.environ.get("BENCH_SAE_TRAIN_ROUNDS", "7"))
D_SAE, K = 4608, 32


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def collection(lm) -> None:
    import torch

    from baldr_ops.research.hooks import residuals
    from baldr_ops.sae.corpus import builtin_texts, pad_id, token_windows, window_batches

    windows = token_windows(lm.tokenizer, builtin_texts("train"), 128, 1024)
    batch = next(window_batches(windows, 8, pad_id(lm.tokenizer)))
    tokens = int(batch["attention_mask"].sum())

    def full():
        with torch.no_grad():
            lm.model(**batch, use_cache=False)

    runs = {"full forward (30 layers + head)": full}
    for layer in (6, 12):
        runs[f"residuals to layer {layer}"] = lambda layer=layer: residuals(lm, batch, [layer])
    full()  # warm-up
    medians = {name: statistics.median(_timed(fn) for _ in range(ROUNDS)) for name, fn in runs.items()}
    base = medians["full forward (30 layers + head)"]
    print(f"activation collection, {tokens} tokens a batch, median of {ROUNDS}:")
    for name, seconds in medians.items():
        print(f"  {name:<34} {tokens / seconds:>8,.0f} tokens/s  ({seconds / base:.2f}x the full forward)")


def _dense_step_fn(sae, opt, x):
    """The textbook step: dense decode through autograd, for-each Adam."""
    import torch

    def step():
        centred = x - sae.b_dec
        pre = torch.addmm(sae.b_enc, centred, sae.enc_rows.T)
        values, indices = pre.topk(K, dim=-1, sorted=False)
        acts = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        x_hat = acts @ sae.W_dec + sae.b_dec
        loss = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _our_step_fn(sae, opt, x):
    def step():
        x_hat, _, _ = sae(x)
        loss = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_gradient()
        opt.step()
        sae.constrain_decoder()
    return step


def training_step() -> None:
    import torch

    from baldr_ops.sae.train import TopKTrainee

    for batch in (512, 1024):
        x = torch.randn(batch, 576, generator=torch.Generator().manual_seed(batch)) * 100
        ours_sae = TopKTrainee(576, D_SAE, K, torch.Generator().manual_seed(0))
        dense_sae = TopKTrainee(576, D_SAE, K, torch.Generator().manual_seed(0))
        ours = _our_step_fn(ours_sae, torch.optim.Adam(ours_sae.parameters(), lr=1e-3, fused=True), x)
        dense = _dense_step_fn(dense_sae, torch.optim.Adam(dense_sae.parameters(), lr=1e-3, foreach=True), x)
        ours(), dense()  # warm-up
        pairs = []
        for i in range(ROUNDS):
            first, second = (ours, dense) if i % 2 == 0 else (dense, ours)
            a, b = _timed(first), _timed(second)
            pairs.append((a, b) if i % 2 == 0 else (b, a))
        our_ms = statistics.median(p[0] for p in pairs) * 1e3
        dense_ms = statistics.median(p[1] for p in pairs) * 1e3
        ratio = statistics.median(p[0] / p[1] for p in pairs)
        print(f"  batch {batch:>5}: ours {our_ms:7.1f} ms/step ({batch / our_ms * 1e3:>7,.0f} tokens/s), "
              f"dense {dense_ms:7.1f} ms/step; per-pair ratio {ratio:.2f}x")


def main() -> int:
    import torch

    from baldr_ops.research.models import load_model

    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} intra-op threads, load average {os.getloadavg()[0]:.1f}")
    lm = load_model("demo")
    collection(lm)
    print(f"TopK trainer step, 576 x {D_SAE}, k={K}, median of {ROUNDS} adjacent pairs:")
    training_step()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
