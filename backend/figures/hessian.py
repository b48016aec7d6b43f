"""The Hessian view: the sharpness (λ1, or λmax(P⁻¹H) under Adam) and the other top eigenvalues against the
stability threshold, the step where it first reaches it, and the latest spectral density with its bulk edge
(of the probe, or of an analysis of a kept checkpoint)."""

from typing import Any

from backend.figures.base import Options, Figure, Source, View, layout, line, vline

TITLE = "Hessian"
PROBES = ["hessian"]
ANALYSES = ["hessian"]
THRESHOLD_COLOR = "#cf222e"


def _adaptive(spec: dict[str, Any]) -> bool:
    if "tracked" in spec:  # a run trained elsewhere: its tracker saw the optimizer
        return spec["tracked"]["adaptive"]
    optimizer = spec["optimizer"]
    return (optimizer["base"] if optimizer["kind"] == "sam" else optimizer)["kind"] in ("adam", "adamw")


def sharpness(source: Source) -> Figure:
    probe, adaptive = source.spec["probes"]["hessian"], _adaptive(source.spec)
    # SGD: the sharpness is λ1 itself. Adam: it is λmax(P⁻¹H), drawn beside the raw λ1..k.
    lambdas = [f"hessian/lambda_{i + 1}" for i in range(probe["top_k"])][0 if adaptive else 1 :]
    names = ["hessian/sharpness", *lambdas, "hessian/threshold"]
    labels = {
        "hessian/sharpness": "sharpness λmax(P⁻¹H)" if adaptive else "sharpness λ1",
        "hessian/threshold": "threshold (2+2β1)/((1−β1)·lr)" if adaptive else "threshold 2(1+β)/lr",
    }
    found = source.series(names)
    traces = [
        line(found.get(name), labels.get(name, name), name, mode="lines+markers")
        if name != "hessian/threshold"
        else line(found.get(name), labels[name], name, line={"dash": "dash", "color": THRESHOLD_COLOR})
        for name in names
    ]
    chart = layout("Sharpness: top Hessian eigenvalues and the stability threshold", ytitle="eigenvalue")
    crossing = _crossing(found.get("hessian/sharpness"), found.get("hessian/threshold"))
    if crossing is not None:
        chart["shapes"] = [vline(crossing, color=THRESHOLD_COLOR)]
        chart["annotations"] = [
            {
                "x": crossing,
                "yref": "paper",
                "y": 1,
                "text": f"λ1 ≥ threshold at step {crossing}",
                "showarrow": False,
                "yanchor": "bottom",
                "font": {"color": THRESHOLD_COLOR},
            },
        ]
    return Figure(id="sharpness-plot", data=traces, layout=chart, meta={"crossing": "" if crossing is None else crossing})


def _crossing(sharp: Any, threshold: Any) -> int | None:
    """The first step where the sharpness reaches its threshold (the edge of stability)."""
    if sharp is None or threshold is None:
        return None
    limit = dict(zip(threshold.steps, threshold.values, strict=True))
    for step, value in zip(sharp.steps, sharp.values, strict=True):
        if value is not None and limit.get(step) is not None and value >= limit[step]:
            return step
    return None


def density(source: Source) -> Figure | None:
    """The newest spectral density, of the probe or of a checkpoint analysis."""
    rows = [r for kind in ("hessian", "hessian_analysis") for r in source.results(kind) if r.data.get("density")]
    if not rows:
        return None
    latest = max(rows, key=lambda r: (r.step, r.id))
    r, d = latest.data, latest.data["density"]
    floor = max(d["density"]) * 1e-8
    traces = [
        {"name": "density", "x": d["grid"], "y": [max(v, floor) for v in d["density"]], "mode": "lines", "fill": "tozeroy"},
        {
            "name": f"top-{len(r['eigenvalues'])} eigenvalues",
            "x": r["eigenvalues"],
            "y": [floor * 10] * len(r["eigenvalues"]),
            "mode": "markers",
            "marker": {"symbol": "triangle-down", "size": 10},
        },
    ]
    chart = layout(
        f"Spectral density at step {latest.step}: ≈{d['outliers']} outliers beyond the bulk edge · {r['n_classes']} classes",
        True,
        "eigenvalue",
        "density",
    )
    chart["shapes"] = [vline(d["bulk_edge"], dash="dash", color="#444")]
    chart["annotations"] = [{"x": d["bulk_edge"], "yref": "paper", "y": 1, "text": "bulk edge", "showarrow": False, "yanchor": "bottom"}]
    return Figure(id="density-plot", data=traces, layout=chart, meta={"step": latest.step})


def figures(source: Source, options: Options) -> View:
    out = [sharpness(source)] if source.spec["probes"].get("hessian") else []
    if (drawn := density(source)) is not None:
        out.append(drawn)
    return View(figures=out)
