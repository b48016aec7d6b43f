"""Neural collapse against independent truths: a planted simplex ETF, NumPy's pseudo-inverse, a classifier equal
to the class means, and the probe's numbers recomputed from a kept checkpoint; the probe never changes training."""

import numpy as np
import pytest
import torch

from backend.spec import JobSpec
from dynascope.analysis import collapse as nc
from tests.conftest import spec
from tests.helpers import run


def simplex_etf(classes: int, dims: int, seed: int) -> torch.Tensor:
    """C unit vectors with pairwise cosines −1/(C−1), rotated into `dims` dimensions."""
    centred = torch.eye(classes, dtype=torch.float64) - 1.0 / classes
    frame = centred * (classes / (classes - 1)) ** 0.5
    basis, _ = torch.linalg.qr(torch.randn(dims, classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return frame @ basis.T  # C × dims


def test_a_simplex_etf_with_no_spread_has_collapsed_completely():
    classes, labels = 5, torch.arange(5).repeat(20)
    means = simplex_etf(classes, 12, 0) * 3.0
    features = means[labels] + torch.linspace(-1, 1, 12, dtype=torch.float64)  # a global offset changes nothing
    m = nc.class_means(features, labels, classes)
    assert nc.nc1(features, labels, m) == pytest.approx(0.0, abs=1e-9)
    equinorm, equiangle = nc.nc2(m)
    assert equinorm == pytest.approx(0.0, abs=1e-9) and equiangle == pytest.approx(0.0, abs=1e-9)
    assert nc.nc3(2.5 * means, m) == pytest.approx(0.0, abs=1e-9)  # W ∝ the centred means
    assert nc.nc4(features, labels, m) == 0.0
    assert nc.mean_cosines(m)[0, 1].item() == pytest.approx(-1 / (classes - 1), abs=1e-12)


def test_nc1_is_the_trace_with_numpys_pseudo_inverse():
    gen = np.random.default_rng(1)
    classes, dims, n = 4, 9, 400
    labels = np.arange(n) % classes
    centres = gen.normal(size=(classes, dims)) * 2
    spread = gen.normal(size=(dims, dims)) / 3
    features = centres[labels] + gen.normal(size=(n, dims)) @ spread
    mu = np.stack([features[labels == c].mean(0) for c in range(classes)])
    within = features - mu[labels]
    sigma_w = within.T @ within / n
    centred = mu - mu.mean(0)
    sigma_b = centred.T @ centred / classes
    expected = np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / classes
    got = nc.nc1(
        torch.from_numpy(features), torch.from_numpy(labels), nc.class_means(torch.from_numpy(features), torch.from_numpy(labels), classes)
    )
    assert got == pytest.approx(expected, rel=1e-9)
    norms = np.linalg.norm(centred, axis=1)
    unit = centred / norms[:, None]
    off = (unit @ unit.T)[~np.eye(classes, dtype=bool)]
    equinorm, equiangle = nc.nc2(nc.class_means(torch.from_numpy(features), torch.from_numpy(labels), classes))
    assert equinorm == pytest.approx(norms.std() / norms.mean(), rel=1e-9)
    assert equiangle == pytest.approx(np.abs(off + 1 / (classes - 1)).mean(), rel=1e-9)


def test_nc4_counts_the_disagreements_with_the_nearest_centre():
    labels = torch.arange(4).repeat(5)
    features = simplex_etf(4, 6, 2)[labels]
    m = nc.class_means(features, labels, 4)
    predictions = labels.clone()
    predictions[:3] = (predictions[:3] + 1) % 4
    assert nc.nc4(features, predictions, m) == 3 / 20


def test_the_probe_matches_a_recomputation_from_the_checkpoint_and_never_changes_training():
    raw = spec(steps=60, name="collapse", checkpoint_every=20, eval_every=1000)
    plain_outcome, plain = run(raw)
    raw["probes"] = {"collapse": {"every": 20, "examples": 300}}
    outcome, probed = run(raw)
    assert outcome == plain_outcome and probed.series("train/loss") == plain.series("train/loss")
    for (step, a), (_, b) in zip(probed.checkpoints, plain.checkpoints, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a if "/" not in k), step
    recorded = {(s, k): v for s, k, v in probed.points if k.startswith("collapse/")}
    assert {k for _, k in recorded} == {
        f"collapse/{n}" for n in ("nc1", "nc1_val", "nc2_equinorm", "nc2_equiangle", "nc3", "nc4", "nc4_val")
    }
    # step 40, from the checkpoint kept before update 40: the features are the MLP without its last layer
    from dynascope.probes.collapse import SAMPLE_SEED
    from dynascope.probes.samples import stratified_sample
    from worker.training.loop import prepare

    job = JobSpec.model_validate(raw)
    p = prepare(job, torch.device("cpu"))
    [weights] = [t for s, t in probed.checkpoints if s == 40]
    p.model.load_state_dict({k: v for k, v in weights.items() if "/" not in k})
    rows = stratified_sample(p.split.y_train, 300, job.train.seed + SAMPLE_SEED)
    x, y = p.split.x_train[rows].double(), p.split.y_train[rows].numpy()
    model = p.model.double().eval()
    with torch.no_grad():
        h = model[:-1](x).numpy()
        predicted = model(x).argmax(1).numpy()
    mu = np.stack([h[y == c].mean(0) for c in range(10)])
    within = h - mu[y]
    centred = mu - mu.mean(0)
    expected_nc1 = np.trace((within.T @ within / len(y)) @ np.linalg.pinv(centred.T @ centred / 10)) / 10
    nearest = np.argmin(((h[:, None, :] - mu[None]) ** 2).sum(-1), axis=1)
    w = model[-1].weight.detach().numpy()
    expected_nc3 = ((w / np.linalg.norm(w) - centred / np.linalg.norm(centred)) ** 2).sum()
    assert recorded[(40, "collapse/nc1")] == pytest.approx(expected_nc1, rel=1e-4)  # (the probe reads float32 features)
    assert recorded[(40, "collapse/nc3")] == pytest.approx(expected_nc3, rel=1e-4)
    assert recorded[(40, "collapse/nc4")] == pytest.approx((nearest != predicted).mean(), abs=1 / 300)
    [document] = [d for kind, s, d in probed.results if kind == "collapse" and s == 40]
    assert (
        document["layer"] == str(len(model) - 1)
        and document["features"] == 64
        and document["examples"] == 300
        and len(document["cosines"]) == 10
    )


def test_collapse_needs_classes_and_a_linear_classifier():
    with pytest.raises(ValueError, match="probes.collapse needs class labels"):
        JobSpec.model_validate(
            spec(name="r")
            | {"data": {"kind": "teacher_student"}, "probes": {"collapse": {"every": 5}}}
            | {"train": {"steps": 10, "batch_size": 8, "loss": "mse"}}
        )
    for layer, why in (("0", "'0' is not a linear layer"), ("1", "'1' has 64 outputs, not one per class")):
        with pytest.raises(ValueError, match=why):
            run(spec(steps=5, name="bad-layer") | {"probes": {"collapse": {"every": 5, "layer": layer}}})


def test_a_sequence_model_counts_every_position():
    raw = {
        "name": "collapse-text",
        "model": {"kind": "transformer", "layers": 1, "heads": 2, "width": 16, "context": 16},
        "data": {"kind": "text"},
        "optimizer": {"kind": "adam", "lr": 0.003},
        "train": {"steps": 4, "batch_size": 8, "eval_every": 100, "checkpoint_every": None},
        "probes": {"collapse": {"at": ["end"], "examples": 20}},
    }
    _, recorder = run(raw)
    [(_, step, document)] = [r for r in recorder.results if r[0] == "collapse"]
    assert step == 4 and document["layer"] == "head" and document["features"] == 16
    assert np.isfinite(recorder.series("collapse/nc1")[0]) and 0 <= recorder.series("collapse/nc4")[0] <= 1
