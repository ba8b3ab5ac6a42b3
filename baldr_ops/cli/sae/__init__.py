"""`baldr-ops sae`: sparse-autoencoder features, evaluation, training and the layer profile.

One module per sub-command here, each with ``register(subparsers)`` and imports of torch and the
library inside its ``run``, so ``baldr-ops --help`` stays light.
"""

from __future__ import annotations

import importlib

SUBCOMMANDS = ("features", "eval", "train", "profile")

DESCRIPTION = """\
Sparse autoencoders (SAEs) on the residual stream of a transformers causal LM, CPU or GPU.
SAE formats are auto-detected: SAELens (cfg.json + sae_weights.safetensors), Gemma Scope v1
(params.npz) and v2 (params.safetensors), EleutherAI sparsify (cfg.json + sae.safetensors), and
directories of per-layer SAEs. --model takes a model directory, a .gguf file or 'demo' (the
embedded SmolLM2-135M-Instruct). Needs the research extra: pip install 'baldr-ops[research]'.
"""


def register(subparsers) -> None:
    import argparse

    p = subparsers.add_parser("sae", help="sparse-autoencoder features, evaluation, training, layer profile",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="sae_command", metavar="SUBCOMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"baldr_ops.cli.sae.{name}").register(sub)
    for parser in sub.choices.values():
        parser.set_defaults(func=_one_line_errors(parser.get_default("func")))
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _one_line_errors(run):
    """The library says what is wrong in its own error type; the command line says it in one line."""

    def wrapped(args):
        from baldr_ops.errors import UserError
        from baldr_ops.sae.errors import SAEError

        try:
            return run(args)
        except SAEError as exc:
            raise UserError(exc.message, hint=exc.hint) from None

    return wrapped
