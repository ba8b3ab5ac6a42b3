"""Activation memory overhead on the demo model (SmolLM2-135M-Instruct, CPU), in one run:
greedy generation tokens/s with memory off, on (10 k records at one layer, "prompt" query: one
recall per generation, at the default layer for a store without a profile (27 of 30: 90 % depth),
the default topic keys at layer 28, whitened: the session's clean pass reads
the prompt's topic state there) and on with the "running" query (a recall at every step; its store
keys records by their mean state at the nudged layer, which the running query needs),
alternated, medians; the ratio against off (target: at most 10 % slower); recall latency per call at
10 k records; the time to load and verify a 10 k-record store.

    .venv/bin/python -m bench memory          # BALDR_BENCH_THREADS (default 1) torch threads

The 16 built-in domain memories are real records; 9,984 more are synthetic but realistic (random
mixtures of real pooled states of the reference texts plus noise, at the key layer and at the layer,
so norms and directions look like activations; calibrated as the add path calibrates), signed into
a temporary store and loaded through the normal runtime.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

ROUNDS = 7
NEW_TOKENS = 48
ENTRIES = 10_000
PROMPT = "When interest rates go up, investors usually"
TARGET = 1.10


def _build_store(lm, directory, layer, key_rule=None):
    import numpy as np

    from baldr_ops.memory.domains import DOMAINS
    from baldr_ops.memory.identity import identity_of
    from baldr_ops.memory.keys import ephemeral_key
    from baldr_ops.memory.keyspace import reference_null_scores, summarise_null
    from baldr_ops.memory.records import DecisionBody, RecordBody, encode_array, now, sha256_text
    from baldr_ops.memory.store import MemoryStore
    from baldr_ops.memory.writer import add_texts

    ident = identity_of(lm)
    store = MemoryStore.create(directory, ident, ephemeral_key())
    for domain in DOMAINS:
        for added in add_texts(store, lm, domain.memories, [layer], label=domain.name, key_rule=key_rule):
            store.decide(added.id, "approve")
    state = store.read_layer(layer)
    reference = state.reference
    _, values_ref, _ = reference.arrays()
    _, keys_ref, _ = reference.key_arrays()
    rng = np.random.default_rng(0)
    n = ENTRIES - len(state.records)

    def synthetic(rows):
        picks = rng.choice(len(rows), (n, 4))
        mix = rng.dirichlet(np.ones(4), n)
        return (np.einsum("nk,nkd->nd", mix, rows[picks]) * 2
                + rng.standard_normal((n, rows.shape[1])) * 0.5).astype(np.float32)

    keys, values = synthetic(keys_ref), synthetic(values_ref)
    null_mean, null_std = summarise_null(reference_null_scores(reference, keys))
    batch = []
    for i in range(n):
        text = f"synthetic memory {i}"
        batch.append(("record", RecordBody(layer=layer, label="synthetic", source_text=text,
                                           source_sha256=sha256_text(text), origin="operator", created_at=now(),
                                           model=ident, reference_id=state.reference_id, d_model=keys.shape[1],
                                           key=encode_array(keys[i]), value=encode_array(values[i]),
                                           null_mean=float(null_mean[i]), null_std=float(null_std[i]))))
    ids = []
    for start in range(0, len(batch), 1000):
        ids += store.append(layer, batch[start:start + 1000])
    decisions = [("decision", DecisionBody(record_id=rid, decision="approve", decided_at=now())) for rid in ids]
    for start in range(0, len(decisions), 2000):
        store.append(layer, decisions[start:start + 2000])
    return store


def _hook_cost(lm, runtime, inputs, layer, steps: int = 200) -> float:
    """Median microseconds the layer's hook takes for one cached generation step (one new token)."""
    import torch

    from baldr_ops.memory.nudge import NudgeSession
    from baldr_ops.research.hooks import HookCall

    session = NudgeSession(lm, runtime.memories, inputs)
    hook = session.hooks[layer]
    n = inputs["input_ids"].shape[1]
    hook(torch.randn(1, n, lm.d_model) * 5, HookCall(layer, torch.arange(n)[None]))  # the prefill
    times = []
    for step in range(steps):
        hidden = torch.randn(1, 1, lm.d_model) * 5
        t0 = time.perf_counter()
        hook(hidden, HookCall(layer, torch.tensor([[n + step]])))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> int:
    import torch

    torch.set_num_threads(int(os.environ.get("BALDR_BENCH_THREADS", "1")))
    from baldr_ops.memory.config import LayerSettings, default_layer
    from baldr_ops.memory.keyspace import KeyRule
    from baldr_ops.memory.runtime import MemoryRuntime
    from baldr_ops.research.models import load_model

    lm = load_model("demo")
    layer, _ = default_layer(lm.n_layers, env={})  # what `memory add` picks without --layer or a profile
    inputs = lm.tokenize(PROMPT)
    kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True,
                  pad_token_id=lm.tokenizer.pad_token_id)
    with tempfile.TemporaryDirectory(prefix="baldr-bench-memory-") as tmp:
        print(f"building two {ENTRIES}-record stores at layer {layer} ...", file=sys.stderr, flush=True)
        stores = {"prompt": _build_store(lm, f"{tmp}/store", layer),
                  "running": _build_store(lm, f"{tmp}/local", layer, KeyRule(layer=layer, pooling="mean"))}
        size = sum(p.stat().st_size for p in stores["prompt"].directory.iterdir())
        start = time.perf_counter()
        runtimes = {q: MemoryRuntime.load(stores[q], lm, [LayerSettings(layer=layer, query=q)])
                    for q in ("prompt", "running")}
        load_s = (time.perf_counter() - start) / 2
        assert runtimes["prompt"].memories[layer].size == ENTRIES, runtimes["prompt"].memories[layer].size
        key_layer = runtimes["prompt"].memories[layer].key_layer

        def generate(mode):
            t0 = time.perf_counter()
            with torch.no_grad():
                if mode == "off":
                    out = lm.model.generate(**inputs, **kwargs)
                    entry = None
                else:
                    with runtimes[mode].session(inputs, prompt=PROMPT) as session:
                        out = lm.model.generate(**inputs, **kwargs)
                    entry = session.entry
            elapsed = time.perf_counter() - t0
            assert out.shape[1] - inputs["input_ids"].shape[1] == NEW_TOKENS
            return NEW_TOKENS / elapsed, entry

        for mode in ("off", "prompt", "running"):  # warm-up
            _, entry = generate(mode)
            if entry is not None:
                assert entry.influenced, "the benchmark prompt should recall something"
        rates = {"off": [], "prompt": [], "running": []}
        for _ in range(ROUNDS):
            for mode in rates:
                rates[mode].append(generate(mode)[0])

        memory = runtimes["prompt"].memories[layer]
        query = torch.randn(1, lm.d_model) * 40 + memory.centre
        for _ in range(5):
            memory.recall(query)
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            memory.recall(query)
            times.append(time.perf_counter() - t0)
        recall_ms = statistics.median(times) * 1e3

        hook_us = {mode: _hook_cost(lm, runtimes[mode], inputs, layer) for mode in ("prompt", "running")}

    medians = {mode: statistics.median(v) for mode, v in rates.items()}
    print(f"demo model, layer {layer} (prompt query: topic keys at layer {key_layer}), {ENTRIES} records, {NEW_TOKENS} new "
          f"tokens, {ROUNDS} rounds alternating, {torch.get_num_threads()} torch thread(s)")
    print(f"store: {size / 2**20:.1f} MiB on disk, load + verify {load_s:.2f} s")
    for mode, label in (("off", "memory off"), ("prompt", "memory on, prompt query (1 recall)"),
                        ("running", "memory on, running query (recall every step)")):
        ratio = medians["off"] / medians[mode]
        print(f"  {label:46} {medians[mode]:6.2f} tok/s  {ratio:.3f}x  "
              f"(rounds: {', '.join(f'{r:.2f}' for r in rates[mode])})")
    print(f"recall latency at {ENTRIES} records: {recall_ms:.3f} ms per call (median of 200)")
    print(f"hook time per generated token: {hook_us['prompt']:.0f} us (prompt query), "
          f"{hook_us['running']:.0f} us (running query, recall included)")
    slow = medians["off"] / medians["prompt"]
    verdict = "meets" if slow <= TARGET else "misses"
    print(f"memory on (prompt query) is {slow:.3f}x the time of memory off: {verdict} the <= {TARGET:.2f}x target")
    return 0 if slow <= TARGET else 1
