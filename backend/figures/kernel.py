"""The kernel view: how far the empirical neural tangent kernel has moved (from the first probe, and between
successive probes) beside how far the weights have, its alignment with the labels, its scale, and the latest
kernel of the sample's first examples, ordered by label."""

from backend.figures.base import Figure, Options, Source, View, latest, layout, marked_charts

TITLE = "Neural tangent kernel"
PROBES = ["kernel"]
ANALYSES: list[str] = []
CHARTS = {
    "kernel-motion": (
        "Kernel and weight motion (lazy: all near 0)",
        True,
        {
            "kernel/distance": "kernel: 1 − cos(K₀, K)",
            "kernel/velocity": "kernel velocity: 1 − cos(K_prev, K)",
            "kernel/weight_change": "weights: ‖θ − θ₀‖ / ‖θ₀‖",
        },
    ),
    "kernel-alignment": ("Centred kernel–target alignment", False, {"kernel/alignment": "kernel summed over outputs"}),
    "kernel-trace": ("Kernel scale: tr K / n", True, {"kernel/trace": "tr K / n"}),
}


def figures(source: Source, options: Options) -> View:
    per_output = sorted(source.names("kernel/alignment_output/"), key=lambda n: int(n.rsplit("/", 1)[1]))
    title, ylog, labels = CHARTS["kernel-alignment"]
    charts = CHARTS | {"kernel-alignment": (title, ylog, labels | {n: f"output {n.rsplit('/', 1)[1]}" for n in per_output})}
    out = marked_charts(source, charts)
    row = latest(source, "kernel")
    if row is None:
        return View(figures=out)
    d = row.data
    notes = {
        "kernel-info": f"Empirical neural tangent kernel Θ(x, x′) = J(x) J(x′)ᵀ over {d['parameters']:,} parameters, summed "
        f"over {d['outputs']} output{'s' if d['outputs'] > 1 else ''}, on a fixed stratified sample of {d['examples']:,} training "
        "examples in eval mode. Alignment: cos(HKH, HYYᵀH) with Y the one-hot labels or the targets (Cortes et al. 2012)."
    }
    shown = len(d["drawn"])
    chart = layout(f"Kernel of the first {shown} examples, step {row.step}", xtitle="example (by label)")
    chart["yaxis"] = {"title": {"text": "example (by label)"}, "autorange": "reversed", "scaleanchor": "x"}
    labels = d.get("labels")
    heat = {"type": "heatmap", "z": d["drawn"], "colorscale": "Viridis"}
    if labels:
        heat["customdata"] = [[f"{a} · {b}" for b in labels] for a in labels]
        heat["hovertemplate"] = "labels %{customdata}: %{z:.4g}<extra></extra>"
    out.append(Figure(id="kernel-gram", data=[heat], layout=chart, meta={"step": row.step}))
    return View(figures=out, notes=notes)
