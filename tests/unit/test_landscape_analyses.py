"""Trajectory and interpolation analyses of kept checkpoints, checked against direct computations."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.spec import InterpolationAnalysis, JobSpec, TrajectoryAnalysis
from tests.conftest import spec
from tests.helpers import ListRecorder
from worker.training.analyses import analyze_checkpoint
from dynascope.probes.samples import stratified_sample
from worker.training.loop import Outcome, prepare, train


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A 300-step job that kept a checkpoint every 50 steps, as files."""
    raw = spec(steps=300, lr=0.3, checkpoint_every=50)
    raw["model"]["widths"] = [16]
    recorder = ListRecorder()
    assert train(JobSpec.model_validate(raw), recorder, torch.device("cpu")) is Outcome.finished
    folder = tmp_path_factory.mktemp("kept")
    files = {}
    for kind, step, tensors, metadata in recorder.artifacts:
        if kind == "checkpoint":
            files[(1, step)] = folder / f"{step}.safetensors"
            save_file(tensors, str(files[(1, step)]), metadata=metadata)
    return JobSpec.model_validate(raw), files


def _analyze(job: JobSpec, files, request, step: int):
    from worker.training.checkpoint import read

    tensors, metadata = read(files[(1, step)])
    return analyze_checkpoint(job, request, step, tensors, metadata, torch.device("cpu"), kept=files, job_id=1)


def _loss_at(job: JobSpec, weights: dict[str, torch.Tensor], examples: int) -> float:
    run = prepare(job, torch.device("cpu"))
    run.model.load_state_dict({k: v for k, v in weights.items() if "/" not in k})
    rows = stratified_sample(run.split.y_train, examples, job.train.seed + 2)
    with torch.no_grad():
        return run.loss_fn(run.model.eval()(run.split.x_train[rows]), run.split.y_train[rows]).item()


def test_trajectory_projects_every_checkpoint_on_its_principal_plane(kept):
    job, files = kept
    out = _analyze(job, files, TrajectoryAnalysis(resolution=9, examples=300), 300)
    r = out.result
    steps = sorted(s for _, s in files)
    assert r["path"]["steps"] == steps == [50, 100, 150, 200, 250, 300]
    # independently: numpy's SVD of the centred (checkpoint - final) rows
    from safetensors.torch import load_file

    loaded = [load_file(str(files[(1, s)])) for s in steps]
    names = [k for k in loaded[-1] if "/" not in k]
    m = np.stack([np.concatenate([(c[k].double() - loaded[-1][k].double()).flatten().numpy() for k in names]) for c in loaded])
    _, sv, vt = np.linalg.svd(m - m.mean(0), full_matrices=False)
    for k, axis in enumerate(("x", "y")):
        projected = m @ vt[k]
        got = np.array(r["path"][axis])
        assert np.allclose(got, np.sign(got @ projected) * projected, atol=1e-6 * np.abs(projected).max())
    assert np.allclose(r["explained_variance_ratio"], (sv**2 / (sv**2).sum())[:2], rtol=1e-6)
    assert r["path"]["x"][-1] == pytest.approx(0.0, abs=1e-9) and r["path"]["y"][-1] == pytest.approx(0.0, abs=1e-9)
    # the grid spans the path with its margin, centred at the last checkpoint, whose loss is the centre
    assert max(r["xs"]) == pytest.approx(1.25 * np.abs(r["path"]["x"]).max()) and r["xs"][4] == 0.0
    assert r["centre_loss"] == pytest.approx(_loss_at(job, loaded[-1], 300), rel=1e-6)
    assert "trajectory-directions" in out.artifacts


def test_interpolation_hits_both_checkpoints(kept):
    job, files = kept
    out = _analyze(job, files, InterpolationAnalysis(to_step=300, points=21, examples=400), 100)
    r = out.result
    from safetensors.torch import load_file

    assert 0.0 in r["xs"] and 1.0 in r["xs"] and r["xs"][0] == -0.5 and r["xs"][-1] == 1.5
    assert r["from"] == {"job": 1, "step": 100} and r["to"] == {"job": 1, "step": 300}
    assert r["centre_loss"] == pytest.approx(_loss_at(job, load_file(str(files[(1, 100)])), 400), rel=1e-5)
    assert r["end_loss"] == pytest.approx(_loss_at(job, load_file(str(files[(1, 300)])), 400), rel=1e-5)
    assert r["loss"][0] > r["centre_loss"]  # beyond the start the loss rises again


def test_interpolation_refuses_checkpoints_of_different_models(kept, tmp_path):
    job, files = kept
    other = spec(steps=20)
    other["model"]["widths"] = [8]
    recorder = ListRecorder()
    train(JobSpec.model_validate(other), recorder, torch.device("cpu"))
    step, tensors = recorder.checkpoints[-1]
    save_file(tensors, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="different models"):
        _analyze(job, {**files, (2, step): tmp_path / "other.safetensors"}, InterpolationAnalysis(to_job=2), 300)
