"""SAE read-out cost on the demo model (SmolLM2-135M-Instruct, d_model 576), in one run:

1. encode throughput, tokens/s, for several SAE shapes on real layer-12 residuals (the headline:
   a 576 x 4608 TopK SAE, k=32; the research notes saw ~11.8 k tokens/s on 2 cores), plus the
   features command's read-out (encode + top 5);
2. the features hook's overhead on a full forward pass: the same batch with the hook encoding at
   layer 12 and without, alternately, medians (target: under 10 %), by wall time, by process CPU
   time (judged: on a machine shared with other work wall time is mostly their noise) and by the
   time spent inside the hook.

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

ROUNDS = int(os.environ.get("BENCH_SAE_ROUNDS", "9"))
DEVICE = os.environ.get("BENCH_SAE_DEVICE", "cpu")
LAYER = 12
SEQ_LEN, BATCH = 128, 4  # one forward batch: 512 tokens
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


def hook_overhead(lm, batch) -> dict[str, tuple[float, float]]:
    """Median (without, with) the features hook at LAYER, forwards measured alternately: wall
    seconds, process CPU seconds (less disturbed by other work on a shared machine), and the time
    spent inside the hook itself against the bare forward."""
    import torch

    from baldr_ops.sae.features import features_hook

    sae = _random_sae(lm.d_model, 4608, "topk", 32, DEVICE)
    samples = {"wall": ([], []), "cpu": ([], []), "inside": ([], [])}

    def forward(with_hook: bool) -> None:
        _sync()
        wall, cpu = time.perf_counter(), time.process_time()
        if with_hook:
            with features_hook(lm, sae, LAYER, top_k=5) as log:
                lm.model(**batch, use_cache=False)
        else:
            lm.model(**batch, use_cache=False)
        _sync()
        slot = 1 if with_hook else 0
        samples["wall"][slot].append(time.perf_counter() - wall)
        samples["cpu"][slot].append(time.process_time() - cpu)
        if with_hook:
            samples["inside"][1].append(log.seconds)
            samples["inside"][0].append(samples["wall"][0][-1])

    with torch.no_grad():
        forward(False), forward(True)  # warm-up
        for name in samples:
            for series in samples[name]:
                series.clear()
        for _ in range(ROUNDS):
            forward(False)
            forward(True)
    return {name: (statistics.median(a), statistics.median(b)) for name, (a, b) in samples.items()}


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
    tokens = BATCH * SEQ_LEN
    result = hook_overhead(lm, batches[0])
    bare, hooked = result["wall"]
    print(f"\nforward of {BATCH} x {SEQ_LEN} tokens, full model, features hook at layer {LAYER} "
          f"(576 x 4608 TopK k=32, top 5) vs none, alternately")
    print(f"  without hook   {bare * 1000:8.1f} ms wall ({tokens / bare:,.0f} tokens/s), "
          f"{result['cpu'][0] * 1000:8.1f} ms CPU")
    print(f"  with hook      {hooked * 1000:8.1f} ms wall, {result['cpu'][1] * 1000:8.1f} ms CPU; "
          f"{result['inside'][1] * 1000:.1f} ms of it inside the hook")
    ratios = {"wall": hooked / bare, "CPU": result["cpu"][1] / result["cpu"][0],
              "inside the hook": 1 + result["inside"][1] / result["inside"][0]}
    for name, ratio in ratios.items():
        print(f"  ratio ({name}): {ratio:.3f}x ({ratio - 1:+.1%})")
    verdict = "meets" if ratios["CPU"] - 1 < OVERHEAD_TARGET else "MISSES"
    print(f"features hook overhead: {ratios['CPU']:.3f}x by CPU time ({ratios['wall']:.3f}x wall); {verdict} "
          f"the {OVERHEAD_TARGET:.0%} target")
    return 0
