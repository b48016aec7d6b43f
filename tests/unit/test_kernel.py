"""The kernel probe against independent truths: the Gram tensor against J Jᵀ from torch.func.jacrev, a model
linear in its parameters (whose kernel never moves), the alignment of a kernel made of the labels, and a job's
recorded numbers against a recomputation from its checkpoints; the lazy/rich transition in a sweep of α."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from backend.spec import JobSpec
from dynascope.analysis import ntk
from tests.helpers import run


def jacobian_gram(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J Jᵀ with J the full Jacobian of the flattened outputs, from jacrev (independently of ntk): (n·O, n·O)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)).reshape(-1))(params)
    flat = torch.cat([j.reshape(j.shape[0], -1) for j in jac.values()], 1)
    return flat @ flat.T


def prepare_at(job: JobSpec, recorder, step: int) -> nn.Module:
    """The job's model with the weights it kept before update `step` (at 0: its initialization), in float64."""
    from worker.training.loop import prepare

    model = prepare(job, torch.device("cpu")).model
    if step:
        [weights] = [t for s, t in recorder.checkpoints if s == step]
        model.load_state_dict({k: v for k, v in weights.items() if "/" not in k})
    return model.double()


@pytest.mark.parametrize("route", ["rows", "products"])
def test_the_gram_tensor_is_j_jt(route):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 7), nn.GELU(), nn.Linear(7, 3)).double()
    x = torch.randn(37, 5, dtype=torch.float64)  # (chunks of 16: a remainder too)
    expected = jacobian_gram(model, x).reshape(37, 3, 37, 3).numpy()
    got = ntk.gram(model, x, route).numpy()
    for o in range(3):  # each output's kernel: the full Gram matrix's blocks on its diagonal
        np.testing.assert_allclose(got[o], expected[:, o, :, o], rtol=0, atol=1e-8 * np.abs(expected).max())
    np.testing.assert_allclose(
        ntk.summed(torch.from_numpy(got)).numpy(), np.einsum("iojo->ij", expected), atol=1e-8 * np.abs(expected).max()
    )


def test_a_conv_nets_kernel_by_both_routes():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 4)).double().eval()
    x = torch.randn(10, 1, 8, 8, dtype=torch.float64)
    np.testing.assert_allclose(ntk.gram(model, x, "rows").numpy(), ntk.gram(model, x, "products").numpy(), atol=1e-10)
    expected = jacobian_gram(model, x).reshape(10, 4, 10, 4).diagonal(dim1=1, dim2=3).permute(2, 0, 1)
    np.testing.assert_allclose(ntk.gram(model, x, "rows").numpy(), expected.numpy(), atol=1e-10)


def test_alignment_and_velocity_are_cosines():
    y = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 2, 2, 1, 0]), 3).double()
    assert ntk.target_alignment(5.0 * y @ y.T + 2.0, y) == pytest.approx(1.0, abs=1e-12)  # (a constant is centred away)
    k = torch.randn(7, 7, dtype=torch.float64)
    k = k @ k.T
    assert ntk.velocity(k, 3 * k) == pytest.approx(0.0, abs=1e-12) and ntk.velocity(k, torch.eye(7)) > 0.01
    centred = ntk.centred(k).numpy()
    h = np.eye(7) - 1 / 7
    np.testing.assert_allclose(centred, h @ k.numpy() @ h, atol=1e-12)


def kernel_job(model: dict, data: dict | None = None, steps: int = 200, lr: float = 0.1) -> dict:
    return {
        "name": "kernel",
        "model": model,
        "data": data or {"kind": "gaussian_mixture", "dim": 6, "classes": 3, "examples": 300},
        "optimizer": {"kind": "sgd", "lr": lr},
        "train": {"steps": steps, "batch_size": 32, "eval_every": 1000, "checkpoint_every": 100},
        "probes": {"kernel": {"every": 25, "examples": 40}},
    }


def test_a_model_linear_in_its_parameters_has_a_kernel_that_never_moves():
    outcome, recorder = run(
        kernel_job({"kind": "linear", "depth": 1, "init": "random", "scale": 1.0}) | {"train": {"steps": 200, "loss": "mse"}}
    )
    assert outcome == "finished"
    velocity, distance = recorder.series("kernel/velocity"), recorder.series("kernel/distance")
    assert len(velocity) == len(distance) == 8
    assert max(map(abs, velocity + distance)) < 1e-9
    assert recorder.series("kernel/weight_change")[-1] > 0.1  # while the weights moved
    _, mlp = run(kernel_job({"kind": "mlp", "widths": [32], "init_scale": 0.5}) | {"train": {"steps": 200, "loss": "mse"}})
    assert min(mlp.series("kernel/distance")[1:]) > 1e-4  # (a network's kernel does move: the test can fail)


def test_the_probe_matches_a_recomputation_and_never_changes_training():
    raw = kernel_job({"kind": "mlp", "widths": [16, 16]})
    raw["train"]["checkpoint_every"] = 25
    probed_outcome, probed = run(raw)
    plain_outcome, plain = run({k: v for k, v in raw.items() if k != "probes"})
    assert probed_outcome == plain_outcome and probed.series("train/loss") == plain.series("train/loss")
    for (step, a), (_, b) in zip(probed.checkpoints, plain.checkpoints, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a if "/" not in k), step
    from dynascope.probes.kernel import SAMPLE_SEED
    from dynascope.probes.samples import stratified_sample
    from worker.training.loop import prepare

    job = JobSpec.model_validate(raw)
    p = prepare(job, torch.device("cpu"))
    rows = stratified_sample(p.split.y_train, 40, job.train.seed + SAMPLE_SEED)
    rows = rows[torch.argsort(p.split.y_train[rows], stable=True)]
    x, y = p.split.x_train[rows].double(), torch.nn.functional.one_hot(p.split.y_train[rows], 3).double()

    def full_at(step: int) -> torch.Tensor:
        return jacobian_gram(prepare_at(job, probed, step), x).reshape(40, 3, 40, 3)

    k0, k100, k175, k200 = (full_at(step).diagonal(dim1=1, dim2=3).sum(-1) for step in (0, 100, 175, 200))

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a * b).sum() / (a.norm() * b.norm()))

    h = torch.eye(40, dtype=torch.float64) - 1 / 40
    recorded = {(s, k): v for s, k, v in probed.points if k.startswith("kernel/")}
    assert recorded[(200, "kernel/distance")] == pytest.approx(1 - cos(k0, k200), abs=1e-6)  # (float32 weights)
    assert recorded[(200, "kernel/alignment")] == pytest.approx(cos(h @ k200 @ h, h @ y @ y.T @ h), abs=1e-6)
    assert recorded[(200, "kernel/trace")] == pytest.approx(float(k200.trace()) / 40, rel=1e-5)
    third = full_at(100)[:, 2, :, 2]
    assert recorded[(100, "kernel/alignment_output/2")] == pytest.approx(cos(h @ third @ h, h @ y[:, 2:] @ y[:, 2:].T @ h), abs=1e-6)
    assert recorded[(100, "kernel/distance")] == pytest.approx(1 - cos(k0, k100), abs=1e-6)
    assert recorded[(200, "kernel/velocity")] == pytest.approx(1 - cos(k175, k200), abs=1e-6)
    weights0 = torch.cat([p_.reshape(-1) for p_ in prepare(job, torch.device("cpu")).model.parameters()]).double()
    [last] = [t for s, t in probed.checkpoints if s == 200]
    weights200 = torch.cat([last[k].reshape(-1) for k in ("1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias")]).double()
    assert recorded[(200, "kernel/weight_change")] == pytest.approx(
        float((weights200 - weights0.detach()).norm() / weights0.norm()), rel=1e-6
    )
    [document] = [d for kind, s, d in probed.results if kind == "kernel" and s == 200]
    assert document["labels"] == sorted(document["labels"]) and len(document["drawn"]) == 40 and document["outputs"] == 3


def test_the_output_scale_moves_a_network_from_rich_to_lazy():
    """Chizat & Bach: α·f with lr/α². The kernel's distance from its start and the weights' change fall with α."""
    moved = []
    for alpha in (0.1, 1.0, 10.0):
        raw = kernel_job(
            {"kind": "mlp", "widths": [128], "output_scale": alpha},
            {"kind": "teacher_student", "dim": 10, "teacher_width": 8, "examples": 300},
            steps=200,
            lr=0.05 / alpha**2,
        )
        raw["train"] |= {"batch_size": 100_000, "loss": "mse"}
        _, recorder = run(raw)
        assert recorder.series("train/loss")[-1] < 0.2 * recorder.series("train/loss")[0]  # each one learns
        moved.append((recorder.series("kernel/distance")[-1], recorder.series("kernel/weight_change")[-1]))
    assert moved[0][0] > 100 * moved[1][0] and moved[1][0] > moved[2][0]  # (here 0.083, 2.1e-4, 5.7e-5)
    assert moved[0][1] > moved[1][1] > moved[2][1]
