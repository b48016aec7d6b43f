"""The loss-landscape view: a surface or a curve from the `landscape` probe or from an analysis of kept
checkpoints (around one, the trajectory's principal plane, the line between two), drawn while it is computed:
as a contour with the training path, or in 3-D, with a log colour scale if asked."""

import math
from typing import Any

from backend.figures.base import Choice, Figure, Options, Row, Source, View, layout
from backend.spec import GRID_RESULTS

TITLE = "Loss landscape"
PROBES = ["landscape"]
ANALYSES = ["landscape", "trajectory", "interpolation"]
KINDS = GRID_RESULTS  # the result kinds it draws (a test checks they are PROBES' and ANALYSES')


def _end(end: dict[str, Any]) -> str:
    return f"job {end['job']} step {end['step']}"


def axis_label(r: dict[str, Any], k: int) -> str:
    if r["plane"] == "pca":
        return f"PC{k} ({100 * r['explained_variance_ratio'][k - 1]:.1f} % of the path's variance)"
    if r["plane"] == "interpolation":
        return f"α: θ = (1 − α)·θ({_end(r['from'])}) + α·θ({_end(r['to'])})"
    if r["plane"] == "hessian":
        return f"v{k} (Hessian eigenvector, λ{k} = {r['eigenvalues'][k - 1]:.4g})"
    return f"d{k} ({r['normalization']}-normalized, seed {r['seed']}{', ⊥ d1' if k == 2 and r.get('orthogonalize') else ''})"


def describe(kind: str, row: Row) -> str:
    r = row.data
    if r["plane"] == "interpolation":
        what = f"line {_end(r['from'])} → {_end(r['to'])}"
    elif r["plane"] == "pca":
        what = f"{r['resolution']}×{r['resolution']} trajectory plane ({len(r['path']['steps'])} checkpoints)"
    else:
        n = r["resolution"]
        what = f"{f'{n}×{n}' if r['dims'] == 2 else f'{n}-point curve'} {r['plane']} plane"
    source = "probe" if kind == "landscape" else f"analysis #{r.get('analysis_id', '…')}"
    live = f" — computing {r['points_done']}/{r['points_total']}" if r.get("partial") else ""
    return f"step {row.step}: {what} ({source}){live}"


def _log(v: float | None) -> float | None:
    return math.log10(v) if v is not None and v > 0 else None


def _precise(v: float | None) -> str:
    return "…" if v is None else f"{v:.4g}"


def surface(row: Row, log: bool, surface3d: bool) -> Figure:
    r, step = row.data, row.step
    where = f"{r['examples']:,} training examples, batch norm {r['batch_norm']}"
    finite = [v for v in (_flatten(r["loss"]) if r["dims"] == 2 else r["loss"]) if v is not None]
    chart = layout("")
    chart["title"] = {
        "text": f"Loss around step {step}: centre {_precise(r.get('centre_loss'))}, min {_precise(min(finite) if finite else None)} · {where}",
        "font": {"size": 13},
    }
    meta = {"result": row.id, "partial": "1" if r.get("partial") else "0"}
    if r["dims"] == 1:
        return Figure(id="landscape-plot", data=_curve(r, chart, log, where), layout=chart, meta=meta)
    z = [[_log(v) for v in row_] for row_ in r["loss"]] if log else r["loss"]
    z = [list(column) for column in zip(*z, strict=True)]  # Plotly draws z[row = y][column = x]; loss[i][j] has i along xs
    colorbar = {"title": {"text": "log₁₀ loss" if log else "loss"}}
    x, y = {"text": axis_label(r, 1)}, {"text": axis_label(r, 2)}
    if surface3d:
        chart["scene"] = {"xaxis": {"title": x}, "yaxis": {"title": y}, "zaxis": {"title": {"text": "log₁₀ loss" if log else "loss"}}}
        chart["margin"] = {"t": 40, "r": 0, "b": 0, "l": 0}
        trace = {"type": "surface", "x": r["xs"], "y": r["ys"], "z": z, "colorscale": "Viridis", "colorbar": colorbar, "connectgaps": False}
        return Figure(id="landscape-plot", data=[trace], layout=chart, meta=meta)
    chart["xaxis"]["title"], chart["yaxis"] = x, {"title": y, "scaleanchor": "x"}
    traces = [
        {
            "type": "contour",
            "name": "loss",
            "x": r["xs"],
            "y": r["ys"],
            "z": z,
            "colorscale": "Viridis",
            "colorbar": colorbar,
            "connectgaps": False,
            "ncontours": 30,
            "contours": {"coloring": "heatmap"},
        },
        {
            "type": "scatter",
            "name": f"weights at step {step}",
            "x": [0],
            "y": [0],
            "mode": "markers",
            "marker": {"symbol": "x", "size": 11, "color": "#cf222e"},
        },
    ]
    if path := r.get("path"):
        traces.append(
            {
                "type": "scatter",
                "name": "training path (checkpoints)",
                "x": path["x"],
                "y": path["y"],
                "mode": "lines+markers+text",
                "text": [str(s) for s in path["steps"]],
                "textposition": "top center",
                "marker": {"size": 7, "color": "#ff7f0e"},
                "line": {"color": "#ff7f0e"},
            }
        )
        del chart["yaxis"]["scaleanchor"]
    if evaluated := r.get("evaluated"):
        points = [(r["xs"][i], r["ys"][j]) for i, row_ in enumerate(evaluated) for j, e in enumerate(row_) if e]
        traces.append(
            {
                "type": "scatter",
                "name": f"computed points ({len(points)} of {len(r['xs']) * len(r['ys'])}; the rest interpolated)",
                "x": [p[0] for p in points],
                "y": [p[1] for p in points],
                "mode": "markers",
                "marker": {"size": 3, "color": "rgba(255,255,255,0.6)"},
            }
        )
    return Figure(id="landscape-plot", data=traces, layout=chart, meta=meta)


def _flatten(loss: list[list[float | None]]) -> list[float | None]:
    return [v for row in loss for v in row]


def _curve(r: dict[str, Any], chart: dict[str, Any], log: bool, where: str) -> list[dict[str, Any]]:
    chart["xaxis"]["title"] = {"text": axis_label(r, 1)}
    chart["yaxis"] = {"title": {"text": "loss"}, "type": "log" if log else "linear"}
    traces = [{"name": "loss", "x": r["xs"], "y": r["loss"], "mode": "lines+markers", "connectgaps": False}]
    if r.get("accuracy"):
        traces.append({"name": "accuracy", "x": r["xs"], "y": r["accuracy"], "mode": "lines", "yaxis": "y2", "line": {"dash": "dot"}})
        chart["yaxis2"] = {"overlaying": "y", "side": "right", "range": [0, 1], "title": {"text": "accuracy"}}
        chart["margin"]["r"] = 60
    if r["plane"] == "interpolation":
        chart["title"]["text"] = f"Loss between {_end(r['from'])} and {_end(r['to'])} · {where}"
        chart["shapes"] = [
            {"type": "line", "x0": a, "x1": a, "yref": "paper", "y0": 0, "y1": 1, "line": {"dash": "dash", "color": "#888"}} for a in (0, 1)
        ]
        chart["annotations"] = [
            {"x": a, "yref": "paper", "y": 1, "text": _end(e), "showarrow": False, "yanchor": "bottom"}
            for a, e in ((0, r["from"]), (1, r["to"]))
        ]
    return traces


def info(r: dict[str, Any]) -> str:
    rate = f", {r['points_per_s']:.0f} points/s" if r.get("points_per_s") else ""
    span = "" if r.get("span") is None else f"; span ±{r['span']:.3g}" + (f" × ±{r['span_y']:.3g}" if r.get("span_y") else "")
    still = " (still computing)" if r.get("partial") else ""
    return f"{r['indexing']}{span}; {r['points_done']} of {r['points_total']} points computed{rate}{still}."


def results(source: Source) -> list[tuple[str, Row]]:
    """Every grid the job has, in step order: the probe's and the analyses'."""
    rows = [(kind, row) for kind in KINDS for row in source.results(kind)]
    return sorted(rows, key=lambda kr: (kr[1].step, kr[1].id))


def figures(source: Source, options: Options) -> View:
    """The chosen result (the newest by default), as a contour or in 3-D, with a log colour scale if asked."""
    rows = results(source)
    choices = [Choice(value=str(row.id), label=describe(kind, row)) for kind, row in rows]
    if not rows:
        return View(figures=[], choices=choices)
    picked = next((row for _, row in rows if row.id == options.result), rows[-1][1])
    notes = {"landscape-info": info(picked.data)}
    return View(figures=[surface(picked, options.log, options.surface3d)], notes=notes, choices=choices)
