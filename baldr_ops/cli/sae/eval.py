"""`baldr-ops sae eval`: how good an SAE is at its layer: sparsity, reconstruction, downstream loss."""

from __future__ import annotations

import argparse

from baldr_ops.cli.research_args import add_model_arguments, load_model_from_args, progress

DESCRIPTION = """\
Run the model over a text corpus, reconstruct the residual stream after decoder layer --layer with
the SAE, and report: L0, explained variance / FVU, MSE, cosine, l2 ratio, dead and dense feature
fractions, next-token cross-entropy clean / with the SAE spliced in / with the layer output
zero-ablated, delta CE, CE recovered, and KL to the clean output.

Every metric is shown twice: over all tokens, and without the first position of each window and
massive-norm tokens (norm above --massive-factor times the batch's median). Those few tokens can
carry most of the variance (SmolLM2: ~150x the median norm at position 0), making EV look near
perfect over all tokens; in the second column they are neither replaced nor scored.

The corpus is --text FILE (read in chunks) or, by default, the built-in held-out text (prose from
the Python Language Reference that ships with Python; docs/sae.md). Definitions: docs/sae.md.
"""

EPILOG = """\
examples:
  baldr-ops sae eval --sae ./my-sae                      # the demo model, the SAE's own layer
  baldr-ops sae eval --model /models/gemma-3-1b --sae ./saes/layer_12 --text eval.txt --json
"""


def register(subparsers) -> None:
    from baldr_ops.sae.defaults import BUILTIN_NAME, DEFAULT_MASSIVE_FACTOR

    p = subparsers.add_parser("eval", help="SAE quality: L0, explained variance, cosine, CE recovered, KL",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--sae", required=True, metavar="S",
                   help="an SAE directory (SAELens, Gemma Scope v1/2, sparsify; auto-detected) or a directory "
                        "of per-layer SAEs (then --layer picks one)")
    p.add_argument("--layer", type=int, metavar="L",
                   help="decoder layer whose output the SAE reconstructs (negative counts from the end); "
                        "default: the layer the SAE names")
    p.add_argument("--variant", metavar="V",
                   help="in a directory of per-layer SAEs with several per layer, the one whose path contains V")
    p.add_argument("--sae-format", default="auto", metavar="F",
                   help="auto (default), saelens, gemma-scope-v1, gemma-scope-2 or sparsify")
    p.add_argument("--text", default=BUILTIN_NAME, metavar="FILE",
                   help=f"UTF-8 text file to evaluate on, read in chunks; '{BUILTIN_NAME}' (default) is the "
                        "built-in held-out corpus")
    p.add_argument("--max-tokens", type=int, default=4096, metavar="N",
                   help="evaluate on the first N tokens (default 4096; each 1k tokens costs five forward "
                        "passes of the model)")
    p.add_argument("--seq-len", type=int, default=128, metavar="T",
                   help="tokens per window; the text is packed into windows of T tokens (default 128)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="windows per forward pass (default 8)")
    p.add_argument("--massive-factor", type=float, default=DEFAULT_MASSIVE_FACTOR, metavar="F",
                   help="a token is massive-norm when its residual norm exceeds F times the batch's median "
                        f"norm (default {DEFAULT_MASSIVE_FACTOR:g})")
    p.add_argument("--json", action="store_true", help="print one JSON document (schema_version inside)")
    p.set_defaults(func=run)


def run(args) -> int:
    from baldr_ops.errors import UserError

    for name in ("max_tokens", "seq_len", "batch_size"):
        if getattr(args, name) < (2 if name == "seq_len" else 1):
            raise UserError(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    if args.massive_factor <= 1:
        raise UserError(f"--massive-factor must be above 1, got {args.massive_factor}")
    from baldr_ops.sae.corpus import text_source
    from baldr_ops.sae.features import open_sae_for_layer, preflight_sae
    from baldr_ops.sae.metrics import evaluate

    # A missing text file or a bad --sae/--layer fails before the model loads.
    source = text_source(args.text, split="heldout")
    preflight_sae(args.sae, args.layer, variant=args.variant, format=args.sae_format)
    lm = load_model_from_args(args)

    sae, layer = open_sae_for_layer(lm, args.sae, args.layer, encoder_only=False, variant=args.variant,
                                    format=args.sae_format)
    progress(f"SAE {args.sae}: {sae.config.architecture}, {sae.d_in} -> {sae.d_sae} features, layer {layer}")
    report = evaluate(lm, sae, source, layer=layer, max_tokens=args.max_tokens, seq_len=args.seq_len,
                      batch_size=args.batch_size, massive_factor=args.massive_factor, sae_name=str(args.sae),
                      progress=progress)
    print(report.to_json() if args.json else render(report))
    return 0


def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "int":
        return f"{value:,}"
    if kind == "pct":
        return f"{100 * value:.2f} %"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


ROWS = (  # (label, field, format)
    ("tokens", "tokens", "int"), ("mean norm ||x||", "mean_norm", "num"), ("L0", "l0", "num"),
    ("explained variance", "explained_variance", "num"), ("FVU", "fvu", "num"), ("MSE", "mse", "num"),
    ("cosine(x, x_hat)", "cosine", "num"), ("l2 ratio", "l2_ratio", "num"),
    ("dead features", "dead_fraction", "pct"), ("dense features (>10 %)", "dense_fraction", "pct"),
    ("CE positions", "ce_positions", "int"), ("CE clean (nats)", "ce_clean", "num"),
    ("CE spliced", "ce_spliced", "num"), ("CE zero-ablated", "ce_ablated", "num"), ("delta CE", "delta_ce", "num"),
    ("CE recovered", "ce_recovered", "num"), ("KL(clean || spliced)", "kl_spliced", "num"),
    ("KL(clean || ablated)", "kl_ablated", "num"), ("KL score", "kl_score", "num"),
)


def render(report) -> str:
    k = f", k {report.k}" if report.k else ""
    lines = [
        f"model {report.model}  layer {report.layer} ({report.hook_name})  SAE {report.sae} "
        f"({report.architecture}, {report.d_in} -> {report.d_sae}{k})",
        f"corpus {report.corpus}",
        f"  {report.all.tokens:,} tokens in {report.windows} windows of <= {report.seq_len}; excluded in the "
        f"right column: {report.first_positions} first positions, {report.massive_tokens} massive-norm "
        f"(> {report.massive_factor:g}x median norm); {report.seconds:.1f} s",
        "",
        f"{'metric':<24}{'all tokens':>14}{'excl. first+massive':>22}",
    ]
    for label, field, kind in ROWS:
        lines.append(f"{label:<24}{_fmt(getattr(report.all, field), kind):>14}"
                     f"{_fmt(getattr(report.excluding_outliers, field), kind):>22}")
    return "\n".join(lines)
