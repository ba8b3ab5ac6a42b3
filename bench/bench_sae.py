"""SAE read-out cost on the demo model (SmolLM2-135M-Instruct, d_model 576), in one run:

1. encode throughput, tokens/s, for several SAE shapes on real layer-12 residuals (the headline:
   a 576 x 4608 TopK SAE, k=32; the research notes saw ~11.8 k tokens/s on 2 cores), plus the
   features command's read-out (encode + top 5);
2. the features hook's overhead on a full forward pass: the same batch with the hook encoding at
   layer 12 and without, in adjacent pairs whose order alternates; the median per-pair ratio
   (target: under 10 %) by wall and CPU time, and the time spent inside the hook itself.

No pass/fail on timings (they depend on the machine); it prints the figures and the ratio.

    .venv/bin/python -m bench sae
    BENCH_SAE_ROUNDS=9 BENCH_SAE_DEVICE=cuda .venv/bin/python -m bench sae
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

ROUNDS = int(os.environ.get("BENCH_SAE_ROUNDS", "15"))
DEVICE = os.environ.get("BENCH_SAE_DEVICE", "cpu")
LAYER = 12
SEQ_LEN, BATCH = 128, 8  # residuals are taken and encoded 1024 tokens at a time
FORWARD_BATCH = 2  # sequences per forward in the overhead pairs: short runs, more pairs
ENCODE_TOKENS = 4096  # residuals encoded per throughput sample
OVERHEAD_TARGET = 0.10
# (d_sae, architecture, k): the headline first
SHAPES = ((4608, "topk", 32), (4608, "jumprelu", None), (4608, "relu", None), (2304, "topk", 32),
          (9216, "topk", 32))


def _sync() -> None:
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def _corpus_batches(lm, n_batches: int):
    """Fixed text: this repository's own docs, tokenised and cut into [BATCH, SEQ_LEN] windows."""
    import torch

    root = Path(__file__).resolve().parent.parent
    text = "\n\n".join(p.read_text() for p in sorted([root / "README.md", *(root / "docs").glob("*.md")]))
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"][0]
    need = n_batches * BATCH * SEQ_LEN
    if ids.numel() < need:
        ids = ids.repeat(need // ids.numel() + 1)
    windows = ids[:need].view(n_batches, BATCH, SEQ_LEN).to(lm.device)
    return [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows]


def _random_sae(d_in: int, d_sae: int, architecture: str, k: int | None, device: str):
    import torch

    from baldr_ops.sae.model import SAEConfig, SparseAutoencoder

    g = torch.Generator().manual_seed(d_sae)
    config = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture, k=k, layer=LAYER)
    return SparseAutoencoder(
        config=config, W_enc=torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5,
        b_enc=torch.zeros(d_sae), b_dec=torch.zeros(d_in), W_dec=None,
        threshold=torch.full((d_sae,), 0.5) if architecture == "jumprelu" else None).to(device)


def encode_throughput(lm, batches) -> list[tuple[str, float]]:
    import torch

    from baldr_ops.research.hooks import residuals
    from baldr_ops.sae.features import top_active

    hidden = torch.cat([residuals(lm, b, [LAYER])[LAYER].reshape(-1, lm.d_model) for b in batches])
    hidden = hidden[:ENCODE_TOKENS]
    chunks = hidden.split(BATCH * SEQ_LEN)
    rows = []
    with torch.no_grad():
        for d_sae, arch, k in SHAPES:
            sae = _random_sae(lm.d_model, d_sae, arch, k, DEVICE)
            jobs = {f"{lm.d_model} x {d_sae} {arch}{f' k={k}' if k else ''}": lambda s=sae: [s.encode(c) for c in chunks]}
            if (d_sae, arch) == (4608, "topk"):
                jobs["  + top 5 per token (sae features)"] = lambda s=sae: [top_active(s, c, 5) for c in chunks]
            for name, job in jobs.items():
                job()  # warm-up
                seconds = statistics.median(_timed(job) for _ in range(ROUNDS))
                rows.append((name, hidden.shape[0] / seconds))
    return rows


def hook_overhead(lm, batch) -> dict[str, float]:
    """The features hook's cost on a full forward: ROUNDS pairs of adjacent forwards (without and
    with the hook at LAYER, the order alternating), the median of the per-pair ratios by wall and by
    process CPU time (adjacent runs share the machine's load, so the ratio survives other work on a
    shared machine where separate medians do not), and the time spent inside the hook."""
    import torch

    from baldr_ops.sae.features import features_hook

    sae = _random_sae(lm.d_model, 4608, "topk", 32, DEVICE)

    def forward(with_hook: bool) -> tuple[float, float, float]:
        _sync()
        wall, cpu = time.perf_counter(), time.process_time()
        inside = 0.0
        if with_hook:
            with features_hook(lm, sae, LAYER, top_k=5) as log:
                lm.model(**batch, use_cache=False)
            inside = log.seconds
        else:
            lm.model(**batch, use_cache=False)
        _sync()
        return time.perf_counter() - wall, time.process_time() - cpu, inside

    pairs = []
    with torch.no_grad():
        forward(False), forward(True)  # warm-up
        for i in range(ROUNDS):
            if i % 2:
                hooked, bare = forward(True), forward(False)
            else:
                bare, hooked = forward(False), forward(True)
            pairs.append((bare, hooked))
    med = statistics.median
    return {"bare_wall": med(b[0] for b, _ in pairs), "hooked_wall": med(h[0] for _, h in pairs),
            "wall": med(h[0] / b[0] for b, h in pairs), "cpu": med(h[1] / b[1] for b, h in pairs),
            "inside_s": med(h[2] for _, h in pairs), "inside": med(h[2] / b[0] for b, h in pairs)}


def main() -> int:
    import torch

    from baldr_ops.research.models import load_model

    lm = load_model("demo", device=DEVICE)
    threads = torch.get_num_threads()
    print(f"SmolLM2-135M-Instruct float32 on {DEVICE} ({platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {threads} threads); layer {LAYER}; median of {ROUNDS} rounds")
    batches = _corpus_batches(lm, ENCODE_TOKENS // (BATCH * SEQ_LEN))
    print(f"\nencode throughput ({ENCODE_TOKENS} real residual tokens, chunks of {BATCH * SEQ_LEN})")
    for name, rate in encode_throughput(lm, batches):
        print(f"  {name:<36} {rate:>10,.0f} tokens/s")
    forward_batch = {k: v[:FORWARD_BATCH] for k, v in batches[0].items()}
    tokens = FORWARD_BATCH * SEQ_LEN
    r = hook_overhead(lm, forward_batch)
    print(f"\nforward of {FORWARD_BATCH} x {SEQ_LEN} tokens, full model, without and with the features hook at "
          f"layer {LAYER} (576 x 4608 TopK k=32, top 5); {ROUNDS} adjacent pairs")
    print(f"  without hook   {r['bare_wall'] * 1000:8.1f} ms ({tokens / r['bare_wall']:,.0f} tokens/s)")
    print(f"  with hook      {r['hooked_wall'] * 1000:8.1f} ms, {r['inside_s'] * 1000:.1f} ms of it inside the hook")
    print(f"  per-pair ratio, wall {r['wall']:.3f}x ({r['wall'] - 1:+.1%}), CPU {r['cpu']:.3f}x ({r['cpu'] - 1:+.1%}); "
          f"inside the hook {r['inside']:+.1%} of a bare forward")
    verdict = "meets" if r["wall"] - 1 < OVERHEAD_TARGET else "MISSES"
    print(f"features hook overhead: {r['wall']:.3f}x ({r['wall'] - 1:+.1%}, median per-pair wall ratio); "
          f"{verdict} the {OVERHEAD_TARGET:.0%} target")
    return 0
