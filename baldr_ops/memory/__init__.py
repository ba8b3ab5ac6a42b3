"""Activation-level memory: recall stored residual-stream patterns at deep layers and nudge the model.

A store (`store`) holds signed records (`records`, `keys`) of pooled activations captured from
operator-given text (`derive`, `writer`), screened at write time (`screen`) and quarantined until
approved. At generation time `runtime` loads a store's approved records into an index per layer
(`index`, `recall`), and `nudge` hooks each configured layer: the pooled current state recalls the
most relevant records, and a vector built from their values, weighted by relevance and strength and
clipped per token, is added to the residual. `audit` records which records influenced each
generation; `evaluate` measures whether the nudge does what it claims. Design: docs/memory.md.

Needs the research extra (torch, transformers); nothing outside this package and its CLI imports it.
"""
