"""`baldr-ops sae profile`: per-layer token-proximity profile with bootstrap CIs, table, JSON, PNG."""

from __future__ import annotations

import argparse

from baldr_ops.cli.research_args import add_model_arguments, load_model_from_args, progress

DESCRIPTION = """\
How far each decoder layer's residual stream is from the token space, measured several ways over a
fixed prompt set, each with a bootstrap confidence interval over prompts:

  metric          per layer                                                far from tokens
  lens_kl         KL(final || logit lens at the layer), nats               high
  lens_top1       top-1 agreement of the logit lens with the final output  low
  embed_nn_acc    nearest input-embedding row (centred cosine) = input     low
  embed_rank      log10(1 + rank of the input token's row, centred cosine) high
  embed_max_cos   max centred cosine to any input-embedding row            low
  sipit_explored  SipIt search cost: candidates verified per position / V  high

Position 0 is never counted; the embedding-side metrics also drop massive-norm tokens (norm above
10x the layer's median). SipIt (Nikolaou et al., arXiv 2510.15511) is run for real on the first
--sipit-prompts prompts, cut to --sipit-tokens tokens: it rebuilds each prompt from the layer's
states and never accepts a wrong token; positions that exceed --sipit-budget are censored (the
layer's cost is then a lower bound). The paper defines no per-layer score: this cost is ours.

Each metric's extremum is reported separately (they disagree). The integration depth is the argmax
of a combined curve, D(l) = 1 - max(P_in, P_out), where P_out = 1 - minmax(lens_kl) and P_in =
1 - minmax(embed_rank) over the profiled layers, reported only when it is an interior layer, with a
bootstrap interval. Definitions: docs/sae.md, "Layer profile".
"""

EPILOG = """\
examples:
  baldr-ops sae profile                                  # demo model, all layers (several minutes on CPU)
  baldr-ops sae profile --layers 1,6,12,18,24,29 --plot profile.png
  baldr-ops sae profile --model /models/gemma-3-1b --text prompts.txt --bootstrap 2000 --json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="per-layer token-proximity profile (logit lens, embeddings, SipIt)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--layers", default="all", metavar="SPEC",
                   help="layers to profile: 'all' (default), an inclusive range 'A-B', or a list '1,12,29'; "
                        "negative numbers count from the end. Zones and the integration depth are found "
                        "within the profiled layers only")
    p.add_argument("--text", metavar="FILE",
                   help="prompt file, one prompt per non-empty line (default: the 16 built-in sentences)")
    p.add_argument("--max-tokens", type=int, default=64, metavar="N",
                   help="cut each prompt to its first N tokens (default 64)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples of the prompts for the 95%% intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the bootstrap and of SipIt's policy (default 0); the same seed gives the same "
                        "numbers")
    sipit = p.add_argument_group("SipIt search cost")
    sipit.add_argument("--no-sipit", action="store_true",
                       help="skip the SipIt metric (the rest takes about a minute for 30 layers on a 2-core CPU; SipIt several minutes more)")
    sipit.add_argument("--sipit-prompts", type=int, default=3, metavar="N",
                       help="run SipIt on the first N prompts (default 3)")
    sipit.add_argument("--sipit-tokens", type=int, default=5, metavar="T",
                       help="recover the first T tokens of each (default 5)")
    sipit.add_argument("--sipit-budget", type=int, default=2048, metavar="N",
                       help="candidates verified per position before giving up; such positions are censored "
                            "(default 2048)")
    sipit.add_argument("--sipit-layers", metavar="SPEC",
                       help="run SipIt only at these layers (same forms as --layers, picked from the profiled "
                            "ones; default: all profiled layers). SipIt is the slow metric: each position "
                            "verifies a few hundred candidates through the layer")
    sipit.add_argument("--sipit-policy", default="linear", choices=("linear", "gradient", "random"),
                       help="candidate policy: linear (default; ridge fits on verified candidates), gradient "
                            "(the paper's, optimised embeddings; slower), random (brute force)")
    p.add_argument("--json", action="store_true", help="print one JSON document (schema_version inside)")
    p.add_argument("--plot", metavar="OUT.png",
                   help="also write a PNG: one panel per metric with its CI band, integration depth marked")
    p.set_defaults(func=run)


def _check_args(args) -> None:
    from baldr_ops.errors import UserError

    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be at least 1, got {args.bootstrap}")
    if args.max_tokens < 2:
        raise UserError(f"--max-tokens must be at least 2, got {args.max_tokens}")
    if not args.no_sipit:
        for name in ("sipit_prompts", "sipit_tokens", "sipit_budget"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.plot:
        _check_writable(args.plot)


def _check_writable(path: str) -> None:
    """Fail before minutes of work, not after: the plot's folder must exist and take a file."""
    import os
    from pathlib import Path

    from baldr_ops.errors import UserError

    out = Path(path)
    if out.is_dir():
        raise UserError(f"--plot {path} is a directory", hint="give a file name such as profile.png")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"cannot write --plot {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"cannot write --plot {path}: permission denied")


def run(args) -> int:
    _check_args(args)
    from baldr_ops.sae.layer_profile import (
        DEFAULT_PROMPTS,
        SipItSettings,
        parse_layer_spec,
        profile_layers,
        read_prompt_file,
        tokenize_prompts,
    )

    texts = read_prompt_file(args.text) if args.text else list(DEFAULT_PROMPTS)  # fail before the model loads
    lm = load_model_from_args(args)
    layers = parse_layer_spec(args.layers, lm.n_layers)
    prompts = tokenize_prompts(lm, texts, args.max_tokens)
    sipit = None if args.no_sipit else SipItSettings(
        policy=args.sipit_policy, prompts=args.sipit_prompts, tokens_per_prompt=args.sipit_tokens,
        budget=args.sipit_budget, eps_rel=1e-4,
        layers=parse_layer_spec(args.sipit_layers, lm.n_layers) if args.sipit_layers else None)
    progress(f"profiling {len(layers)} layers over {len(prompts)} prompts"
             + ("" if sipit is None else f"; SipIt on {min(sipit.prompts, len(prompts))} x {sipit.tokens_per_prompt} tokens"))
    doc = profile_layers(lm, prompts, layers, bootstrap=args.bootstrap, seed=args.seed, sipit=sipit,
                         prompt_source=args.text or "default", max_tokens=args.max_tokens, progress=progress)
    if args.plot:
        from baldr_ops.errors import UserError
        from baldr_ops.sae.profile_plot import render_png

        try:
            render_png(doc, args.plot)
        except OSError as exc:
            raise UserError(f"cannot write --plot {args.plot}: {exc.strerror or exc}") from None
        progress(f"plot written to {args.plot}")
    print(doc.to_json() if args.json else render(doc))
    return 0


# -- rendering ---------------------------------------------------------------------------------

COLUMNS = (  # (header, field, format)
    ("KL nats", "lens_kl", "{:.2f}"), ("top-1", "lens_top1", "{:.3f}"), ("NN acc", "embed_nn_acc", "{:.3f}"),
    ("log rank", "embed_rank", "{:.2f}"), ("max cos", "embed_max_cos", "{:.3f}"),
    ("SipIt %V", "sipit_explored", "pct"),
)


def _cell(value, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "pct":
        f = "{:.2f}"
        text = f"{f.format(100 * value.value)} [{f.format(100 * value.ci_low)},{f.format(100 * value.ci_high)}]"
    else:
        text = f"{fmt.format(value.value)} [{fmt.format(value.ci_low)},{fmt.format(value.ci_high)}]"
    return (">=" + text) if value.censored else text


def render(doc) -> str:
    s = doc.settings
    cols = [c for c in COLUMNS if any(getattr(r, c[1]) is not None for r in doc.layers)]
    cells = [[str(r.layer), f"{100 * r.depth:.0f}%"] + [_cell(getattr(r, f), fmt) for _, f, fmt in cols]
             for r in doc.layers]
    header = ["layer", "depth"] + [h for h, _, _ in cols]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    lines = [
        f"model {doc.model} ({doc.family}, {doc.n_layers} layers, d_model {doc.d_model}, vocab {doc.vocab_size:,})",
        f"prompts: {s.prompts} ({s.prompt_source}), <= {s.max_tokens} tokens each; {s.ci_level:.0%} bootstrap CI "
        f"over prompts, B={s.bootstrap}, seed {s.seed}",
    ]
    if s.sipit:
        lines.append(f"SipIt: {s.sipit.policy} policy on {min(s.sipit.prompts, s.prompts)} prompts x "
                     f"{s.sipit.tokens_per_prompt} tokens, budget {s.sipit.budget} per position, "
                     f"eps = {s.sipit.eps_rel:g} x ||h||")
    lines.append("")
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in cells:
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    censored = sum(r.sipit_censored_positions for r in doc.layers)
    if censored:
        lines.append(f"  >= : censored, {censored} SipIt positions ran out of budget; the value is a lower bound")
    lines += ["", "where each metric puts the layer farthest from the token space:"]
    for z in doc.zones:
        lines.append(f"  {z.summary}")
    placed = sorted({z.layer for z in doc.zones if z.layer is not None and z.interior})
    if len(placed) > 1:
        lines.append(f"  the metrics disagree: their interior extrema lie at layers {', '.join(map(str, placed))} "
                     f"({', '.join(f'{100 * (x + 1) / doc.n_layers:.0f} %' for x in placed)} depth)")
    d = doc.integration_depth
    lines.append("")
    if d.layer is None:
        lines.append("integration depth: needs at least 3 profiled layers")
    elif not d.interior:
        lines.append(f"integration depth: none: the combined curve peaks at layer {d.layer}, an end of the profiled "
                     "range (no interior extremum)")
    else:
        lines.append(f"integration depth: layer {d.layer} ({100 * d.depth:.0f} % depth); bootstrap 95 % interval "
                     f"layers {d.interval_layers[0]}-{d.interval_layers[1]} "
                     f"({100 * d.interval_depth[0]:.0f}-{100 * d.interval_depth[1]:.0f} %)")
    lines.append("  = argmax of 1 - max(P_in, P_out); P_out = 1 - minmax(KL), P_in = 1 - minmax(log rank); see docs/sae.md")
    lines.append(f"{doc.seconds:.1f} s")
    return "\n".join(lines)
