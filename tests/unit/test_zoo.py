"""Every model trains on a dataset it fits; misfits are refused; the generated data has what it claims."""

import math
import re

import pytest
import torch
from pydantic import ValidationError

from backend.spec import JobSpec, OpposingFeaturesData, TextData
from tests.conftest import spec
from tests.helpers import ListRecorder
from worker.training import data
from worker.training.loop import Outcome, train

TRANSFORMER = {"kind": "transformer", "layers": 1, "heads": 2, "width": 32, "context": 16, "qk_layernorm": True, "z_loss": 1e-4}
CASES = [
    ({"kind": "mlp", "widths": [32]}, {"kind": "digits"}, "cross_entropy"),
    ({"kind": "mlp", "widths": [32]}, {"kind": "iris"}, "cross_entropy"),
    ({"kind": "mlp", "widths": [32]}, {"kind": "wine"}, "mse"),
    ({"kind": "mlp", "widths": [32]}, {"kind": "breast_cancer"}, "cross_entropy"),
    ({"kind": "mlp", "widths": [32]}, {"kind": "gaussian_mixture", "examples": 500}, "cross_entropy"),
    ({"kind": "mlp", "widths": [32], "activation": "tanh"}, {"kind": "teacher_student", "examples": 500}, "mse"),
    ({"kind": "cnn", "channels": [8, 8]}, {"kind": "digits"}, "cross_entropy"),
    ({"kind": "cnn", "channels": [8], "batch_norm": True}, {"kind": "opposing_features", "examples": 400}, "cross_entropy"),
    ({"kind": "resnet", "depth": 8, "width": 4}, {"kind": "digits"}, "cross_entropy"),
    (TRANSFORMER, {"kind": "text", "max_chars": 20_000}, "cross_entropy"),
]


@pytest.mark.parametrize(("model", "dataset", "loss"), CASES, ids=lambda v: v.get("kind") if isinstance(v, dict) else v)
def test_every_model_trains_on_a_fitting_dataset(model, dataset, loss):
    raw = {**spec(steps=30, lr=0.05, loss=loss), "model": model, "data": dataset}
    raw["train"]["batch_size"] = 32
    raw["probes"] = {"hessian": {"at": ["end"], "top_k": 1, "examples": 64, "tol": 1e-2}}
    recorder = ListRecorder()
    assert train(JobSpec.model_validate(raw), recorder, torch.device("cpu")) is Outcome.finished
    losses = recorder.series("train/loss")
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert recorder.results[0][2]["parameters"] > 0
    [hessian] = [p for k, _, p in recorder.results if k == "hessian"]
    assert math.isfinite(hessian["eigenvalues"][0]), "the Hessian probe differentiates every model twice"
    has_accuracy = dataset["kind"] != "teacher_student"
    assert bool(recorder.series("val/accuracy")) == has_accuracy


@pytest.mark.parametrize(
    ("model", "dataset", "loss", "says"),
    [
        ({"kind": "cnn"}, {"kind": "iris"}, "cross_entropy", "cnn needs images"),
        ({"kind": "resnet"}, {"kind": "gaussian_mixture"}, "cross_entropy", "resnet needs images"),
        (TRANSFORMER, {"kind": "digits"}, "cross_entropy", "transformer goes with text"),
        ({"kind": "mlp"}, {"kind": "text"}, "cross_entropy", "transformer goes with text"),
        ({"kind": "mlp"}, {"kind": "teacher_student"}, "cross_entropy", "set train.loss to mse"),
        ({"kind": "resnet", "depth": 10}, {"kind": "digits"}, "cross_entropy", "6n+2"),
        ({**TRANSFORMER, "width": 30, "heads": 4}, {"kind": "text"}, "cross_entropy", "not a multiple of heads"),
    ],
)
def test_misfits_are_refused_with_the_reason(model, dataset, loss, says):
    with pytest.raises(ValidationError, match=re.escape(says)):
        JobSpec.model_validate({**spec(loss=loss), "model": model, "data": dataset})


def test_planted_opposing_feature_is_where_the_ids_say():
    split = data.opposing_features(OpposingFeaturesData(kind="opposing_features", examples=1000, strength=4.0), 0)
    planted = split.planted
    for c in (0, 1):
        ids = torch.tensor(planted[f"class{c}_with_patch"])
        assert len(ids) > 20 and (split.y_train[ids] == c).all()
        assert split.x_train[ids, :, :3, :3].mean() > 3.0
    rest = torch.ones(len(split.y_train), dtype=torch.bool)
    rest[planted["class0_with_patch"] + planted["class1_with_patch"]] = False
    assert split.x_train[rest, :, :3, :3].mean().abs() < 1.0


def test_text_windows_predict_the_next_character():
    split = data.text(TextData(kind="text", max_chars=5000), 0, context=16)
    assert split.x_train.shape[1] == 16 and torch.equal(split.x_train[:, 1:], split.y_train[:, :-1])
    decoded = "".join(split.vocab[i] for i in split.x_train[0].tolist())
    assert decoded.isprintable() or "\n" in decoded
    assert split.n_classes == len(split.vocab)


@pytest.mark.parametrize(
    ("model", "dataset"),
    [(m, d) for m, d, _ in CASES]
    + [
        ({"kind": "resnet", "depth": 20, "width": 16}, {"kind": "digits"}),
        ({"kind": "cnn", "channels": [4, 8, 16, 32], "batch_norm": True}, {"kind": "opposing_features", "classes": 7}),
        ({**TRANSFORMER, "qk_layernorm": False, "layers": 3}, {"kind": "text", "max_chars": 50_000}),
        ({"kind": "mlp", "widths": [5, 7, 9]}, {"kind": "teacher_student", "dim": 11}),
        ({"kind": "linear", "depth": 3, "width": 6}, {"kind": "linear_teacher", "dim": 5, "outputs": 4}),
        ({"kind": "linear", "depth": 1, "init": "random"}, {"kind": "linear_teacher", "dim": 5, "outputs": 7}),
    ],
    ids=lambda v: v.get("kind"),
)
def test_parameter_count_known_before_running_matches_the_built_model(model, dataset):
    from backend.shapes import data_shape, parameter_count
    from worker.training import models

    loss = "mse" if dataset["kind"] in ("teacher_student", "linear_teacher") else "cross_entropy"
    job = JobSpec.model_validate({**spec(loss=loss), "model": model, "data": dataset})
    context = job.model.context if job.model.kind == "transformer" else None
    split = data.load(job.data, 0, context)
    shape = data_shape(job.data)
    assert split.outputs == shape.outputs
    if split.modality != "text":
        assert split.input_shape == shape.input_shape
    built = models.build(job.model, split)
    assert parameter_count(job) == models.parameter_count(built)
