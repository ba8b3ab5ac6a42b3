"""The Prometheus text exposition format (what node_exporter's textfile collector reads), written
in one place for doctor's and launch's metrics."""

from __future__ import annotations


def label_value(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Exposition:
    """Metric families in order; ``text()`` is the file's content."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        """One family (# HELP, # TYPE, its samples); a family without samples is left out."""
        if not samples:
            return
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{label_value(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
