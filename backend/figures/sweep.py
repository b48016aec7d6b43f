"""The figures of many runs: groups of runs as a mean with a band (Compare's Group by, the sweep report), and a
sweep's phase diagram. One description each, drawn by the dashboard and embedded by the sweep report."""

from typing import Any, Literal

from backend.figures.base import Figure, layout
from backend.services.groups import Group, Groups

Band = Literal["std", "sem", "minmax"]
BAND_LABELS = {"std": "± σ", "sem": "± standard error", "minmax": "min – max"}
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _edges(group: Group, band: Band) -> tuple[list[float | None], list[float | None]]:
    if band == "minmax":
        ok = [c > 1 for c in group.count]
        return [v if k else None for v, k in zip(group.min, ok, strict=True)], [
            v if k else None for v, k in zip(group.max, ok, strict=True)
        ]
    spread = group.std if band == "std" else group.sem
    lower = [m - s if m is not None and s is not None else None for m, s in zip(group.mean, spread, strict=True)]
    upper = [m + s if m is not None and s is not None else None for m, s in zip(group.mean, spread, strict=True)]
    return lower, upper


def _translucent(color: str) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},0.2)"


def band_figure(groups: Groups, band: Band, ylog: bool = False, thresholds: Groups | None = None, element: str = "compare-plot") -> Figure:
    """Per group its mean (a line; n = 1: no band) and the band around it; each group's stability threshold dashed
    where given (the sharpness)."""
    data: list[dict[str, Any]] = []
    for k, group in enumerate(groups.groups):
        color, runs = COLORS[k % len(COLORS)], max(group.count, default=0)
        name = f"{group.label} (n = {runs})"
        if runs > 1:
            lower, upper = _edges(group, band)
            common = {
                "x": group.steps,
                "mode": "lines",
                "line": {"width": 0, "color": color},
                "showlegend": False,
                "hoverinfo": "skip",
                "legendgroup": name,
            }
            data.append({**common, "name": f"{name} lower", "y": lower, "meta": {"band": "lower", "group": group.label}})
            data.append({**common, "name": f"{name} {BAND_LABELS[band]}", "y": upper, "fill": "tonexty", "fillcolor": _translucent(color), "meta": {"band": "upper", "group": group.label}})  # fmt: skip
        data.append(
            {
                "name": name,
                "x": group.steps,
                "y": group.mean,
                "mode": "lines",
                "line": {"color": color},
                "customdata": group.count,
                "legendgroup": name,
                "meta": {"band": "mean", "group": group.label},
                "hovertemplate": f"{group.label}, step %{{x}}: mean %{{y:.4g}} over %{{customdata}} run(s)<extra></extra>",
            }
        )
        threshold = next((t for t in (thresholds.groups if thresholds else []) if t.label == group.label), None)
        if threshold is not None:
            data.append({"name": f"threshold ({group.label})", "x": threshold.steps, "y": threshold.mean, "mode": "lines", "line": {"dash": "dash", "color": color}, "legendgroup": name})  # fmt: skip
    runs = sum(len(g.jobs) for g in groups.groups)
    by = ", ".join(groups.by) or "nothing (one group)"
    title = f"{groups.series}: mean of {runs} runs by {by}, band {BAND_LABELS[band]}"
    return Figure(id=element, data=data, layout=layout(title, ylog), meta={"band": band, "groups": len(groups.groups)})


def phase_figure(phase: dict[str, Any], element: str = "phase-plot") -> Figure:
    """The swept grid as a heat map (cells open their first job in the dashboard)."""
    text = [["" if v is None else f"{v:.3g}" for v in row] for row in phase["z"]]
    metric = phase["metric"]
    diverged = metric == "diverged"
    trace = {
        "type": "heatmap",
        "x": [str(v) for v in phase["xs"]],
        "y": ["" if v is None else str(v) for v in phase["ys"]],
        "z": phase["z"],
        "text": text,
        "texttemplate": "%{text}",
        "colorscale": [[0, "#2da44e"], [1, "#cf222e"]] if diverged else "Viridis",
        "reversescale": "accuracy" in metric,
        "hoverongaps": False,
        "customdata": phase["jobs"],
        "hovertemplate": "%{x}, %{y}: %{z}<br>jobs %{customdata}<extra></extra>",
    }
    across = f"{phase['x']} × {phase['y']}" if phase["y"] else phase["x"]
    chart = layout(f"{metric} over {across}", xtitle=phase["x"])
    chart["xaxis"]["type"] = "category"
    chart["yaxis"] = {"title": {"text": phase["y"] or ""}, "type": "category"}
    return Figure(id=element, data=[trace], layout=chart, meta={"metric": metric})
