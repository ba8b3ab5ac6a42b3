"""`baldr-ops sae train`: train a TopK SAE on one layer from a text file; writes a SAELens directory."""

from __future__ import annotations

import argparse
import sys

from baldr_ops.cli.research_args import add_model_arguments, load_model_from_args, progress

DESCRIPTION = """\
Train a TopK sparse autoencoder on the residual stream after decoder layer --layer, from the
activations of a text file, and write it as a SAELens directory (cfg.json with the model name and
hook blocks.L.hook_resid_post, sae_weights.safetensors) plus baldr_training.json.

The file is read in chunks and packed into windows of --seq-len tokens; the model runs only up
to --layer; activations go into a fixed-size shuffled buffer (--buffer-tokens), so memory does not
grow with the file. When the text fits in the buffer its activations are computed once and reused;
otherwise the file is re-read from the start when it runs out. The first position of each window
and massive-norm tokens (attention sinks) are left out unless --include-outliers is given.

Training: Adam on the batch's fraction of variance unexplained (FVU) plus an auxiliary-k loss that
revives dead features; unit-norm decoder rows; seeded (same seed, same machine: same weights).
"""

EPILOG = """\
examples:
  baldr-ops sae train --layer 6 --text builtin --out ./sae-l6 --steps 200   # demo model, built-in text
  baldr-ops sae train --model /models/gemma-3-1b --layer 12 --text corpus.txt --out ./sae \\
      --expansion 16 --k 64 --tokens 20000000 --batch-size 4096 --buffer-tokens 262144
"""


# TrainOptions' defaults, repeated so --help need not import torch (a test keeps them equal).
DEFAULTS = {"expansion": 8, "k": 32, "steps": 1000, "batch_size": 1024, "seq_len": 128, "forward_batch": 8,
            "buffer_tokens": 32768, "auxk_alpha": 1 / 32, "dead_after_tokens": 50_000, "seed": 0}


def register(subparsers) -> None:
    from baldr_ops.sae.defaults import BUILTIN_NAME, DEFAULT_MASSIVE_FACTOR

    d = DEFAULTS
    p = subparsers.add_parser("train", help="train a TopK SAE on one layer from a text file (SAELens output)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--layer", type=int, required=True, metavar="L",
                   help="decoder layer whose output the SAE learns to reconstruct (negative counts from the end)")
    p.add_argument("--text", required=True, metavar="FILE",
                   help=f"UTF-8 text file to train on, read in chunks; '{BUILTIN_NAME}' is the built-in "
                        "training text (~51 k SmolLM2 tokens of the Python Language Reference)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    p.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    width = p.add_mutually_exclusive_group()
    width.add_argument("--d-sae", type=int, metavar="N", help="number of features (default: --expansion x d_model)")
    width.add_argument("--expansion", type=int, default=d["expansion"], metavar="E",
                       help=f"features per model dimension (default {d['expansion']})")
    p.add_argument("--k", type=int, default=d["k"], metavar="K",
                   help=f"active features per token (default {d['k']})")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, metavar="N",
                        help=f"optimiser steps (default {d['steps']})")
    length.add_argument("--tokens", type=int, metavar="N",
                        help="training activations in all (steps = N / batch size, rounded up)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], metavar="B",
                   help=f"activations per step (default {d['batch_size']})")
    p.add_argument("--lr", type=float, metavar="LR",
                   help="Adam learning rate (default 2e-4 / sqrt(d_sae / 16384), sparsify's rule); "
                        "decays linearly to 0 over the last 20 %% of steps")
    p.add_argument("--seq-len", type=int, default=d["seq_len"], metavar="T",
                   help=f"tokens per window (default {d['seq_len']})")
    p.add_argument("--forward-batch", type=int, default=d["forward_batch"], metavar="W",
                   help=f"windows per model forward pass (default {d['forward_batch']})")
    p.add_argument("--buffer-tokens", type=int, default=d["buffer_tokens"], metavar="N",
                   help=f"activation buffer capacity (default {d['buffer_tokens']}; memory: N x d_model "
                        "x 4 bytes)")
    p.add_argument("--max-text-tokens", type=int, metavar="N", help="use only the first N tokens of the text")
    p.add_argument("--include-outliers", action="store_true",
                   help="train on first positions and massive-norm tokens too (default: left out)")
    p.add_argument("--massive-factor", type=float, default=DEFAULT_MASSIVE_FACTOR, metavar="F",
                   help=f"massive-norm: norm above F x the batch's median norm (default {DEFAULT_MASSIVE_FACTOR:g})")
    p.add_argument("--auxk-alpha", type=float, default=d["auxk_alpha"], metavar="A",
                   help="weight of the auxiliary-k dead-feature loss (default 1/32; 0 turns it off)")
    p.add_argument("--dead-after-tokens", type=int, default=d["dead_after_tokens"], metavar="N",
                   help=f"a feature is dead after N tokens without firing (default {d['dead_after_tokens']})")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON document (schema_version inside)")
    p.set_defaults(func=run)


def _options(args):
    import math

    from baldr_ops.errors import UserError
    from baldr_ops.sae.train import TrainOptions

    positive = {"--k": args.k, "--batch-size": args.batch_size, "--seq-len": args.seq_len,
                "--forward-batch": args.forward_batch, "--buffer-tokens": args.buffer_tokens,
                "--expansion": args.expansion, "--d-sae": args.d_sae, "--steps": args.steps,
                "--tokens": args.tokens, "--max-text-tokens": args.max_text_tokens}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise UserError(f"{flag} must be positive, got {value}")
    if args.seq_len < 2:
        raise UserError(f"--seq-len must be at least 2, got {args.seq_len}")
    steps = math.ceil(args.tokens / args.batch_size) if args.tokens else args.steps
    extra = {"steps": steps} if steps else {}
    return TrainOptions(layer=args.layer, d_sae=args.d_sae, expansion=args.expansion, k=args.k,
                        batch_size=args.batch_size, lr=args.lr, seq_len=args.seq_len,
                        forward_batch=args.forward_batch, buffer_tokens=args.buffer_tokens,
                        max_text_tokens=args.max_text_tokens, exclude_outliers=not args.include_outliers,
                        massive_factor=args.massive_factor, auxk_alpha=args.auxk_alpha,
                        dead_after_tokens=args.dead_after_tokens, seed=args.seed, **extra)


class ProgressBar:
    """One line on stderr, redrawn in place on a terminal; a line every 10 % of steps otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_decile = -1

    def __call__(self, p: dict) -> None:
        line = (f"  step {p['step']:>6,}/{p['steps']:,}  tokens {p['tokens']:>11,}  "
                f"loss {p['loss']:.4f}  FVU {p['fvu']:.4f}  dead {100 * p['dead']:.1f} %")
        done = p["step"] == p["steps"]
        if self.tty:
            print("\r" + line, end="\n" if done else "", file=self.stream, flush=True)
            return
        decile = 10 * p["step"] // p["steps"]
        if decile != self.last_decile or done:
            self.last_decile = decile
            print(line, file=self.stream, flush=True)


def run(args) -> int:
    from baldr_ops.sae.corpus import text_source
    from baldr_ops.sae.train import check_out_dir

    opts = _options(args)
    out = check_out_dir(args.out, args.force)  # everything cheap is checked before the model loads
    source = text_source(args.text, split="train")
    if not source.has_text():
        from baldr_ops.errors import UserError

        raise UserError(f"{args.text} has no text to train on")
    lm = load_model_from_args(args)
    from baldr_ops.sae.train import save_trained, train_sae

    lm.check_layer(args.layer)
    progress(f"training a TopK SAE at layer {args.layer} of {lm.name}: collecting activations")
    sae, report = train_sae(lm, source, opts, progress=ProgressBar(), progress_every=max(1, opts.steps // 100))
    report = save_trained(sae, report, out)
    print(report.to_json() if args.json else render(report))
    return 0


def render(report) -> str:
    o = report.options
    outliers = "included" if not o.exclude_outliers else f"{report.excluded_tokens:,} left out"
    reuse = "computed once (resident)" if report.resident else f"text read {report.epochs} times"
    return "\n".join([
        f"wrote {report.out}  (SAELens: cfg.json + sae_weights.safetensors; {report.hook_name})",
        f"  SAE      topk, {report.d_in} -> {report.d_sae} features, k {o.k}",
        f"  text     {report.text}: {report.text_tokens:,} tokens (first positions / massive-norm: {outliers})",
        f"  training {report.steps:,} steps x {o.batch_size:,} = {report.training_tokens:,} activations, "
        f"lr {report.lr:.2e}, seed {o.seed}; activations {reuse}",
        f"  result   FVU {report.final_fvu:.4f} (training batches), dead {100 * report.dead_fraction:.1f} %",
        f"  time     {report.seconds:.1f} s ({report.collect_seconds:.1f} s running the model)",
    ])
