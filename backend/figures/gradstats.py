"""The gradient-statistics view: noise scale, coherence and Cockpit's tests, update ratios and cosines over
steps, per-layer gradient norms as a heat map, and the latest per-example histogram and layer spectra."""

import math
from typing import Any

from backend.figures.base import Figure, Options, Series, Source, Table, View, latest, layout, line

TITLE = "Gradient statistics"
PROBES = ["gradstats"]
ANALYSES: list[str] = []
HEAT_COLUMNS = 400
CHARTS = {
    "gradstats-noise": (
        "Gradient noise scale B_simple = tr Σ / ‖G‖²",
        True,
        {
            "grad/noise_scale": "per step (per-example estimator)",
            "grad/noise_scale_ema": "EMAs of tr Σ and ‖G‖², divided",
            "grad/noise_scale_two_batch": "per step (two-batch-size estimator)",
            "grad/noise_scale_two_batch_ema": "two-batch: EMAs, divided",
        },
    ),
    "gradstats-coherence": (
        "Coherence α = ‖ḡ‖² / mean ‖g_i‖², Cockpit's tests, GSNR",
        True,
        {n: n.removeprefix("grad/") for n in ("grad/alpha", "grad/norm_test", "grad/inner_test", "grad/ortho_test", "grad/mean_gsnr")},
    ),
    "gradstats-steps": (
        "Update-to-weight ratio and cosines of successive gradients and updates",
        False,
        {n: n.removeprefix("grad/") for n in ("grad/update_ratio", "grad/cos_previous_grad", "grad/cos_previous_update")},
    ),
}


YTITLES = {"gradstats-noise": "examples", "gradstats-coherence": "ratio", "gradstats-steps": "ratio, cosine"}


def heat(series: dict[str, Series]) -> tuple[list[int], list[str], list[list[float | None]]] | None:
    """Each layer's series on common columns: its steps, or bins of steps (the largest value in each) when many;
    log10 of the norms."""
    distinct = sorted({s for one in series.values() for s in one.steps})
    if not distinct:
        return None
    binned = len(distinct) > HEAT_COLUMNS
    lo = distinct[0]
    width = (distinct[-1] - lo + 1) / HEAT_COLUMNS if binned else 1
    x = [round(lo + (c + 0.5) * width - 0.5) for c in range(HEAT_COLUMNS)] if binned else distinct
    where = {s: k for k, s in enumerate(distinct)}
    column = (lambda s: min(HEAT_COLUMNS - 1, math.floor((s - lo) / width))) if binned else where.__getitem__
    z = []
    for one in series.values():
        row: list[float | None] = [None] * len(x)
        for step, value in zip(one.steps, one.values, strict=True):
            if value is None or value <= 0:
                continue
            c, v = column(step), math.log10(value)
            row[c] = v if row[c] is None else max(row[c], v)  # type: ignore[type-var]
        z.append(row)
    return x, [name.removeprefix("grad/norm/") for name in series], z


def _histogram(step: int, h: dict[str, Any]) -> Figure:
    edges = h["edges"]
    chart = layout(f"Per-example gradient elements, step {step}", True, "gradient element")
    sample = f"sample: {h['examples']} examples × {h['elements_per_example']:,} of {h['parameters']:,} coordinates"
    chart["annotations"] = [{"xref": "paper", "yref": "paper", "x": 1, "y": 1, "xanchor": "right", "showarrow": False, "text": sample}]
    bars = {"type": "bar", "x": [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)], "y": h["counts"], "name": "count"}
    return Figure(id="gradstats-histogram", data=[bars], layout=chart)


def _spectra(step: int, spectra: dict[str, Any]) -> Figure:
    names = list(spectra)
    chart = layout(f"Layer gradient spectra at step {step}: σ1 / Σσ (bars) and nuclear norm", False, "layer")
    chart["yaxis2"] = {"overlaying": "y", "side": "right", "type": "log", "title": {"text": "nuclear norm"}}
    chart["margin"]["r"] = 60
    traces = [
        {"type": "bar", "name": "σ1 ratio", "x": names, "y": [spectra[n]["sigma1_ratio"] for n in names]},
        {
            "type": "scatter",
            "mode": "markers",
            "name": "nuclear norm",
            "x": names,
            "y": [spectra[n]["nuclear"] for n in names],
            "yaxis": "y2",
        },
    ]
    return Figure(id="gradstats-spectra", data=traces, layout=chart)


def figures(source: Source, options: Options) -> View:
    found = source.series([n for _, _, labels in CHARTS.values() for n in labels], max_points=1000)
    out = []
    for element, (title, ylog, labels) in CHARTS.items():
        traces = [line(found[n], label, n, mode="lines+markers", marker={"size": 3}) for n, label in labels.items() if n in found]
        meta = (
            {"points": len(found["grad/noise_scale"].steps) if "grad/noise_scale" in found else 0} if element == "gradstats-noise" else {}
        )
        out.append(Figure(id=element, data=traces, layout=layout(title, ylog, ytitle=YTITLES[element]), meta=meta))
    if (h := heat(source.series(source.names("grad/norm/"), max_points=1000))) is not None:
        chart = layout("Per-layer gradient norm (log₁₀) over steps")
        chart["margin"]["l"] = 90
        chart["yaxis"] = {"type": "category", "automargin": True}
        trace = {
            "type": "heatmap",
            "x": h[0],
            "y": h[1],
            "z": h[2],
            "colorscale": "Viridis",
            "colorbar": {"title": {"text": "log₁₀ ‖ḡ‖"}},
            "hoverongaps": False,
        }
        out.append(Figure(id="gradstats-layers", data=[trace], layout=chart, meta={"layers": len(h[1])}))
    notes = {}
    if (row := latest(source, "gradstats")) is not None:
        d = row.data
        if d.get("histogram"):
            out.append(_histogram(row.step, d["histogram"]))
        if d.get("spectra"):
            out.append(_spectra(row.step, d["spectra"]))
        exact = [n for n, rule in (d.get("rules") or {}).items() if rule == "torch.func"]
        by_func = f" (per-example gradients by torch.func for {', '.join(exact)})" if exact else ""
        dead = (
            f"; {100 * d['dead_fraction']:.1f} % of coordinates never vary (their GSNR is undefined)"
            if d.get("dead_fraction") is not None
            else ""
        )
        notes["gradstats-info"] = f"Batch of {d['batch_size']}; every parameter counted{by_func}{dead}."
        if d.get("rules"):
            out.append(_rules(d["rules"]))
    return View(figures=out, notes=notes)


RULES = {
    "linear": "a linear layer's rule: from its inputs and output gradients, never forming a per-example gradient",
    "per-example": "a layer's rule, forming its per-example gradients (a sequence's positions summed), in chunks",
    "norm": "a normalization layer's rule",
    "torch.func": "exact per-example gradients by torch.func (a parameter no layer rule covers)",
}


def _rules(rules: dict[str, str]) -> Figure:
    rows = [[name, rule, RULES.get(rule, "")] for name, rule in rules.items()]
    table = Table(caption="How each parameter's per-example gradients were obtained", header=["parameter", "rule", "what it is"], rows=rows)
    return Figure(id="gradstats-rules", table=table)
