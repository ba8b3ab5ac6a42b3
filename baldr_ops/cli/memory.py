"""`baldr-ops memory`: an activation-level memory that nudges the model: store, review, check, compare.

Parsing and rendering only; the work is in `baldr_ops.memory`, imported inside each command's run
so `baldr-ops --help` stays light.
"""

from __future__ import annotations

import argparse
import sys

from baldr_ops.cli.research_args import add_model_arguments, load_model_from_args, progress, require_research_extra
from baldr_ops.errors import UserError, first_invalid_field

DESCRIPTION = """\
Recall stored activation patterns (not text) at deep layers of a transformers causal LM and nudge
generation toward them: relevance r = cosine of the text's key state and a record's key (the state
where the model is asked the text's topic, at the store's key layer, with the directions texts on one subject
vary along divided down), weight = min(cap, strength * relu(r - the record's calibrated threshold)), nudge = sum of
weight * value, clipped per token to clip * ||h||. By default records that share a label are recalled
together: r is their mean key's relevance, the threshold the label's, and their weight is shared.

Records are captured from operator-given text only, signed with an operator-held HMAC key (never
stored in the store), screened at write time and quarantined until approved. A store belongs to
one model (and dtype) and refuses any other. Kill switch: 'memory disable' or BALDR_MEMORY_DISABLE=1.

Key: --key-file, else $BALDR_MEMORY_KEY (hex), else $BALDR_MEMORY_KEY_FILE, else
~/.config/baldr-ops/memory.key ('memory keygen' makes one). Design: docs/memory.md.
"""

LAYER_SPEC_HELP = ("a layer, optionally with its own settings: 13 or 13:strength=1,threshold_z=2.5,top_k=4,"
                   "clip=0.5,weight_cap=0.5,query=prompt|running,recall_by=label|record (threshold=0.2: a fixed "
                   "threshold instead of the calibrated one); repeat for several layers")
RECALL_BY_HELP = ("label (default): records sharing a label are recalled together, by the relevance of their mean key "
                  "(an unlabelled record alone); record: each record by its own relevance")


def _store_arguments(p, key=True) -> None:
    p.add_argument("--store", required=True, metavar="DIR", help="the memory store directory")
    if key:
        p.add_argument("--key-file", metavar="PATH",
                       help="the operator's HMAC key file (0600); default: $BALDR_MEMORY_KEY, "
                            "$BALDR_MEMORY_KEY_FILE, ~/.config/baldr-ops/memory.key")


def _key_rule_arguments(p) -> None:
    p.add_argument("--key-layer", type=int, metavar="K",
                   help="store option, fixed by a layer's first records: the layer keys are read at (default: the "
                        "second-to-last layer for topic keys, 28 of 30 on the demo model; 80%% depth for mean keys)")
    p.add_argument("--key-pooling", choices=("topic", "mean"),
                   help="store option, fixed by a layer's first records: how a text becomes its key (default topic: "
                        "the state at the last token of the text followed by a question about its topic; mean: the "
                        "mean over its tokens, format v3)")
    p.add_argument("--key-metric", choices=("within", "whitened", "centred"),
                   help="store option, fixed by a layer's first records: how keys are compared (default within: "
                        "cosine after whitening by how texts on one subject vary, from a built-in topic corpus; "
                        "whitened: by the generic texts' covariance (reference texts and probes), formats v3-v4; centred: "
                        "plain cosine, format v2)")


def _key_rule(args, lm):
    """The key rule asked for (None: the store's or the default), its layer checked against the
    model and counted from the end when negative."""
    from baldr_ops.memory.keyspace import KeyRule

    if args.key_layer is None and args.key_metric is None and args.key_pooling is None:
        return None
    layer = None if args.key_layer is None else lm.check_layer(args.key_layer)
    given = {"metric": args.key_metric, "pooling": args.key_pooling}
    return KeyRule(layer=layer, **{k: v for k, v in given.items() if v is not None})


def _json_argument(p) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON document on stdout instead of text")


def _layer_settings_arguments(p) -> None:
    p.add_argument("--layer", action="append", metavar="SPEC", help=LAYER_SPEC_HELP +
                   " (default: every layer the store has)")
    p.add_argument("--strength", type=float, help="strength for every layer without its own (default 1)")
    p.add_argument("--threshold", type=float, help="a fixed relevance threshold for every layer without its own "
                                                   "(default: each record's, or label's, calibrated threshold)")
    p.add_argument("--threshold-z", type=float, help="the calibrated threshold, in null standard deviations above "
                                                     "the record's (or label's) null mean, for every layer without "
                                                     "its own "
                                                     "(default 2.5)")
    p.add_argument("--clip", type=float, help="per-token clip as a fraction of ||h|| for every layer without its "
                                              "own (default 0.5)")
    p.add_argument("--recall-by", choices=("label", "record"), help=RECALL_BY_HELP)
    p.add_argument("--rederive", action="store_true",
                   help="re-derive every record from its text before use and leave out those that do not match")


def register(subparsers) -> None:
    p = subparsers.add_parser("memory", help="activation-level memory: store, approve, verify, A/B, evaluate",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="memory_command", metavar="SUBCOMMAND")

    s = sub.add_parser("keygen", help="make a new operator HMAC key file (0600, never overwritten)")
    s.add_argument("--key-file", metavar="PATH", help="where to write it (default ~/.config/baldr-ops/memory.key)")
    _json_argument(s)
    s.set_defaults(func=run_keygen)

    s = sub.add_parser("add", help="capture texts' activations at the layers and store them, quarantined")
    _store_arguments(s)
    add_model_arguments(s)
    s.add_argument("texts", nargs="*", metavar="TEXT", help="memory texts (or --file)")
    s.add_argument("--file", metavar="FILE", help="read memory texts from FILE, one per non-empty line ('-': stdin)")
    s.add_argument("--layer", type=int, action="append", metavar="L",
                   help="decoder layer to capture at (repeatable; default: the SAE layer profile's layer if "
                        "--profile or $BALDR_SAE_PROFILE names one, else 90%% depth, never the last layer)")
    s.add_argument("--profile", metavar="FILE", help="a saved SAE layer profile JSON to take the default layer from")
    s.add_argument("--label", help="a label stored with each record: give one subject per label (e.g. a domain "
                                   "name): records sharing a label are recalled together by their mean key, "
                                   "so a label spanning many subjects is rarely recalled (see --recall-by)")
    s.add_argument("--origin", default="operator",
                   choices=("operator", "user", "model", "tool", "web", "import"),
                   help="where the text comes from (default operator); model/tool/web/import are refused")
    s.add_argument("--allow-untrusted-origin", action="store_true",
                   help="store text of origin model/tool/web/import anyway, flagged (approval then needs "
                        "--override-flags)")
    s.add_argument("--keep-flagged", action="store_true",
                   help="store memories that fail a write-time screen, flagged, instead of refusing the batch")
    _key_rule_arguments(s)
    _json_argument(s)
    s.set_defaults(func=run_add)

    s = sub.add_parser("migrate", help="re-derive a store of format v2, v3 or v4 into a new store of format v5 (the key rule)")
    _store_arguments(s)
    s.add_argument("--out", required=True, metavar="DIR", help="the new store's directory (must not exist, or be empty)")
    add_model_arguments(s)
    _key_rule_arguments(s)
    _json_argument(s)
    s.set_defaults(func=run_migrate)

    s = sub.add_parser("list", help="the store's records, their status and flags")
    _store_arguments(s)
    s.add_argument("--layer", type=int, action="append", metavar="L", help="only these layers")
    s.add_argument("--status", action="append", choices=("quarantined", "approved", "revoked"),
                   help="only records with this status (repeatable)")
    _json_argument(s)
    s.set_defaults(func=run_list)

    for name, verb in (("approve", "approve quarantined records for recall"),
                       ("revoke", "revoke records (final; the lines stay, recall leaves them out)")):
        s = sub.add_parser(name, help=verb)
        _store_arguments(s)
        s.add_argument("ids", nargs="*", metavar="ID", help="record ids or unique id prefixes")
        if name == "approve":
            s.add_argument("--all-quarantined", action="store_true", help="approve every unflagged quarantined record")
            s.add_argument("--override-flags", action="store_true",
                           help="approve records that failed a write-time screen or have an untrusted origin")
        s.add_argument("--note", help="a note stored with the decision")
        _json_argument(s)
        s.set_defaults(func=run_decide, decision=name)

    s = sub.add_parser("verify", help="check every signature; with --rederive, recompute each record from its text")
    _store_arguments(s)
    add_model_arguments(s, default=None)
    s.add_argument("--rederive", action="store_true", help="re-derive keys and values from the source texts "
                                                           "(needs --model)")
    _json_argument(s)
    s.set_defaults(func=run_verify)

    for name, verb in (("disable", "kill switch on: no memory is injected until 'memory enable'"),
                       ("enable", "kill switch off")):
        s = sub.add_parser(name, help=verb)
        _store_arguments(s, key=False)
        if name == "disable":
            s.add_argument("--note", help="why (stored in the flag file)")
        _json_argument(s)
        s.set_defaults(func=run_kill_switch, disable=name == "disable")

    s = sub.add_parser("audit", help="the audit trail: which records influenced each generation")
    _store_arguments(s)
    s.add_argument("-n", type=int, default=20, metavar="N", help="the last N generations (default 20; 0: all)")
    _json_argument(s)
    s.set_defaults(func=run_audit)

    s = sub.add_parser("ab", help="one prompt with and without memory, side by side")
    _store_arguments(s)
    add_model_arguments(s)
    s.add_argument("prompt", metavar="PROMPT", help="the prompt")
    _layer_settings_arguments(s)
    s.add_argument("--max-new-tokens", type=int, default=40, metavar="N", help="tokens to generate (default 40)")
    s.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    _json_argument(s)
    s.set_defaults(func=run_ab)

    s = sub.add_parser("eval", help="the evaluation protocol (selectivity, controls, dose, cost, AUROC, Spearman)")
    add_model_arguments(s)
    s.add_argument("--layer", type=int, metavar="L", help="layer (default: as 'memory add')")
    s.add_argument("--fixed-strength", type=float, default=2.0,
                   help="strength of the fixed-strength selectivity test (default 2: twice the domain's mean value)")
    s.add_argument("--seeds", type=int, default=4, help="random directions per domain for the control (default 4)")
    s.add_argument("--domains", metavar="FILE",
                   help="a JSON domain set (domains with memories, held-out sentences and queries; neutral queries "
                        "and text) to evaluate on instead of the built-in one; format in docs/memory.md")
    s.add_argument("--recall-by", choices=("label", "record"), default="label", help=RECALL_BY_HELP)
    _key_rule_arguments(s)
    _json_argument(s)
    s.set_defaults(func=run_eval)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


# -- helpers -------------------------------------------------------------------------------------
def _key(args):
    from pathlib import Path

    from baldr_ops.memory.keys import load_key

    return load_key(args.key_file, store_dir=Path(args.store).expanduser())


def _open(args, model=None):
    from baldr_ops.memory.store import MemoryStore

    return MemoryStore.open(args.store, _key(args), model)


def _print(doc, args, text: str) -> None:
    print(doc.to_json() if args.json else text)


def parse_layer_settings(spec: str, defaults: dict):
    """'13' or '13:strength=4,threshold=0.2' -> LayerSettings."""
    from pydantic import ValidationError

    from baldr_ops.memory.config import LayerSettings

    head, _, rest = spec.partition(":")
    try:
        values = dict(defaults, layer=int(head))
        for item in filter(None, rest.split(",")):
            name, _, value = item.partition("=")
            values[name.strip()] = value.strip()
        return LayerSettings(**values)
    except ValidationError as exc:
        field, message = first_invalid_field(exc)
        raise UserError(f"bad --layer {spec!r}: {field}: {message}", hint=LAYER_SPEC_HELP) from None
    except ValueError as exc:
        raise UserError(f"bad --layer {spec!r}: {exc}", hint=LAYER_SPEC_HELP) from None


def _texts(args) -> list[str]:
    """The memory texts, read and checked before anything else happens (no model is loaded for a
    file that turns out to be binary)."""
    texts = list(args.texts)
    if args.file:
        name = "standard input" if args.file == "-" else args.file
        try:
            if args.file == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(args.file, "rb") as fh:
                    data = fh.read()
        except OSError as exc:
            raise UserError(f"cannot read {name}: {exc.strerror}") from exc
        if b"\0" in data:
            raise UserError(f"{name} is not text (it holds NUL bytes): memory texts are UTF-8, one per line")
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{name} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})",
                            hint="convert it first, e.g. iconv -f latin1 -t utf-8 FILE") from None
        texts += [line.strip() for line in content.splitlines() if line.strip()]
    return texts


def _short(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"


# -- commands ------------------------------------------------------------------------------------
def run_keygen(args) -> int:
    from baldr_ops.memory.keys import default_key_path, generate_key

    path = args.key_file or default_key_path()
    key = generate_key(path, create_parent=args.key_file is None)
    from baldr_ops.memory.reports import KeyReport  # after the key: its import brings torch (seconds)

    _print(KeyReport(key_file=str(path), key_id=key.key_id), args,
           f"key written to {path} (0600), key id {key.key_id}\n"
           f"keep it outside every store; whoever holds it can sign memories")
    return 0


def run_add(args) -> int:
    texts = _texts(args)
    if not texts:
        raise UserError("no memory text given", hint="give texts as arguments or --file FILE (one per line)")
    from baldr_ops.memory.records import check_label  # no torch: bad input fails in a blink

    check_label(args.label)
    require_research_extra()
    from baldr_ops.memory.config import default_layer
    from baldr_ops.memory.identity import identity_of
    from baldr_ops.memory.reports import AddReport
    from baldr_ops.memory.store import MemoryStore
    from baldr_ops.memory.writer import add_texts, check_origin

    # Everything that can be checked is checked before the store is touched; a new store is written
    # only at its first append (MemoryStore.new), so a failed add leaves no file behind.
    check_origin(args.origin, args.allow_untrusted_origin)
    key = _key(args)  # before loading the model: a missing key fails fast
    lm = load_model_from_args(args)
    ident = identity_of(lm)
    if args.layer:
        layers, source = [lm.check_layer(layer) for layer in args.layer], "given"
    else:
        layer, source = default_layer(lm.n_layers, ident.weights_sha256, args.profile, model_name=ident.name,
                                      d_model=ident.d_model)
        layers = [layer]
    store = MemoryStore.open_or_create(args.store, key, ident)
    rule = _key_rule(args, lm)
    records = add_texts(store, lm, texts, layers, origin=args.origin, label=args.label,
                        allow_untrusted_origin=args.allow_untrusted_origin, keep_flagged=args.keep_flagged,
                        key_rule=rule, progress=progress, identity=ident)
    doc = AddReport(store=str(store.directory), model=ident.short(), layers=layers, layer_source=source, records=records)
    lines = [f"store {store.directory}  model {ident.short()}  layers {', '.join(map(str, layers))} ({source})"]
    for r in records:
        extra = f"  skipped: {r.reason}" if r.status == "skipped" else (f"  flags: {', '.join(r.flags)}" if r.flags else "")
        lines.append(f"  {r.id or '-':24}  L{r.layer:<3} {r.status:11} {_short(r.text, 50)}{extra}")
    written = sum(r.status != "skipped" for r in records)
    lines.append(f"{written} record(s) written, quarantined: review with 'memory list', then 'memory approve'")
    _print(doc, args, "\n".join(lines))
    return 0


def run_migrate(args) -> int:
    require_research_extra()
    key = _key(args)  # before loading the model: a missing key fails fast
    from baldr_ops.memory.migrate import migrate_store

    lm = load_model_from_args(args)
    rule = _key_rule(args, lm)
    report = migrate_store(args.store, args.out, key, lm, rule, progress=progress)
    lines = [f"migrated {report.source} -> {report.target} ({report.key_rule.describe(lm.n_layers)}); "
             f"{report.carried} of {len(report.records)} record(s) carried"]
    for r in report.records:
        lines.append(f"  {r.old_id} -> {r.new_id or '-':24} L{r.layer:<3} {r.status:11}"
                     + (f"  [{', '.join(r.flags)}]" if r.flags else "") + (f"  {r.note}" if r.note else ""))
    lines += [f"  not carried, the old log excluded it: {p.file}{'' if p.line is None else f':{p.line}'}: {p.reason}"
              for p in report.problems]
    if report.disabled:
        lines.append(f"kill switch carried: {report.disabled}")
    lines.append(f"the old store is unchanged (its audit trail stays there); point --store at {report.target}")
    _print(report, args, "\n".join(lines))
    return 0


def run_list(args) -> int:
    from baldr_ops.memory.reports import ListReport

    store = _open(args)
    layers = args.layer or store.layers()
    doc = ListReport.from_states(store, [store.read_layer(layer) for layer in layers],
                                 set(args.status) if args.status else None)
    lines = [f"store {store.directory}  model {doc.model}" + (f"  DISABLED: {doc.disabled}" if doc.disabled else "")]
    for r in doc.records:
        flags = f"  [{', '.join(r.flags)}]" if r.flags else ""
        lines.append(f"  {r.id}  L{r.layer:<3} {r.status:11} {r.label or '-':10} {_short(r.text, 56)}{flags}")
    lines.append(f"{len(doc.records)} record(s)" + (f"; {doc.excluded_lines} bad line(s) excluded "
                                                    f"('memory verify' shows them)" if doc.excluded_lines else ""))
    _print(doc, args, "\n".join(lines))
    return 0


def run_decide(args) -> int:
    from baldr_ops.memory.reports import DecisionReport, record_line

    store = _open(args)
    ids = list(args.ids)
    if getattr(args, "all_quarantined", False):
        ids += [r.id for layer in store.layers() for r in store.read_layer(layer).with_status("quarantined")
                if not r.body.flags]
    if not ids:
        raise UserError(f"no record to {args.decision}", hint="give record ids ('memory list' shows them)")
    records = []
    for rid in ids:
        state = store.decide(rid, args.decision, override_flags=getattr(args, "override_flags", False), note=args.note)
        records.append(record_line(state.body.layer, state))
    doc = DecisionReport(store=str(store.directory), decision=args.decision, records=records)
    _print(doc, args, "\n".join(f"{r.id}  L{r.layer}  {r.status}  {_short(r.text, 60)}" for r in records))
    return 0


def run_verify(args) -> int:
    from baldr_ops.memory.verify import verify_store

    if args.rederive and not args.model:
        raise UserError("--rederive needs --model (the model the store was made with)")
    lm = load_model_from_args(args) if args.model else None
    from baldr_ops.memory.identity import identity_of

    store = _open(args, identity_of(lm) if lm is not None else None)
    report = verify_store(store, lm, args.rederive, progress=progress)
    lines = [f"store {report.store}  model {report.model}  key id {report.key_id}"
             + (f"  DISABLED: {report.disabled}" if report.disabled else "")]
    for c in report.layers:
        lines.append(f"  layer {c.layer}: {c.approved} approved, {c.quarantined} quarantined, {c.revoked} revoked, "
                     f"{c.flagged} flagged" + ("" if c.reference else "; REFERENCE MISSING"))
        if c.damaged:
            lines.append(f"    LOG DAMAGED: {c.damaged}; entries after the damage are excluded, and only "
                         f"revocations can be added until it is restored")
        lines += [f"    {p.file}{'' if p.line is None else f':{p.line}'}: {p.reason}" for p in c.problems]
        if c.rederived is not None:
            bad = [r for r in c.rederived if not r.ok]
            worst = max((r.key_error for r in c.rederived), default=0.0)
            lines.append(f"    re-derived {len(c.rederived)}: {len(bad)} mismatched (largest relative error "
                         f"{worst:.1e})")
            lines += [f"    MISMATCH {r.id}: key error {r.key_error:.2e}" for r in bad]
    if report.audit.problems:
        lines.append(f"  audit trail: {report.audit.entries} verified generation(s)")
        lines += [f"    {p.file}{'' if p.line is None else f':{p.line}'}: {p.reason}" for p in report.audit.problems]
    lines.append("OK" if report.ok else "PROBLEMS FOUND (the affected lines are excluded from recall)")
    _print(report, args, "\n".join(lines))
    return 0 if report.ok else 1


def run_kill_switch(args) -> int:
    from pathlib import Path

    from baldr_ops.memory.reports import KillSwitchReport
    from baldr_ops.memory.store import KILL_FLAG, kill_switch_reason, set_kill_switch

    directory = Path(args.store).expanduser()
    set_kill_switch(directory, args.disable, note=getattr(args, "note", None))
    doc = KillSwitchReport(store=str(directory), disabled=kill_switch_reason(directory))
    state = f"ON ({directory / KILL_FLAG}): no memory is injected" if args.disable else "off"
    if not args.disable and doc.disabled:
        state += f"; still disabled: {doc.disabled}"
    _print(doc, args, f"kill switch {state}")
    return 0


def run_audit(args) -> int:
    from baldr_ops.memory.audit import AuditLog
    from baldr_ops.memory.reports import AuditReport
    from baldr_ops.memory.store import AUDIT

    store = _open(args)
    entries, problems = AuditLog(store).read()
    entries = entries[-args.n:] if args.n else entries
    doc = AuditReport(store=str(store.directory), entries=entries,
                      bad_lines=[f"{AUDIT}:{n}: {r}" if n is not None else f"{AUDIT}: {r}" for n, r in problems])
    lines = []
    for e in entries:
        head = f"{e.started_at}  {e.generation_id[:12]}"
        if e.disabled:
            lines.append(f"{head}  disabled: {e.disabled}")
            continue
        for layer in e.layers:
            recs = ", ".join(f"{r.id[:10]} (r {r.relevance:.2f}, w {r.weight:.2f})" for r in layer.records) or "none"
            lines.append(f"{head}  L{layer.layer}: {recs}; {layer.tokens_nudged} tokens nudged, "
                         f"{layer.tokens_clipped} clipped, max {layer.max_ratio:.3f} of ||h||")
    lines += [f"BAD LINE {b}" for b in doc.bad_lines]
    _print(doc, args, "\n".join(lines) or "no generations recorded")
    return 0


def _settings_defaults(args) -> dict:
    """The settings given for every layer, checked (with any --layer specs) before the model loads."""
    defaults = {k: v for k, v in (("strength", args.strength), ("threshold", args.threshold),
                                  ("threshold_z", args.threshold_z), ("clip", args.clip),
                                  ("recall_by", args.recall_by)) if v is not None}
    for spec in args.layer or []:
        parse_layer_settings(spec, defaults)
    if not args.layer:
        from pydantic import ValidationError

        from baldr_ops.memory.config import LayerSettings

        try:
            LayerSettings(layer=0, **defaults)
        except ValidationError as exc:
            field, message = first_invalid_field(exc)
            raise UserError(f"--{field.replace('_', '-')}: {message}", hint=LAYER_SPEC_HELP) from None
    return defaults


def _runtime_from_args(args, lm, store):
    from baldr_ops.memory.runtime import MemoryRuntime

    defaults = _settings_defaults(args)
    specs = args.layer or [str(layer) for layer in store.layers()]
    if not specs:
        raise UserError(f"store {store.directory} is empty", hint="'memory add' some text, then 'memory approve'")
    settings = [parse_layer_settings(spec, defaults) for spec in specs]
    runtime = MemoryRuntime.load(store, lm, settings, rederive_records=args.rederive, progress=progress)
    for e in runtime.excluded:
        progress(f"excluded at layer {e.layer}: {e.what}: {e.reason}")
    return runtime


def run_ab(args) -> int:
    require_research_extra()
    _settings_defaults(args)  # bad settings fail first, before the key is read or the model loads
    key = _key(args)
    from baldr_ops.memory.compare import ab
    from baldr_ops.memory.identity import identity_of
    from baldr_ops.memory.store import MemoryStore

    lm = load_model_from_args(args)
    store = MemoryStore.open(args.store, key, identity_of(lm))
    runtime = _runtime_from_args(args, lm, store)
    if not any(m.size for m in runtime.memories.values()):
        raise UserError(f"store {store.directory} has no approved records at layer(s) "
                        f"{', '.join(map(str, runtime.memories))}", hint="'memory list', then 'memory approve ID'")
    progress("generating with and without memory")
    report = ab(lm, runtime, args.prompt, args.max_new_tokens, args.chat)
    lines = [f"prompt: {args.prompt}"]
    if report.disabled:
        lines.append(f"MEMORY DISABLED: {report.disabled}")
    lines += ["", "without memory:", f"  {report.without_memory.strip()}", "with memory:", f"  {report.with_memory.strip()}",
              "", f"KL at the next token      {report.kl_next_token:.4f} nats",
              f"vocabulary shift (next)   {report.vocabulary_shift_next_token:+.4f} probability mass",
              f"vocabulary share          {report.vocabulary_share_without:.1%} -> {report.vocabulary_share_with:.1%} "
              f"of generated tokens", f"vocabulary                {', '.join(report.vocabulary[:15])}"]
    for layer in report.layers:
        lines.append(f"layer {layer.layer} ({layer.key_pooling} keys at layer {layer.key_layer}, threshold {layer.threshold}, "
                     f"strength {layer.strength}, recall by {layer.recall_by}):")
        lines += [f"  r {c.relevance:+.3f}" + (f" / label {c.label_relevance:+.3f}" if c.label_relevance is not None
                                                else "")
                  + (f" / t {c.threshold:+.3f}" if c.threshold is not None else "")
                  + f"  w {c.weight:.3f}  {c.label or '-':10} {_short(c.text, 50)}" for c in layer.candidates]
    _print(report, args, "\n".join(lines))
    return 0


def run_eval(args) -> int:
    from baldr_ops.memory.domains import BUILTIN, load_domain_set

    domain_set = load_domain_set(args.domains) if args.domains else BUILTIN  # before the model loads
    require_research_extra()
    from baldr_ops.memory.config import LayerSettings
    from baldr_ops.memory.evaluate import EvalSettings, run

    lm = load_model_from_args(args)
    rule = _key_rule(args, lm)
    report = run(lm, EvalSettings(layer=args.layer, fixed_strength=args.fixed_strength, random_seeds=args.seeds,
                                  gated=LayerSettings(layer=0, recall_by=args.recall_by),
                                  **({"key_rule": rule} if rule else {})), domain_set, progress=progress)
    h = report.headline
    lines = [f"model {report.model}, layer {report.layer} ({report.layer_source}), {report.key_pooling} keys at layer "
             f"{report.key_layer} ({report.key_metric}); domain set {report.domain_set}: {len(report.domains)} domains, "
             f"{report.memories} memories, {report.queries} queries; {report.seconds:.0f} s", ""]
    if report.in_topic_corpus:
        lines[-1:-1] = [f"note: {report.in_topic_corpus} of this set's memories and queries are in the topic corpus "
                        "the within-topic key metric was fitted to: these figures are in sample"]
    lines += [f"{'PASS' if c.passed else 'FAIL' if c.passed is False else '    '}  {c.name}: {c.value}"
              + (f"  (target {c.target})" if c.passed is not None else "") for c in report.checks]
    lines += ["", "dose-response at fixed strength (own / other shift, selectivity total [95% CI] and own-domain, "
                  "KL all / neutral queries, neutral perplexity ratio):"]
    lines += [f"  strength {d.strength:>4}: {d.own_mean:+.5f} / {d.other_mean:+.5f}  {d.selectivity:6.1%} "
              f"[{d.selectivity_low:.0%}, {d.selectivity_high:.0%}]  {d.own_domain_selectivity:6.1%}  "
              f"{d.kl_mean:.3f} / {d.kl_neutral:.3f}  {d.perplexity_ratio:.3f}" for d in report.dose]
    g = report.gated
    lines += [f"relevance-gated (defaults: strength {g.settings.strength}, threshold "
              f"{g.settings.describe_threshold()}, recall by {g.settings.recall_by}, weight cap {g.settings.weight_cap}): "
              f"{g.recalled_pairs} of "
              f"{report.queries * len(report.domains)} pairs recalled, mean dose {g.weight_total:.2f}; own-domain "
              f"shift {g.own_domain_shift:+.5f} where recalled; neutral queries recalling {h.neutral_recall.mean:.0%}"]
    if report.flagged_memories:
        lines.append(f"memories a write-time screen flagged (kept): {'; '.join(report.flagged_memories)}")
    failed = [c.name for c in report.checks if c.passed is False]
    lines.append("all targets met" if not failed else f"NOT MET: {'; '.join(failed)}")
    _print(report, args, "\n".join(lines))
    return 0 if report.passed else 1
