"""Renderers: the report as a plain dict (--json), a table for people, a Prometheus textfile.

The JSON document is built with the standard library so ``doctor --json`` starts fast; its schema of
record is the pydantic ``report.DoctorReport`` (a ``baldr_ops.schema.Document``), and the tests
validate every emitted document against it. rich is imported only for the human table.
"""

from __future__ import annotations

import json
import os
import time

from baldr_ops.prometheus import Exposition
from baldr_ops.doctor.checks import CRIT, INFO, OK, UNKNOWN, WARN, Check, exit_code, summarize, worst

SCHEMA_VERSION = "1.0"   # == baldr_ops.schema.SCHEMA_VERSION (a test keeps them equal)
NAGIOS = {OK: 0, INFO: 0, WARN: 1, CRIT: 2, UNKNOWN: 3}
GLYPH = {OK: "✓", INFO: "i", WARN: "!", CRIT: "✗", UNKNOWN: "?"}
STYLE = {OK: "green", INFO: "cyan", WARN: "yellow", CRIT: "bold red", UNKNOWN: "magenta"}


def _jsonable(value):
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def report_dict(snap, checks: list[Check], fail_on: str = "warn", footprint=None) -> dict:
    from baldr_ops import __version__

    p = snap.platform
    summary = summarize(checks)
    summary["worst"] = worst(checks)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "tool": "baldr-ops",
        "command": "doctor",
        "version": __version__,
        "host": {"hostname": p.hostname, "kernel": p.kernel, "arch": p.arch, "uptime_s": p.uptime_s},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snap.time)),
        "root": snap.root,
        "interval_s": round(snap.rates.interval_s, 3) if snap.rates else 0.0,
        "model": footprint.model_dump(mode="json") if footprint is not None else None,
        "checks": [_jsonable(c.to_dict()) for c in checks],
        "summary": summary,
        "exit_code": exit_code(checks, fail_on),
    }
    return doc


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------- the table

def _short_evidence(c: Check) -> str:
    if c.status == UNKNOWN:
        return str(c.evidence.get("reason", ""))
    return c.hint or ""


def render_plain(doc: dict) -> str:
    lines = []
    for c in doc["checks"]:
        value = _value_text(c)
        lines.append(f"[{GLYPH[c['status']]}] {c['status']:<7} {c['id']:<22} {value:<24} {_note(c)}".rstrip())
    lines.append(summary_line(doc))
    return "\n".join(lines) + "\n"


def _value_text(c: dict) -> str:
    v = c["value"]
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = f"{v:.1f}"
    unit = c.get("unit") or ""
    return f"{v} {unit}".strip() if unit and not isinstance(c["value"], str) else str(v)


def _note(c: dict) -> str:
    if c["status"] == UNKNOWN:
        reason = (c.get("evidence") or {}).get("reason", "")
        return f"{reason}" + (f" -> {c['hint']}" if c.get("hint") else "")
    return c.get("hint") or ""


def summary_line(doc: dict) -> str:
    s = doc["summary"]
    head = doc["host"].get("hostname") or "?"
    return (f"{head}: {len(doc['checks'])} checks: {s['ok']} OK, {s['info']} INFO, {s['warn']} WARN, "
            f"{s['crit']} CRIT, {s['unknown']} UNKNOWN; worst {s['worst']}; exit {doc['exit_code']}")


def render_table(doc: dict, stream) -> None:
    """A rich table when rich is importable (colour only on a TTY without NO_COLOR), plain text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        stream.write(render_plain(doc))
        return
    tty = hasattr(stream, "isatty") and stream.isatty()
    width = None
    if not tty:
        try:
            width = int(os.environ.get("COLUMNS") or 120)
        except ValueError:
            width = 120
    console = Console(file=stream, no_color=bool(os.environ.get("NO_COLOR")) or not tty,
                      width=width, highlight=False, soft_wrap=False)
    host = doc["host"]
    table = Table(title=f"baldr-ops doctor — {host.get('hostname') or '?'} (kernel {host.get('kernel') or '?'}, "
                        f"sample {doc['interval_s']:.1f} s)", title_justify="left", expand=False)
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("value", max_width=34, overflow="fold")
    table.add_column("hint / reason")
    for c in doc["checks"]:
        st = c["status"]
        table.add_row(f"[{STYLE[st]}]{GLYPH[st]} {st}[/]", c["id"], _value_text(c), _note(c))
    console.print(table)
    worst_status = doc["summary"]["worst"]
    console.print(f"[{STYLE[worst_status]}]{summary_line(doc)}[/]", soft_wrap=True)


# ---------------------------------------------------------------- Prometheus textfile

def prometheus_text(doc: dict, snap) -> str:
    exposition = Exposition()
    metric = exposition.metric

    metric("baldr_doctor_check_status", "gauge",
           "Doctor check status: 0 OK or INFO, 1 WARN, 2 CRIT, 3 UNKNOWN.",
           [({"check": c["id"], "status": c["status"]}, NAGIOS[c["status"]]) for c in doc["checks"]])
    numeric = [({"check": c["id"], "unit": c.get("unit") or ""}, c["value"]) for c in doc["checks"]
               if isinstance(c["value"], (int, float)) and not isinstance(c["value"], bool)]
    metric("baldr_doctor_check_value", "gauge", "The value each doctor check judged (unit in the label).", numeric)
    mi = snap.meminfo
    metric("baldr_meminfo_bytes", "gauge", "Selected /proc/meminfo fields in bytes.",
           [({"field": k}, mi.fields[k]) for k in ("MemTotal", "MemFree", "MemAvailable", "Cached", "Shmem",
                                                   "AnonPages", "Unevictable", "Mlocked", "SwapTotal", "SwapFree")
            if k in mi.fields])
    psi = snap.psi
    if psi.available:
        samples = []
        for kind in ("some", "full"):
            line = getattr(psi, kind)
            if line is not None:
                samples += [({"kind": kind, "window": w}, getattr(line, f"avg{w}")) for w in ("10", "60", "300")]
        metric("baldr_psi_memory_avg", "gauge", "Memory PSI averages in percent.", samples)
    if snap.vmstat and "oom_kill" in snap.vmstat:
        metric("baldr_oom_kills_total", "counter", "Kernel OOM kills since boot (/proc/vmstat oom_kill).",
               [({}, snap.vmstat["oom_kill"])])
    if snap.kernel_log.available:
        metric("baldr_nvrm_no_memory_events_total", "counter",
               "NVIDIA RM NV_ERR_NO_MEMORY kernel-log lines in the current boot.",
               [({}, len(snap.kernel_log.nvrm_oom_lines()))])
    metric("baldr_doctor_exit_code", "gauge", "Exit code of the last doctor run.", [({}, doc["exit_code"])])
    metric("baldr_doctor_last_run_timestamp_seconds", "gauge", "When doctor last ran (Unix time).",
           [({}, round(snap.time, 3))])
    return exposition.text()
