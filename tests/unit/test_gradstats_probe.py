"""The gradstats probe inside the training loop: the step's own gradient, and what steps say together."""

import math

import pytest
import torch

from backend.spec import JobSpec
from tests.conftest import spec
from tests.helpers import ListRecorder
from worker.training.loop import Outcome, train


def run(steps: int, optimizer: dict | None = None, **probe) -> ListRecorder:
    raw = spec(steps=steps, lr=0.2)
    raw["model"]["widths"] = [32]
    if optimizer:
        raw["optimizer"] = optimizer
    raw["probes"] = {"gradstats": probe}
    recorder = ListRecorder()
    assert train(JobSpec.model_validate(raw), recorder, torch.device("cpu")) is Outcome.finished
    return recorder


def test_every_step_plain_sgd_identities():
    rec = run(30, every=1)
    norms = rec.series("grad/norm")
    assert len(norms) == 30 and all(v > 0 for v in norms)
    # SGD without momentum steps along −lr·ḡ: successive updates are successive gradients, scaled
    cos_g, cos_u = rec.series("grad/cos_previous_grad"), rec.series("grad/cos_previous_update")
    assert len(cos_g) == len(cos_u) == 29
    assert cos_u == pytest.approx(cos_g, abs=1e-5)
    assert rec.series("grad/distance")[0] == pytest.approx(0.2 * norms[0], rel=1e-5)
    layer = [v for _, k, v in rec.points if k == "grad/norm/1.weight"]
    assert len(layer) == 30 and all(0 < a <= b * (1 + 1e-6) for a, b in zip(layer, norms))
    alpha, coherence = rec.series("grad/alpha"), rec.series("grad/m_coherence")
    assert all(0 < a <= 1 for a in alpha) and coherence == pytest.approx([64 * a for a in alpha])
    assert all(math.isfinite(v) for v in rec.series("grad/noise_scale_ema"))
    assert rec.series("grad/temperature") == pytest.approx([0.2 / 64] * 30)


def test_schedule_details_and_momentum():
    rec = run(50, optimizer={"kind": "sgd", "lr": 0.1, "momentum": 0.9}, every=10, at=["last"], details_every=20, histogram_examples=4)
    steps = sorted({s for s, k, _ in rec.points if k == "grad/norm"})
    assert steps == [0, 10, 20, 30, 40, 49]
    details = [(s, r) for k, s, r in rec.results if k == "gradstats"]
    assert [s for s, _ in details] == [0, 20, 40]
    first = details[0][1]
    assert set(first["spectra"]) == {"1.weight", "3.weight"}
    top = first["spectra"]["1.weight"]
    assert 0 < top["sigma1_ratio"] <= 1 and top["top"] <= top["frobenius"] * (1 + 1e-9) <= top["nuclear"] * (1 + 1e-9)
    hist = first["histogram"]
    assert hist["examples"] == 4 and sum(hist["counts"]) == 4 * hist["elements_per_example"]
    assert first["rules"]["1.weight"] == "linear"
    summary = [r for k, s, r in rec.results if k == "summary"][-1]
    assert summary["probe_seconds"]["gradstats"] > 0


def test_two_batch_estimator_in_a_job():
    """B_simple by both estimators: the two-batch one (16 of the batch's 64 examples against all 64) estimates
    the same tr Σ / ‖G‖² as the per-example one, so their EMAs agree up to the small batch's noise."""
    rec = run(60, every=1, two_batch=16)
    two, each = rec.series("grad/noise_scale_two_batch_ema"), rec.series("grad/noise_scale_ema")
    assert len(two) == len(each) == 60 and len(rec.series("grad/noise_scale_two_batch")) == 60
    assert 0.5 < two[-1] / each[-1] < 2, (two[-1], each[-1])


def test_two_batch_must_be_smaller_than_the_batch():
    raw = spec(steps=10)
    raw["probes"] = {"gradstats": {"every": 1, "two_batch": raw["train"]["batch_size"]}}
    with pytest.raises(ValueError, match="two_batch"):
        JobSpec.model_validate(raw)


def test_distance_from_initialization_survives_a_resume():
    """A resumed job rebuilds the initial weights from its seed: distances after the resume are the
    uninterrupted run's, not distances from the checkpoint."""
    from worker.training.checkpoint import unpack

    raw = spec(steps=120, lr=0.2, checkpoint_every=50)
    raw["probes"] = {"gradstats": {"every": 10, "spectra": False, "histogram_examples": 0}}
    job = JobSpec.model_validate(raw)
    whole, died = ListRecorder(), ListRecorder(stop_after=80)
    train(job, whole, torch.device("cpu"))
    assert train(job, died, torch.device("cpu")) is Outcome.stopped
    step, tensors, metadata = [(s, t, m) for k, s, t, m in died.artifacts if k == "checkpoint"][-1]
    resumed = ListRecorder()
    train(job, resumed, torch.device("cpu"), resume=unpack(tensors, metadata))
    after = lambda rec: [(s, v) for s, k, v in rec.points if k == "grad/distance" and s >= step]  # noqa: E731
    assert step == 50 and len(after(resumed)) == 7 and after(resumed) == after(whole)
