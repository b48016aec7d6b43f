"""The training loop through its Recorder interface (the database recorder is covered by integration tests)."""

import math
from typing import Any

import pytest
import torch

from backend.spec import JobSpec
from tests.conftest import spec
from tests.helpers import ListRecorder, run
from worker.training.loop import Outcome, train


def test_trains_and_learns():
    outcome, rec = run(spec(steps=300))
    assert outcome is Outcome.finished
    assert len(rec.series("train/loss")) == 300
    assert rec.series("val/loss")[-1] < 0.5 * rec.series("val/loss")[0]
    assert rec.series("val/accuracy")[-1] > 0.85
    [(step, tensors)] = rec.checkpoints
    assert step == 300 and {k for k in tensors if "/" not in k} == {"1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"}
    assert rec.results[0][2]["parameters"] == 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10


def test_same_seed_gives_identical_metrics():
    _, a = run(spec(steps=120))
    _, b = run(spec(steps=120))
    assert a.points == b.points


def test_other_seed_differs():
    _, a = run(spec(steps=50))
    _, b = run(spec(steps=50, seed=1))
    assert a.series("train/loss") != b.series("train/loss")


def diverging(lr: float, activation: str, **train: Any) -> dict:
    raw = spec(steps=500, lr=lr, **train)
    raw["model"]["activation"] = activation
    return raw


def test_non_finite_loss_ends_as_diverged_with_history_kept():
    outcome, rec = run(diverging(1000.0, "gelu", divergence_factor=None))
    assert outcome is Outcome.diverged
    losses = rec.series("train/loss")
    assert not math.isfinite(losses[-1])
    assert all(math.isfinite(x) for x in losses[:-1]) and len(losses) >= 2
    assert rec.checkpoints == []


def test_loss_past_the_factor_is_divergence_and_the_factor_can_be_switched_off():
    outcome, rec = run(diverging(100.0, "tanh", divergence_factor=50.0))
    losses = rec.series("train/loss")
    assert outcome is Outcome.diverged
    assert losses[-1] > 50 * losses[0] and max(losses[:-1]) <= 50 * losses[0]
    outcome, rec = run(diverging(100.0, "tanh", divergence_factor=None))
    assert outcome is Outcome.finished and max(rec.series("train/loss")) > 50 * rec.series("train/loss")[0]


def test_stop_request_ends_between_steps():
    outcome, rec = run(spec(steps=1000), stop_after=40)
    assert outcome is Outcome.stopped
    assert len(rec.series("train/loss")) == 40


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_runs_on_cuda():
    recorder = ListRecorder()
    assert train(JobSpec.model_validate(spec(steps=50)), recorder, torch.device("cuda")) is Outcome.finished


@pytest.mark.parametrize(
    "optimizer",
    [
        {"kind": "sgd", "lr": 0.2, "momentum": 0.9},
        {"kind": "adamw", "lr": 0.003, "weight_decay": 0.01},
        {"kind": "sam", "rho": 0.05, "base": {"kind": "adam", "lr": 0.003}},
    ],
)
def test_resume_from_a_checkpoint_is_bit_identical(optimizer):
    from worker.training.checkpoint import unpack

    raw = {**spec(steps=200, checkpoint_every=35, schedule={"kind": "step", "step_size": 60}), "optimizer": optimizer}
    raw["train"]["batch_size"] = 100  # epochs end mid-run: the batch order must survive too
    job = JobSpec.model_validate(raw)
    whole = ListRecorder()
    assert train(job, whole, torch.device("cpu")) is Outcome.finished
    died = ListRecorder(stop_after=130)
    assert train(job, died, torch.device("cpu")) is Outcome.stopped
    step, tensors, metadata = [(s, t, m) for k, s, t, m in died.artifacts if k == "checkpoint"][-1]
    assert step == 105, "not an evaluation step, nor a step where the lr changes"
    resumed = ListRecorder()
    assert train(job, resumed, torch.device("cpu"), resume=unpack(tensors, metadata)) is Outcome.finished
    before = [p for p in died.points if p[0] < 105]
    assert before + resumed.points == whole.points
    assert torch.equal(resumed.checkpoints[-1][1]["1.weight"], whole.checkpoints[-1][1]["1.weight"])
