"""The JSON document of `baldr-ops doctor --json`, as pydantic models (the schema of record).

``render.report_dict`` builds the same shape with the standard library for speed; tests validate
its output against :class:`DoctorReport`. ``baldr-ops doctor --json-schema`` prints the schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from baldr_ops.schema import Document

Status = Literal["OK", "INFO", "WARN", "CRIT", "UNKNOWN"]


class Host(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hostname: str | None
    kernel: str | None
    arch: str | None
    uptime_s: float | None


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warn: str
    crit: str


class CheckResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    title: str
    status: Status
    value: float | int | str | None
    unit: str
    thresholds: Thresholds
    evidence: dict[str, Any]
    hint: str | None
    doc_url: str
    source: str


class Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ok: int
    info: int
    warn: int
    crit: int
    unknown: int
    worst: Status


class DoctorReport(Document):
    command: Literal["doctor"] = "doctor"
    version: str
    host: Host
    time: str                      # ISO 8601, UTC
    root: str                      # "/" or the replayed snapshot/fixture root
    interval_s: float              # 0: single sample, rates not available
    model: dict[str, Any] | None   # the Footprint of --model, when given
    checks: list[CheckResult]
    summary: Summary
    exit_code: int


def json_schema() -> dict:
    return DoctorReport.model_json_schema()
