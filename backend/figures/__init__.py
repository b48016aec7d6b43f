"""Figure descriptions, one module per view of a job: each says which probes and analysis kinds it draws and
builds its figures from what the job recorded. The dashboard draws them (GET /jobs/{id}/figures/{view}) and the
HTML report embeds them; frontend/views/index.js has one module per name here."""

from types import ModuleType

from backend.figures import collapse, gradstats, hessian, instability, kernel, landscape, modes, representations, signals, training
from backend.figures.base import Figure, Source, View

FIGURES: dict[str, ModuleType] = {
    "training": training,
    "hessian": hessian,
    "gradstats": gradstats,
    "signals": signals,
    "landscape": landscape,
    "collapse": collapse,
    "representations": representations,
    "kernel": kernel,
    "modes": modes,
    "instability": instability,
}


def result_kinds(name: str) -> list[str]:
    """The result kinds a view reads: each probe's own (named like the probe), and `<analysis>_analysis`."""
    view = FIGURES[name]
    return [*view.PROBES, *(f"{kind}_analysis" for kind in view.ANALYSES)]


def views_of(source: Source, kinds: set[str]) -> list[str]:
    """The views a job shows: training, and each view of a probe in its spec or of a kind of result it has
    (`kinds`: a probe's name, or `<analysis>_analysis`)."""
    shown = {name for name, cfg in source.spec.get("probes", {}).items() if cfg} | kinds
    shown |= {kind.removesuffix("_analysis") for kind in kinds if kind.endswith("_analysis")}
    return [name for name, view in FIGURES.items() if not (view.PROBES or view.ANALYSES) or shown & {*view.PROBES, *view.ANALYSES}]


__all__ = ["FIGURES", "Figure", "Source", "View", "result_kinds", "views_of"]
