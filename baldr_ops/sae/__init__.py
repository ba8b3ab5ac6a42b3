"""Sparse autoencoders on a live model: load published SAEs, read features, evaluate, train, profile.

Layers: `model` (the SAE maths), `formats` (readers/writers of the published on-disk formats,
auto-detected), then the tasks built on them and on `baldr_ops.research` hooks. Needs the
``research`` extra.
"""
