"""What a view's figures are made of, and what they read.

A figure is a Plotly figure (traces and layout, plain JSON) with an id (the element the dashboard draws it in)
and facts about it (`meta`: the element's data attributes, e.g. the step of the density drawn). A trace that
draws a series carries its name in `meta.series`, so the dashboard can extend it with live points; one that
may be smoothed carries `meta.smooth`. A figure of rows rather than marks (a table of examples) has `table`.
The dashboard draws these as they are, the HTML report embeds them: one description of each figure.
"""

from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, Field

MAX_POINTS = 2000


class Table(BaseModel):
    caption: str
    header: list[str]
    rows: list[list[str]]


class Figure(BaseModel):
    id: str
    data: list[dict[str, Any]] = []
    layout: dict[str, Any] = {}
    meta: dict[str, str | int | float | None] = {}
    table: Table | None = None

    @property
    def empty(self) -> bool:
        """Nothing to draw yet: no rows, and no trace with a point."""
        return self.table is None and not any(len(t.get("x") or t.get("y") or t.get("z") or []) for t in self.data)


class Options(BaseModel):
    """What a viewer chose: which of several results to draw, a log colour scale, a 3-D surface."""

    result: int = Field(0, ge=0, le=2**31 - 1, description="the id of the result to draw (0: the newest)")
    log: bool = False
    surface3d: bool = False


class Choice(BaseModel):
    value: str
    label: str


class View(BaseModel):
    """A view's figures in display order, its notes (text for elements beside them, by id) and, for a view that
    shows one of several results, the results to choose from."""

    figures: list[Figure]
    notes: dict[str, str] = {}
    choices: list[Choice] = []


@dataclass
class Series:
    steps: list[int]
    values: list[float | None]


@dataclass
class Row:
    id: int
    step: int
    data: dict[str, Any]


class Source(Protocol):
    """A job's recorded numbers, as figures read them."""

    spec: dict[str, Any]

    def series(self, names: list[str], max_points: int = MAX_POINTS) -> dict[str, Series]:
        """The named series the job has (downsampled, spikes kept), in the order asked."""
        ...

    def names(self, prefix: str) -> list[str]:
        """The job's series whose names start with `prefix`."""
        ...

    def results(self, kind: str) -> list[Row]:
        """Every result of a kind, in step order."""
        ...


def layout(title: str, ylog: bool = False, xtitle: str | None = "step", ytitle: str | None = None) -> dict[str, Any]:
    """The house layout (the dashboard adds its colour theme)."""
    return {
        "title": {"text": title},
        "margin": {"t": 40, "r": 10, "b": 40, "l": 55},
        "xaxis": {"title": {"text": xtitle}} if xtitle else {},
        "yaxis": {"type": "log" if ylog else "linear"} | ({"title": {"text": ytitle}} if ytitle else {}),
        "legend": {"orientation": "h", "y": -0.28},
    }


def line(series: Series | None, name: str, key: str, **style: Any) -> dict[str, Any]:
    """A trace of one series (empty when the job has not recorded it yet), extendable with live points."""
    steps, values = (series.steps, series.values) if series is not None else ([], [])
    return {"name": name, "x": steps, "y": values, "mode": "lines", "connectgaps": False, "meta": {"series": key}, **style}


def marked_charts(
    source: Source, charts: dict[str, tuple[str, bool, dict[str, str]]], ytitles: dict[str, str] | None = None
) -> list[Figure]:
    """One chart per entry, element id → (title, log y, {series name: label}): each series as lines with markers
    (a probe's measurements, sparse in steps); `ytitles` by element id."""
    found = source.series([name for _, _, labels in charts.values() for name in labels])
    return [
        Figure(
            id=element,
            data=[line(found.get(name), label, name, mode="lines+markers", marker={"size": 4}) for name, label in labels.items()],
            layout=layout(title, ylog, ytitle=(ytitles or {}).get(element)),
        )
        for element, (title, ylog, labels) in charts.items()
    ]


def vline(x: float, dash: str = "dot", color: str = "#888") -> dict[str, Any]:
    return {"type": "line", "x0": x, "x1": x, "yref": "paper", "y0": 0, "y1": 1, "line": {"dash": dash, "color": color}}


def latest(source: Source, kind: str) -> Row | None:
    rows = source.results(kind)
    return rows[-1] if rows else None
