"""The representations view: each layer's linear CKA with its own output at the first probe and at the previous
one, over training, the latest CKA between every pair of the layers, and a comparison of two checkpoints (this
job's, or another job's) layer by layer, the one chosen of those asked for."""

from backend.figures.base import Choice, Figure, Options, Row, Source, View, latest, layout, line

TITLE = "Representations (linear CKA)"
PROBES = ["representations"]
ANALYSES = ["representations"]
CHARTS = {
    "cka-first": ("CKA of each layer with itself at the first probe (1: no change since)", "cka/first/"),
    "cka-previous": ("CKA of each layer with itself at the previous probe (how much it moved since)", "cka/previous/"),
}


def _end(end: dict) -> str:
    return f"job {end['job']} step {end['step']}"


def _describe(row: Row) -> str:
    return f"{_end(row.data['start'])} against {_end(row.data['end'])}"


def comparison(rows: list[Row], options: Options) -> tuple[Figure | None, str, list[Choice]]:
    """The chosen (or the latest) comparison of two checkpoints as a heatmap, its note and the choices."""
    if not rows:
        return None, "", []
    choices = [Choice(value=str(row.id), label=_describe(row)) for row in rows]
    row = next((r for r in rows if r.id == options.result), rows[-1])
    d = row.data
    chart = layout(f"CKA: {_describe(row)}", xtitle=f"layer of {_end(d['end'])}")
    chart["yaxis"] = {"title": {"text": f"layer of {_end(d['start'])}"}, "autorange": "reversed", "type": "category"}
    chart["xaxis"]["type"] = "category"
    heat = {"type": "heatmap", "z": d["matrix"], "x": d["to_layers"], "y": d["layers"], "zmin": 0, "zmax": 1, "colorscale": "Viridis"}
    note = (
        f"Comparison of {_describe(row)}: linear CKA of each layer's outputs on the same fixed stratified sample of "
        f"{d['examples']:,} training examples of job {d['start']['job']}, in eval mode; {d['estimator']} estimator."
    )
    return Figure(id="cka-compare", data=[heat], layout=chart, meta={"result": row.id}), note, choices


def figures(source: Source, options: Options) -> View:
    row = latest(source, "representations")
    layers = row.data["layers"] if row is not None else []
    out = []
    if row is not None:
        found = source.series([f"{prefix}{layer}" for _, prefix in CHARTS.values() for layer in layers])
        for element, (title, prefix) in CHARTS.items():
            traces = [
                line(found.get(f"{prefix}{layer}"), layer, f"{prefix}{layer}", mode="lines+markers", marker={"size": 4}) for layer in layers
            ]
            out.append(Figure(id=element, data=traces, layout=layout(title, False)))
    notes = {}
    if row is not None:
        d = row.data
        notes["representations-info"] = (
            f"Linear CKA (Kornblith et al. 2019) of the outputs of {len(layers)} layers, each flattened per example, on a fixed "
            f"stratified sample of {d['examples']:,} training examples, in eval mode; {d['estimator']} estimator."
        )
        chart = layout(f"CKA between the layers, step {row.step}", xtitle="layer")
        chart["yaxis"] = {"title": {"text": "layer"}, "autorange": "reversed", "type": "category"}
        chart["xaxis"]["type"] = "category"
        heat = {"type": "heatmap", "z": d["matrix"], "x": layers, "y": layers, "zmin": 0, "zmax": 1, "colorscale": "Viridis"}
        out.append(Figure(id="cka-layers", data=[heat], layout=chart, meta={"step": row.step}))
    compared, note, choices = comparison(source.results("representations_analysis"), options)
    if compared is not None:
        out.append(compared)
        notes["representations-compare-info"] = note
    return View(figures=out, notes=notes, choices=choices)
