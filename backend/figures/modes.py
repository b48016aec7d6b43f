"""The modes view of a deep linear network: its strength along each singular mode of the data's input–output
correlation over training (markers), with Saxe et al.'s closed-form trajectory of that mode (dashed, the same
colour), and the share of its map off the modes' diagonal."""

from backend.figures.base import Figure, Options, Source, View, latest, layout, line

TITLE = "Deep linear modes"
PROBES = ["modes"]
ANALYSES: list[str] = []
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _strengths(source: Source, singular_values: list[float]) -> Figure:
    names = [f"modes/{kind}/{n}" for n in range(1, len(singular_values) + 1) for kind in ("strength", "theory")]
    found = source.series(names)
    traces = []
    for n, s in enumerate(singular_values, start=1):
        color = COLORS[(n - 1) % len(COLORS)]
        measured, theory = f"modes/strength/{n}", f"modes/theory/{n}"
        traces.append(line(found.get(measured), f"mode {n} (s = {s:.3g})", measured, mode="markers", marker={"size": 5, "color": color}))
        traces.append(line(found.get(theory), f"mode {n}, closed form", theory, line={"dash": "dash", "color": color}))
    chart = layout("Strength u_αᵀW v_α per mode, and its closed form", ytitle="strength u_αᵀW v_α")
    return Figure(id="modes-strength", data=traces, layout=chart)


def figures(source: Source, options: Options) -> View:
    row = latest(source, "modes")
    singular_values = row.data["singular_values"] if row is not None else []
    off = source.series(["modes/off_diagonal"]).get("modes/off_diagonal")
    decoupling = Figure(
        id="modes-decoupling",
        data=[line(off, "‖W − Σ a_α u_α v_αᵀ‖ / ‖W‖", "modes/off_diagonal", mode="lines+markers", marker={"size": 4})],
        layout=layout("Share of the map off the modes (0: decoupled)", ylog=True),
    )
    view = View(figures=[_strengths(source, singular_values), decoupling])
    if row is None:
        return view
    d = row.data
    assumptions = [] if d["full_batch"] else ["the batches are not the whole training set (the closed form is gradient flow's)"]
    if d["whiteness"] > 1e-3:
        assumptions.append(f"the inputs are not white (‖Σxx − I‖/√n = {d['whiteness']:.3g})")
    caveat = f" Beware: {'; '.join(assumptions)}." if assumptions else ""
    view.notes = {
        "modes-info": f"A depth-{d['depth']} linear network on {d['examples']:,} training examples, along the {len(singular_values)} "
        f"largest singular modes (u_α, s_α, v_α) of their Σyx. Closed form (Saxe, McClelland & Ganguli 2014): {d['formula']}, "
        f"from each mode's strength a₀ at step {d['start_step']}, with t = Σ lr since then and c = {d['curvature']:.4g} the loss's "
        f"curvature along a mode.{caveat}"
    }
    return view
