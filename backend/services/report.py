"""A job as one self-contained HTML file: its facts, spec and every view's figures (the dashboard's own
descriptions, backend/figures), with plotly.js inside (it opens offline, and can be mailed or archived)."""

import html
import json

import plotly.graph_objects as go
from sqlalchemy.orm import Session

from backend.figures import FIGURES, Figure, View, landscape, views_of
from backend.figures.base import Options
from backend.models import Job
from backend.services.job_source import JobSource


def _views(source: JobSource) -> list[tuple[str, View]]:
    """Each view of the job with its figures; the landscape view once per finished grid (the newest of each kind)."""
    out = []
    for name in views_of(source, source.kinds()):
        if name != "landscape":
            out.append((FIGURES[name].TITLE, FIGURES[name].figures(source, Options())))
            continue
        for kind in landscape.KINDS:
            finished = [row for row in source.results(kind) if not row.data.get("partial")]
            if finished:
                out.append((f"{landscape.TITLE} ({kind})", landscape.figures(source, Options(result=finished[-1].id))))
    return out


def figure_html(figure: Figure) -> str:
    if figure.table is not None:
        t = figure.table
        head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
        return f"<table><caption>{html.escape(t.caption)}</caption><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    drawn = go.Figure(data=figure.data, layout={**figure.layout, "height": 480 if figure.id == "landscape-plot" else 380})
    return drawn.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}, div_id=figure.id)


def _section(title: str, view: View) -> str:
    notes = "".join(f"<p>{html.escape(text)}</p>" for text in view.notes.values())
    return f"<h2>{html.escape(title)}</h2>{notes}" + "\n".join(figure_html(f) for f in view.figures if not f.empty)


def render(session: Session, job: Job, plotly_js: str) -> str:
    charts = "\n".join(_section(title, view) for title, view in _views(JobSource(session, job)) if any(not f.empty for f in view.figures))
    facts = {
        "status": job.status,
        "step": job.step,
        "created": job.created_at,
        "finished": job.finished_at,
        "device": job.device,
        "worker": job.worker_host,
        "model": job.model_kind,
        "data": job.data_kind,
        "tags": ", ".join(job.tags),
    }
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v or ''))}</td></tr>" for k, v in facts.items())
    notes = f"<h2>Notes</h2><p>{html.escape(job.notes)}</p>" if job.notes else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dynascope report: job {job.id} {html.escape(job.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}}th{{text-align:left;padding-right:1rem}}
pre{{background:#f6f8fa;padding:1rem;overflow:auto}}</style>
<script>{plotly_js}</script></head>
<body><h1>Job {job.id}: {html.escape(job.name)}</h1><table>{rows}</table>{notes}
{charts}
<h2>Spec</h2><pre>{html.escape(json.dumps(job.spec, indent=2))}</pre>
<p>Exported by Dynascope; the charts need no network.</p></body></html>"""
