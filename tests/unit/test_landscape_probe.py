"""The landscape probe inside the training loop, its numbers checked against direct evaluations."""

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from backend.spec import DigitsData, JobSpec
from tests.conftest import spec
from tests.helpers import ListRecorder
from dynascope.analysis.hessian import hessian_top_eigenpairs
from dynascope.probes import grids
from worker.training import data, models
from dynascope.probes.samples import stratified_sample
from worker.training.loop import Outcome, train
from worker.training.optim import make_loss


def run_with_landscape(steps: int = 40, activation: str = "relu", **probe) -> ListRecorder:
    raw = spec(steps=steps, lr=0.3)
    raw["model"] = {"kind": "mlp", "widths": [16], "activation": activation}
    raw["probes"] = {"landscape": {"at": ["end"], **probe}}
    recorder = ListRecorder()
    assert train(JobSpec.model_validate(raw), recorder, torch.device("cpu")) is Outcome.finished
    return recorder


def final_model(recorder: ListRecorder, activation: str = "relu") -> torch.nn.Module:
    model = models.mlp(64, [16], 10, activation)
    step, weights = recorder.checkpoints[-1]
    model.load_state_dict({k: v for k, v in weights.items() if "/" not in k})
    return model.eval()


def test_stratified_sample_keeps_class_shares_and_is_fixed():
    y = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    rows = stratified_sample(y, 100, seed=5)
    assert torch.bincount(y[rows]).tolist() == [60, 30, 10]
    assert torch.equal(rows, stratified_sample(y, 100, seed=5)) and len(rows.unique()) == 100
    assert len(stratified_sample(y, 5000, seed=5)) == 1000


def test_random_surface_probe_records_the_surface_and_its_directions(monkeypatch):
    monkeypatch.setattr(grids, "PUBLISH_SECONDS", 0.0)
    rec = run_with_landscape(resolution=7, span=0.5, examples=300, seed=9)
    [(kind, step, result)] = [r for r in rec.results if r[0] == "landscape"]
    assert step == 40 and not result["partial"] and result["points_done"] == result["points_total"] == 49
    assert result["examples"] == 300 and result["seed"] == 9 and result["normalization"] == "filter"
    assert result["xs"][3] == 0.0 and result["xs"][0] == -0.5 and len(result["loss"]) == 7 == len(result["loss"][0])
    # partial surfaces came first, with gaps (null) where points were not computed yet
    assert rec.partials and all(p["partial"] for p in rec.partials)
    assert np.isnan(np.array(rec.partials[0]["loss"], float)).any()
    # the directions as saved reproduce two grid points by direct evaluation on the same sample
    [(_, _, tensors, meta)] = [a for a in rec.artifacts if a[0] == "landscape-directions"]
    tensors = load_safetensors(save_safetensors(tensors, metadata=meta))
    model = final_model(rec)
    split = data.digits(DigitsData(kind="digits"), 0)
    rows = stratified_sample(split.y_train, 300, 0 + 2)
    x, y = split.x_train[rows], split.y_train[rows]
    loss = make_loss("cross_entropy", 10)
    centre = {k: v.clone() for k, v in model.state_dict().items()}
    for i, j in ((3, 3), (0, 6)):
        moved = {k: centre[k] + result["xs"][i] * tensors[f"d1/{k}"] + result["ys"][j] * tensors[f"d2/{k}"] for k in centre}
        model.load_state_dict(moved)
        with torch.no_grad():
            assert loss(model(x), y).item() == pytest.approx(result["loss"][i][j], rel=1e-5)
    assert result["loss"][3][3] == result["centre_loss"] < result["loss"][0][6]
    assert rec.series("landscape/centre_loss") == [result["centre_loss"]]


def test_hessian_plane_curvature_is_the_top_eigenvalue():
    """Along the top eigenvector, the second difference of the curve is λ1 (a check independent of Lanczos'
    own numbers: only function values of the recorded curve). tanh, so that the loss is smooth."""
    h = 0.02
    rec = run_with_landscape(activation="tanh", plane="hessian", dims=1, resolution=3, span=h, examples=400)
    [(_, _, result)] = [r for r in rec.results if r[0] == "landscape"]
    left, centre, right = result["loss"]
    curvature = (left - 2 * centre + right) / h**2
    model = final_model(rec, "tanh")
    split = data.digits(DigitsData(kind="digits"), 0)
    rows = stratified_sample(split.y_train, 400, 2)
    exact = hessian_top_eigenpairs(model, make_loss("cross_entropy", 10), [(split.x_train[rows], split.y_train[rows])], k=1, tol=1e-8)
    assert result["eigenvalues"][0] == pytest.approx(exact.values[0], rel=1e-3)
    assert curvature == pytest.approx(exact.values[0], rel=5e-3), curvature
    assert result["accuracy"] is not None and len(result["loss"]) == 3


def test_adaptive_probe_marks_the_computed_points():
    rec = run_with_landscape(resolution=17, adaptive=True, examples=200)
    [(_, _, result)] = [r for r in rec.results if r[0] == "landscape"]
    evaluated = np.array(result["evaluated"], bool)
    assert evaluated.shape == (17, 17) and 0 < evaluated.mean() < 1
    assert np.isfinite(np.array(result["loss"], float)).all()


def test_bad_landscape_settings_name_the_field():
    raw = spec(steps=10)
    raw["probes"] = {"landscape": {"at": ["end"], "resolution": 10}}
    with pytest.raises(Exception, match="odd"):
        JobSpec.model_validate(raw)
    raw["probes"] = {"landscape": {"at": ["end"], "adaptive": True, "dims": 1, "resolution": 21}}
    with pytest.raises(Exception, match="adaptive needs a 2-D grid"):
        JobSpec.model_validate(raw)
