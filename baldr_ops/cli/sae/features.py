"""`baldr-ops sae features`: the most active SAE features per token of a text, with their labels."""

from __future__ import annotations

import argparse
import sys

from baldr_ops.cli.research_args import add_model_arguments, load_model_from_args, progress

DESCRIPTION = """\
Run the model on TEXT (or --file), encode the residual stream after decoder layer --layer with the
SAE, and print for each token the --top-k most active features, with labels when --labels names
feature metadata (Adam1010/gemma-4-31b-sae-features style JSON/JSONL, a file or a directory).

--sae is one SAE (SAELens, Gemma Scope v1/2, EleutherAI sparsify; auto-detected) or a directory of
per-layer SAEs (layers.12/, layer_12/, blocks.12.hook_resid_post/ ...), of which only --layer's
file is read. --layer may be left out when the SAE names its layer. Only the encoder is loaded
unless --no-encoder-only is given: reading features needs no decoder.
"""

EPILOG = """\
examples:
  baldr-ops sae features --sae ./saes/layers.12 "The capital of France is"
  baldr-ops sae features --model /models/gemma-4-31b-it --sae /saes/gemma-4-31b --layer 30 \\
      --labels /data/gemma-4-31b-sae-features --min-tier medium --file prompt.txt --json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("features", help="the most active SAE features per token of a text, with labels",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("text", nargs="*", metavar="TEXT", help="text(s) to read features of; each is run on its own")
    p.add_argument("--file", metavar="PATH",
                   help="read one more text from this file (the whole file is one text; '-' is stdin)")
    p.add_argument("--sae", required=True, metavar="S",
                   help="an SAE directory (or its weights file), or a directory of per-layer SAEs")
    p.add_argument("--layer", type=int, metavar="L",
                   help="decoder layer whose output the SAE reads (negative counts from the end); "
                        "default: the layer the SAE names")
    p.add_argument("--variant", metavar="V",
                   help="where a per-layer directory has several SAEs for a layer (widths, L0s), the one "
                        "whose path contains V, e.g. width_16k/average_l0_71")
    p.add_argument("--sae-format", default="auto", metavar="F",
                   help="auto (default), saelens, gemma-scope-v1, gemma-scope-2 or sparsify")
    p.add_argument("--top-k", type=int, default=5, metavar="N", help="features shown per token (default 5)")
    p.add_argument("--labels", metavar="FILE_OR_DIR",
                   help="feature metadata: a .json/.jsonl file or a directory of them (records with "
                        "feature_id, layer, claude_label/gpt_label, confidence_tier, ...)")
    p.add_argument("--min-tier", choices=("high", "medium", "low"),
                   help="consider only features labelled at this confidence tier or better (needs --labels)")
    p.add_argument("--encoder-only", action=argparse.BooleanOptionalAction, default=True,
                   help="load only the SAE's encoder (default; --no-encoder-only loads the decoder too)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="cut each text at N tokens (default 1024)")
    p.add_argument("--json", action="store_true", help="print one JSON document (schema_version inside)")
    p.set_defaults(func=run)


def _texts(args) -> list[str]:
    from baldr_ops.errors import UserError

    texts = list(args.text)
    if args.file:
        try:
            texts.append(sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read())
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {args.file}: {exc}") from exc
    if not texts or not any(t.strip() for t in texts):
        raise UserError("no text given", hint='pass TEXT ("The capital of France is") or --file PATH')
    return texts


def run(args) -> int:
    from baldr_ops.errors import UserError

    texts = _texts(args)
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if args.min_tier and not args.labels:
        raise UserError("--min-tier needs feature labels", hint="pass --labels FILE_OR_DIR")
    from baldr_ops.sae.features import FeaturesReport, open_sae_for_layer, preflight_sae, read_features

    # Everything that can fail without the model fails before it is loaded (minutes for a 31B).
    preflight_sae(args.sae, args.layer, variant=args.variant, format=args.sae_format)
    catalog = None
    if args.labels:
        from baldr_ops.sae.metadata import FeatureCatalog

        catalog = FeatureCatalog.load(args.labels)
    lm = load_model_from_args(args)

    sae, layer = open_sae_for_layer(lm, args.sae, args.layer, encoder_only=args.encoder_only,
                                    variant=args.variant, format=args.sae_format)
    progress(f"SAE {args.sae}: {sae.config.source_format}, {sae.config.architecture}, "
             f"{sae.d_in} -> {sae.d_sae} features, layer {layer}")
    results = read_features(lm, sae, layer, texts, top_k=args.top_k, catalog=catalog, min_tier=args.min_tier,
                            max_tokens=args.max_tokens)
    report = FeaturesReport(
        model=lm.name, sae=str(args.sae), sae_format=sae.config.source_format, architecture=sae.config.architecture,
        d_sae=sae.d_sae, layer=layer, top_k=args.top_k, encoder_only=sae.W_dec is None, labels=args.labels,
        labelled_features=len(catalog.filter(layer=layer)) if catalog else 0, min_tier=args.min_tier, texts=results)
    print(report.to_json() if args.json else render(report))
    return 0


def render(report) -> str:
    """Plain text: a header, then one line per token: position, token, features (id activation label)."""
    lines = [f"model {report.model}  layer {report.layer}  SAE {report.sae} ({report.sae_format}, "
             f"{report.architecture}, {report.d_sae} features)  top {report.top_k}"]
    if report.labels:
        tier = f", tier >= {report.min_tier}" if report.min_tier else ""
        lines.append(f"labels {report.labels} ({report.labelled_features} for this layer{tier})")
    for text in report.texts:
        lines.append("")
        lines.append(repr(text.text) + ("  (cut at --max-tokens)" if text.truncated else ""))
        width = max((len(repr(t.token)) for t in text.tokens), default=5)
        for tok in text.tokens:
            hits = ", ".join(f"#{h.feature_id} {h.activation:.2f}" + (f" {h.label!r}" if h.label else "")
                             for h in tok.features) or "(none active)"
            lines.append(f"  {tok.position:4d} {repr(tok.token):<{width}}  {hits}")
    return "\n".join(lines)
