"""The representations view: each layer's linear CKA with its own output at the first probe and at the previous
one, over training, and the latest CKA between every pair of the layers."""

from backend.figures.base import Figure, Options, Source, View, latest, layout, line

TITLE = "Representations (linear CKA)"
PROBES = ["representations"]
ANALYSES: list[str] = []
CHARTS = {
    "cka-first": ("CKA of each layer with itself at the first probe (1: no change since)", "cka/first/"),
    "cka-previous": ("CKA of each layer with itself at the previous probe (how much it moved since)", "cka/previous/"),
}


def figures(source: Source, options: Options) -> View:
    row = latest(source, "representations")
    layers = row.data["layers"] if row is not None else []
    found = source.series([f"{prefix}{layer}" for _, prefix in CHARTS.values() for layer in layers])
    out = []
    for element, (title, prefix) in CHARTS.items():
        traces = [
            line(found.get(f"{prefix}{layer}"), layer, f"{prefix}{layer}", mode="lines+markers", marker={"size": 4}) for layer in layers
        ]
        out.append(Figure(id=element, data=traces, layout=layout(title, False)))
    if row is None:
        return View(figures=out)
    d = row.data
    notes = {
        "representations-info": f"Linear CKA (Kornblith et al. 2019) of the outputs of {len(layers)} layers, each flattened per "
        f"example, on a fixed stratified sample of {d['examples']:,} training examples, in eval mode; {d['estimator']} estimator."
    }
    chart = layout(f"CKA between the layers, step {row.step}", xtitle="layer")
    chart["yaxis"] = {"title": {"text": "layer"}, "autorange": "reversed", "type": "category"}
    chart["xaxis"]["type"] = "category"
    heat = {"type": "heatmap", "z": d["matrix"], "x": layers, "y": layers, "zmin": 0, "zmax": 1, "colorscale": "Viridis"}
    out.append(Figure(id="cka-layers", data=[heat], layout=chart, meta={"step": row.step}))
    return View(figures=out, notes=notes)
