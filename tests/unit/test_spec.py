from pathlib import Path

import pytest
from pydantic import ValidationError

from backend.spec import EXAMPLE_SPEC_YAML, JobSpec, SpecParseError, field_errors, parse_spec_text
from tests.conftest import spec


def error_locs(raw: dict) -> list[tuple]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(raw)
    return [tuple(e["loc"]) for e in field_errors(info.value, raw)]


def test_example_spec_is_valid():
    parsed = JobSpec.model_validate(parse_spec_text(EXAMPLE_SPEC_YAML))
    assert parsed.model.widths == [128, 128]
    assert parsed.optimizer.lr == 0.5


def test_json_text_parses_like_yaml():
    assert parse_spec_text('{"name": "a", "train": {"steps": 3}}') == {"name": "a", "train": {"steps": 3}}


@pytest.mark.parametrize(
    ("path", "value", "loc"),
    [
        (("optimizer", "lr"), 0.0, ("optimizer", "lr")),
        (("optimizer", "lr"), -1.0, ("optimizer", "lr")),
        (("train", "steps"), 0, ("train", "steps")),
        (("train", "batch_size"), -3, ("train", "batch_size")),
        (("model", "kind"), "transformer9000", ("model", "kind")),
        (("data", "kind"), "imagenet", ("data", "kind")),
        (("data", "val_fraction"), 1.5, ("data", "val_fraction")),
        (("model", "widths"), [], ("model", "widths")),
    ],
)
def test_bad_values_name_their_field(path, value, loc):
    raw = spec()
    raw[path[0]][path[1]] = value
    assert loc in error_locs(raw)


def test_unknown_keys_are_errors_at_every_level():
    raw = spec()
    raw["optimiser"] = {"kind": "sgd"}
    raw["train"]["stpes"] = 10
    raw["probes"] = {"hessain": {"every": 10}}
    locs = error_locs(raw)
    assert ("optimiser",) in locs
    assert ("train", "stpes") in locs
    assert ("probes", "hessain") in locs


def test_missing_sections_are_named():
    raw = spec()
    del raw["optimizer"]
    assert ("optimizer",) in error_locs(raw)


def test_nesterov_without_momentum_is_refused():
    raw = spec()
    raw["optimizer"]["nesterov"] = True
    assert ("optimizer",) in error_locs(raw)


@pytest.mark.parametrize("text", ["name: [unclosed", "- a list\n- not a mapping", "42", "{bad json"])
def test_malformed_text_says_where(text):
    with pytest.raises(SpecParseError):
        parse_spec_text(text)


def test_parse_error_reports_line():
    with pytest.raises(SpecParseError, match="line 2, column 18"):
        parse_spec_text("name: ok\nmodel: [kind: mlp}\n")


def test_probe_schedules():
    probe = JobSpec.model_validate({**spec(steps=100), "probes": {"hessian": {"every": 30, "at": [5, "end"]}}})
    hessian = probe.probes.hessian
    assert [s for s in range(101) if hessian.due(s, 100)] == [0, 5, 30, 60, 90, 100]
    only_end = JobSpec.model_validate({**spec(steps=100), "probes": {"hessian": {"at": ["end"]}}}).probes.hessian
    assert [s for s in range(101) if only_end.due(s, 100)] == [100]


@pytest.mark.parametrize(
    ("probe", "loc"),
    [
        ({}, ("probes", "hessian")),
        ({"every": 0}, ("probes", "hessian", "every")),
        ({"every": 5, "top_k": 0}, ("probes", "hessian", "top_k")),
        ({"at": ["start"]}, ("probes", "hessian", "at", 0, "literal['end']")),
        ({"every": 5, "tol": 2}, ("probes", "hessian", "tol")),
    ],
)
def test_bad_probe_settings_name_their_field(probe, loc):
    assert loc in error_locs({**spec(), "probes": {"hessian": probe}})


def test_probe_steps_after_the_end_are_refused():
    with pytest.raises(ValidationError, match=r"probes.hessian.at has steps after the last \(300\): \[400\]"):
        JobSpec.model_validate({**spec(steps=300), "probes": {"hessian": {"at": [10, 400]}}})


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_specs_are_valid(path):
    from backend.sweeps import expand

    raw = parse_spec_text(path.read_text())
    for _, child in expand(raw, 100) if "sweep" in raw else [(None, JobSpec.model_validate(raw))]:
        assert isinstance(child, JobSpec)


def test_a_flag_is_true_or_false_never_a_string_or_number_read_as_one():
    """The schema says boolean: "TRUE" or 1 is refused, naming the field (the randomized fuzz, seed 2069591747,
    found "TRUE" accepted on POST /runs)."""
    import pydantic

    from dynascope.settings import LandscapeSettings

    for wrong in ("TRUE", "yes", 1):
        with pytest.raises(pydantic.ValidationError, match="orthogonalize"):
            LandscapeSettings.model_validate({"orthogonalize": wrong})
    assert LandscapeSettings.model_validate({"orthogonalize": True}).orthogonalize is True


def test_a_tracked_step_is_at_most_the_largest_integer_a_float_holds_exactly():
    """The randomized fuzz (seed 422389640) sent 2**62 written from a float: it read back as 4611686018427388000,
    over the old bound of 2**62, and a schema-valid request was refused. Up to 2**53 - 1, a float's JSON reads back
    as the integer it holds."""
    import json

    import pydantic

    from dynascope.tracking import MAX_STEP, Point

    assert MAX_STEP == 2**53 - 1 and float(MAX_STEP) == MAX_STEP
    as_float = json.dumps({"name": "loss", "step": float(MAX_STEP), "value": 1.0})
    assert Point.model_validate_json(as_float).step == MAX_STEP
    with pytest.raises(pydantic.ValidationError, match="step"):
        Point.model_validate({"name": "loss", "step": MAX_STEP + 1, "value": 1.0})
