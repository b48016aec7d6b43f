"""Opposing-signal detection on data with a planted pair of opposing groups, and without it."""

import numpy as np
import pytest
import torch

from backend.spec import OpposingFeaturesData
from dynascope.analysis import signals as sg
from worker.training import data, models
from worker.training.optim import make_example_loss, make_loss


def run(strength: float, detect_at: int, after: int = 20):
    """Full-batch GD with MSE at the edge of stability on the planted-feature images: a strong 3×3 patch on
    half of classes 0 and 1, weak class patterns (the patch stays the dominant feature)."""
    cfg = OpposingFeaturesData(kind="opposing_features", examples=1000, classes=4, strength=strength, share=0.5, class_signal=0.3)
    split = data.opposing_features(cfg, 0)
    x, y = split.x_train, split.y_train
    torch.manual_seed(0)
    model = models.mlp(64, [64], 4, "relu")
    loss_fn, each = make_loss("mse", 4), make_example_loss("mse", 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.12)
    losses, found = [], None
    for step in range(detect_at + after + 1):
        out = model(x)
        losses.append(each(out.detach(), y).numpy())
        if step == detect_at:
            found = sg.detect(model, each, x, y, torch.tensor(losses[-1] - losses[-2]), sg.DetectSettings())
        opt.zero_grad()
        loss_fn(out, y).backward()
        opt.step()
    planted = set(split.planted["class0_with_patch"]) | set(split.planted["class1_with_patch"])
    window = np.array(losses[detect_at - after : detect_at + after + 1])
    return found, planted, window, split


def precision_recall(pair: sg.Pair, planted: set[int]) -> tuple[float, float]:
    group = set(pair.a) | set(pair.a_star) | set(pair.b) | set(pair.b_star)
    hit = len(group & planted)
    return hit / len(group), hit / len(planted)


def test_the_planted_opposing_groups_are_found_and_swing_out_of_phase():
    found, planted, window, split = run(strength=6.0, detect_at=200)
    assert found.heavy_tail > 0.05 and len(found.outliers) == 48
    scored = [(p, sg.antiphase(window, p.a, p.b)) for p in found.pairs]
    best, score = min(scored, key=lambda s: s[1] if s[1] is not None else 1.0)
    precision, recall = precision_recall(best, planted)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    assert score is not None and score < -0.5 and best.cos < -0.9
    # each core is one planted group: the two classes' patch carriers pull against each other
    classes = split.y_train.numpy()
    assert len(set(classes[best.a])) == 1 or np.mean(classes[best.a] == np.bincount(classes[best.a]).argmax()) >= 0.9
    assert best.mean_delta_a * best.mean_delta_b < 0, "one group's loss rises while the other's falls"


def test_without_the_planted_feature_no_group_is_made_of_those_ids():
    found, planted, _, _ = run(strength=1e-6, detect_at=200)
    for pair in found.pairs:
        assert precision_recall(pair, planted)[0] < 0.5


def test_heavy_tail_share_and_robust_z():
    delta = torch.tensor([0.0] * 99 + [10.0])
    assert sg.heavy_tail_share(delta) == pytest.approx(1.0)
    assert sg.heavy_tail_share(torch.ones(200)) == pytest.approx(0.01)
    z = sg.robust_z(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert z[-1] > 20 and abs(float(z[2])) < 1e-9


def test_projections_are_per_example_gradient_dot_products():
    torch.manual_seed(0)
    model = models.mlp(5, [7], 3, "tanh").double()
    x, y = torch.randn(9, 5, dtype=torch.float64), torch.randint(0, 3, (9,))
    each = make_example_loss("cross_entropy", 3)
    g = sg.example_gradients(model, each, x, y)
    u = torch.randn(g.shape[1], dtype=torch.float64)
    torch.testing.assert_close(sg.projections(model, each, x, y, u), g @ u, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("kind", "classes", "z", "out_shape", "target_shape"),
    [
        ("cross_entropy", 5, 0.0, (8, 5), (8,)),
        ("cross_entropy", 5, 0.1, (8, 6, 5), (8, 6)),
        ("mse", 5, 0.0, (8, 5), (8,)),
        ("mse", None, 0.0, (8, 3), (8, 3)),
    ],
)
def test_each_example_loss_is_the_batch_loss_per_example(kind, classes, z, out_shape, target_shape):
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(out_shape, generator=gen, dtype=torch.float64)
    if classes:
        y = torch.randint(0, classes, target_shape, generator=gen)
    else:
        y = torch.randn(target_shape, generator=gen, dtype=torch.float64)
    mean, each = make_loss(kind, classes, z), make_example_loss(kind, classes, z)
    values = each(out, y)
    assert values.shape == (8,)
    torch.testing.assert_close(values.mean(), mean(out, y), rtol=1e-12, atol=0)
    one_at_a_time = torch.func.vmap(lambda o, t: mean(o.unsqueeze(0), t.unsqueeze(0)))(out, y)
    torch.testing.assert_close(values, one_at_a_time, rtol=1e-12, atol=0)
