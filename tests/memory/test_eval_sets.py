"""`memory eval --domains FILE` on an operator's file, run as scripts/memory_eval_sets.py runs it (one
`memory eval --json` process per set), and the script's table, exit codes and partial results."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from baldr_ops.memory.domains import BUILTIN

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "memory_eval_sets.py"


def _script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_the_default_sets_are_the_builtin_then_the_committed_files_in_number_order():
    proc = _script("--help")
    assert proc.returncode == 0 and "--model" in proc.stdout
    spec = importlib.util.spec_from_file_location("memory_eval_sets", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sets = script.default_sets()
    committed = sorted((ROOT / "tests" / "memory" / "data").glob("domains-set*.json"))
    assert sets[0] == "built-in" and len(sets) == 1 + len(committed)
    numbers = [int(Path(s).stem.removeprefix("domains-set")) for s in sets[1:]]
    assert numbers == sorted(numbers) and 8 in numbers and 10 in numbers  # set10 after set9, not after set1


def test_a_missing_set_is_one_line_and_nothing_runs(tmp_path):
    proc = _script("--sets", str(tmp_path / "none.json"), "--out", str(tmp_path / "out.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: no such domain set: {tmp_path / 'none.json'}"
    assert not (tmp_path / "out.json").exists() and proc.stdout == ""


@pytest.mark.research
@pytest.mark.slow
def test_eval_on_an_operators_domain_file(demo_model, tmp_path):
    """`memory eval --domains FILE` runs the protocol on the file's domains and exits 1 exactly when a
    target is missed; a set that cannot be evaluated is a row of its own, the others still run."""
    small = {"domains": [
        {"name": name, "memories": [d.memories[0], d.memories[1]], "heldout": list(d.heldout[:8]),
         "queries": [{"text": q.text, "kind": q.kind} for q in BUILTIN.queries if q.domain == name][:2]}
        for name, d in ((d.name, d) for d in BUILTIN.domains[:2])],
        "neutral_queries": ["The key to success is"], "neutral_text": [BUILTIN.neutral_text[0]]}
    path, broken = tmp_path / "small.json", tmp_path / "broken.json"
    path.write_text(json.dumps(small))
    broken.write_text(json.dumps({"domains": 3}))
    out = tmp_path / "sets.json"
    proc = _script("--sets", str(path), str(broken), "--seeds", "1", "--out", str(out), timeout=900)
    assert proc.returncode == 2, proc.stderr[-2000:]  # one set did not evaluate
    doc = json.loads(out.read_text())
    report = doc["reports"]["small"]
    assert report["domain_set"] == "small" and report["domains"] == ["cooking", "astronomy"]
    assert report["memories"] == 4 and report["queries"] == 5
    missed = [c["name"] for c in report["checks"] if c["passed"] is False]
    small_row, broken_row = doc["rows"]
    assert small_row["exit_code"] == (1 if missed else 0) and small_row["missed"] == missed
    assert small_row["own_recall"] == report["headline"]["own_recall"]["mean"]
    assert small_row["perplexity_ratio"] == pytest.approx(
        report["headline"]["perplexity_on"] / report["headline"]["perplexity_off"])
    assert broken_row["exit_code"] == 2 and str(broken) in broken_row["error"] and "broken" not in doc["reports"]
    # The table: a row per set in the order given, the broken one saying why.
    lines = proc.stdout.splitlines()
    assert lines[2].startswith("| small | ") and lines[3].startswith("| broken | did not evaluate (exit 2)")
    assert "[1/2] small" in proc.stderr and "[2/2] broken" in proc.stderr
    # the eval's own progress lines pass through as they come, under the set's name
    assert len([line for line in proc.stderr.splitlines() if line.startswith("  small: ")]) >= 3
