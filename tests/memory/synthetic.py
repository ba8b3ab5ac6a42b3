"""Store entries built without a model (a fake identity, a random reference, random records), and a
helper that runs a function in two processes at once."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np

from baldr_ops.memory.identity import ModelIdentity
from baldr_ops.memory.records import RecordBody, ReferenceBody, encode_array, now, sha256_text

D = 16


def identity(**changes) -> ModelIdentity:
    base = dict(name="toy", weights_sha256="a" * 64, tokenizer_sha256="b" * 64, d_model=D, n_layers=4,
                dtype="float32")
    return ModelIdentity(**{**base, **changes})


def reference(layer: int = 1, seed: int = 0) -> ReferenceBody:
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((24, D)).astype(np.float32)
    return ReferenceBody(layer=layer, corpus_sha256="c" * 64, created_at=now(), d_model=D, n_reference=24,
                         n_probes=8, centre=encode_array(np.zeros(D)), reference=encode_array(ref - ref.mean(0)),
                         probes=encode_array(rng.standard_normal((8, D))))


def record(reference_id: str, text: str, layer: int = 1, seed: int = 1, flags=()) -> RecordBody:
    vector = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    return RecordBody(layer=layer, source_text=text, source_sha256=sha256_text(text), origin="operator",
                      created_at=now(), model=identity(), reference_id=reference_id, d_model=D,
                      key=encode_array(vector), value=encode_array(vector), flags=list(flags))


def in_two_processes(target, *args, starts=(0, 100), method: str | None = None) -> None:
    """Run ``target(*args, barrier, start)`` for each start in its own process, all at once (the
    barrier lets them line up before the part that races); every one must succeed."""
    method = method or ("spawn" if os.environ.get("BALDR_TEST_SPAWN") else "fork")
    ctx = multiprocessing.get_context(method)
    barrier = ctx.Barrier(len(starts))
    procs = [ctx.Process(target=target, args=(*args, barrier, start)) for start in starts]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0, f"a process failed (exit code {p.exitcode})"
