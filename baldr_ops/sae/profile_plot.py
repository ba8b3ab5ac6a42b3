"""PNG of a layer profile: one panel per metric, the value with its bootstrap band, each metric's own
extremum marked, and the integration depth as a dashed line across all panels."""

from __future__ import annotations

from pathlib import Path

from baldr_ops.sae.layer_profile import METRIC_INFO, METRICS, LayerProfileDocument

PANEL_WIDTH_IN, PANEL_HEIGHT_IN, DPI = 8.0, 1.9, 100


def plotted_metrics(doc: LayerProfileDocument) -> list[str]:
    """The metrics with a value at some layer (SipIt is absent with --no-sipit)."""
    return [m for m in METRICS if any(getattr(row, m) is not None for row in doc.layers)]


def expected_size(doc: LayerProfileDocument) -> tuple[int, int]:
    """(width, height) in pixels of the PNG `render_png` writes for this document."""
    return int(PANEL_WIDTH_IN * DPI), int(round(PANEL_HEIGHT_IN * len(plotted_metrics(doc)) * DPI))


def render_png(doc: LayerProfileDocument, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display; must come before pyplot
    import matplotlib.pyplot as plt

    metrics = plotted_metrics(doc)
    width, height = expected_size(doc)
    fig, axes = plt.subplots(len(metrics), 1, sharex=True, squeeze=False,
                             figsize=(width / DPI, height / DPI), dpi=DPI)
    zones = {z.metric: z for z in doc.zones}
    depth = doc.integration_depth
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        info = METRIC_INFO[metric]
        rows = [r for r in doc.layers if getattr(r, metric) is not None]
        xs = [r.layer for r in rows]
        vals = [getattr(r, metric) for r in rows]
        ax.fill_between(xs, [v.ci_low for v in vals], [v.ci_high for v in vals], color="tab:blue", alpha=0.25,
                        linewidth=0)
        ax.plot(xs, [v.value for v in vals], color="tab:blue", marker=".", linewidth=1.2)
        censored = [(x, v.value) for x, v in zip(xs, vals, strict=True) if v.censored]
        if censored:
            ax.scatter(*zip(*censored, strict=True), marker="^", color="tab:red", zorder=3,
                       label="censored (lower bound)")
            ax.legend(loc="best", fontsize=7)
        zone = zones.get(metric)
        if zone is not None and zone.layer is not None:
            ax.scatter([zone.layer], [zone.value], s=60, facecolors="none",
                       edgecolors="tab:green" if zone.interior else "tab:gray", linewidths=1.5, zorder=4)
        if depth.layer is not None and depth.interior:
            ax.axvline(depth.layer, color="tab:orange", linestyle="--", linewidth=1)
        ax.set_ylabel(info.unit, fontsize=8)
        ax.set_title(info.label, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    bottom = axes[-1, 0]
    bottom.set_xlabel(f"decoder layer (of {doc.n_layers}); circle: metric's extremum (green: interior); "
                      "dashed: integration depth", fontsize=8)
    title = f"{doc.model}: layer profile, {doc.settings.prompts} prompts, {doc.settings.ci_level:.0%} bootstrap CI"
    if depth.layer is not None and depth.interior:
        title += f"; integration depth layer {depth.layer} ({100 * depth.depth:.0f} %)"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png", dpi=DPI)  # no bbox 'tight': the size must stay what expected_size says
    plt.close(fig)
    return out
