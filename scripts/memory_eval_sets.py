#!/usr/bin/env python3
"""Run `baldr-ops memory eval` on several domain sets and print one table of issue 15's figures.

By default: the built-in set and every set committed under tests/memory/data (domains-set*.json,
in number order). Each set runs in its own `baldr-ops memory eval --json` process, so a set that
fails to evaluate is reported and the others still run.

What it is for: on SmolLM2-135M (the only model this project's CI has) the targets are missed on
the sets that were written blind (docs/memory.md, "Headline"); whether a larger model's states
separate the domains is the open question. On a machine that has one, e.g. a GB10 runner:

    python scripts/memory_eval_sets.py --model /models/gemma-4-31b-it --device cuda --dtype bfloat16 \\
        --out eval-sets.json

Progress goes to stderr; the table (or, with --json, one document holding every set's report) to
stdout. Exit 0 when every set meets every check, 1 when a set misses one, 2 when a set could not be
evaluated (its error is in the table) or the input is bad.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from baldr_ops.atomic import atomic_write  # noqa: E402
from baldr_ops.schema import Document  # noqa: E402

SETS_DIR = ROOT / "tests" / "memory" / "data"
BUILTIN = "built-in"


class SetRow(BaseModel):
    """One set's headline, as `memory eval --json` reported it (None where it did not evaluate)."""

    model_config = ConfigDict(extra="forbid")

    set: str
    exit_code: int
    error: str | None = None
    layer: int | None = None
    own_recall: float | None = None
    false_recall: float | None = None
    auroc: float | None = None
    selectivity: float | None = None
    selectivity_low: float | None = None
    own_domain_selectivity: float | None = None
    perplexity_ratio: float | None = None  # neutral text, memory on (default settings) / off
    own_shift: float | None = None  # the memories' own-domain shift at the fixed strength
    random_shift: float | None = None  # the random directions' (the specificity control)
    missed: list[str] = []
    seconds: float


class EvalSetsReport(Document):
    model: str
    rows: list[SetRow]
    reports: dict[str, dict]  # each set's `memory eval --json` document, as printed


def default_sets(directory: Path = SETS_DIR) -> list[str]:
    """The built-in set, then the committed held-out sets in number order."""
    def number(path: Path) -> int:
        found = re.search(r"(\d+)", path.stem)
        return int(found.group(1)) if found else 0

    return [BUILTIN] + [str(p) for p in sorted(directory.glob("domains-set*.json"), key=number)]


def set_name(spec: str) -> str:
    return BUILTIN if spec == BUILTIN else Path(spec).stem


def row_of(name: str, exit_code: int, seconds: float, report: dict | None, error: str | None = None) -> SetRow:
    """The table's row for one set, from the report `memory eval --json` printed."""
    if report is None:
        return SetRow(set=name, exit_code=exit_code, error=error or "no report", seconds=seconds)
    h = report["headline"]
    return SetRow(set=name, exit_code=exit_code, layer=report["layer"], own_recall=h["own_recall"]["mean"],
                  false_recall=h["false_recall"]["mean"], auroc=h["auroc"]["mean"],
                  selectivity=h["selectivity_total"]["fraction"], selectivity_low=h["selectivity_total"]["low"],
                  own_domain_selectivity=h["selectivity_own"]["fraction"],
                  perplexity_ratio=h["perplexity_on"] / h["perplexity_off"],
                  own_shift=report["own_shift_fixed"]["mean"], random_shift=report["random_control"]["mean"],
                  missed=[c["name"] for c in report["checks"] if c["passed"] is False], seconds=seconds)


def evaluate_set(spec: str, passthrough: list[str]) -> tuple[SetRow, dict | None]:
    """One `memory eval --json` process on one set: its row, and its report when it printed one
    (exit 0: every check met; 1: a check missed; anything else: it did not evaluate). Its progress
    lines pass through to stderr as they come, under the set's name; its report goes to a temporary
    file (a pipe left unread while stderr is read could fill and stall it)."""
    command = [sys.executable, "-m", "baldr_ops", "memory", "eval", "--json", *passthrough]
    if spec != BUILTIN:
        command += ["--domains", spec]
    name = set_name(spec)
    start = time.monotonic()
    lines = []
    with tempfile.TemporaryFile("w+") as out:
        with subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True, cwd=ROOT) as proc:
            for line in proc.stderr:
                if line.strip():
                    lines.append(line.strip())
                    print(f"  {name}: {line.strip()}", file=sys.stderr, flush=True)
        out.seek(0)
        printed = out.read()
    seconds = time.monotonic() - start
    report = None
    if proc.returncode in (0, 1):
        try:
            report = json.loads(printed)
        except ValueError:
            report = None
    if report is None:
        # baldr-ops says what went wrong on a line with "error:" (a hint may follow); a crash, last.
        said = [line for line in lines if "error:" in line] or lines[-1:]
        return row_of(name, proc.returncode, seconds, None,
                      said[0] if said else f"exit {proc.returncode}, nothing on stderr"), None
    return row_of(name, proc.returncode, seconds, report), report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def table(rows: list[SetRow]) -> str:
    head = ("| set | layer | own recall | false recall | AUROC | selectivity [low] | own-domain sel. | ppl on/off "
            "| own shift | random shift | checks missed | s |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        if r.error is not None:
            lines.append(f"| {r.set} | did not evaluate (exit {r.exit_code}): {r.error} |")
            continue
        lines.append(f"| {r.set} | {r.layer} | {_pct(r.own_recall)} | {_pct(r.false_recall)} | {r.auroc:.3f} "
                     f"| {_pct(r.selectivity)} [{_pct(r.selectivity_low)}] | {_pct(r.own_domain_selectivity)} "
                     f"| {r.perplexity_ratio:.3f} | {r.own_shift:+.4f} | {r.random_shift:+.4f} "
                     f"| {len(r.missed)} | {r.seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", metavar="SET",
                        help=f"'{BUILTIN}' and/or domain-set JSON files (default: the built-in set and "
                             "tests/memory/data/domains-set*.json)")
    parser.add_argument("--model", default="demo", help="passed to memory eval (default: demo)")
    parser.add_argument("--device", help="passed to memory eval, e.g. cuda")
    parser.add_argument("--dtype", help="passed to memory eval, e.g. bfloat16")
    parser.add_argument("--layer", type=int, help="passed to memory eval (default: as 'memory add')")
    parser.add_argument("--seeds", type=int, help="random directions per domain (passed to memory eval)")
    parser.add_argument("--out", type=Path, help="also write the JSON document (every set's report) here, "
                                                 "rewritten after each set so an interrupted run keeps its sets")
    parser.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    args = parser.parse_args(argv)

    sets = args.sets or default_sets()
    missing = [s for s in sets if s != BUILTIN and not Path(s).is_file()]
    if missing:
        print(f"error: no such domain set: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.out and not args.out.parent.is_dir():
        print(f"error: --out {args.out}: no such directory {args.out.parent}", file=sys.stderr)
        return 2
    passthrough = ["--model", args.model]
    for flag, value in (("--device", args.device), ("--dtype", args.dtype), ("--layer", args.layer),
                        ("--seeds", args.seeds)):
        if value is not None:
            passthrough += [flag, str(value)]

    document = EvalSetsReport(model=args.model, rows=[], reports={})
    start = time.monotonic()
    try:
        for i, spec in enumerate(sets, 1):
            print(f"[{i}/{len(sets)}] {set_name(spec)} ... ({time.monotonic() - start:.0f} s so far)",
                  file=sys.stderr, flush=True)
            row, report = evaluate_set(spec, passthrough)
            document.rows.append(row)
            if report is not None:
                document.reports[row.set] = report
            if args.out:
                atomic_write(args.out, document.to_json() + "\n")
            outcome = row.error or (f"{len(row.missed)} check(s) missed" if row.missed else "every check met")
            print(f"[{i}/{len(sets)}] {row.set}: {outcome} ({row.seconds:.0f} s)", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        kept = f"; they are in {args.out}" if args.out and document.rows else ""
        print(f"interrupted after {len(document.rows)} of {len(sets)} set(s){kept}", file=sys.stderr)
        return 130
    rows = document.rows
    print(document.to_json() if args.json else table(rows))
    if any(r.error is not None for r in rows):
        return 2
    return 1 if any(r.missed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
