"""Deep linear networks against Saxe et al.'s exact solutions: the closed forms against a numerical solution of
their differential equation, the teacher data and the balanced initialization against their definitions, and
the modes probe in a job against the closed form and against the weights it kept."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from backend.spec import JobSpec
from dynascope.analysis import deep_linear
from tests.helpers import TEACHER, deep_linear_job, run
from worker.training import data, models
from worker.training.optim import make_loss


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize(("s", "a0"), [(2.0, 0.01), (0.7, 1e-4), (1.0, 1.6)])
def test_the_closed_forms_solve_the_mode_equation(depth, s, a0):
    c = 1 / 3
    times = [0.0, 0.5, 2.0, 5.0, 12.0, 40.0]
    ode = solve_ivp(
        lambda t, a: c * depth * np.abs(a) ** (2 - 2 / depth) * (s - a), (0, times[-1]), [a0], t_eval=times, rtol=1e-12, atol=1e-14
    )
    for t, expected in zip(times, ode.y[0], strict=True):
        assert deep_linear.strength_at(t, s, a0, depth, c) == pytest.approx(expected, rel=1e-7, abs=1e-12), t


@pytest.mark.parametrize("depth", [2, 3])
def test_a_mode_without_signal_decays(depth):
    ode = solve_ivp(lambda t, a: -depth * a ** (3 - 2 / depth), (0, 30), [0.5], t_eval=[30], rtol=1e-12, atol=1e-14)
    assert deep_linear.strength_at(30, 0.0, 0.5, depth, 1.0) == pytest.approx(ode.y[0][-1], rel=1e-8)
    assert deep_linear.strength_at(3, 1.0, -0.1, depth, 1.0) is None  # a negative start never rises along the mode


def test_linear_teacher_inputs_are_white_and_its_modes_are_the_teacher():
    job = JobSpec.model_validate(deep_linear_job())
    split = data.load(job.data, job.train.seed)
    modes = deep_linear.input_output_modes(split.x_train, split.y_train)
    assert modes.whiteness < 1e-6  # (float32 storage)
    np.testing.assert_allclose(modes.s.numpy(), TEACHER, rtol=1e-5)  # rank 3: the other three have no signal
    syx, _ = deep_linear.correlations(split.x_train, split.y_train)
    reconstructed = modes.u[:, :3] * modes.s[:3] @ modes.v[:, :3].T
    np.testing.assert_allclose(reconstructed.numpy(), syx.numpy(), atol=1e-5)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_the_balanced_initialization_is_decoupled_and_balanced(depth):
    job = JobSpec.model_validate(deep_linear_job(depth=depth, scale=0.3))
    split = data.load(job.data, job.train.seed)
    torch.manual_seed(0)
    model = models.build(job.model, split)
    modes = deep_linear.input_output_modes(split.x_train, split.y_train, 3)
    product = deep_linear.end_to_end(model, split.input_shape)
    expected = 0.3**depth * modes.u @ modes.v.T
    np.testing.assert_allclose(product.numpy(), expected.numpy(), atol=1e-6)
    weights = [layer.weight.detach().double() for layer in deep_linear.linear_layers(model)]
    for lower, upper in zip(weights, weights[1:], strict=False):
        np.testing.assert_allclose((upper.T @ upper).numpy(), (lower @ lower.T).numpy(), atol=1e-6)
    loss = make_loss("mse", None)
    assert deep_linear.curvature(loss, split.x_train, split.y_train, modes) == pytest.approx(2 / 6, rel=1e-6)


def test_a_depth_2_network_follows_the_closed_form_mode_by_mode():
    outcome, recorder = run(deep_linear_job())
    assert outcome == "finished"
    steps = sorted({s for s, k, _ in recorder.points if k == "modes/strength/1"})
    assert steps == list(range(0, 1401, 20))
    start = {k: v for s, k, v in recorder.points if s == 0}
    for mode, s in enumerate(TEACHER, start=1):
        measured = {st: v for st, k, v in recorder.points if k == f"modes/strength/{mode}"}
        theory = {st: v for st, k, v in recorder.points if k == f"modes/theory/{mode}"}
        a0 = start[f"modes/strength/{mode}"]
        assert a0 == pytest.approx(0.01, rel=1e-4)  # scale² along every mode
        for step in steps:  # the logistic sigmoid, computed here on its own (c = 2/outputs; t = Σ lr)
            expected = s / (1 + (s / a0 - 1) * np.exp(-2 * (2 / 6) * s * 0.012 * step))
            assert theory[step] == pytest.approx(expected, rel=1e-6), (mode, step)
            assert abs(measured[step] - theory[step]) <= 0.02 * s, (mode, step, measured[step], theory[step])
        assert measured[1400] == pytest.approx(s, rel=0.01)  # every mode learned by the end
        middle = next(step for step in steps if measured[step] > s / 2)
        assert 0.2 * s < measured[middle - 20] < s / 2  # and each one through a transition the probes see
    off = [v for _, k, v in recorder.points if k == "modes/off_diagonal"]
    assert max(off) < 1e-4  # decoupled all along
    [document] = [d for kind, st, d in recorder.results if kind == "modes" and st == 1400]
    assert document["depth"] == 2 and document["formula"].startswith("a(t) = s / (1 +") and document["full_batch"]
    assert document["time"] == pytest.approx(1400 * 0.012) and document["curvature"] == pytest.approx(1 / 3, rel=1e-6)


def test_the_probe_never_changes_training_and_reads_the_map_from_the_weights():
    raw = deep_linear_job(depth=3, steps=400, lr=0.01, init="random", scale=0.5)
    probed_outcome, probed = run(raw)
    del raw["probes"]
    plain_outcome, plain = run(raw)
    assert probed_outcome == plain_outcome and probed.series("train/loss") == plain.series("train/loss")
    for (step, a), (_, b) in zip(probed.checkpoints, plain.checkpoints, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a if "/" not in k), step
    job = JobSpec.model_validate(raw)
    split = data.load(job.data, job.train.seed)
    x, y = split.x_train.double().numpy(), split.y_train.double().numpy()
    u, _, vh = np.linalg.svd(y.T @ x / len(x))  # the modes, recomputed with numpy
    for step, weights in probed.checkpoints:
        w1, w2, w3 = (weights[f"{i}.weight"].double().numpy() for i in (1, 2, 3))
        product = w3 @ w2 @ w1
        for mode in range(3):
            recorded = next(v for st, k, v in probed.points if st == step and k == f"modes/strength/{mode + 1}")
            assert recorded == pytest.approx(u[:, mode] @ product @ vh[mode], abs=1e-6), (step, mode)  # (a joint sign flip cancels)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"model": {"kind": "mlp"}}, "", "probes.modes follows a deep linear network"),
        ({"data": {"kind": "linear_teacher", "dim": 2, "outputs": 5, "singular_values": [1, 1, 1]}}, "data.linear_teacher", "at most 2"),
    ],
)
def test_deep_linear_jobs_are_checked(change, field, message):
    with pytest.raises(ValueError, match=message):
        JobSpec.model_validate({**deep_linear_job(), **change})
