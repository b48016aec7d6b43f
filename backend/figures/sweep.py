"""The figures of many runs: groups of runs as a mean with a band (Compare's Group by, the sweep report), a
sweep's phase diagram, and its learning-rate sensitivity. One description each, drawn by the dashboard and embedded by the sweep report."""

from typing import Any, Literal

from backend.figures.base import Figure, layout
from backend.services.groups import Group, Groups
from backend.services.sensitivity import SensitivityOut

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
    chart = layout(title, ylog)
    chart["yaxis"]["title"] = {"text": groups.series}
    return Figure(id=element, data=data, layout=chart, meta={"band": band, "groups": len(groups.groups)})


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


def sensitivity_figures(out: SensitivityOut) -> list[Figure]:
    """Final loss against learning rate (log x), a curve per value of the `by` field with its LR sensitivity in
    the legend and its ℓ₀ dotted; and the largest attention logit at the end beside it."""
    name = (lambda c: f"{out.by} = {c.value}") if out.by else (lambda c: "all runs")
    loss, logit = [], []
    for i, c in enumerate(out.curves):
        color = COLORS[i % len(COLORS)]
        hover = [f"{c.runs[k]} run(s), {c.diverged[k]} diverged; jobs {', '.join(map(str, c.jobs[k]))}" for k in range(len(c.lrs))]
        loss += [
            {
                "name": f"{name(c)}: LR sensitivity {c.sensitivity:.3g}",
                "x": c.lrs,
                "y": c.capped,
                "mode": "lines+markers",
                "line": {"color": color},
                "customdata": hover,
                "meta": {"sensitivity": c.sensitivity, "value": c.value},
                "hovertemplate": "lr %{x:.3g}: min(ℓ, ℓ₀) %{y:.4g}<br>%{customdata}<extra></extra>",
            },
            {
                "name": f"ℓ₀ ({name(c)})",
                "x": [c.lrs[0], c.lrs[-1]],
                "y": [c.initial, c.initial],
                "mode": "lines",
                "line": {"color": color, "dash": "dot"},
                "hoverinfo": "skip",
            },
        ]
        logit.append(
            {"name": name(c), "x": c.lrs, "y": c.attention_logit, "mode": "lines+markers", "line": {"color": color}, "connectgaps": False}
        )
    figures = [
        Figure(id="sensitivity-loss", data=loss, layout=layout(f"Final {out.series} against learning rate", xtitle=out.lr)),
        Figure(id="sensitivity-logit", data=logit, layout=layout("Largest attention logit at the end", True, out.lr)),
    ]
    for figure, ytitle in zip(figures, [f"min({out.series}, ℓ₀) at the end", "max |pre-softmax logit|"], strict=True):
        figure.layout["xaxis"]["type"] = "log"
        figure.layout["yaxis"]["title"] = {"text": ytitle}
    return figures
