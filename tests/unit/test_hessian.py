"""Hessian numerics against the exact dense Hessian (float64) of a small trained MLP, and a quadratic."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call

from dynascope.analysis.hessian import (
    eigenpairs,
    hessian_spectral_density,
    hessian_top_eigenpairs,
    hutchinson_trace,
    hutchpp_trace,
    layerwise_top_eigenvalues,
)
from dynascope.analysis.hvp import HessianOperator, layer_blocks

CE = nn.functional.cross_entropy


@pytest.fixture(scope="module")
def case():
    """A tanh MLP 64-16-16-10 (1,482 parameters) trained briefly on 400 digits, in float64."""
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data[:400] / 16.0)
    y = torch.tensor(digits.target[:400])
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(150):
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(theta):
        parts = dict(zip(names, [c.view(s) for c, s in zip(torch.split(theta, [s.numel() for s in shapes]), shapes)]))
        return CE(functional_call(model, parts, (x,)), y)

    hessian = torch.func.hessian(loss_of)(theta0)
    evals = np.linalg.eigvalsh(hessian.numpy())
    # Two batches of unequal size: the operator must weight them by size to get the full-batch mean.
    batches = [(x[:250], y[:250]), (x[250:], y[250:])]
    return {"model": model, "batches": batches, "H": hessian, "evals": evals, "loss_of": loss_of, "theta": theta0}


def rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))


def test_hvp_equals_exact_hessian_times_vector(case):
    op = HessianOperator(case["model"], CE, case["batches"])
    v = torch.randn(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = case["H"] @ v
    assert torch.allclose(op(v), exact, rtol=0, atol=1e-12 * exact.abs().max())
    assert op.hvps == 1


def test_hvp_matches_finite_differences(case):
    op = HessianOperator(case["model"], CE, case["batches"])
    v = torch.randn(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    v /= v.norm()
    grad = torch.func.grad(case["loss_of"])
    h = 1e-5
    fd = (grad(case["theta"] + h * v) - grad(case["theta"] - h * v)) / (2 * h)
    assert (op(v) - fd).norm() / fd.norm() < 1e-6


def test_top10_within_1e6_of_dense(case):
    result = hessian_top_eigenpairs(case["model"], CE, case["batches"], k=10, tol=1e-8)
    exact = case["evals"][::-1][:10]
    assert result.converged
    assert rel(result.values, exact).max() < 1e-6, (result.values, exact)
    # Reported residuals are the true ones, and they are what the stop rule promised.
    H = case["H"]
    true = [float((H @ result.vectors[:, i] - result.values[i] * result.vectors[:, i]).norm()) for i in range(10)]
    assert np.allclose(result.residuals, true, rtol=1e-3, atol=1e-10)
    assert np.all(result.residuals <= 1e-8 * np.abs(result.values))
    assert result.hvps < 120, "far fewer products than parameters"


def test_most_negative_within_1e5(case):
    assert case["evals"][0] < 0, "the case has negative curvature"
    result = hessian_top_eigenpairs(case["model"], CE, case["batches"], k=3, tol=1e-7, which="SA")
    assert rel(result.values, case["evals"][:3]).max() < 1e-5


def test_loose_tolerance_is_cheap_and_still_within_it(case):
    result = hessian_top_eigenpairs(case["model"], CE, case["batches"], k=5, tol=1e-3)
    assert rel(result.values, case["evals"][::-1][:5]).max() < 1e-3
    tight = hessian_top_eigenpairs(case["model"], CE, case["batches"], k=5, tol=1e-9)
    assert result.hvps < tight.hvps


def test_warm_start_from_previous_eigenvector_is_nearly_free(case):
    cold = hessian_top_eigenpairs(case["model"], CE, case["batches"], k=1, tol=1e-6)
    warm = hessian_top_eigenpairs(case["model"], CE, case["batches"], k=1, tol=1e-6, v0=cold.vectors[:, 0])
    assert warm.hvps <= 3 < cold.hvps
    assert rel(warm.values, cold.values).max() < 1e-6


def test_trace_within_three_standard_errors(case):
    exact = float(np.trace(case["H"].numpy()))
    op = HessianOperator(case["model"], CE, case["batches"])
    for estimate in (hutchpp_trace(op, op.n, hvps=150, seed=3), hutchinson_trace(op, op.n, rel_tol=0.02, seed=3)):
        assert estimate.stderr > 0
        assert abs(estimate.value - exact) <= 3 * estimate.stderr, (estimate, exact)


def test_density_moments_match_trace_within_their_error(case):
    n = len(case["evals"])
    density = hessian_spectral_density(case["model"], CE, case["batches"], probes=8, steps=40, seed=4)
    m1, se1 = density.moments["trace_over_n"]
    m2, se2 = density.moments["trace_sq_over_n"]
    assert abs(m1 - case["evals"].sum() / n) <= 3 * se1
    assert abs(m2 - (case["evals"] ** 2).sum() / n) <= 3 * se2
    mass = np.trapezoid(density.density, density.grid)
    assert abs(mass - 1) < 1e-2, "normalized (up to the trapezoid rule on narrow peaks)"
    assert np.allclose(density.weights.sum(1), 1)
    # The top outlier is resolved by the quadrature nodes.
    assert rel(density.nodes.max(), case["evals"][-1]) < 1e-6


def test_layerwise_blocks_match_the_dense_blocks(case):
    model = case["model"]
    blocks = layer_blocks(model)
    result = layerwise_top_eigenvalues(model, CE, case["batches"], tol=1e-9)
    offsets, start = {}, 0
    for name, p in model.named_parameters():
        offsets[name] = (start, start + p.numel())
        start += p.numel()
    for layer, names in blocks.items():
        idx = np.concatenate([np.arange(*offsets[n]) for n in names])
        block = case["H"].numpy()[np.ix_(idx, idx)]
        assert rel(result[layer], np.linalg.eigvalsh(block)[-1]) < 1e-6


class Quadratic(nn.Module):
    """L(w) = ½ wᵀAw with a chosen spectrum."""

    def __init__(self, spectrum: np.ndarray, seed: int = 0) -> None:
        super().__init__()
        q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(spectrum), len(spectrum))))
        self.register_buffer("a", torch.tensor(q @ np.diag(spectrum) @ q.T))
        self.w = nn.Parameter(torch.randn(len(spectrum), dtype=torch.float64))

    def forward(self, x):
        return 0.5 * self.w @ self.a @ self.w + 0 * x.sum()


def test_quadratic_with_known_spectrum():
    spectrum = np.concatenate([[50.0, 20.0, 10.0, 5.0], np.linspace(-0.5, 1.0, 296)])
    model = Quadratic(spectrum)
    batch = [(torch.zeros(1, dtype=torch.float64), torch.zeros(1))]
    top = hessian_top_eigenpairs(model, lambda out, _: out, batch, k=4, tol=1e-10)
    assert rel(top.values, [50, 20, 10, 5]).max() < 1e-9
    bottom = hessian_top_eigenpairs(model, lambda out, _: out, batch, k=1, tol=1e-10, which="SA")
    assert rel(bottom.values, [-0.5]).max() < 1e-8


def test_same_seed_same_numbers(case):
    a = hessian_top_eigenpairs(case["model"], CE, case["batches"], k=3, seed=7)
    b = hessian_top_eigenpairs(case["model"], CE, case["batches"], k=3, seed=7)
    assert np.array_equal(a.values, b.values) and a.hvps == b.hvps
    da = hessian_spectral_density(case["model"], CE, case["batches"], probes=2, steps=10, seed=7)
    db = hessian_spectral_density(case["model"], CE, case["batches"], probes=2, steps=10, seed=7)
    assert np.array_equal(da.density, db.density)


class BNDropNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.drop, self.fc2 = nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Dropout(0.3), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_no_side_effects_on_weights_buffers_grads_or_mode(case, mode):
    torch.manual_seed(0)
    model = BNDropNet()
    x, y = case["batches"][0][0].float(), case["batches"][0][1]
    model.train()
    CE(model(x), y).backward()  # the model has .grad and moved BN statistics, as in a training loop
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    hessian_top_eigenpairs(model, CE, [(x, y)], k=2, mode=mode)
    hessian_spectral_density(model, CE, [(x, y)], probes=2, steps=5, mode=mode)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert model.training and model.bn.training and model.drop.training
    assert torch.equal(rng, torch.get_rng_state()), "the global RNG is left as it was"


def test_train_mode_with_dropout_is_symmetric_and_differs_from_eval(case):
    torch.manual_seed(0)
    model = BNDropNet().double()
    x, y = case["batches"][0]
    op = HessianOperator(model, CE, [(x, y)], mode="train")
    g = torch.Generator().manual_seed(5)
    u, v = torch.randn(op.n, dtype=torch.float64, generator=g), torch.randn(op.n, dtype=torch.float64, generator=g)
    uhv, vhu = float(u @ op(v)), float(v @ op(u))
    assert abs(uhv - vhu) / abs(uhv) < 1e-10
    train_top = eigenpairs(op, op.n, 1, tol=1e-8).values[0]
    eval_top = hessian_top_eigenpairs(model, CE, [(x, y)], k=1, tol=1e-8, mode="eval").values[0]
    assert rel(train_top, eval_top) > 1e-3, "the mode changes what is computed"


def test_bulk_edge_and_outlier_count_on_a_planted_spectrum():
    from dynascope.analysis.hessian import bulk_edge, count_beyond, spectral_density

    spectrum = np.concatenate([[50.0, 20.0, 10.0, 5.0], np.linspace(-0.5, 1.0, 996)])
    a = Quadratic(spectrum).a
    density = spectral_density(lambda v: a @ v, 1000, probes=30, steps=60, seed=0)
    edge = bulk_edge(density, 1000)
    assert 1.0 <= edge < 5.0, edge
    assert round(count_beyond(density, 1000, edge)) == 4
    # Without the outliers, the edge moves to the end of the bulk and nothing lies beyond it.
    bulk_only = Quadratic(np.linspace(-0.5, 1.0, 1000)).a
    plain = spectral_density(lambda v: bulk_only @ v, 1000, probes=30, steps=60, seed=0)
    assert count_beyond(plain, 1000, bulk_edge(plain, 1000)) < 0.5


def test_gauss_newton_products_match_the_dense_gauss_newton_matrix(case):
    from dynascope.analysis.hvp import GaussNewtonOperator

    model, batches = case["model"], case["batches"]
    op = HessianOperator(model, CE, batches)
    gn = GaussNewtonOperator(op, model, CE, batches)
    # Dense G = Σ_i (1/N) J_iᵀ (diag p_i − p_i p_iᵀ) J_i from the full Jacobian of the logits.
    x = torch.cat([b[0] for b in batches])
    names = op.names
    theta = op.parameters()
    sizes, shapes = op.sizes, op.shapes

    def logits(flat):
        parts = dict(zip(names, [c.view(s) for c, s in zip(torch.split(flat, sizes), shapes)]))
        return functional_call(model, parts, (x,))

    jac = torch.func.jacrev(logits)(theta)  # (N, K, n)
    p = logits(theta).softmax(-1)
    h_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    dense = torch.einsum("nki,nkl,nlj->ij", jac, h_out, jac) / len(x)
    v = torch.randn(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(gn(v), dense @ v, rtol=0, atol=1e-10 * (dense @ v).abs().max())
    # The top eigenvector's curvature is mostly Gauss–Newton (the outliers come from G).
    top = hessian_top_eigenpairs(model, CE, batches, k=1, tol=1e-8)
    u = top.vectors[:, 0]
    fraction = float(u @ gn(u)) / float(top.values[0])
    assert fraction == pytest.approx(float(u @ dense @ u) / float(u @ case["H"] @ u), rel=1e-8)
    assert 0.5 < fraction < 1.5


def test_graphs_recomputed_per_product_give_the_kept_graphs_products():
    """Bounded memory: batches and graphs rebuilt per product are the same operator (float64: to 1e-12)."""
    from dynascope.analysis.hvp import HessianOperator

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3)).double()
    x, y = torch.randn(90, 6, dtype=torch.float64), torch.randint(0, 3, (90,))
    loss = torch.nn.functional.cross_entropy
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 90, 32)]
    kept = HessianOperator(model, loss, batches, mode="train", seed=4, graphs="keep")
    rebuilt = HessianOperator(model, loss, batches, mode="train", seed=4, graphs="recompute")
    chosen = HessianOperator(model, loss, batches, mode="train", seed=4, graphs="auto", budget=1000)
    assert (kept.graphs, rebuilt.graphs, chosen.graphs) == ("keep", "recompute", "recompute")
    assert "recomputed per product" in chosen.describe() and "graphs kept (3 batches" in kept.describe()
    for _ in range(3):
        v = torch.randn(kept.n, dtype=torch.float64)
        torch.testing.assert_close(rebuilt(v), kept(v), rtol=0, atol=1e-12)  # the same dropout masks, rebuilt
        torch.testing.assert_close(chosen(v), kept(v), rtol=0, atol=1e-12)
    torch.testing.assert_close(rebuilt.gradient(), kept.gradient(), rtol=0, atol=1e-14)
    assert rebuilt.loss == pytest.approx(kept.loss, abs=1e-14)
    model.eval()
    torch.testing.assert_close(
        HessianOperator(model, loss, batches, graphs="recompute")(v), HessianOperator(model, loss, [(x, y)])(v), rtol=0, atol=1e-12
    )  # (in eval mode, batches change nothing)


def test_recomputed_products_in_eval_mode_take_batches_in_pieces_that_fit_the_budget():
    """A memory budget smaller than one batch's graph splits each batch (eval mode: the loss is a sum over
    examples), and the operator is unchanged (float64: to 1e-12); a larger budget takes whole batches."""
    from dynascope.analysis.hvp import PRODUCT_PEAK, HessianOperator

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.BatchNorm1d(64), torch.nn.Tanh(), torch.nn.Linear(64, 3)).double()
    model[1].running_mean.normal_()
    model.eval()
    x, y = torch.randn(90, 6, dtype=torch.float64), torch.randint(0, 3, (90,))
    loss = torch.nn.functional.cross_entropy
    batches = [(x[i : i + 40], y[i : i + 40]) for i in range(0, 90, 40)]
    kept = HessianOperator(model, loss, batches, graphs="keep")
    per_example = kept.graph_bytes / 2 / 90  # an upper bound: the estimate's shared part spread over the examples
    small = HessianOperator(model, loss, batches, graphs="auto", budget=PRODUCT_PEAK * 7 * per_example)
    whole = HessianOperator(model, loss, batches, graphs="recompute", budget=kept.graph_bytes)
    assert 1 <= small.piece < 40 and len(small.pieces) > 3 and whole.piece == 40 and len(whole.pieces) == 3
    assert f"{small.piece} example" in small.describe() and "a batch at a time" in whole.describe()
    for _ in range(2):
        v = torch.randn(kept.n, dtype=torch.float64)
        torch.testing.assert_close(small(v), kept(v), rtol=0, atol=1e-12)
        torch.testing.assert_close(whole(v), kept(v), rtol=0, atol=1e-12)
    torch.testing.assert_close(small.gradient(), kept.gradient(), rtol=0, atol=1e-14)
    assert small.loss == pytest.approx(kept.loss, abs=1e-14)
    train = HessianOperator(model, loss, batches, mode="train", graphs="recompute", budget=1.0)
    assert train.piece == 40 and len(train.pieces) == 3  # a batch's statistics define the train-mode operator
