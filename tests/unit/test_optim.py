"""Optimizers, schedules, losses and the Adam preconditioner, checked against direct computations."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from backend.spec import JobSpec, LRSchedule
from tests.conftest import spec
from tests.helpers import ListRecorder, run
from dynascope.analysis.hessian import eigenpairs
from dynascope.analysis.hvp import HessianOperator
from worker.training.loop import Outcome
from dynascope.probes.optimizers import adam_preconditioner, stability_threshold
from worker.training.optim import lr_factor, make_loss, make_optimizer


@pytest.mark.parametrize(
    "optimizer",
    [
        {"kind": "adam", "lr": 0.003},
        {"kind": "adamw", "lr": 0.003, "weight_decay": 0.01},
        {"kind": "sam", "rho": 0.05, "base": {"kind": "sgd", "lr": 0.3, "momentum": 0.9}},
        {"kind": "sam", "rho": 0.05, "base": {"kind": "adam", "lr": 0.003}},
        {"kind": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
    ],
)
def test_every_optimizer_learns(optimizer):
    outcome, rec = run({**spec(steps=200), "optimizer": optimizer})
    assert outcome is Outcome.finished
    val = rec.series("val/loss")
    assert val[-1] < 0.5 * val[0]


def test_sam_is_not_its_base_optimizer():
    base = {"kind": "sgd", "lr": 0.3}
    _, plain = run({**spec(steps=30), "optimizer": base})
    _, sam = run({**spec(steps=30), "optimizer": {"kind": "sam", "rho": 0.5, "base": base}})
    assert plain.series("train/loss")[0] == sam.series("train/loss")[0]
    assert plain.series("train/loss")[5:] != sam.series("train/loss")[5:]


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"kind": "constant"}, lambda s: 1.0),
        ({"kind": "step", "step_size": 30, "gamma": 0.5}, lambda s: 0.5 ** (s // 30)),
        (
            {"kind": "cosine", "warmup_steps": 10, "min_fraction": 0.1},
            lambda s: (s + 1) / 10 if s < 10 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 90)),
        ),
        ({"kind": "linear", "warmup_steps": 0, "min_fraction": 0.0}, lambda s: 1 - s / 100),
    ],
)
def test_schedules_drive_the_logged_lr(schedule, expected):
    _, rec = run({**spec(steps=100, lr=0.2, schedule=schedule)})
    logged = [(step, v) for step, name, v in rec.points if name == "lr"]
    # A step function: logged where it changes (and at evaluations), so every step's lr is recoverable.
    assert logged[0][0] == 0 and {0, 50} <= {s for s, _ in logged}
    for step, value in logged:
        assert value == pytest.approx(0.2 * expected(step), rel=1e-12)
    held = {s: v for s, v in logged}
    current = None
    for step in range(100):
        current = held.get(step, current)
        assert current == pytest.approx(0.2 * expected(step), rel=1e-12), step
    assert lr_factor(LRSchedule(**schedule), 99, 100) == pytest.approx(expected(99))


def test_mse_on_classes_uses_one_hot_targets():
    out = torch.tensor([[0.5, -1.0, 2.0]])
    assert make_loss("mse", 3)(out, torch.tensor([2])).item() == pytest.approx((0.25 + 1 + 1) / 3)
    outcome, rec = run(spec(steps=200, lr=0.5, loss="mse"))
    assert outcome is Outcome.finished and rec.series("val/accuracy")[-1] > 0.8


def test_grad_clip_logs_the_norm_before_clipping():
    _, rec = run(spec(steps=20, grad_clip=0.01))
    norms = rec.series("train/grad_norm")
    assert len(norms) == 20 and min(norms) > 0.01, "the clip was active"
    _, free = run(spec(steps=20))
    assert free.series("train/grad_norm") == [] and free.series("train/loss")[5:] != rec.series("train/loss")[5:]


def test_thresholds():
    params = [nn.Parameter(torch.zeros(2))]
    built = lambda optimizer: make_optimizer(JobSpec.model_validate({**spec(), "optimizer": optimizer}).optimizer, params)  # noqa: E731
    assert stability_threshold(built({"kind": "sgd", "lr": 0.5})) == (4.0, "2/lr")
    assert stability_threshold(built({"kind": "sgd", "lr": 0.1, "momentum": 0.9}))[0] == pytest.approx(38.0)
    assert stability_threshold(built({"kind": "adam", "lr": 0.01}))[0] == pytest.approx(3800.0)
    assert stability_threshold(built({"kind": "sam", "rho": 0.05, "base": {"kind": "sgd", "lr": 0.2}}))[0] == pytest.approx(10.0)


def test_adam_preconditioned_sharpness_matches_the_dense_computation():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=0.01)
    assert adam_preconditioner(opt, params) is None, "no state before the first step"
    for _ in range(7):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    p = adam_preconditioner(opt, params)
    t, b1, b2 = 7, 0.9, 0.999
    v = torch.cat([opt.state[q]["exp_avg_sq"].reshape(-1) for q in params])
    assert torch.allclose(p, (1 - b1**t) * ((v / (1 - b2**t)).sqrt() + 1e-8))
    op = HessianOperator(model, nn.functional.cross_entropy, [(x, y)])
    dense = torch.stack([op(e) for e in torch.eye(op.n, dtype=torch.float64)], dim=1)
    exact = np.linalg.eigvals((torch.diag(1 / p) @ dense).numpy()).real.max()
    d = p.rsqrt()
    ours = eigenpairs(lambda w: d * op(d * w), op.n, 1, tol=1e-10).values[0]
    assert ours == pytest.approx(exact, rel=1e-8)


def test_adam_job_records_preconditioned_sharpness():
    raw = {**spec(steps=60), "optimizer": {"kind": "adam", "lr": 0.003}, "probes": {"hessian": {"every": 20, "top_k": 1}}}
    rec = ListRecorder()
    from worker.training.loop import train

    assert train(JobSpec.model_validate(raw), rec, torch.device("cpu")) is Outcome.finished
    results = [p for k, _, p in rec.results if k == "hessian"]
    assert "preconditioned_sharpness" not in results[0], "step 0: Adam has no preconditioner yet"
    assert all("preconditioned_sharpness" in r for r in results[1:])
    assert rec.series("hessian/sharpness") == [r["preconditioned_sharpness"] for r in results[1:]]
    assert results[-1]["threshold"] == pytest.approx(3.8 / (0.1 * 0.003))
