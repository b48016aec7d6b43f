import pytest

from backend.sweeps import SweepError, expand
from tests.conftest import spec


def test_grid_expands_in_order_with_readable_names():
    raw = {**spec(name="grid"), "sweep": {"optimizer.lr": [0.1, 0.5, 1.0], "train.batch_size": [32, 64]}}
    children = expand(raw, 100)
    assert len(children) == 6
    assert [p for p, _ in children][:2] == [{"optimizer.lr": 0.1, "train.batch_size": 32}, {"optimizer.lr": 0.1, "train.batch_size": 64}]
    params, job = children[5]
    assert job.optimizer.lr == 1.0 and job.train.batch_size == 64 and job.name == "grid[lr=1,batch_size=64]"
    assert job.model.widths == [64, 64], "the rest of the spec is shared"


def test_nested_paths_and_new_sections():
    raw = {**spec(), "sweep": {"probes.hessian": [{"every": 10}], "train.schedule.kind": ["cosine", "step"]}}
    jobs = [j for _, j in expand(raw, 10)]
    assert jobs[0].probes.hessian.every == 10 and [j.train.schedule.kind for j in jobs] == ["cosine", "step"]


@pytest.mark.parametrize(
    ("sweep", "loc", "says"),
    [
        ({"optimizer.lr": [0.1, -1.0]}, ["sweep", "optimizer.lr"], "greater than 0 (value -1.0)"),
        ({"optimizer.lrr": [0.1]}, ["sweep", "optimizer.lrr"], "Extra inputs are not permitted (value 0.1)"),
        ({"optimizer.lr": []}, ["sweep", "optimizer.lr"], "non-empty list"),
        ({"optimizer.lr": 0.1}, ["sweep", "optimizer.lr"], "non-empty list"),
        ({}, ["sweep"], "mapping"),
        ({"optimizer.lr": list(range(1, 40)), "train.seed": list(range(30))}, ["sweep"], "1170 jobs, over the limit of 1000"),
    ],
)
def test_bad_sweeps_name_the_problem(sweep, loc, says):
    with pytest.raises(SweepError) as info:
        expand({**spec(), "sweep": sweep}, 1000)
    assert any(e["loc"] == loc and says in e["msg"] for e in info.value.errors), info.value.errors
