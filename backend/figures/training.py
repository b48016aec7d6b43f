"""The training curves every job has: loss, accuracy and the learning rate over steps."""

from backend.figures.base import Options, Figure, Source, View, layout, line

TITLE = "Training"
PROBES: list[str] = []
ANALYSES: list[str] = []
CHARTS = [  # (element id, title, series, log y, smoothed series, drawn as a step function)
    ("loss-plot", "Loss", ["train/loss", "val/loss"], True, ["train/loss"], False),
    ("acc-plot", "Accuracy", ["train/accuracy", "val/accuracy"], False, [], False),
    ("lr-plot", "Learning rate", ["lr"], False, [], True),
]


def figures(source: Source, options: Options) -> View:
    found = source.series([name for chart in CHARTS for name in chart[2]])
    out = []
    for element, title, names, ylog, smooth, steps in CHARTS:
        traces = []
        for name in names:
            style = {"mode": "lines+markers" if name.startswith("val/") else "lines"}
            if steps:
                style["line"] = {"shape": "hv"}
            trace = line(found.get(name), name, name, **style)
            if name in smooth:
                trace["meta"]["smooth"] = True
            traces.append(trace)
        out.append(Figure(id=element, data=traces, layout=layout(title, ylog)))
    return View(figures=out)
