"""A sweep (or any selection of runs) as one self-contained HTML file: its runs grouped into a mean with a band
for each main series, the runs table, the phase diagram, the learning-rate sensitivity where the learning rate
is swept, and the specs; plotly.js inside, so it opens offline (the job report's counterpart)."""

import html
import json
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

from backend.figures.sweep import Band, band_figure, phase_figure
from backend.models import Job, Sweep
from backend.services import runs_table
from backend.services.groups import group_runs
from backend.services.phase import phase_diagram
from backend.services.report import figure_html
from backend.services.sensitivity import NoLearningRate, default_by, learning_rate_field, sensitivity
from backend.services.series import series_names

SERIES = ["train/loss", "val/loss", "val/accuracy", "hessian/sharpness"]
METRICS = ["final:val/loss", "min:val/loss", "final:train/loss", "final:val/accuracy"]


def _cell(value: Any) -> str:
    return html.escape(f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value))


def _table(header: list[str], rows: list[list[Any]], caption: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sensitivity(session: Session, jobs: list[Job], fields: list[str]) -> str:
    try:
        lr = learning_rate_field(fields)
    except NoLearningRate:
        return ""
    out = sensitivity(session, jobs, lr, default_by(fields, lr), "val/loss")
    rows = [[c.value, c.sensitivity, c.initial, c.best, ", ".join(f"{x:g}" for x in c.lrs)] for c in out.curves]
    return "<h2>Learning-rate sensitivity</h2>" + _table(
        [out.by or "", "LR sensitivity", "ℓ₀", "best final loss", "learning rates"], rows, out.definition
    )


def render(session: Session, sweep: Sweep | None, query: Select[tuple[Job]], by: list[str] | None, band: Band, plotly_js: str) -> str:
    jobs = list(session.scalars(query.order_by(Job.id)))
    fields = list(sweep.spec["sweep"]) if sweep is not None else runs_table.DEFAULT_FIELDS
    by = by if by is not None else [f for f in fields if not f.endswith("seed")] if sweep is not None else []
    recorded = {n for job in jobs for n in series_names(session, job.id)}
    charts = [
        figure_html(band_figure(group_runs(session, jobs, by, name, 2000), band, element=f"groups-{i}"))
        for i, name in enumerate(s for s in SERIES if s in recorded)
    ]
    metrics = [m for m in METRICS if m.split(":", 1)[1] in recorded]
    table = runs_table.table(session, query, fields, metrics, [], "id", len(jobs) or 1, 0)
    rows = [[r.id, r.name, r.status, *(r.fields[f] for f in fields), *(r.metrics[m] for m in metrics)] for r in table.items]
    runs = _table(["id", "name", "status", *fields, *metrics], rows, f"{len(jobs)} runs")
    phase = ""
    if sweep is not None and "val/loss" in recorded:
        x, y = fields[0], fields[1] if len(fields) > 1 else None
        phase = "<h2>Phase diagram</h2>" + figure_html(phase_figure(phase_diagram(session, jobs, x, y, "final:val/loss")))
    title = f"Sweep {sweep.id}: {sweep.name}" if sweep is not None else f"{len(jobs)} runs"
    specs = (
        json.dumps(sweep.spec, indent=2)
        if sweep is not None
        else "\n\n".join(f"# job {j.id}\n{json.dumps(j.spec, indent=2)}" for j in jobs)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dynascope report: {html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}}th{{text-align:left;padding-right:1rem}}
td{{padding-right:1rem}}caption{{text-align:left;color:#57606a}}pre{{background:#f6f8fa;padding:1rem;overflow:auto}}</style>
<script>{plotly_js}</script></head>
<body><h1>{html.escape(title)}</h1>
<h2>Runs grouped by {html.escape(", ".join(by) or "nothing (one group)")}</h2>
{"".join(charts)}
<h2>Runs</h2>{runs}
{phase}
{_sensitivity(session, jobs, fields)}
<h2>Spec{"" if sweep is not None else "s"}</h2><pre>{html.escape(specs)}</pre>
<p>Exported by Dynascope; the charts need no network.</p></body></html>"""
