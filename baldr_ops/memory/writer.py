"""The only way records enter a store: operator-given text (or vectors), screened, signed, quarantined.

Policy, enforced here and nowhere weakened downstream:

* origins "operator" and "user" are accepted; "model", "tool", "web" and "import" (text or vectors
  that came out of a model or a tool) are refused unless the caller passes
  ``allow_untrusted_origin=True``, and even then the record carries an ``untrusted-origin`` flag, so
  it cannot be approved without ``--override-flags``. Nothing in the generation path imports this
  module: the model's own output never writes memory;
* a batch is checked completely before anything is written: a non-finite vector, a flagged record
  (unless ``keep_flagged``) or a bad origin writes nothing, so a failed add leaves the store as it was.
  A new layer's reference entry is written in the same append as its first records, and a new store
  (`MemoryStore.new`) is written at that first append, so a failed first add leaves no file at all;
* the store's state is read, the batch screened against it and the result appended under one hold
  of the store lock: two processes adding at once, even to a new layer, both end up with usable
  records measured against the same reference;
* every new record is quarantined: recall uses only approved records.

Keys and values: a record's value is the text's pooled state at the layer minus the layer's reference
centre; its key is the text's key state (`derive.key_states`: topic or mean) at the layer's *key layer*
minus that layer's centre, with its null statistics for the calibrated threshold (`keyspace`). The
key rule (key layer, pooling and metric) is a store option, fixed for a layer by its first add and
recorded in the layer's reference entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from baldr_ops.errors import UserError
from baldr_ops.memory import corpus
from baldr_ops.memory.domains import topic_corpus_fingerprint
from baldr_ops.memory.config import ScreenSettings
from baldr_ops.memory.derive import key_states, pooled
from baldr_ops.memory.identity import ModelIdentity, identity_of, require_same_model
from baldr_ops.memory.keyspace import KeyRule, probe_relevance, reference_null_scores, rule_of, summarise_null
from baldr_ops.memory.records import (
    TRUSTED_ORIGINS,
    UNTRUSTED_ORIGINS,
    RecordBody,
    ReferenceBody,
    body_id,
    check_label,
    encode_array,
    now,
    sha256_text,
)
from baldr_ops.memory.screen import ReferenceScreen
from baldr_ops.memory.store import LayerState, MemoryStore, StoreAppeared
from baldr_ops.memory.within import within_rows

UNTRUSTED_FLAG = "untrusted-origin"


class AddedRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None  # None when skipped
    layer: int
    text: str
    status: str  # "quarantined" or "skipped"
    flags: list[str] = []
    reason: str | None = None


@dataclass
class Candidate:
    layer: int
    text: str
    key: np.ndarray
    value: np.ndarray
    body: RecordBody | None = None
    skip_reason: str | None = None


def check_origin(origin: str, allow_untrusted_origin: bool) -> list[str]:
    """The flags an origin puts on a record, or a refusal."""
    if origin in TRUSTED_ORIGINS:
        return []
    if origin in UNTRUSTED_ORIGINS:
        if not allow_untrusted_origin:
            raise UserError(f"refusing to store memory of origin {origin!r}: model and tool output is never "
                            f"written to memory", hint="only operator-given text is stored; --allow-untrusted-origin "
                                                       "stores it flagged, and approval then needs --override-flags")
        return [UNTRUSTED_FLAG]
    raise UserError(f"unknown origin {origin!r}", hint=f"one of: {', '.join(TRUSTED_ORIGINS + UNTRUSTED_ORIGINS)}")


def measure_references(lm, layers: Sequence[int], rule: KeyRule | None = None,
                       progress: Callable[[str], None] = lambda _: None,
                       identity: ModelIdentity | None = None) -> dict[int, ReferenceBody]:
    """The clean reference of each layer (the built-in reference texts and probes, pooled at the
    layer and at the rule's key layer), with the key rule, unwritten. ``identity``: the model's, if
    the caller holds it (it names the cached within-topic rows)."""
    if not layers:
        return {}
    rule = rule or KeyRule()
    key_layer = lm.check_layer(rule.key_layer(lm.n_layers))
    progress(f"layer(s) {', '.join(map(str, layers))}: measuring the clean reference "
             f"({len(corpus.REFERENCE_TEXTS)} texts, {len(corpus.PROBE_QUERIES)} probes; "
             f"{rule.describe(lm.n_layers)})")
    generic = list(corpus.REFERENCE_TEXTS) + list(corpus.PROBE_QUERIES)
    mean_keys = rule.pooling == "mean"   # then one pass reads the values' and the keys' states
    states = pooled(lm, generic, sorted({*layers, key_layer}) if mean_keys else layers)
    key_states_ = states if mean_keys else key_states(lm, generic, [key_layer], rule.pooling)

    def split(states: dict, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values = states[layer].numpy()
        ref, probes = values[:len(corpus.REFERENCE_TEXTS)], values[len(corpus.REFERENCE_TEXTS):]
        centre = ref.mean(axis=0)
        return centre, ref - centre, probes - centre

    key_parts = split(key_states_, key_layer)
    within = within_rows(lm, key_layer, rule.pooling, progress, identity) if rule.metric == "within" else None
    within_fields = {} if within is None else dict(n_within=len(within), key_within=encode_array(within),
                                                    within_sha256=topic_corpus_fingerprint())
    out = {}
    for layer in layers:
        centre, ref, probes = split(states, layer)
        keyed = {} if (key_layer == layer and rule.pooling == "mean") else dict(
            zip(("key_centre", "key_reference", "key_probes"), map(encode_array, key_parts), strict=True))
        out[layer] = ReferenceBody(layer=layer, corpus_sha256=corpus.corpus_fingerprint(), created_at=now(),
                                   d_model=int(ref.shape[1]), n_reference=len(ref), n_probes=len(probes),
                                   centre=encode_array(centre), reference=encode_array(ref),
                                   probes=encode_array(probes), key_layer=key_layer, key_metric=rule.metric,
                                   key_pooling=rule.pooling, **keyed, **within_fields)
    return out


def check_rule(layer: int, reference: ReferenceBody, rule: KeyRule | None, n_layers: int) -> None:
    """A key rule asked for (None: whatever the layer has) must be the one the layer was made with."""
    if rule is None or reference is None:
        return
    have = rule_of(reference)
    if (have.key_layer(n_layers), have.metric, have.pooling) != (rule.key_layer(n_layers), rule.metric, rule.pooling):
        raise UserError(f"layer {layer} of this store has {have.describe(n_layers)}; asked for "
                        f"{rule.describe(n_layers)}", hint="a layer's key rule is fixed by its first record: drop "
                                                          "--key-layer/--key-metric/--key-pooling, or use a new store")


def _with_reference(store: MemoryStore, state: LayerState, references: dict[int, ReferenceBody]) -> ReferenceBody | None:
    """Give a layer without a reference the one measured for it (returned: it must be written with the
    records). A damaged log, or records without a reference, is an error."""
    if state.damaged:
        raise UserError(f"the log of layer {state.layer} in {store.directory} is damaged ({state.damaged}); "
                        f"not adding to it", hint="'baldr-ops memory verify' shows the damage; restore the store "
                                                  "from a backup")
    if state.reference is not None:
        return None
    if state.records:
        raise UserError(f"layer {state.layer} of {store.directory} has records but its reference entry is missing or "
                        f"corrupt", hint="'baldr-ops memory verify' shows the damaged line")
    state.reference = references[state.layer]
    state.reference_id = body_id(state.reference.model_dump(mode="json"))
    return state.reference


def screen_for(state: LayerState, settings: ScreenSettings | None = None) -> ReferenceScreen:
    """The layer's screens: values against its reference, keys against the key layer's."""
    _, reference, probes = state.reference.arrays()
    keys = None
    if state.reference.key_centre is not None:   # keys read otherwise than the values
        _, key_reference, key_probes = state.reference.key_arrays()
        key_settings = settings or ScreenSettings()
        if state.reference.pooling == "topic":
            key_settings = key_settings.model_copy(
                update={"mahalanobis_factor": key_settings.topic_key_mahalanobis_factor})
        keys = ReferenceScreen(key_reference, key_probes, key_settings)
    return ReferenceScreen(reference, probes, settings, keys=keys)


def _prepare(store: MemoryStore, state: LayerState, candidates: list[Candidate], origin: str, label: str | None,
             origin_flags: list[str], model: ModelIdentity, settings: ScreenSettings | None) -> None:
    """Screen and calibrate each candidate against the layer's reference and records; fill in its body
    or skip reason."""
    screen = screen_for(state, settings)
    reference = state.reference
    live = [r for r in state.records.values() if r.status != "revoked"]
    by_source = {r.body.source_sha256: r.id for r in live}
    keys = [r.body.key_vector() for r in live]
    finite = [c for c in candidates if np.isfinite(c.key).all()]
    # Each key's relevance to the generic texts, out of sample: its calibration; and its relevance to
    # the probes for the magnet screen.
    scores, magnet = {}, {}
    if finite:
        stacked = np.stack([c.key for c in finite])
        null = reference_null_scores(reference, stacked)
        scores = dict(zip(map(id, finite), null.T, strict=True))
        relevance = probe_relevance(reference, stacked, null)
        if relevance is not None:
            magnet = dict(zip(map(id, finite), relevance.T, strict=True))
    for c in candidates:
        digest = sha256_text(c.text)
        if digest in by_source:
            c.skip_reason = f"already stored as {by_source[digest]}"
            continue
        null = scores.get(id(c))
        report = screen.screen(c.key, c.value, np.stack(keys) if keys else None, probe_relevance=magnet.get(id(c)))
        ok = report.finite
        null_mean, null_std = summarise_null(null) if null is not None else (None, None)
        c.body = RecordBody(layer=c.layer, label=label, source_text=c.text, source_sha256=digest, origin=origin,
                            created_at=now(), model=model, reference_id=state.reference_id,
                            d_model=int(c.key.shape[0]),
                            key=encode_array(c.key) if ok else "", value=encode_array(c.value) if ok else "",
                            null_mean=float(null_mean) if ok else None, null_std=float(null_std) if ok else None,
                            screen=report.model_dump(mode="json"), flags=report.flags + origin_flags)
        by_source[digest] = "(this batch)"
        if ok:
            keys.append(c.key)


def _check(candidates: list[Candidate], keep_flagged: bool) -> None:
    bad = [c for c in candidates if c.body is not None and any(f.endswith("not-finite") for f in c.body.flags)]
    if bad:
        raise UserError(f"refusing a non-finite vector (NaN or infinity) for {bad[0].text[:60]!r} at layer "
                        f"{bad[0].layer}; nothing was written")
    flagged = [c for c in candidates if c.body is not None and set(c.body.flags) - {UNTRUSTED_FLAG}]
    if flagged and not keep_flagged:
        first = flagged[0]
        raise UserError(f"{len(flagged)} of {len(candidates)} memories failed the write-time screens, e.g. "
                        f"{first.text[:60]!r} at layer {first.layer}: {', '.join(first.body.flags)}; nothing was written",
                        hint="--keep-flagged stores them quarantined and flagged, for review")


def _write(store: MemoryStore, candidates: list[Candidate], references: dict[int, ReferenceBody]) -> list[AddedRecord]:
    """Append each layer's new reference (if any) and records; call with the store lock held."""
    layers = sorted({c.layer for c in candidates})
    todo = {layer: [c for c in candidates if c.layer == layer and c.body is not None] for layer in layers}
    entries = {layer: ([("reference", references[layer])] if layer in references else [])
                      + [("record", c.body) for c in todo[layer]] for layer in layers}
    ids = store.append_layers({layer: e for layer, e in entries.items() if e})
    out = []
    for layer in layers:
        written = dict(zip(map(id, todo[layer]), ids.get(layer, [])[len(entries[layer]) - len(todo[layer]):],
                           strict=True))
        for c in (c for c in candidates if c.layer == layer):
            if c.body is None:
                out.append(AddedRecord(id=None, layer=layer, text=c.text, status="skipped", reason=c.skip_reason))
            else:
                out.append(AddedRecord(id=written[id(c)], layer=layer, text=c.text, status="quarantined",
                                       flags=c.body.flags))
    return out


def add_texts(store: MemoryStore, lm, texts: Sequence[str], layers: Sequence[int], *, origin: str = "operator",
              label: str | None = None, allow_untrusted_origin: bool = False, keep_flagged: bool = False,
              screen_settings: ScreenSettings | None = None, key_rule: KeyRule | None = None,
              progress: Callable[[str], None] = lambda _: None,
              identity: ModelIdentity | None = None) -> list[AddedRecord]:
    """Capture each text's key and value at each layer and append them, quarantined. ``key_rule``:
    for a layer's first records, its key rule (default `KeyRule()`); for a layer that has one, None or
    the same rule."""
    origin_flags = check_origin(origin, allow_untrusted_origin)
    label = check_label(label)
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise UserError("no memory text given", hint="give texts as arguments or --file FILE (one per line)")
    layers = sorted({lm.check_layer(layer) for layer in layers})
    model = identity or identity_of(lm)  # a caller that holds it spares hashing the tokenizer again
    if not store.pending:
        require_same_model(store.header.model, model, f"store {store.directory}")
    rule = key_rule or KeyRule()
    lm.check_layer(rule.key_layer(lm.n_layers))
    existing = {layer: store.read_layer(layer).reference for layer in layers}
    for layer, reference in existing.items():
        check_rule(layer, reference, key_rule, lm.n_layers)
    vectors: dict = {}  # (layer, pooling) -> states of the texts; the model passes need no lock

    def states_at(needed: Sequence[tuple[int, str]]) -> dict:
        for pooling in sorted({p for _, p in needed}):
            missing = sorted({layer for layer, p in needed if p == pooling and (layer, p) not in vectors})
            if missing:
                progress(f"capturing {len(texts)} text(s) at layer(s) {', '.join(map(str, missing))} ({pooling})")
                found = key_states(lm, texts, missing, pooling, progress=progress)
                vectors.update({(layer, pooling): found[layer] for layer in missing})
        return vectors

    states_at([*((layer, "mean") for layer in layers),
               *((r.keyed_at, r.pooling) if r else (rule.key_layer(lm.n_layers), rule.pooling)
                 for r in existing.values())])
    # References for the layers that have none, measured before the lock is taken (another process
    # may write one meanwhile: then that one is used and this one dropped).
    references = measure_references(lm, [layer for layer, r in existing.items() if r is None], rule, progress, model)
    while True:
        try:
            with store.locked():
                states = {layer: store.read_layer(layer) for layer in layers}
                missing = [layer for layer, state in states.items()
                           if state.reference is None and layer not in references and not state.damaged]
                references.update(measure_references(lm, missing, rule, progress, model))
                new_references = {}
                for layer, state in states.items():
                    reference = _with_reference(store, state, references)
                    if reference is not None:
                        new_references[layer] = reference
                    check_rule(layer, state.reference, key_rule, lm.n_layers)
                candidates = []
                for layer in layers:
                    reference = states[layer].reference
                    keyed = (reference.keyed_at, reference.pooling)
                    at = states_at([(layer, "mean"), keyed])
                    centre, key_centre = reference.arrays()[0], reference.key_arrays()[0]
                    layer_candidates = [
                        Candidate(layer, text, (key_state - key_centre).astype(np.float32),
                                  (value_state - centre).astype(np.float32))
                        for text, key_state, value_state in zip(texts, at[keyed].numpy(), at[layer, "mean"].numpy(),
                                                                strict=True)]
                    _prepare(store, states[layer], layer_candidates, origin, label, origin_flags, model,
                             screen_settings)
                    candidates += layer_candidates
                _check(candidates, keep_flagged)
                return _write(store, candidates, new_references)
        except StoreAppeared:  # another process wrote the new store first: add to that one
            store.adopt()


def add_vectors(store: MemoryStore, model: ModelIdentity, layer: int, key: np.ndarray, value: np.ndarray,
                source_text: str, *, origin: str = "import", label: str | None = None,
                allow_untrusted_origin: bool = False, keep_flagged: bool = False,
                screen_settings: ScreenSettings | None = None) -> AddedRecord:
    """Store vectors computed elsewhere for ``source_text``: the key centred at the layer's key layer,
    the value centred at ``layer``. The same screens and calibration apply; `verify --rederive` later
    checks the vectors really come from the text."""
    origin_flags = check_origin(origin, allow_untrusted_origin)
    label = check_label(label)
    key, value = (np.asarray(v, dtype=np.float32).reshape(-1) for v in (key, value))
    if key.shape != (model.d_model,) or value.shape != (model.d_model,):
        raise UserError(f"vectors must have {model.d_model} values, got {key.size} and {value.size}")
    with store.locked():
        state = store.read_layer(layer)
        if state.reference is None:
            raise UserError(f"layer {layer} of {store.directory} has no reference yet",
                            hint="add one text at that layer first ('memory add --layer ...')")
        _with_reference(store, state, {})
        candidate = Candidate(layer, source_text.strip(), key, value)
        _prepare(store, state, [candidate], origin, label, origin_flags, model, screen_settings)
        _check([candidate], keep_flagged)
        return _write(store, [candidate], {})[0]
