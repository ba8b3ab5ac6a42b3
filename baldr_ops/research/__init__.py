"""The layer the research modules (`sae`, `memory`) share: loading a causal LM, residual-stream hooks.

Needs the ``research`` extra (torch, transformers, safetensors). Nothing outside ``sae``/``memory``
and their CLI commands imports this package, so ``doctor`` and the shim never pull in torch.
"""
