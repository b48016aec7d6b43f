"""The probe runner in a training loop written by hand (as a user's own loop, or the tracker, drives it) records
the same numbers as a server job of the same spec and seed: the job loop is only the step plus these calls."""

import torch

from backend.spec import JobSpec
from dynascope.probes import Batch, ProbeSet
from tests.conftest import spec
from tests.helpers import ListRecorder, run
from worker.training.loop import prepare, probe_run

PROBES = {
    "hessian": {"every": 10, "top_k": 2, "examples": 200},
    "gradstats": {"every": 3, "details_every": 15, "two_batch": 16},
    "landscape": {"at": ["last"], "resolution": 5, "examples": 200},
}


def hand_written_loop(job: JobSpec) -> ListRecorder:
    recorder, p = ListRecorder(), prepare(job, torch.device("cpu"))
    probes = ProbeSet.build(job.probes, probe_run(job, p), recorder)
    generator, n = torch.Generator().manual_seed(job.train.seed), len(p.split.y_train)
    order, cursor, size = torch.randperm(n, generator=generator), 0, job.train.batch_size
    for step in range(job.train.steps):
        probes.before_step(step)
        if cursor + size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx, cursor = order[cursor : cursor + size], cursor + size
        x, y = p.split.x_train[idx], p.split.y_train[idx]
        with probes.capture(step):
            losses = p.example_loss(p.model(x), y)
        loss = losses.mean()
        batch = Batch(step, x, y, idx, losses.detach(), loss.item(), p.optimizer.param_groups[0]["lr"])
        probes.after_forward(batch)
        p.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        probes.after_backward(batch)
        p.optimizer.step()
        probes.after_step(batch)
    probes.finish()
    return recorder


def _probe_points(recorder: ListRecorder) -> dict[tuple[int, str], float]:
    ours = ("train/", "val/", "lr", "time/", "memory/")  # (the clock and the memory high-water mark differ)
    return {(step, name): value for step, name, value in recorder.points if not name.startswith(ours)}


def _documents(recorder: ListRecorder) -> list[tuple[str, int, dict]]:
    timing = ("seconds", "points_per_s", "peak_bytes")
    return [(kind, step, {k: v for k, v in doc.items() if k not in timing}) for kind, step, doc in recorder.results if kind != "summary"]


def test_a_hand_written_loop_records_what_the_server_job_records():
    raw = spec(steps=40, name="own-loop", checkpoint_every=None) | {"probes": PROBES}
    _, job = run(raw)
    own = hand_written_loop(JobSpec.model_validate(raw))
    assert _probe_points(own) == _probe_points(job)
    assert {name for _, name in _probe_points(job)} >= {"hessian/lambda_1", "grad/noise_scale", "grad/norm"}
    assert _documents(own) == _documents(job)
    assert [kind for kind, _, _ in _documents(job)].count("landscape") == 1
    assert [kind for kind, *_ in own.artifacts] == [kind for kind, *_ in job.artifacts if kind != "checkpoint"]
