"""Memory at generation time: a store's approved records loaded into per-layer recall, and sessions.

`MemoryRuntime.load` opens nothing for writing. It takes, per configured layer, the records that
verify (signature, id, finite vectors), are approved, were made with this store's model, and (with
``rederive=True``) re-derive from their text; everything else is left out and listed in
``excluded``. `session` wraps one generation: it checks the kill switch as it starts (the store's
DISABLED flag or $BALDR_MEMORY_DISABLE), installs the hooks, and on exit appends the generation's
audit entry.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from baldr_ops.errors import UserError
from baldr_ops.memory.audit import AuditEntry, AuditLog, LayerAudit
from baldr_ops.memory.config import LayerSettings
from baldr_ops.memory.identity import identity_of, require_same_model
from baldr_ops.memory.index import IndexFactory
from baldr_ops.memory.keyspace import KeySpace, reference_null_scores, summarise_null
from baldr_ops.memory.nudge import NudgeSession
from baldr_ops.memory.recall import Groups, LayerMemory, label_groups
from baldr_ops.memory.records import ReferenceBody, now, sha256_text
from baldr_ops.memory.store import MemoryStore, layer_file
from baldr_ops.memory.verify import REDERIVE_TOLERANCE, rederive


@dataclass
class Exclusion:
    layer: int
    what: str  # a record id, or "file:line"
    reason: str


def memory_from_records(settings: LayerSettings, records, reference: ReferenceBody,
                        approximate: IndexFactory | None = None, device: torch.device | str | None = None) -> LayerMemory:
    """The records' keys and values as a `LayerMemory` on ``device`` (the model's, for generation),
    under the key rule of the layer's ``reference``."""
    ids = [r.id for r in records]
    d = reference.d_model
    keys = torch.from_numpy(np.stack([r.body.key_vector() for r in records])) if ids else torch.zeros(0, d)
    values = torch.from_numpy(np.stack([r.body.value_vector() for r in records])) if ids else torch.zeros(0, d)
    calibrated = ids and all(r.body.null_std is not None for r in records)
    null = (torch.tensor([r.body.null_mean for r in records], dtype=torch.float32),
            torch.tensor([r.body.null_std for r in records], dtype=torch.float32)) if calibrated else None
    key_centre = torch.from_numpy(reference.key_arrays()[0])
    space = KeySpace.of(reference)
    return LayerMemory(settings, ids, keys, values, key_centre, approximate, device=device,
                       key_layer=reference.keyed_at, key_pooling=reference.pooling, key_space=space, null=null,
                       groups=_groups(settings, records, keys, reference))


def _groups(settings: LayerSettings, records, keys: torch.Tensor, reference: ReferenceBody) -> Groups | None:
    """Recalling by label: the records' groups and each group's key (the mean of its records' keys),
    calibrated as a record is (`keyspace.reference_null_scores`) when the gate needs it."""
    if settings.recall_by != "label" or settings.gate != "relevance" or not records:
        return None
    found = label_groups([r.body.label for r in records], keys)
    if found is None:
        return None   # no label is shared: every record is gated alone, the per-record rule
    of, group_keys = found
    null = None
    if settings.threshold is None:
        mean, std = summarise_null(reference_null_scores(reference, group_keys.numpy()))
        null = (torch.from_numpy(np.asarray(mean, dtype=np.float32)), torch.from_numpy(np.asarray(std, dtype=np.float32)))
    return Groups(of, group_keys, null)


class MemoryRuntime:
    def __init__(self, lm, memories: dict[int, LayerMemory], store: MemoryStore | None = None,
                 excluded: list[Exclusion] | None = None):
        self.lm = lm
        self.memories = memories
        self.store = store
        self.excluded = excluded or []
        self.audit = AuditLog(store) if store else None

    @classmethod
    def load(cls, store: MemoryStore, lm, settings: Sequence[LayerSettings], *, rederive_records: bool = False,
             approximate: IndexFactory | None = None,
             progress: Callable[[str], None] = lambda _: None) -> MemoryRuntime:
        require_same_model(store.header.model, identity_of(lm), f"store {store.directory}")
        memories, excluded = {}, []
        for s in settings:
            layer = lm.check_layer(s.layer)
            state = store.read_layer(layer)
            excluded += [Exclusion(layer, p.where(), p.reason) for p in state.problems]
            if state.reference is None and (state.damaged or state.problems):
                # The log is there but its reference entry failed verification: its memories
                # cannot be used, and "no memories" would send the operator the wrong way.
                why = state.damaged or state.problems[0].reason
                raise UserError(f"store {store.directory}: the log of layer {layer} is damaged ({why}); its reference "
                                "entry cannot be trusted, so none of its memories can be used",
                                hint=f"restore {layer_file(layer)} from a backup of the store (docs/memory.md, "
                                     f"Integrity model); 'memory verify --store {store.directory}' lists the damage")
            if state.reference is None:
                raise UserError(f"store {store.directory} has no memories at layer {layer}",
                                hint=f"layers with memories: {store.layers() or 'none'}; 'memory add --layer {layer}'")
            if s.query == "running" and (state.reference.keyed_at != layer or state.reference.pooling != "mean"):
                raise UserError(f"layer {layer} of store {store.directory} reads {state.reference.pooling} keys at layer "
                                f"{state.reference.keyed_at}: the running query needs mean keys at the nudged layer",
                                hint=f"use query=prompt for layer {layer}, or a store whose layer has "
                                     f"--key-pooling mean --key-layer {layer}")
            records = []
            for record in state.with_status("approved"):
                if record.body.model.weights_sha256 != store.header.model.weights_sha256:
                    excluded.append(Exclusion(layer, record.id, "made with another model"))
                elif record.body.null_std is None and s.threshold is None:
                    excluded.append(Exclusion(layer, record.id, "no calibration (null statistics) and no --threshold"))
                else:
                    records.append(record)
            if rederive_records and records:
                progress(f"layer {layer}: re-deriving {len(records)} record(s)")
                checks = {c.id: c for c in rederive(lm, state, records, REDERIVE_TOLERANCE, progress)}
                failed = [r for r in records if not checks[r.id].ok]
                excluded += [Exclusion(layer, r.id, f"re-derivation failed (relative error "
                                                    f"{checks[r.id].key_error:.2e})") for r in failed]
                records = [r for r in records if checks[r.id].ok]
            memories[layer] = memory_from_records(s.model_copy(update={"layer": layer}), records,
                                                  state.reference, approximate, device=lm.device)
        return cls(lm, memories, store, excluded)

    def disabled_reason(self) -> str | None:
        return self.store.disabled_reason() if self.store else None

    def session(self, inputs: dict | None = None, prompt: str | None = None,
                layers: Sequence[int] | None = None, key_inputs: dict | None = None) -> GenerationSession:
        """Hooks for one generation of ``inputs`` (the tokenized prompt: input_ids, attention_mask).
        ``prompt`` is hashed into the audit entry; ``layers`` restricts the hooks to some layers;
        ``key_inputs``: what recall reads instead of ``inputs`` (the user's own text when ``inputs``
        wrap it in a chat template, whose system prompt would otherwise be part of the topic)."""
        memories = self.memories if layers is None else {layer: self.memories[layer] for layer in layers}
        return GenerationSession(self, memories, prompt, inputs, key_inputs)


class GenerationSession:
    def __init__(self, runtime: MemoryRuntime, memories: dict[int, LayerMemory], prompt: str | None,
                 inputs: dict | None, key_inputs: dict | None = None):
        self.runtime = runtime
        self.memories = memories
        self.prompt = prompt
        self.inputs = inputs
        self.key_inputs = key_inputs
        self.entry: AuditEntry | None = None
        self.nudge: NudgeSession | None = None

    def __enter__(self) -> GenerationSession:
        self.started_at = now()
        self.nudge = NudgeSession(self.runtime.lm, self.memories, self.inputs, self.runtime.disabled_reason(),
                                  key_inputs=self.key_inputs)
        self.nudge.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.nudge.__exit__(*exc)
        layers = [LayerAudit.from_trace(self.nudge.hooks[layer].trace, self.memories[layer])
                  for layer in sorted(self.nudge.hooks)]
        self.entry = AuditEntry(generation_id=uuid.uuid4().hex, started_at=self.started_at, finished_at=now(),
                                prompt_sha256=sha256_text(self.prompt) if self.prompt is not None else None,
                                disabled=self.nudge.disabled_reason, layers=layers)
        if self.runtime.audit is not None:
            self.runtime.audit.append(self.entry)

    @property
    def recalls(self) -> dict:
        """The last recall of each layer (None where nothing was recalled yet)."""
        return {layer: hook.last_recall for layer, hook in self.nudge.hooks.items()}
