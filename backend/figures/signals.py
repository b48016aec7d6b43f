"""The opposing-signals view: the probe set's loss with the steps where a pair was found, the heavy-tail share of
|Δℓ|, and per pair (the most opposed first) its two groups' losses over training with even/odd envelopes (the
swings have period 2), their classes, a few of their examples and their shared feature."""

from typing import Any

from backend.figures.base import Options, Figure, Row, Series, Source, Table, View, layout, line, vline

TITLE = "Opposing signals"
PROBES = ["signals"]
ANALYSES: list[str] = []
THUMBS_PER_ROW = 4
TRIGGERS = {"schedule": "schedule", "loss rise": "a rise of the loss", "sharpness": "the sharpness reaching 2/lr"}
COLORS = {"A": "#1f77b4", "B": "#ff7f0e"}
PLAIN_AXIS = {"showticklabels": False, "showgrid": False, "zeroline": False}


def envelopes(values: list[float | None]) -> tuple[list[float | None], list[float | None]]:
    """Upper and lower envelopes of a period-2 oscillation: the max and min of each point and its neighbours."""
    upper, lower = [], []
    for i in range(len(values)):
        near = [v for v in values[max(i - 1, 0) : i + 2] if v is not None]
        upper.append(max(near) if near else None)
        lower.append(min(near) if near else None)
    return upper, lower


def curve(window: list[int], losses: list[float], tracked: Series | None) -> tuple[list[int], list[float | None]]:
    """A group's mean loss: the window around its search (kept with the pair), then the steps tracked after it."""
    steps, values = list(window), list(losses)
    last = steps[-1] if steps else -1
    if tracked is not None:
        after = [(s, v) for s, v in zip(tracked.steps, tracked.values, strict=True) if s > last]
        steps += [s for s, _ in after]
        values += [v for _, v in after]
    return steps, values


def tile(images: list[list[list[float]]], per_row: int) -> list[list[float | None]]:
    """Images (2-D arrays) as one grid, `per_row` to a row, a blank row/column between neighbours."""
    h, w, cols = len(images[0]), len(images[0][0]), min(per_row, len(images))
    z: list[list[float | None]] = []
    for start in range(0, len(images), cols):
        if start:
            z.append([None] * (cols * (w + 1) - 1))
        for r in range(h):
            row: list[float | None] = []
            for i in range(start, start + cols):
                if i > start:
                    row.append(None)
                row += images[i][r] if i < len(images) else [None] * w
            z.append(row)
    return z


def _is_image(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], list) and bool(value[0]) and isinstance(value[0][0], list)


def _flat(value: Any) -> list[Any]:
    return [x for v in value for x in _flat(v)] if isinstance(value, list) else [value]


def _examples(element: str, side: str, group: dict[str, Any]) -> Figure:
    shown = group.get("examples") or []
    title = f"Group {side}: {len(shown)} of its examples"
    meta = {"examples": len(shown)}
    if shown and _is_image(shown[0]):
        chart = layout(title, xtitle=None)
        chart["yaxis"] = {"autorange": "reversed", "scaleanchor": "x", **PLAIN_AXIS}
        chart["xaxis"] = PLAIN_AXIS
        z = tile([image[0] for image in shown], THUMBS_PER_ROW)
        trace = {"type": "heatmap", "z": z, "colorscale": "Greys", "reversescale": True, "showscale": False, "hoverongaps": False}
        return Figure(id=element, data=[trace], layout=chart, meta=meta)
    # text snippets, or a table's rows (first 12 values)
    rows = group.get("snippets") or [", ".join(f"{float(v):.3g}" for v in _flat(row)[:12]) for row in shown]
    header = ["example", "text" if group.get("snippets") else "values"]
    return Figure(id=element, meta=meta, table=Table(caption=title, header=header, rows=[[str(i + 1), t] for i, t in enumerate(rows)]))


def _feature(element: str, side: str, feature: list[Any]) -> Figure:
    chart = layout(f"Group {side}: mean input − dataset mean", xtitle=None)
    if _is_image(feature):
        chart["yaxis"] = {"autorange": "reversed", "scaleanchor": "x", "title": {"text": "row"}, "zeroline": False, "showgrid": False}
        chart["xaxis"] = {"title": {"text": "column"}, "zeroline": False, "showgrid": False, "constrain": "domain"}
        return Figure(
            id=element, data=[{"type": "heatmap", "z": feature[0], "colorscale": "RdBu", "reversescale": True, "zmid": 0}], layout=chart
        )
    return Figure(id=element, data=[{"type": "bar", "y": _flat(feature)}], layout=chart)


def _pair(k: int, row: Row, tracked: dict[str, Series]) -> tuple[list[Figure], dict[str, str]]:
    p = row.data
    traces = []
    for side, color in COLORS.items():
        steps, values = curve(p["steps"], p[side]["loss"], tracked.get(f"signals/pair{p['pair']}/{side}"))
        if not steps:
            continue
        upper, lower = envelopes(values)
        traces += [
            {"name": f"group {side}", "x": steps, "y": values, "mode": "lines", "line": {"color": color, "width": 1}, "opacity": 0.35},
            {"name": f"{side} upper envelope", "x": steps, "y": upper, "mode": "lines", "line": {"color": color}},
            {"name": f"{side} lower envelope", "x": steps, "y": lower, "mode": "lines", "line": {"color": color, "dash": "dot"}},
        ]
    curves = layout("Group losses around the search and after it (raw and even/odd envelopes)", True, ytitle="group's mean loss")
    curves["shapes"] = [vline(row.step)]
    classes = layout("Classes in each group (expanded)", xtitle="class")
    bars = [
        {
            "type": "bar",
            "name": f"group {g}",
            "x": [f"class {c}" for c in range(len(p[g].get("classes") or []))],
            "y": p[g].get("classes") or [],
        }
        for g in COLORS
    ]
    out = [Figure(id=f"pair-{k}-curves", data=traces, layout=curves), Figure(id=f"pair-{k}-classes", data=bars, layout=classes)]
    out += [_examples(f"pair-{k}-{g}-examples", g, p[g]) for g in COLORS]
    out += [_feature(f"pair-{k}-{g}-feature", g, p[g]["mean_input_minus_all"]) for g in COLORS if p[g].get("mean_input_minus_all")]
    trigger = f" (search on {', '.join(TRIGGERS.get(t, t) for t in p['trigger'])})" if p.get("trigger") else ""
    antiphase = "—" if p["antiphase"] is None else f"{p['antiphase']:.2f}"
    notes = {
        f"pair-{k}-heading": f"Pair {p['pair'] + 1}, found at step {row.step}{trigger}: cos(ḡ_A, ḡ_B) = {p['cos']:.2f}, anti-phase {antiphase}"
    }
    if a := p.get("hessian_alignment"):
        notes[f"pair-{k}-alignment"] = (
            f"|cos(top Hessian eigenvector at step {a['eigenvector_step']}, ĝ_A − ĝ_B)| = {a['abs_cos']:.3f} "
            f"(a random direction: {a['random_abs_cos']:.3f})"
        )
    for g in COLORS:
        core = p[g]["core"]
        rows = ", ".join(map(str, core[:12])) + (", …" if len(core) > 12 else "")
        notes[f"pair-{k}-{g}-about"] = (
            f"Group {g}: {len(core)} core examples, {len(p[g]['expanded'])} with those that side with them; rows {rows}"
        )
    return out, notes


def figures(source: Source, options: Options) -> View:
    pairs = source.results("signals")
    found = source.series(["signals/probe_loss", "signals/heavy_tail"])
    loss = layout("Probe-set loss; dotted: steps where a reported pair was found", True, ytitle="mean loss")
    loss["shapes"] = [vline(p.step, color="#cf222e") for p in pairs]
    out = [
        Figure(
            id="signals-loss",
            data=[line(found.get("signals/probe_loss"), "probe loss", "signals/probe_loss")],
            layout=loss,
            meta={"pairs": len(pairs)},
        ),
        Figure(
            id="signals-tail",
            data=[line(found.get("signals/heavy_tail"), "share of Σ|Δℓ_i| in the top 1 %", "signals/heavy_tail")],
            layout=layout("Heavy tail: share of Σ|Δℓ_i| carried by the top 1 % of examples"),
        ),
    ]
    s = "" if len(pairs) == 1 else "s"
    notes = {
        "signals-info": f"{len(pairs)} pair{s} of groups pulling against each other, each confirmed by its groups' losses swinging out of "
        "phase (anti-phase score ≤ the threshold); the most opposed pair (lowest cos) first."
        if pairs
        else "No opposing pair confirmed yet."
    }
    tracked = source.series(source.names("signals/pair"))
    for k, row in enumerate(sorted(pairs, key=lambda r: r.data["cos"])):
        drawn, said = _pair(k, row, tracked)
        out += drawn
        notes |= said
    return View(figures=out, notes=notes)
