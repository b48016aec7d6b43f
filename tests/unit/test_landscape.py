"""Loss-landscape numerics against cases with a known answer: a quadratic in closed form, float64
evaluations, numpy's SVD, and BatchNorm statistics computed by hand."""

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.interpolate import RectBivariateSpline
from sklearn.datasets import load_digits
from torch import nn

from backend.spec import CNNModel
from dynascope.analysis import landscape as ls
from worker.training.models import cnn, mlp

CE = nn.functional.cross_entropy


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.data[:600] / 16.0, dtype=torch.float32)
    return x, torch.tensor(d.target[:600])


@pytest.fixture(scope="module")
def digits_mlp(digits):
    torch.manual_seed(0)
    return _train(mlp(64, [32, 32], 10, "relu"), *digits)


@pytest.fixture(scope="module")
def digits_cnn(digits):
    torch.manual_seed(0)
    x, y = digits
    return _train(cnn(CNNModel(kind="cnn", channels=[8, 16], batch_norm=True), (1, 8, 8), 10), x.view(-1, 1, 8, 8), y, 30)


def test_symmetric_grid_holds_the_centre_exactly():
    xs = ls.symmetric_grid(25, 0.7)
    assert xs[12] == 0.0 and xs[0] == -0.7 and xs[-1] == 0.7
    np.testing.assert_allclose(xs, -xs[::-1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="odd"):
        ls.symmetric_grid(24, 1.0)


def test_grid_order_visits_every_point_once_coarse_first():
    order = ls.grid_order(9, 9)
    assert sorted(order) == [(i, j) for i in range(9) for j in range(9)]
    assert set(order[:9]) == {(i, j) for i in (0, 4, 8) for j in (0, 4, 8)}


def test_filter_normalized_directions_have_the_weights_filter_norms(digits_cnn):
    weights = ls.weights_of(digits_cnn)
    d1, d2 = ls.random_directions(weights, 2, seed=123)
    for name, w in weights.items():
        if w.dim() <= 1:
            assert not d1[name].any(), name
            continue
        want = w.reshape(w.shape[0], -1).norm(dim=1)
        for d in (d1, d2):
            torch.testing.assert_close(d[name].reshape(w.shape[0], -1).norm(dim=1), want, rtol=1e-6, atol=0)
    # seeded and reproducible; a second draw differs from the first
    again = ls.random_directions(weights, 2, seed=123)
    assert all(torch.equal(again[0][n], d1[n]) for n in weights)
    assert not torch.equal(d1["0.weight"], d2["0.weight"])


def test_direction_options_layer_include_bias_orthogonalize(digits_mlp):
    weights = ls.weights_of(digits_mlp)
    (d,) = ls.random_directions(weights, 1, seed=1, normalization="layer", include_bias_bn=True)
    for name, w in weights.items():
        torch.testing.assert_close(d[name].norm(), w.norm(), rtol=1e-6, atol=0)
    d1, d2 = ls.random_directions(weights, 2, seed=1, orthogonalize=True)
    plain = ls.random_directions(weights, 2, seed=1)[1]
    assert abs(ls.dot(d1, d2)) < 1e-6 * ls.dot(d1, d1)
    assert ls.dot(d2, d2) == pytest.approx(ls.dot(plain, plain), rel=1e-6)


def test_linear_regression_surface_is_the_closed_form_quadratic():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(5, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(200, generator=gen, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(5, 1)).double()

    def loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out.squeeze(-1), t)

    centre = ls.weights_of(model)
    d1, d2 = ls.random_directions(centre, 2, seed=7, include_bias_bn=True)

    def residual(w: dict[str, torch.Tensor]) -> np.ndarray:
        return (x @ w["0.weight"][0] + w["0.bias"][0]).numpy()

    r0 = residual(centre) - y.numpy()
    r1, r2 = residual(d1), residual(d2)
    xs = ls.symmetric_grid(11, 1.5)
    a, b = np.meshgrid(xs, xs, indexing="ij")
    truth = np.mean((r0[None, None] + a[..., None] * r1 + b[..., None] * r2) ** 2, axis=-1)
    for precompute in (True, False):
        evaluator = ls.PlaneEvaluator(model, loss, x, y, centre, [d1, d2], batch_size=120, precompute=precompute)
        assert evaluator.precomputed == precompute
        with evaluator.session():
            surf = ls.loss_surface(evaluator, xs, xs, chunk=7)
        np.testing.assert_allclose(surf.loss, truth, rtol=1e-9, atol=0)
        assert surf.accuracy is None and surf.evaluated.all()
    assert torch.equal(model[0].weight, centre["0.weight"])


def test_a_wide_linear_input_layer_is_precomputed_whatever_the_timing_says(digits, digits_mlp, monkeypatch):
    x, y = digits
    slow = {True: 1.0, False: 0.5}  # a noisy timing that says combining is twice as slow
    monkeypatch.setattr(
        ls.PlaneEvaluator,
        "_seconds_per_point",
        lambda self, precomputed=None, repeats=3: slow[bool(self.precomputed if precomputed is None else precomputed)],
    )
    centre = ls.weights_of(digits_mlp)
    directions = ls.random_directions(centre, 2, 0)
    wide = ls.PlaneEvaluator(digits_mlp, CE, x, y, centre, directions, batch_size=600)
    assert wide.precomputed  # 64 inputs: 64 multiply-adds an output element against 3 passes
    wide.restore()
    torch.manual_seed(0)
    narrow_model = mlp(4, [16], 10, "relu")
    narrow_centre = ls.weights_of(narrow_model)
    narrow = ls.PlaneEvaluator(narrow_model, CE, x[:, :4], y, narrow_centre, ls.random_directions(narrow_centre, 2, 0), batch_size=600)
    assert not narrow.precomputed  # 4 inputs: the timing decides
    narrow.restore()


def test_a_flatten_before_the_input_layer_still_precomputes_exactly(digits):
    x, y = digits
    images = x.double().view(-1, 1, 8, 8)  # the MLPs this project builds start with a Flatten
    torch.manual_seed(0)
    model = mlp(64, [16], 10, "tanh").double()
    centre = ls.weights_of(model)
    directions = ls.random_directions(centre, 2, 0)
    xs = ls.symmetric_grid(5, 1.0)
    surfaces = {}
    for precompute in (True, False):
        evaluator = ls.PlaneEvaluator(model, CE, images, y, centre, directions, batch_size=250, precompute=precompute)
        assert evaluator.precomputed == precompute
        with evaluator.session():
            surfaces[precompute] = ls.loss_surface(evaluator, xs, xs)
    np.testing.assert_allclose(surfaces[True].loss, surfaces[False].loss, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(surfaces[True].accuracy, surfaces[False].accuracy)


def test_centre_and_restore(digits, digits_cnn):
    x, y = digits
    x = x.view(-1, 1, 8, 8)
    model = copy.deepcopy(digits_cnn)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        direct = CE(model(x), y).item()
    centre = ls.weights_of(model)
    evaluator = ls.PlaneEvaluator(model, CE, x, y, centre, ls.random_directions(centre, 2, 0), batch_size=256, precompute=True)
    assert evaluator.precomputed  # the first convolution is precomputed
    with evaluator.session():
        at_centre = evaluator((0.0, 0.0))
        evaluator((0.5, -0.5))
        evaluator((0.0, 0.0))  # back at the centre after a move
        again = evaluator((0.0, 0.0))
    assert at_centre.loss == pytest.approx(direct, rel=1e-6)
    assert again.loss == at_centre.loss
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model[0], nn.Conv2d) and model[0].weight.is_contiguous()


@pytest.mark.parametrize("which", ["digits_mlp", "digits_cnn"])
def test_float32_surface_matches_float64(which, digits, request):
    model = request.getfixturevalue(which)
    x, y = digits
    x = x[:300].view(-1, 1, 8, 8) if which == "digits_cnn" else x[:300]
    y = y[:300]
    centre = ls.weights_of(model)
    dirs = ls.random_directions(centre, 2, seed=123)
    xs = ls.symmetric_grid(5, 1.0)
    with ls.PlaneEvaluator(copy.deepcopy(model), CE, x, y, centre, dirs).session() as ev:
        fast = ls.loss_surface(ev, xs, xs)
    model64 = copy.deepcopy(model).double()
    c64 = {k: v.double() for k, v in centre.items()}
    d64 = [{k: v.double() for k, v in d.items()} for d in dirs]
    slow_ev = ls.PlaneEvaluator(model64, CE, x.double(), y, c64, d64, batch_size=300, precompute=False, channels_last=False)
    with slow_ev.session():
        slow = ls.loss_surface(slow_ev, xs, xs)
    np.testing.assert_allclose(fast.loss, slow.loss, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast.accuracy, slow.accuracy, atol=1 / 300 + 1e-12)
    assert slow.loss[2, 2] < slow.loss.max() / 2  # a real landscape, not a flat one


def test_one_dimensional_curve(digits, digits_mlp):
    x, y = digits
    centre = ls.weights_of(digits_mlp)
    (d,) = ls.random_directions(centre, 1, seed=3)
    xs = ls.symmetric_grid(9, 1.0)
    with ls.PlaneEvaluator(copy.deepcopy(digits_mlp), CE, x, y, centre, [d]).session() as ev:
        curve = ls.loss_surface(ev, xs)
    assert curve.loss.shape == (9, 1)
    assert np.argmin(curve.loss[:, 0]) in (3, 4, 5)


def test_a_sample_larger_than_a_batch_streams_in_batches_with_the_same_values(digits, digits_mlp, monkeypatch):
    """Bounded memory: a sample of more than MAX_BATCH examples is never evaluated in one forward, and the
    streamed loss and accuracy are those of one forward over the whole sample (float64: to 1e-12)."""
    x, y = digits
    big_x, big_y = x.double().repeat(2, 1), y.repeat(2)  # 1,200 examples
    model = copy.deepcopy(digits_mlp).double()
    centre = ls.weights_of(model)
    dirs = ls.random_directions(centre, 2, seed=5)
    monkeypatch.setattr(ls, "MAX_BATCH", 500)
    ev = ls.PlaneEvaluator(model, CE, big_x, big_y, centre, dirs, precompute=False)
    assert ev.batch_size <= 500
    streamed = ev((0.3, -0.2))
    ev.restore()
    with torch.no_grad():
        for n, t in model.named_parameters():
            t.copy_(centre[n] + 0.3 * dirs[0][n] - 0.2 * dirs[1][n])
        out = model(big_x)
    assert streamed.loss == pytest.approx(float(CE(out, big_y)), rel=0, abs=1e-12)
    assert streamed.accuracy == pytest.approx(float((out.argmax(1) == big_y).double().mean()), abs=1e-12)


def test_interpolation_hits_both_ends_and_interpolates_batch_norm_statistics(digits, digits_cnn):
    x, y = digits
    x = x.view(-1, 1, 8, 8)
    start = copy.deepcopy(digits_cnn)
    end = _train(copy.deepcopy(digits_cnn).train(), x, y, 10)
    state_a = {k: v for k, v in start.state_dict().items() if v.is_floating_point()}
    state_b = {k: v for k, v in end.state_dict().items() if v.is_floating_point()}
    model = copy.deepcopy(start)
    with torch.no_grad():
        loss_a, loss_b = CE(start(x), y).item(), CE(end(x), y).item()
    assert abs(loss_a - loss_b) > 1e-3
    ev = ls.PlaneEvaluator(model, CE, x, y, state_a, [ls.interpolation_directions(state_a, state_b)])
    with ev.session():
        line = ls.loss_surface(ev, np.linspace(0.0, 1.0, 5))
    assert line.loss[0, 0] == pytest.approx(loss_a, rel=1e-5)
    assert line.loss[-1, 0] == pytest.approx(loss_b, rel=1e-5)


def test_batch_norm_recompute_uses_the_evaluation_sets_statistics(digits, digits_cnn):
    x, y = digits
    x = x[:400].view(-1, 1, 8, 8).double()
    y = y[:400]
    model = copy.deepcopy(digits_cnn).double()
    centre = ls.weights_of(model)
    ev = ls.PlaneEvaluator(model, CE, x, y, centre, ls.random_directions(centre, 2, 0), batch_size=400, batch_norm="recompute")
    with ev.session():
        recomputed = ev((0.0, 0.0)).loss
    # by hand (as SWA's update_bn): each BatchNorm's input statistics over the evaluation set, the layers
    # before it normalizing with their batch statistics; then an eval-mode pass with those statistics
    by_hand = copy.deepcopy(digits_cnn).double().eval()
    with torch.no_grad():
        h = x
        for layer in by_hand:
            if isinstance(layer, nn.BatchNorm2d):
                flat = h.transpose(0, 1).reshape(h.shape[1], -1)
                layer.running_mean.copy_(flat.mean(1))
                layer.running_var.copy_(flat.var(1, unbiased=True))
                shape = (1, -1, 1, 1)
                h = (h - flat.mean(1).view(shape)) / (flat.var(1, unbiased=False).view(shape) + layer.eps).sqrt()
                h = h * layer.weight.view(shape) + layer.bias.view(shape)
            else:
                h = layer(h)
        want = CE(by_hand(x), y).item()
    assert recomputed == pytest.approx(want, rel=1e-9)
    with torch.no_grad():
        assert abs(CE(model(x), y).item() - want) > 1e-4  # the statistics matter on this case
    assert torch.equal(model[1].running_mean, digits_cnn[1].running_mean.double())


def test_non_finite_losses_become_gaps():
    model = nn.Linear(2, 1).double()
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0.0], dtype=torch.float64)

    def log_loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.log(out.squeeze(-1) - t).mean()  # -inf / nan at and below zero

    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias.fill_(1.0)
    centre = ls.weights_of(model)
    d = {"weight": torch.ones(1, 2, dtype=torch.float64), "bias": torch.zeros(1, dtype=torch.float64)}
    with ls.PlaneEvaluator(model, log_loss, x, y, centre, [d]).session() as ev:
        curve = ls.loss_surface(ev, ls.symmetric_grid(5, 1.0))
    assert np.isnan(curve.loss[0, 0]) and np.isfinite(curve.loss[2:, 0]).all()


def test_trajectory_pca_matches_numpy_svd():
    gen = torch.Generator().manual_seed(0)
    shapes = {"a": (4, 3), "b": (5,)}
    path = [{k: torch.randn(s, generator=gen) * (t + 1) for k, s in shapes.items()} for t in range(6)]
    final = path[-1]
    plane = ls.trajectory_pca([lambda n, c=c: c[n] for c in path], lambda n: final[n], list(shapes))
    m = np.stack([np.concatenate([(c[k].double() - final[k].double()).flatten().numpy() for k in shapes]) for c in path])
    centred = m - m.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    ratio = s**2 / (s**2).sum()
    np.testing.assert_allclose(plane.explained_variance_ratio, ratio[:2], rtol=1e-9)
    np.testing.assert_allclose(plane.singular_values, s[:2], rtol=1e-9)
    for k in range(2):
        got = np.concatenate([plane.directions[k][n].double().flatten().numpy() for n in shapes])
        sign = np.sign(got @ vt[k])
        np.testing.assert_allclose(got, sign * vt[k], atol=1e-6)
        np.testing.assert_allclose(plane.coords[:, k], sign * (m @ vt[k]), atol=1e-9)
    np.testing.assert_allclose(plane.coords[-1], 0.0, atol=1e-12)


SHARED = Path(os.environ.get("DYNASCOPE_SHARED", Path(__file__).resolve().parents[3] / "shared"))
REFERENCE = SHARED / "bench-cases" / "landscape" / "reference" / "surface_mlp_g51_e1000_-1_1.npy"


def _coarse_only(truth: np.ndarray, xs: np.ndarray, stride: int) -> np.ndarray:
    c = xs[::stride]
    return np.exp(RectBivariateSpline(c, c, np.log(truth[::stride, ::stride]))(xs, xs))


@pytest.mark.skipif(not REFERENCE.exists(), reason="needs ../shared/bench-cases/landscape")
def test_adaptive_surface_of_the_benchmark_mlp_from_a_quarter_of_the_points():
    """The float64 51×51 reference surface of the digits-landscape MLP (a real loss surface)."""
    truth = np.load(REFERENCE)
    xs = ls.symmetric_grid(51, 1.0)
    index = {x: i for i, x in enumerate(xs)}
    calls = []

    def evaluate(c):
        calls.append(tuple(c))
        return ls.PointValue(float(truth[index[c[0]], index[c[1]]]), None)

    surf = ls.adaptive_surface(evaluate, xs, xs, budget=0.25)
    assert len(calls) == len(set(calls)) == surf.evaluated.sum() <= 0.25 * 51 * 51
    rel = np.abs(surf.loss - truth) / truth
    assert rel.max() <= 0.02 and np.median(rel) <= 1e-3
    np.testing.assert_array_equal(surf.loss[surf.evaluated], truth[surf.evaluated])


def test_adaptive_surface_refines_where_the_coarse_spline_misses():
    """A bowl with a sharp bump that the coarse grid cannot resolve: the refinement must find it."""
    xs = ls.symmetric_grid(51, 1.0)
    a, b = np.meshgrid(xs, xs, indexing="ij")
    truth = 0.2 + a * a + 0.5 * b * b + np.exp(-((a - 0.35) ** 2 + (b + 0.2) ** 2) / 0.15**2)
    index = {x: i for i, x in enumerate(xs)}
    surf = ls.adaptive_surface(lambda c: ls.PointValue(float(truth[index[c[0]], index[c[1]]]), None), xs, xs)
    assert surf.evaluated.mean() <= 0.25
    assert surf.evaluated[index[0.36], index[-0.2]]  # the bump's top was computed
    adaptive = (np.abs(surf.loss - truth) / truth).max()
    coarse = (np.abs(_coarse_only(truth, xs, 5) - truth) / truth).max()
    assert coarse > 0.1 and adaptive < coarse / 5


def test_a_centre_that_is_the_models_own_state_does_not_move(digits, digits_mlp):
    x, y = digits
    model = copy.deepcopy(digits_mlp)
    dirs = ls.random_directions(ls.weights_of(model), 2, seed=4)
    xs = ls.symmetric_grid(5, 1.0)
    with ls.PlaneEvaluator(copy.deepcopy(model), CE, x, y, ls.weights_of(model), dirs).session() as ev:
        cloned = ls.loss_surface(ev, xs, xs).loss
    own = {k: v for k, v in model.state_dict().items()}  # the parameters' own storage
    with ls.PlaneEvaluator(model, CE, x, y, own, dirs).session() as ev:
        aliased = ls.loss_surface(ev, xs, xs).loss
    np.testing.assert_allclose(aliased, cloned, rtol=1e-6)


def test_compiled_evaluation_matches_eager(digits, digits_mlp):
    x, y = digits
    centre = ls.weights_of(digits_mlp)
    dirs = ls.random_directions(centre, 2, seed=5)
    xs = ls.symmetric_grid(3, 1.0)
    surfaces = []
    for compile in (False, True):
        with ls.PlaneEvaluator(copy.deepcopy(digits_mlp), CE, x, y, centre, dirs, compile=compile).session() as ev:
            surfaces.append(ls.loss_surface(ev, xs, xs))
    np.testing.assert_allclose(surfaces[1].loss, surfaces[0].loss, rtol=1e-5)
    np.testing.assert_array_equal(surfaces[1].accuracy, surfaces[0].accuracy)
