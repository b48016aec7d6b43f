"""The neural-collapse view: NC1–NC4 over training (training and validation samples), and the latest cosines
between the centred class means against the simplex ETF's −1/(C−1)."""

from backend.figures.base import Figure, Options, Source, View, latest, layout, marked_charts

TITLE = "Neural collapse"
PROBES = ["collapse"]
ANALYSES: list[str] = []
CHARTS = {
    "collapse-nc1": (
        "NC1 = tr(Σ_W Σ_B⁺)/C: within-class spread against between-class",
        True,
        {"collapse/nc1": "training sample", "collapse/nc1_val": "validation sample"},
    ),
    "collapse-nc23": (
        "NC2: class means equinorm and equiangular; NC3: classifier ∝ class means",
        True,
        {
            "collapse/nc2_equinorm": "NC2 std/mean of ‖μ_c − μ_G‖",
            "collapse/nc2_equiangle": "NC2 mean |cos + 1/(C−1)|",
            "collapse/nc3": "NC3 ‖W/‖W‖ − M/‖M‖‖²",
        },
    ),
    "collapse-nc4": (
        "NC4: share where the nearest class mean ≠ the network's prediction",
        False,
        {"collapse/nc4": "training sample", "collapse/nc4_val": "validation sample (training means)"},
    ),
}


YTITLES = {"collapse-nc1": "NC1", "collapse-nc23": "distance from the simplex ETF", "collapse-nc4": "share of examples"}


def figures(source: Source, options: Options) -> View:
    out = marked_charts(source, CHARTS, YTITLES)
    row = latest(source, "collapse")
    if row is None:
        return View(figures=out)
    d = row.data
    if d.get("skipped"):
        return View(figures=out, notes={"collapse-info": f"Not measured: {d['skipped']}."})
    val = f" and {d['val_examples']:,} validation examples" if d.get("val_examples") else ""
    notes = {
        "collapse-info": f"Features: the input of layer {d['layer']} ({d['features']:,} features per prediction), on fixed "
        f"stratified samples of {d['examples']:,} training{val}; {d['classes']} classes."
    }
    if d.get("cosines"):
        etf = -1 / (len(d["cosines"]) - 1)
        chart = layout(f"Class-mean cosines, step {row.step} (simplex ETF: {etf:.3g})", xtitle="class")
        chart["yaxis"] = {"title": {"text": "class"}, "autorange": "reversed", "scaleanchor": "x"}
        heat = {"type": "heatmap", "z": d["cosines"], "zmin": -1, "zmax": 1, "colorscale": "RdBu", "reversescale": True}
        out.append(Figure(id="collapse-cosines", data=[heat], layout=chart, meta={"step": row.step}))
    return View(figures=out, notes=notes)
