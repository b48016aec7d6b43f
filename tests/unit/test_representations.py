"""Linear CKA against independent truths: CKA(X, X) = 1, invariance to orthogonal transforms and isotropic
scaling, the direct formula with NumPy's centring matrices and Kornblith et al.'s feature-space identity, the
minibatch estimator against the full one; the probe's numbers recomputed from a kept checkpoint; the probe never
changes training."""

import numpy as np
import pytest
import torch

from backend.spec import JobSpec
from dynascope.analysis import cka
from dynascope.probes.representations import blocks, chosen_layers
from tests.conftest import spec
from tests.helpers import run


def _data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=gen, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(12, 7, generator=gen, dtype=torch.float64)) + 0.5 * torch.randn(n, 7, generator=gen, dtype=torch.float64)
    return x, y


def test_cka_of_a_representation_with_itself_is_one_and_ignores_rotation_and_scale():
    x, y = _data()
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    whole = cka.batches(len(x), None)
    both = {"x": cka.grams(x, whole), "y": cka.grams(y, whole)}
    assert cka.cka(both["x"], both["x"]) == pytest.approx(1.0, abs=1e-12)
    reference = cka.cka(both["x"], both["y"])
    assert 0.1 < reference < 0.99
    assert cka.cka(cka.grams(3.7 * x @ q, whole), both["y"]) == pytest.approx(reference, abs=1e-9)
    assert cka.cka(both["x"], cka.grams(0.2 * y, whole)) == pytest.approx(reference, abs=1e-9)
    parts = cka.batches(len(x), 64)
    assert cka.cka(cka.grams(x, parts), cka.grams(x, parts)) == pytest.approx(1.0, abs=1e-12)
    assert cka.cka(cka.grams(x @ q, parts), cka.grams(y, parts)) == pytest.approx(
        cka.cka(cka.grams(x, parts), cka.grams(y, parts)), abs=1e-9
    )


def test_cka_is_the_hsic_of_centred_grams_and_kornbliths_feature_space_form():
    x, y = (t.numpy() for t in _data(seed=1))
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return np.trace(a @ a.T @ h @ b @ b.T @ h)

    direct = hsic(x, y) / np.sqrt(hsic(x, x) * hsic(y, y))
    xc, yc = x - x.mean(0), y - y.mean(0)
    features = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    whole = cka.batches(n, None)
    ours = cka.cka(cka.grams(torch.from_numpy(x), whole), cka.grams(torch.from_numpy(y), whole))
    assert ours == pytest.approx(direct, rel=1e-10) and ours == pytest.approx(features, rel=1e-10)


def test_the_unbiased_hsic_is_song_et_als_formula():
    x, y = _data(n=40, seed=2)
    k, l = cka.gram(x).numpy(), cka.gram(y).numpy()  # noqa: E741
    n = len(k)
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    ones = np.ones(n)
    expected = (
        np.trace(kt @ lt) + (ones @ kt @ ones) * (ones @ lt @ ones) / ((n - 1) * (n - 2)) - 2 / (n - 2) * (ones @ kt @ lt @ ones)
    ) / (n * (n - 3))
    assert all(k.diagonal().abs().max() == 0 for k in cka.grams(x, cka.batches(40, 20)))  # (what the unbiased HSIC reads)
    assert cka.hsic_unbiased(cka.gram(x).fill_diagonal_(0), cka.gram(y).fill_diagonal_(0)) == pytest.approx(expected, rel=1e-10)


def test_the_minibatch_estimator_agrees_with_the_full_one():
    """On 4,096 examples (CKA ≈ 0.41), batches of 256 land within 0.01 of the full estimator (measured: 0.0001–0.0012
    on these seeds), batches of 32 too (0.0024–0.004), where the biased form averaged over those batches is off by
    0.11 (measured)."""
    for seed in range(3):
        x, y = _data(n=4096, seed=seed)
        full = cka.cka(cka.grams(x, cka.batches(4096, None)), cka.grams(y, cka.batches(4096, None)))
        for size in (256, 32):
            parts = cka.batches(4096, size)
            assert cka.cka(cka.grams(x, parts), cka.grams(y, parts)) == pytest.approx(full, abs=0.01), (seed, size)
        biased = sum(cka.cka(cka.grams(x[part], [slice(None)]), cka.grams(y[part], [slice(None)])) for part in parts) / len(parts)
        assert biased - full > 0.05  # what the unbiased HSIC takes away


def test_batches_cover_the_sample_and_keep_at_least_four_examples():
    assert cka.batches(10, None) == [slice(0, 10)]
    parts = cka.batches(130, 64)
    assert parts == [slice(0, 64), slice(64, 130)]  # the remainder of 2 joins the last batch
    assert cka.batches(136, 64)[-1] == slice(128, 136)


def test_the_probe_matches_a_recomputation_from_the_checkpoint_and_never_changes_training():
    raw = spec(steps=60, name="representations", checkpoint_every=20, eval_every=1000)
    plain_outcome, plain = run(raw)
    raw["probes"] = {"representations": {"every": 20, "examples": 200}}
    outcome, probed = run(raw)
    assert outcome == plain_outcome and probed.series("train/loss") == plain.series("train/loss")
    for (step, a), (_, b) in zip(probed.checkpoints, plain.checkpoints, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a if "/" not in k), step
    recorded = {(s, k): v for s, k, v in probed.points if k.startswith("cka/")}
    from dynascope.probes.representations import SAMPLE_SEED
    from dynascope.probes.samples import stratified_sample
    from worker.training.loop import prepare

    job = JobSpec.model_validate(raw)
    p = prepare(job, torch.device("cpu"))
    layers = blocks(p.model)
    assert layers == ["1", "3", "5"]  # the MLP's linear layers (its Flatten and activations have no parameters)
    assert {k for _, k in recorded} == {f"cka/first/{n}" for n in layers} | {f"cka/previous/{n}" for n in layers}
    assert all(recorded[(0, f"cka/first/{n}")] == pytest.approx(1.0) for n in layers)
    rows = stratified_sample(p.split.y_train, 200, job.train.seed + SAMPLE_SEED)
    x = p.split.x_train[rows].double()

    def outputs(step: int) -> list[np.ndarray]:
        """The layers' outputs with the weights before update `step` (at 0: the spec's initialization)."""
        model = prepare(job, torch.device("cpu")).model
        if step:
            [weights] = [t for s, t in probed.checkpoints if s == step]
            model.load_state_dict({k: v for k, v in weights.items() if "/" not in k})
        model = model.double().eval()
        with torch.no_grad():
            return [model[: int(n) + 1](x).flatten(1).numpy() for n in layers]

    def linear_cka(a: np.ndarray, b: np.ndarray) -> float:  # the feature-space form, independently
        a, b = a - a.mean(0), b - b.mean(0)
        return np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))

    at0, at20, at40 = outputs(0), outputs(20), outputs(40)
    for i, n in enumerate(layers):
        assert recorded[(40, f"cka/first/{n}")] == pytest.approx(linear_cka(at0[i], at40[i]), abs=1e-5), n  # (float32 outputs)
        assert recorded[(40, f"cka/previous/{n}")] == pytest.approx(linear_cka(at20[i], at40[i]), abs=1e-5), n
    [document] = [d for kind, s, d in probed.results if kind == "representations" and s == 40]
    assert document["layers"] == layers and document["features"] == [64, 64, 10] and document["estimator"] == "full"
    expected = [[linear_cka(a, b) for b in at40] for a in at40]
    np.testing.assert_allclose(np.array(document["matrix"]), np.array(expected), atol=1e-5)


def test_layers_are_checked_against_the_model():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))
    assert blocks(model) == ["0", "2.0", "2.1"] and list(chosen_layers(model, ["2"])) == ["2"]
    with pytest.raises(ValueError, match=r"\['9'\] are not modules of the model"):
        chosen_layers(model, ["9"])


def test_two_jobs_checkpoints_compared_layer_by_layer(tmp_path):
    """The representations analysis between job 1 (64-64 MLP) and job 2 (another seed, one 32-wide layer), against
    the feature-space CKA computed here; and a checkpoint against itself gives the probe's own matrix."""
    from safetensors.torch import save_file

    from backend.spec import RepresentationsAnalysis
    from tests.helpers import ListRecorder
    from worker.training.analyses import analyze_checkpoint
    from worker.training.checkpoint import read
    from worker.training.loop import prepare, train

    specs, files = {}, {}
    for job_id, widths, seed in ((1, [64, 64], 0), (2, [32], 3)):
        raw = spec(steps=60, lr=0.3, checkpoint_every=30, seed=seed, eval_every=1000)
        raw["model"]["widths"] = widths
        specs[job_id] = JobSpec.model_validate(raw)
        recorder = ListRecorder()
        train(specs[job_id], recorder, torch.device("cpu"))
        for step, tensors in recorder.checkpoints:
            files[(job_id, step)] = tmp_path / f"{job_id}-{step}.safetensors"
            save_file(tensors, str(files[(job_id, step)]))

    def analyze(request: RepresentationsAnalysis) -> dict:
        tensors, metadata = read(files[(1, 60)])
        return analyze_checkpoint(specs[1], request, 60, tensors, metadata, torch.device("cpu"), kept=files, job_id=1, specs=specs).result

    result = analyze(RepresentationsAnalysis(examples=200, to_job=2))
    assert (result["start"], result["end"]) == ({"job": 1, "step": 60}, {"job": 2, "step": 60})
    assert result["layers"] == ["1", "3", "5"] and result["to_layers"] == ["1", "3"] and result["to_features"] == [32, 10]
    from dynascope.probes.representations import SAMPLE_SEED
    from dynascope.probes.samples import stratified_sample

    p = prepare(specs[1], torch.device("cpu"))
    x = p.split.x_train[stratified_sample(p.split.y_train, 200, specs[1].train.seed + SAMPLE_SEED)].double()

    def outputs(job_id: int, layers: list[str]) -> list[np.ndarray]:
        model = prepare(specs[job_id], torch.device("cpu")).model
        model.load_state_dict({k: v for k, v in read(files[(job_id, 60)])[0].items() if "/" not in k})
        with torch.no_grad():
            return [model.double().eval()[: int(n) + 1](x).flatten(1).numpy() for n in layers]

    def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(0), b - b.mean(0)
        return np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))

    mine, theirs = outputs(1, ["1", "3", "5"]), outputs(2, ["1", "3"])
    expected = [[linear_cka(a, b) for b in theirs] for a in mine]
    np.testing.assert_allclose(np.array(result["matrix"]), np.array(expected), atol=1e-5)
    itself = analyze(RepresentationsAnalysis(examples=200, to_step=60, layers=["1", "5"], to_layers=["1", "5"]))
    np.testing.assert_allclose(np.diag(itself["matrix"]), [1.0, 1.0], atol=1e-12)
    minibatch = analyze(RepresentationsAnalysis(examples=200, to_job=2, batch=50))
    assert minibatch["estimator"].startswith("minibatch") and np.abs(np.array(minibatch["matrix"]) - np.array(expected)).max() < 0.1
    with pytest.raises(ValueError, match=r"to_layers: \['9'\] are not modules"):
        analyze(RepresentationsAnalysis(to_job=2, to_layers=["9"]))
