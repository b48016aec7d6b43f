"""Probes inside the training loop: schedule, warm-started tracking, and numbers checked independently."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from backend.spec import DigitsData, JobSpec
from tests.conftest import spec
from tests.helpers import ListRecorder
from worker.training import data, models
from worker.training.loop import Outcome, train


def run_with_hessian(steps: int, **probe) -> ListRecorder:
    raw = spec(steps=steps, lr=0.3)
    raw["model"]["widths"] = [16]
    raw["probes"] = {"hessian": probe}
    recorder = ListRecorder()
    assert train(JobSpec.model_validate(raw), recorder, torch.device("cpu")) is Outcome.finished
    return recorder


def exact_spectrum(weights: dict[str, torch.Tensor]) -> np.ndarray:
    """The dense float64 Hessian of the mean cross-entropy over the whole training split at `weights`."""
    split = data.digits(DigitsData(kind="digits"), 0)
    model = models.mlp(64, [16], 10, "relu").double()
    weights = {k: v for k, v in weights.items() if "/" not in k}  # the checkpoint's model part
    names = list(weights)
    shapes = [weights[n].shape for n in names]
    theta = torch.cat([weights[n].double().reshape(-1) for n in names])

    def loss(flat):
        parts = torch.split(flat, [int(np.prod(s)) for s in shapes])
        params = {n: p.view(s) for n, p, s in zip(names, parts, shapes)}
        return nn.functional.cross_entropy(functional_call(model, params, (split.x_train.double(),)), split.y_train)

    return np.linalg.eigvalsh(torch.func.hessian(loss)(theta).numpy())[::-1]


def test_hessian_probe_runs_on_schedule_and_matches_the_dense_hessian():
    rec = run_with_hessian(
        120,
        every=50,
        at=["end"],
        top_k=3,
        tol=1e-5,
        examples=100_000,
        negative=1,
        trace=True,
        density=True,
        gauss_newton=True,
        layerwise=True,
    )
    results = [(step, payload) for kind, step, payload in rec.results if kind == "hessian"]
    assert [step for step, _ in results] == [0, 50, 100, 120]
    final = results[-1][1]
    [(_, weights)] = rec.checkpoints
    exact = exact_spectrum(weights)
    assert np.allclose(final["eigenvalues"], exact[:3], rtol=1e-3), (final["eigenvalues"], exact[:3])
    assert np.isclose(final["negative_eigenvalues"][0], exact[-1], rtol=1e-2, atol=1e-5)
    assert abs(final["trace"]["value"] - exact.sum()) <= 4 * final["trace"]["stderr"] + 1e-3 * abs(exact.sum())
    assert final["examples"] == 1437 and final["mode"] == "eval" and final["converged"]
    assert len(final["gauss_newton_fraction"]) == 3 and all(0 < f < 2 for f in final["gauss_newton_fraction"])
    assert set(final["layerwise_lambda_max"]) == {"1", "3"}
    assert max(final["layerwise_lambda_max"].values()) <= final["eigenvalues"][0] * (1 + 1e-3), "a block's λmax ≤ λmax"
    density = final["density"]
    assert len(density["grid"]) == len(density["density"]) >= 400
    assert np.all(np.diff(density["grid"]) > 0)
    assert density["bulk_edge"] < final["eigenvalues"][0], "the top eigenvalue stands out of the bulk"
    assert final["threshold"] == 2 / 0.3
    assert rec.series("hessian/threshold") == [2 / 0.3] * 4
    assert rec.series("hessian/lambda_1") == [r["eigenvalues"][0] for _, r in results]
    assert len(rec.series("time/hessian_seconds")) == 4
    assert rec.series("memory/hessian_bytes") == [float(r["peak_bytes"]) for _, r in results] and all(
        r["peak_bytes"] > 0 for _, r in results
    )
    assert "graphs kept (1 batch" in final["products"]
    summary = [p for k, s, p in rec.results if k == "summary"][-1]
    assert summary["probe_seconds"]["hessian"] > 0


def test_tracking_is_warm_started():
    rec = run_with_hessian(400, every=20, top_k=1, tol=1e-4, examples=500)
    hvps = rec.series("hessian/hvps")
    assert len(hvps) == 21, "steps 0, 20, …, 400 (the end is a multiple of 20)"
    assert np.median(hvps[5:]) < hvps[0], hvps
    assert np.median(hvps[5:]) <= 8


def test_probe_leaves_training_unchanged():
    plain = ListRecorder()
    raw = spec(steps=60)
    train(JobSpec.model_validate(raw), plain, torch.device("cpu"))
    probed = ListRecorder()
    raw["probes"] = {"hessian": {"every": 10, "top_k": 2, "mode": "train"}}
    train(JobSpec.model_validate(raw), probed, torch.device("cpu"))
    assert plain.series("train/loss") == probed.series("train/loss"), "bit-identical training with the probe on"


def test_eigenvectors_are_saved_with_their_layout():
    import json

    rec = run_with_hessian(40, at=[20], top_k=2, tol=1e-6)
    [(kind, step, tensors, meta)] = [a for a in rec.artifacts if a[0] != "checkpoint"]
    assert kind == "hessian-eigenvectors" and step == 20
    vectors = tensors["eigenvectors"].double()
    assert vectors.shape == (2, 64 * 16 + 16 + 16 * 10 + 10)
    assert torch.allclose(vectors @ vectors.T, torch.eye(2, dtype=torch.float64), atol=1e-6)
    [(_, _, result)] = [r for r in rec.results if r[0] == "hessian"]
    assert tensors["eigenvalues"].tolist() == pytest.approx(result["eigenvalues"], rel=1e-6)
    assert json.loads(meta["parameters"]) == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert json.loads(meta["shapes"]) == [[16, 64], [16], [10, 16], [10]]
    off = run_with_hessian(40, at=[20], top_k=2, save_eigenvectors=False)
    assert [a for a in off.artifacts if a[0] != "checkpoint"] == []


def test_a_long_probe_reports_progress_and_stops_when_asked():
    class StopInProbe(ListRecorder):
        def __init__(self):
            super().__init__()
            self.stages: list[str] = []

        def progress(self, step, total, stage):
            super().progress(step, total, stage)
            self.stages.append(stage)

        def should_stop(self):
            return any("Hessian-vector products" in s for s in self.stages)

    raw = spec(steps=50)
    raw["probes"] = {"hessian": {"at": [10], "top_k": 2, "density": True, "density_probes": 50, "density_steps": 200}}
    rec = StopInProbe()
    assert train(JobSpec.model_validate(raw), rec, torch.device("cpu")) is Outcome.stopped
    assert any(s.startswith("probe hessian at step 10: hessian") for s in rec.stages)
    assert [r for r in rec.results if r[0] == "hessian"] == [], "a stopped probe records nothing half-done"
    assert len(rec.series("train/loss")) == 10


def test_peak_memory_measures_what_a_block_allocates():
    from dynascope.memory import Peak

    with Peak(torch.device("cpu")) as small:
        torch.zeros(1000).add_(1)
    with Peak(torch.device("cpu")) as large:
        block = torch.ones(50_000_000)  # 200 MB, touched
        del block
    assert large.bytes is not None and small.bytes is not None
    assert 190e6 < large.bytes < 260e6 and small.bytes < 20e6
