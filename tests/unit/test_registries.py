"""The registries agree: every probe has its settings, its result document and a view; every kind of checkpoint
analysis is known to the API, the worker, a view and the analyses table; the dashboard mounts every view the
server describes."""

import re
from pathlib import Path
from typing import get_args

from backend.figures import FIGURES, result_kinds
from backend.spec import ANALYSIS_KINDS, GRID_RESULTS
from dynascope.probes import PROBES
from dynascope.results import RESULTS, LandscapeResult
from dynascope.settings import Probes
from worker.training.analyses import ANALYSES

FRONTEND = Path(__file__).parents[2] / "frontend"


def _object_keys(source: str, name: str) -> set[str]:
    body = re.search(rf"const {name} = \{{(.*?)\n\}};", source, re.S)
    assert body, f"{name} not found"
    return set(re.findall(r"^\s*(\w+):", body.group(1), re.M))


def test_every_probe_has_settings_a_result_and_a_view():
    assert list(PROBES) == list(Probes.model_fields)
    for name, probe in PROBES.items():
        assert probe.name == name
        assert probe.Settings in get_args(Probes.model_fields[name].annotation), name
        assert name in RESULTS, f"{name} has no result document"
        assert [view for view in FIGURES.values() if name in view.PROBES], f"no view draws {name}"
    assert {p for view in FIGURES.values() for p in view.PROBES} == set(PROBES)


def test_every_analysis_kind_is_known_to_the_api_the_worker_and_a_view():
    assert list(ANALYSES) == list(ANALYSIS_KINDS)
    for kind, worker_kind in ANALYSES.items():
        assert worker_kind.request is ANALYSIS_KINDS[kind]
        assert ANALYSIS_KINDS[kind].model_fields["kind"].default == kind
    assert {a for view in FIGURES.values() for a in view.ANALYSES} == set(ANALYSIS_KINDS)


def test_grid_results_are_the_landscape_probe_and_the_grid_analyses_and_the_landscape_view_draws_them():
    grids = {f"{kind}_analysis" for kind, k in ANALYSES.items() if k.plan is not None}
    assert set(GRID_RESULTS) == {"landscape"} | grids
    assert RESULTS["landscape"] is LandscapeResult
    assert set(result_kinds("landscape")) == set(GRID_RESULTS)


def test_every_view_has_its_parts():
    for name, view in FIGURES.items():
        assert view.TITLE and callable(view.figures), name
        assert set(view.PROBES) <= set(PROBES) and set(view.ANALYSES) <= set(ANALYSIS_KINDS), name


def test_the_dashboard_mounts_every_view_and_summarizes_every_analysis():
    assert _object_keys((FRONTEND / "views" / "index.js").read_text(), "VIEWS") == set(FIGURES)
    assert _object_keys((FRONTEND / "analyses.js").read_text(), "SUMMARIES") == set(ANALYSIS_KINDS)
