"""The gallery's phenomena: each a spec under examples/gallery/, the figures that show it (the API's own figure
descriptions, what the dashboard draws) and the number it measured, read back through the API."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from dynascope.client import Client

Measured = dict[str, float]


@dataclass
class Runs:
    """A gallery spec's jobs on the server (one, or a sweep's), and how to read them."""

    client: Client
    jobs: list[dict[str, Any]]
    sweep: int | None

    @property
    def first(self) -> int:
        return self.jobs[0]["id"]

    def figure(self, job: int, view: str, element: str, **options: Any) -> dict[str, Any]:
        drawn = self.client.call("GET", f"/jobs/{job}/figures/{view}", params=options)
        return next(f for f in drawn["figures"] if f["id"] == element)

    def values(self, job: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        series = self.client.metrics(job, [name])[name]
        return series.steps, series.values

    def latest(self, job: int, kind: str) -> dict[str, Any]:
        return self.client.results(job, kind)[-1]

    def analysis(self, job: int, request: dict[str, Any]) -> dict[str, Any]:
        """Runs an analysis of the job's kept checkpoints to its end; its newest result."""
        made = self.client.call("POST", f"/jobs/{job}/analyses", json=request)
        while (state := self._analysis(job, made["id"]))["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(1)
        if state["status"] != "succeeded":
            raise RuntimeError(f"analysis {made['id']} of job {job} {state['status']}: {state['error']}")
        return next(
            r for r in reversed(self.client.results(job, f"{request['kind']}_analysis")) if r["data"].get("analysis_id") == made["id"]
        )

    def _analysis(self, job: int, analysis: int) -> dict[str, Any]:
        return next(a for a in self.client.call("GET", f"/jobs/{job}/analyses") if a["id"] == analysis)


@dataclass
class Shot:
    figures: list[dict[str, Any]]
    measured: Measured
    says: str  # one sentence with the measured numbers in it


@dataclass(frozen=True)
class Phenomenon:
    name: str
    title: str
    paper: str
    spec: str  # under examples/gallery/
    shoot: Callable[[Runs], Shot]


def _lr(job: dict[str, Any]) -> float:
    return float(job["spec"]["optimizer"]["lr"])


def edge_of_stability(runs: Runs) -> Shot:
    measured = {}
    for job in runs.jobs:
        steps, sharpness = runs.values(job["id"], "hessian/sharpness")
        threshold = 2 / _lr(job)
        reached = steps[sharpness >= threshold]
        after = sharpness[steps >= reached[0]] if len(reached) else sharpness[-1:]
        measured[f"lr {_lr(job):g}"] = round(float(np.median(after) / threshold), 2)
        measured[f"lr {_lr(job):g} reached at step"] = float(reached[0]) if len(reached) else float("nan")
    groups = runs.client.groups("hessian/sharpness", by="optimizer.lr", sweep_id=runs.sweep)
    loss = runs.client.groups("train/loss", by="optimizer.lr", sweep_id=runs.sweep, logy=True)
    said = " and ".join(
        f"{measured[f'lr {_lr(j):g}']:.2f} × 2/lr at lr {_lr(j):g} (from step {measured[f'lr {_lr(j):g} reached at step']:.0f})"
        for j in runs.jobs
    )
    return Shot([groups["figure"], loss["figure"]], measured, f"median sharpness once it first reaches 2/lr: {said}")


def hessian_outliers(runs: Runs) -> Shot:
    result = runs.latest(runs.first, "hessian")["data"]
    measured = {"outliers": float(result["density"]["outliers"]), "classes": float(result["n_classes"])}
    says = f"≈{measured['outliers']:.0f} eigenvalues beyond the bulk's edge with {measured['classes']:.0f} classes"
    return Shot([runs.figure(runs.first, "hessian", "density-plot")], measured, says)


def opposing_signals(runs: Runs) -> Shot:
    pair = min(runs.client.results(runs.first, "signals"), key=lambda r: r["data"]["cos"])  # the most opposed
    d = pair["data"]
    measured = {"cos": round(d["cos"], 2), "antiphase": round(d["antiphase"], 2), "step": float(pair["step"])}
    # (the view draws the most opposed pair first)
    figures = [runs.figure(runs.first, "signals", "pair-0-curves"), runs.figure(runs.first, "signals", "signals-loss")]
    says = (
        f"the most opposed pair, found at step {pair['step']}: cos(ḡ_A, ḡ_B) = {measured['cos']:.2f}, "
        f"its groups' losses in anti-phase (correlation {measured['antiphase']:.2f})"
    )
    if (aligned := d.get("hessian_alignment")) is not None:
        measured |= {"hessian_cos": round(aligned["abs_cos"], 2), "random_cos": round(aligned["random_abs_cos"], 3)}
        says += f", ĝ_A − ĝ_B along the top Hessian eigenvector (|cos| {aligned['abs_cos']:.2f}; a random direction {aligned['random_abs_cos']:.3f})"
    return Shot(figures, measured, says)


def sgd_noise(runs: Runs) -> Shot:
    temperature, sharpness = [], []
    for job in runs.jobs:
        temperature.append(_lr(job) / job["spec"]["train"]["batch_size"])
        sharpness.append(runs.values(job["id"], "hessian/sharpness")[1][-1])
    rho = float(spearmanr(temperature, sharpness).statistic)
    phase = runs.client.call(
        "GET", f"/sweeps/{runs.sweep}/phase", params={"metric": "final:hessian/sharpness", "x": "optimizer.lr", "y": "train.batch_size"}
    )
    middle = runs.jobs[len(runs.jobs) // 2]["id"]
    measured = {"spearman": round(rho, 2), "runs": float(len(runs.jobs))}
    says = f"Spearman ρ between lr/B and the final sharpness over {len(runs.jobs)} runs: {rho:.2f}"
    return Shot([runs.figure(middle, "gradstats", "gradstats-noise"), phase["figure"]], measured, says)


def landscape(runs: Runs) -> Shot:
    a, b = runs.first, runs.jobs[1]["id"]
    path = runs.analysis(a, {"kind": "trajectory", "resolution": 21})
    line = runs.analysis(a, {"kind": "interpolation", "to_job": b})["data"]
    alphas = np.array(line["xs"])
    along = np.array([np.nan if v is None else v for v in line["loss"]], dtype=float)[(alphas >= 0) & (alphas <= 1)]
    barrier = float(np.nanmax(along) - max(along[0], along[-1]))
    explained = float(sum(path["data"]["explained_variance_ratio"][:2]))
    figures = [runs.figure(a, "landscape", "landscape-plot", result=path["id"]), runs.figure(a, "landscape", "landscape-plot", result=0)]
    measured = {"explained": round(explained, 3), "barrier": round(barrier, 3)}
    says = f"the plane holds {explained:.1%} of the path's variance; the line between the seeds' minima rises {barrier:.3f} above its ends"
    return Shot(figures, measured, says)


def coherence(runs: Runs) -> Shot:
    steps, alpha = runs.values(runs.first, "grad/alpha")
    start, end = float(np.median(alpha[:3])), float(np.median(alpha[-3:]))
    measured = {"start": round(start, 3), "end": round(end, 4)}
    says = f"coherence α falls from {start:.3f} (first steps) to {end:.4f} (step {int(steps[-1])})"
    return Shot([runs.figure(runs.first, "gradstats", "gradstats-coherence")], measured, says)


def lr_sensitivity(runs: Runs) -> Shot:
    out = runs.client.lr_sensitivity(runs.sweep)
    measured = {f"qk_layernorm {c['value']}".lower(): round(c["sensitivity"], 3) for c in out["curves"]}
    said = ", ".join(f"{v:.3f} {'with' if 'true' in k else 'without'} qk-layernorm" for k, v in measured.items())
    return Shot(out["figures"], measured, f"LR sensitivity {said}")


def neural_collapse(runs: Runs) -> Shot:
    steps, nc1 = runs.values(runs.first, "collapse/nc1")
    measured = {"start": round(float(nc1[0]), 3), "end": round(float(nc1[-1]), 4)}
    says = f"NC1 falls from {nc1[0]:.3g} at step {int(steps[0])} to {nc1[-1]:.3g} at step {int(steps[-1])}"
    return Shot([runs.figure(runs.first, "collapse", "collapse-nc1"), runs.figure(runs.first, "collapse", "collapse-nc23")], measured, says)


def deep_linear(runs: Runs) -> Shot:
    modes = runs.latest(runs.first, "modes")["data"]["singular_values"]
    error = 0.0
    for k in range(1, len(modes) + 1):
        _, strength = runs.values(runs.first, f"modes/strength/{k}")
        _, theory = runs.values(runs.first, f"modes/theory/{k}")
        error = max(error, float(np.nanmax(np.abs(strength - theory))) / max(modes))
    measured = {"modes": float(len(modes)), "error": round(error, 4)}
    says = f"{len(modes)} modes learned in stages; the largest gap to the closed form is {error:.2%} of the top singular value"
    return Shot([runs.figure(runs.first, "modes", "modes-strength")], measured, says)


PHENOMENA = [
    Phenomenon("edge-of-stability", "Progressive sharpening and the edge of stability", "Cohen et al. 2021", "edge-of-stability.yaml", edge_of_stability),
    Phenomenon("hessian-outliers", "The Hessian's bulk and outliers", "Sagun et al. 2017; Papyan 2019", "hessian-outliers.yaml", hessian_outliers),
    Phenomenon("opposing-signals", "A planted pair of opposing signals", "Rosenfeld & Risteski 2024", "opposing-signals.yaml", opposing_signals),
    Phenomenon("sgd-noise", "SGD noise: the noise scale, and lr × batch size", "McCandlish et al. 2018; Jastrzębski et al. 2017", "sgd-noise.yaml", sgd_noise),
    Phenomenon("landscape", "The training path on its PCA plane, and the line between two minima", "Li et al. 2018; Garipov et al. 2018", "landscape.yaml", landscape),
    Phenomenon("coherence", "Coherent gradients", "Chatterjee & Zielinski 2020", "coherence.yaml", coherence),
    Phenomenon("lr-sensitivity", "Learning-rate sensitivity with and without qk-layernorm", "Wortsman et al. 2023", "lr-sensitivity.yaml", lr_sensitivity),
    Phenomenon("neural-collapse", "Neural collapse", "Papyan, Han & Donoho 2020; Han, Papyan & Donoho 2022", "neural-collapse.yaml", neural_collapse),
    Phenomenon("deep-linear", "A deep linear network's stages against its closed form", "Saxe, McClelland & Ganguli 2014", "deep-linear.yaml", deep_linear),
]  # fmt: skip
