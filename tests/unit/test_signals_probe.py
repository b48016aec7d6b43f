"""The signals probe in a training job: the planted opposing pair is reported with its groups and curves."""

import torch

from backend.spec import JobSpec, OpposingFeaturesData
from tests.helpers import ListRecorder, planted_pair_job
from worker.training import data
from worker.training.loop import Outcome, train


def test_the_planted_pair_is_reported_with_groups_curves_and_features():
    raw = planted_pair_job(6.0, hessian=True)
    rec = ListRecorder()
    assert train(JobSpec.model_validate(raw), rec, torch.device("cpu")) is Outcome.finished
    reports = [(s, r) for k, s, r in rec.results if k == "signals"]
    assert reports, "no pair passed the anti-phase score"
    split = data.opposing_features(OpposingFeaturesData.model_validate(raw["data"]), 0)
    planted = set(split.planted["class0_with_patch"]) | set(split.planted["class1_with_patch"])
    # the most opposed pair that passed the anti-phase score (a weaker pair may be as anti-phase: both are reported)
    step, best = min(reports, key=lambda r: r[1]["cos"])
    found = set(best["A"]["expanded"]) | set(best["B"]["expanded"])
    assert len(found & planted) / len(found) >= 0.8 and len(found & planted) / len(planted) >= 0.8
    assert best["antiphase"] <= -0.5 and best["cos"] < -0.9 and step in (100, 200)
    assert len(best["A"]["loss"]) == len(best["steps"]) == 41
    patch = torch.tensor(best["A"]["mean_input_minus_all"])[0, :3, :3]
    assert float(patch.mean()) > 1.0, "the shared feature is the planted patch"
    assert len(best["A"]["examples"]) == 8 and torch.tensor(best["A"]["examples"]).shape == (8, 1, 8, 8)
    # the pair's disagreement lies along the sharpest direction, far beyond a random direction
    aligned = best["hessian_alignment"]
    assert aligned["eigenvector_step"] <= step and aligned["abs_cos"] > 0.5 > 20 * aligned["random_abs_cos"]
    pair = best["pair"]
    a_curve = rec.series(f"signals/pair{pair}/A")
    assert len(a_curve) >= 40 and len(rec.series("signals/heavy_tail")) == 259
    assert len(rec.series("signals/probe_loss")) == 260


def test_minibatches_use_a_separate_probe_forward():
    raw = {
        "name": "signals-sgd",
        "model": {"kind": "mlp", "widths": [16]},
        "data": {"kind": "digits"},
        "optimizer": {"kind": "sgd", "lr": 0.1},
        "train": {"steps": 30, "batch_size": 32, "checkpoint_every": None},
        "probes": {"signals": {"probe_examples": 200, "detect_every": 10}},
    }
    rec = ListRecorder()
    assert train(JobSpec.model_validate(raw), rec, torch.device("cpu")) is Outcome.finished
    assert len(rec.series("signals/probe_loss")) == 30
    summary = [r for k, s, r in rec.results if k == "summary"][-1]
    assert summary["probe_seconds"]["signals"] > 0


def test_text_groups_come_as_text():
    """On next-character prediction the groups' examples are shown as the text they are."""
    raw = {
        "name": "signals-text",
        "model": {"kind": "transformer", "layers": 1, "heads": 2, "width": 32, "context": 16},
        "data": {"kind": "text", "max_chars": 4000},
        "optimizer": {"kind": "sgd", "lr": 0.5},
        "train": {"steps": 60, "batch_size": 100_000, "eval_every": 60, "checkpoint_every": None},
        "probes": {"signals": {"detect_every": 20, "window": 5, "antiphase_max": 0.0, "z_min": 1.0, "tau": 0.0}},
    }
    rec = ListRecorder()
    assert train(JobSpec.model_validate(raw), rec, torch.device("cpu")) is Outcome.finished
    reports = [r for k, s, r in rec.results if k == "signals"]
    assert reports, "permissive settings report some pair"
    split = data.load(JobSpec.model_validate(raw).data, 0, 16)
    for report in reports:
        for side in ("A", "B"):
            assert "mean_input_minus_all" not in report[side]
            rows = split.x_train[report[side]["core"][: len(report[side]["snippets"])]]
            assert report[side]["snippets"] == ["".join(split.vocab[t] for t in row) for row in rows.tolist()]
    assert len(rec.series("signals/probe_loss")) == 60


def test_the_probe_reads_the_trained_losses_and_leaves_training_unchanged():
    """Under full-batch GD the probe's losses are the training step's own ℓ_i (the step trains on their mean,
    with or without the probe), so the probe changes no number of the run."""
    raw = planted_pair_job(6.0) | {"train": {**planted_pair_job(6.0)["train"], "steps": 30}}
    plain, probed = ListRecorder(), ListRecorder()
    train(JobSpec.model_validate({**raw, "probes": {}}), plain, torch.device("cpu"))
    train(JobSpec.model_validate(raw), probed, torch.device("cpu"))
    assert plain.series("train/loss") == probed.series("train/loss"), "bit-identical training with the probe on"
    torch.testing.assert_close(
        torch.tensor(probed.series("signals/probe_loss")), torch.tensor(probed.series("train/loss")), rtol=1e-6, atol=0
    )


def test_a_search_runs_when_the_sharpness_reaches_its_threshold():
    """Measured sharpness (step → value, threshold 2): searches at each first measurement at or above the
    threshold after one below, deferred while the last search is under `min_gap` steps old."""
    from dynascope.probes import Batch, Run
    from dynascope.probes.hessian import Sharpness
    from dynascope.probes.signals import Signals
    from dynascope.settings import SignalsProbe

    measured = {0: 1.0, 5: 1.5, 10: 2.5, 15: 3.0, 20: 1.8, 25: 2.2, 28: 1.0, 30: 2.1}
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 5, generator=gen), torch.randint(0, 3, (200,), generator=gen)
    model = torch.nn.Linear(5, 3)
    each = lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="none")  # noqa: E731

    def searches(on: bool) -> list[int]:
        cfg = SignalsProbe(detect_every=1000, on_rise=False, on_sharpness=on, min_gap=10)
        run = Run(model, lambda o, t: each(o, t).mean(), each, x, y, 3, 0, 40, threshold=lambda: (2.0, "2/lr"), full_batch=True)
        probe = Signals(cfg, run)
        found = []
        for step in range(40):
            latest = max((s for s in measured if s <= step), default=None)
            if latest is not None:  # the Hessian probe's newest measurement, as it publishes it
                run.board.publish(Sharpness(latest, torch.zeros(18), measured[latest], 2.0))
            losses = torch.rand(200, generator=gen)
            out = probe.after_forward(Batch(step, x, y, torch.arange(200), losses, float(losses.mean()), 0.1))
            if "signals/outliers" in out.metrics:
                found.append(step)
        return found

    assert searches(True) == [10, 25, 35]
    assert searches(False) == []


def test_the_hessian_probe_triggers_a_search_in_a_planted_pair_job():
    """Full-batch GD at lr 0.15 starts above 2/lr (sharpness 15 > 13.3): the Hessian probe's first measurement
    makes a search due at the first step with a loss change; nothing else schedules one."""
    raw = planted_pair_job(6.0) | {"optimizer": {"kind": "sgd", "lr": 0.15}}
    raw["train"] = {**raw["train"], "steps": 20}
    hessian = {"every": 10, "top_k": 1, "examples": 100_000, "tol": 1e-4}
    found = {}
    for on in (True, False):
        raw["probes"] = {"signals": {"detect_every": 1000, "on_rise": False, "on_sharpness": on}, "hessian": hessian}
        rec = ListRecorder()
        train(JobSpec.model_validate(raw), rec, torch.device("cpu"))
        assert rec.series("hessian/sharpness")[0] > rec.series("hessian/threshold")[0]
        found[on] = [s for s, k, _ in rec.points if k == "signals/outliers"]
    assert found == {True: [1], False: []}
