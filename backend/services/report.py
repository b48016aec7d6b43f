"""A job as one self-contained HTML file: its facts, spec and every chart, with plotly.js inside (it opens
offline, and can be mailed or archived)."""

import html
import json
from collections.abc import Iterator

import numpy as np
import plotly.graph_objects as go
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models import Job, Result
from backend.services.downsample import downsample_minmax
from backend.services.series import read_series, series_names

MAX_POINTS = 2000
GROUPS = [  # (title, series prefixes or names, log y)
    ("Loss", ["train/loss", "val/loss"], True),
    ("Accuracy", ["train/accuracy", "val/accuracy"], False),
    ("Learning rate", ["lr"], False),
    ("Sharpness and the stability threshold", ["hessian/sharpness", "hessian/threshold", "hessian/lambda_*"], False),
    ("Gradient noise scale", ["grad/noise_scale*"], True),
    ("Coherence and Cockpit's tests", ["grad/alpha", "grad/norm_test", "grad/inner_test", "grad/ortho_test", "grad/mean_gsnr"], True),
    ("Update ratio and cosines", ["grad/update_ratio", "grad/cos_previous_grad", "grad/cos_previous_update"], False),
    ("Opposing signals: probe loss and heavy tail", ["signals/probe_loss", "signals/heavy_tail"], True),
    ("Opposing signals: group losses", ["signals/pair*"], True),
]


def _wanted(names: list[str], patterns: list[str]) -> list[str]:
    """The series named by the patterns, in their order; a pattern ending in * is a prefix."""
    out = []
    for pattern in patterns:
        if pattern.endswith("*"):
            out += [n for n in names if n.startswith(pattern[:-1])]
        elif pattern in names:
            out.append(pattern)
    return list(dict.fromkeys(out))


def _series_figures(session: Session, job: Job) -> Iterator[go.Figure]:
    names = series_names(session, job.id)
    for title, patterns, log in GROUPS:
        chosen = _wanted(names, patterns)
        if not chosen:
            continue
        fig = go.Figure()
        for name, (steps, values) in read_series(session, job.id, chosen).items():
            s, v = downsample_minmax(steps, values, MAX_POINTS)
            y = [None if not np.isfinite(x) else float(x) for x in v]
            fig.add_scatter(x=s.tolist(), y=y, name=name, mode="lines", connectgaps=False)
        fig.update_layout(title=title, xaxis_title="step", yaxis_type="log" if log else "linear", height=380)
        yield fig


def _latest(session: Session, job: Job, kind: str) -> Result | None:
    query = select(Result).where(Result.job_id == job.id, Result.kind == kind).order_by(Result.step.desc(), Result.id.desc())
    return session.scalars(query).first()


def _result_figures(session: Session, job: Job) -> Iterator[go.Figure]:
    hessian = _latest(session, job, "hessian")
    if hessian is not None and hessian.data.get("density"):
        d = hessian.data["density"]
        fig = go.Figure(go.Scatter(x=d["grid"], y=[max(v, 1e-12) for v in d["density"]], mode="lines", fill="tozeroy", name="density"))
        fig.add_vline(x=d["bulk_edge"], line_dash="dash", annotation_text="bulk edge")
        fig.update_layout(title=f"Hessian spectral density at step {hessian.step}: ≈{d['outliers']} outliers", yaxis_type="log",
                          xaxis_title="eigenvalue", height=380)  # fmt: skip
        yield fig
    yield from _gradstats_figures(_latest(session, job, "gradstats"))
    signals = select(Result).where(Result.job_id == job.id, Result.kind == "signals").order_by(Result.step, Result.id)
    yield from (_pair_figure(r) for r in session.scalars(signals))
    for kind in ("landscape", "landscape_analysis", "trajectory_analysis", "interpolation_analysis"):
        result = _latest(session, job, kind)
        if result is None or result.data.get("partial"):
            continue
        r = result.data
        if r["dims"] == 1:
            fig = go.Figure(go.Scatter(x=r["xs"], y=r["loss"], mode="lines+markers", name="loss"))
            fig.update_layout(title=f"Loss along a line ({kind}, step {result.step})", xaxis_title="coordinate", height=380)
        else:
            z = [list(row) for row in zip(*r["loss"])]  # z[row = y][column = x]
            fig = go.Figure(go.Contour(x=r["xs"], y=r["ys"], z=z, colorscale="Viridis", ncontours=30, contours_coloring="heatmap"))
            if r.get("path"):
                fig.add_scatter(x=r["path"]["x"], y=r["path"]["y"], mode="lines+markers+text", text=[str(s) for s in r["path"]["steps"]],
                                name="training path")  # fmt: skip
            fig.update_layout(title=f"Loss landscape ({kind}, {r['plane']} plane, step {result.step})", height=480)
        yield fig


def _gradstats_figures(result: Result | None) -> Iterator[go.Figure]:
    """The latest per-example histogram and layer spectra of the gradstats probe."""
    if result is None:
        return
    if histogram := result.data.get("histogram"):
        edges = histogram["edges"]
        sample = f"{histogram['examples']} examples × {histogram['elements_per_example']:,} of {histogram['parameters']:,} coordinates"
        fig = go.Figure(go.Bar(x=[(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)], y=histogram["counts"], name="count"))
        fig.update_layout(title=f"Per-example gradient elements at step {result.step} (sample: {sample})", yaxis_type="log",
                          xaxis_title="gradient element", height=380)  # fmt: skip
        yield fig
    if spectra := result.data.get("spectra"):
        fig = go.Figure(go.Bar(x=list(spectra), y=[v["sigma1_ratio"] for v in spectra.values()], name="σ1 / Σσ"))
        fig.update_layout(title=f"Layer gradient spectra at step {result.step}: σ1 / Σσ", xaxis_title="layer", height=380)
        yield fig


def _pair_figure(result: Result) -> go.Figure:
    """An opposing pair: its two groups' mean losses in the window around the search that found it."""
    d = result.data
    fig = go.Figure()
    for side in ("A", "B"):
        group = d[side]
        classes = f", classes {group['classes']}" if group.get("classes") else ""
        fig.add_scatter(x=d["steps"], y=group["loss"], mode="lines", name=f"group {side}: {len(group['core'])} core examples{classes}")
    fig.add_vline(x=result.step, line_dash="dot")
    found = f"found at step {result.step}" + (f" (search on {', '.join(d['trigger'])})" if d.get("trigger") else "")
    fig.update_layout(title=f"Opposing pair {d['pair'] + 1}, {found}: cos {d['cos']:.2f}, anti-phase {d['antiphase']:.2f}",
                      xaxis_title="step", yaxis_type="log", height=380)  # fmt: skip
    return fig


def render(session: Session, job: Job, plotly_js: str) -> str:
    figures = [*_series_figures(session, job), *_result_figures(session, job)]
    charts = "\n".join(f.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}) for f in figures)
    facts = {"status": job.status, "step": job.step, "created": job.created_at, "finished": job.finished_at, "device": job.device,
             "worker": job.worker_host, "model": job.model_kind, "data": job.data_kind, "tags": ", ".join(job.tags)}  # fmt: skip
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
