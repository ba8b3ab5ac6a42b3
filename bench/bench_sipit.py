"""SipIt on the demo model: verification throughput and what each policy costs per position.

* throughput: candidate states per second through layers 0..l with a 4-token prefix KV cache, at
  batches of 32 (what the learning policies verify at a time) and 256 (random order);
* per policy (linear, gradient), on "The capital of France is" (5 tokens): candidates verified per
  position, the fraction of the vocabulary that is, and seconds per position. Random order is not
  run: its expected cost is (|V| + 1) / 2 candidates per position, i.e. 50 % of the vocabulary;
  the time that takes follows from the throughput.

No pass/fail threshold (CPU numbers on a shared machine), except that no accepted token may be
wrong. BENCH_SIPIT_LAYERS overrides the layers (default 1,12,29), BENCH_SIPIT_POLICIES the
policies (default linear,gradient), BENCH_SIPIT_BUDGET the candidates per position after which a
position is censored (default 2048: the gradient policy can need far more at deep layers, and each
of its batches costs 20 optimiser steps).
"""

from __future__ import annotations

import os
import time

PROMPT = "The capital of France is"


def _throughput(lm, layer: int, batch: int, seconds: float = 3.0) -> float:
    import torch

    from baldr_ops.sae.sipit import LayerStates

    states = LayerStates(lm, layer, batch_size=batch)
    ids = lm.tokenize(PROMPT)["input_ids"][0].tolist()
    prefix = states.prefix(ids[:4])
    cands = torch.arange(1000, 1000 + batch)
    states.of_candidates(prefix, cands)  # warm-up
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        states.of_candidates(prefix, cands)
        n += 1
    return n * batch / (time.perf_counter() - start)


def main() -> int:
    from baldr_ops.research.models import load_model
    from baldr_ops.sae.sipit import invert_prompt

    layers = [int(x) for x in os.environ.get("BENCH_SIPIT_LAYERS", "1,12,29").split(",")]
    policies = os.environ.get("BENCH_SIPIT_POLICIES", "linear,gradient").split(",")
    budget = int(os.environ.get("BENCH_SIPIT_BUDGET", "2048"))
    lm = load_model("demo")
    vocab = int(lm.input_embedding_matrix().shape[0])
    ids = lm.tokenize(PROMPT)["input_ids"][0].tolist()
    print(f"model {lm.name}, vocab {vocab:,}, prompt {PROMPT!r} ({len(ids)} tokens), torch threads "
          f"{__import__('torch').get_num_threads()}")
    print(f"{'layer':>5} {'cand/s @32':>11} {'cand/s @256':>12} {'random: s/position (expected)':>31}")
    speed = {}
    for layer in layers:
        s32, s256 = _throughput(lm, layer, 32), _throughput(lm, layer, 256)
        speed[layer] = s256
        print(f"{layer:>5} {s32:>11.0f} {s256:>12.0f} {(vocab + 1) / 2 / s256:>31.0f}")
    print(f"\n{'policy':>9} {'layer':>5} {'cand/position':>14} {'vocab %':>8} {'s/position':>11} {'censored':>9} "
          f"{'wrong':>6}")
    for policy in policies:
        for layer in layers:
            start = time.perf_counter()
            result = invert_prompt(lm, layer, ids, policy=policy, seed=0, budget=budget)
            per_position = (time.perf_counter() - start) / len(ids)
            censored = sum(p.censored for p in result.positions)
            wrong = sum(p.correct is False for p in result.positions)
            more = ">=" if censored else ""
            print(f"{policy:>9} {layer:>5} {more + f'{result.mean_candidates:.0f}':>14} "
                  f"{more + f'{100 * result.fraction_explored:.2f}':>8} {per_position:>11.1f} {censored:>9} "
                  f"{wrong:>6}", flush=True)
            if wrong:
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
