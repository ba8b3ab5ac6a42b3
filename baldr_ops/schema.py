"""Base for every JSON document baldr-ops prints: each carries the tool name and a schema version."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Bump the major part on any incompatible change to a printed document.
SCHEMA_VERSION = "1.0"


class Document(BaseModel):
    """A JSON document printed by a command (``--json``)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: str = SCHEMA_VERSION
    tool: str = "baldr-ops"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)
