"""A team's own model and data in server jobs: the allow-list (which imports nothing), the model and data
entry points of tests/labpkg (installed by make test) with every probe on them, and each way an entry point can
fail, ending with a message that says which and where."""

import pytest
import torch

from backend.spec import JobSpec
from dynascope import entrypoints
from tests.conftest import reset_caches
from tests.helpers import ListRecorder, run
from worker.training.loop import Outcome, train

MODEL = "dynascope_testlab.models:row_attention"
DATA = "dynascope_testlab.data:digits"
EVERY_PROBE = {
    "hessian": {"every": 40, "top_k": 2, "examples": 300},
    "gradstats": {"every": 20},
    "landscape": {"at": ["end"], "resolution": 5, "examples": 200},
    "signals": {"probe_examples": 256, "detect_every": 40},
    "collapse": {"every": 40, "examples": 300},
    "representations": {"every": 40, "examples": 128},
    "kernel": {"every": 40, "examples": 16},
}


@pytest.fixture(autouse=True)
def allowed(monkeypatch):
    monkeypatch.setenv("DYNASCOPE_ENTRYPOINTS", "dynascope_testlab.")
    reset_caches()
    yield
    reset_caches()


def lab_job(model: str = MODEL, data: str = DATA, steps: int = 80, **train: object) -> dict:
    return {
        "name": "own-model",
        "model": {"kind": "python", "entrypoint": model, "kwargs": {"width": 16, "heads": 2} if model == MODEL else {}},
        "data": {"kind": "python", "entrypoint": data, "kwargs": {"val_fraction": 0.2} if data == DATA else {}},
        "optimizer": {"kind": "sgd", "lr": 0.2, "momentum": 0.9},
        "train": {"steps": steps, "batch_size": 64, "eval_every": 40, "checkpoint_every": 30, **train},
    }


@pytest.mark.parametrize(
    ("reference", "allow", "ok"),
    [
        ("mylab.models:build", ["mylab."], True),
        ("mylab:build", ["mylab."], True),
        ("mylab_evil.models:build", ["mylab"], False),
        ("lab_models.vit:build", ["mylab.", "lab_models"], True),
        ("lab_models_x:build", ["lab_models"], False),
        ("os:system", [], False),
        ("mylab.models:build; rm", ["mylab."], False),
    ],
)
def test_the_allow_list_admits_modules_under_its_prefixes_only(reference, allow, ok):
    assert entrypoints.allowed(reference, allow) is ok
    assert (entrypoints.refusal(reference, allow) is None) is ok
    assert entrypoints.prefixes(" mylab., lab_models ,") == ["mylab.", "lab_models"]
    assert "DYNASCOPE_ENTRYPOINTS lists nothing" in entrypoints.refusal("mylab:f", [])


def test_a_lab_model_on_lab_data_trains_with_every_probe():
    outcome, recorder = run(lab_job() | {"probes": EVERY_PROBE})
    assert outcome is Outcome.finished
    summary = next(d for kind, _, d in recorder.results if kind == "summary" and "parameters" in d)
    assert summary["parameters"] == 8 * 16 + 16 + 8 * 16 + 16 * 48 + 48 + 16 * 16 + 16 + 16 + 16 * 10 + 10
    assert (summary["train_examples"], summary["classes"], summary["modality"]) == (1437, 10, "image")
    assert recorder.series("val/accuracy")[-1] > 0.3  # (chance: 0.1)
    kinds = {kind for kind, _, _ in recorder.results}
    assert {"hessian", "gradstats", "landscape", "collapse", "representations", "kernel"} <= kinds
    [details] = [d for kind, s, d in recorder.results if kind == "gradstats" and s == 60]
    assert details["rules"]["position"] == details["rules"]["gate"] == "torch.func"  # parameters no layer owns
    assert details["rules"]["qkv.weight"] == "per-example" and details["rules"]["head.weight"] == "linear"  # (a sequence, a vector)
    plain_outcome, plain = run(lab_job())
    assert plain_outcome is outcome and plain.series("train/loss") == recorder.series("train/loss")  # probes change nothing


def test_a_lab_job_resumes_bit_identically():
    from worker.training.checkpoint import unpack

    job = JobSpec.model_validate(lab_job(steps=100))
    whole = ListRecorder()
    assert train(job, whole, torch.device("cpu")) is Outcome.finished
    died = ListRecorder(stop_after=70)
    assert train(job, died, torch.device("cpu")) is Outcome.stopped
    step, tensors, metadata = [(s, t, m) for k, s, t, m in died.artifacts if k == "checkpoint"][-1]
    resumed = ListRecorder()
    assert train(job, resumed, torch.device("cpu"), resume=unpack(tensors, metadata)) is Outcome.finished
    assert [p for p in died.points if p[0] < step] + resumed.points == whole.points
    assert all(torch.equal(resumed.checkpoints[-1][1][k], v) for k, v in whole.checkpoints[-1][1].items())


def test_lab_regression_data_from_numpy_arrays():
    raw = lab_job(data="dynascope_testlab.data:regression", loss="mse")
    raw["model"] = {"kind": "mlp", "widths": [16]}
    outcome, recorder = run(raw)
    assert outcome is Outcome.finished and recorder.series("train/loss")[-1] < recorder.series("train/loss")[0]
    summary = next(d for kind, _, d in recorder.results if kind == "summary" and "parameters" in d)
    assert (summary["classes"], summary["train_examples"], summary["parameters"]) == (None, 150, 5 * 16 + 16 + 16 * 3 + 3)


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (
            "dynascope_testlab.models:raises",
            DATA,
            r"models:raises raised ValueError: no such architecture \(at .*models\.py:\d+, in raises\)",
        ),
        ("dynascope_testlab.models:not_a_module", DATA, r"returned str, not a torch\.nn\.Module"),
        ("dynascope_testlab.models:seven_outputs", DATA, r"output has shape \(2, 7\) for 2 examples, but 10 classes need \(2, 10\)"),
        ("dynascope_testlab.models:missing", DATA, r"dynascope_testlab\.models has no function missing"),
        ("dynascope_testlab.nothing:f", DATA, r"cannot import dynascope_testlab\.nothing: ModuleNotFoundError"),
        (MODEL, "dynascope_testlab.data:mismatched", r"the training set has 10 inputs and 9 targets"),
        ("os.path:join", DATA, r"os\.path is not under the modules the operator allows: DYNASCOPE_ENTRYPOINTS lists dynascope_testlab\."),
    ],
)
def test_an_entry_point_that_fails_says_which_and_why(model, data, message):
    with pytest.raises((entrypoints.EntryPointError, ValueError), match=message):
        run(lab_job(model=model, data=data))
