"""The tracker in a plain PyTorch loop against a running deployment (PostgreSQL, Redis, the API with its reaper,
a Celery worker): the run is a job with the numbers the probe runner computes, exactly; numbers within a stated
tolerance of a server job of the same spec; offline runs and runs whose server was away are sent by `dynascope
sync`, twice without duplicates; a tracker killed with -9 leaves a `lost` run with everything it had sent; a run
goes on where it stopped (`resume=`); a probe's tensors arrive as safetensors; under DDP (gloo, two processes)
one run records the statistics of the global batch. The embedded mode (`dynascope serve`) is the server that
goes away and comes back."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as safetensors_load
from torch import nn

import dynascope
from backend.spec import JobSpec
from dynascope.probes import Batch, ProbeSet, Run
from dynascope.probes.optimizers import stability_threshold
from dynascope.watching import UNKNOWN_TOTAL, per_example
from tests.conftest import Serve, Stack, fresh_pg, fresh_redis, free_port, spec
from tests.helpers import ListRecorder, kept_series
from worker.training.loop import Batches, prepare

PROBES = {"gradstats": {"every": 3, "details_every": 30}, "hessian": {"every": 10, "top_k": 2, "examples": 100_000}}
STEPS = 40
TRACKED_TIMEOUT = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Stack]:
    """PostgreSQL, Redis, the API (with its reaper) and a worker, as a team deploys them."""
    with fresh_pg() as database:
        stack = Stack(tmp_path_factory.mktemp("tracker"), database, fresh_redis(12), tracked_timeout=TRACKED_TIMEOUT)
        stack.migrate()
        stack.start_api()
        stack.start_worker()
        yield stack
        stack.close()


def _token(served: Stack | Serve) -> str:
    return served.client.headers["authorization"].removeprefix("Bearer ")


def _series(served: Stack | Serve, job_id: int, prefix: str = "") -> dict[str, tuple[list[int], list]]:
    got = served.client.get(f"/jobs/{job_id}/metrics", params={"prefix": prefix, "max_points": 100_000}).json()["series"]
    return {s["name"]: (s["steps"], s["values"]) for s in got}


def _loop(job: JobSpec, step_hook) -> None:
    """A plain loop over the job's data and batch order (model, data and seed from the spec)."""
    p = prepare(job, torch.device("cpu"))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(p.model.parameters(), lr=job.optimizer.lr)
    batches = Batches(len(p.split.y_train), job.train.batch_size, job.train.seed)
    step_hook("start", p, loss_fn, optimizer)
    for _ in range(job.train.steps):
        idx = batches.next()
        loss = loss_fn(p.model(p.split.x_train[idx]), p.split.y_train[idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step_hook("step", loss.item(), None, None)


def _tracked(served: Stack, job: JobSpec, **init) -> dynascope.Run:
    run = dynascope.init(job.name, {"lr": job.optimizer.lr}, url=f"http://127.0.0.1:{served.port}", token=_token(served), **init)

    def hook(what, a, b, c):
        if what == "start":
            run.watch(a.model, b, c, probe_batch=(a.split.x_train, a.split.y_train), probes=PROBES)
        else:
            run.log({"train/loss": a})

    _loop(job, hook)
    run.finish()
    return run


def _reference(job: JobSpec) -> ListRecorder:
    """The same loop with the probe runner's hooks called by hand, into a list."""
    recorder, p = ListRecorder(), prepare(job, torch.device("cpu"))
    loss_fn = nn.CrossEntropyLoss()
    each = per_example(loss_fn)
    optimizer = torch.optim.SGD(p.model.parameters(), lr=job.optimizer.lr)
    x_all, y_all = p.split.x_train, p.split.y_train
    run = Run(p.model, loss_fn, each, x_all, y_all, 10, 0, UNKNOWN_TOTAL, threshold=lambda: stability_threshold(optimizer))
    probes = ProbeSet.build(job.probes, run, recorder)
    batches = Batches(len(y_all), job.train.batch_size, job.train.seed)
    for step in range(job.train.steps):
        probes.before_step(step)
        idx = batches.next()
        x, y = x_all[idx], y_all[idx]
        with probes.capture(step):
            out = p.model(x)
            loss = loss_fn(out, y)
        batch = Batch(step, x, y, torch.arange(len(y)), each(out.detach(), y), float(loss.detach()), job.optimizer.lr)
        probes.after_forward(batch)
        loss.backward()
        probes.after_backward(batch)
        optimizer.step()
        probes.after_step(batch)
        optimizer.zero_grad()
        recorder.log(step, {"train/loss": loss.item()})
    probes.total = job.train.steps
    probes.finish()
    return recorder


def test_a_tracked_loop_is_a_job_with_the_runners_numbers_and_close_to_a_server_jobs(served: Stack, tmp_path: Path):
    job = JobSpec.model_validate(spec(steps=STEPS, name="tracked-digits", checkpoint_every=None) | {"probes": PROBES})
    run = _tracked(served, job, dir=tmp_path / "run")
    tracked = served.client.get(f"/jobs/{run.id}").json()
    assert (tracked["source"], tracked["status"], tracked["step"]) == ("tracked", "succeeded", STEPS)
    assert not list((tmp_path / "run" / "pending").glob("*"))  # everything went out
    got = _series(served, run.id)
    assert len(got["train/loss"][0]) == STEPS and got["hessian/lambda_1"][0] == [0, 10, 20, 30, 40]
    assert got["grad/noise_scale"][0] == list(range(0, STEPS, 3))
    # every number the runner computes on this loop, exactly, through the hooks, the queue and the server
    reference = _reference(job)
    expected: dict[str, tuple[list[int], list]] = {}
    for step, name, value in reference.points:
        if not name.startswith(("time/", "memory/")):
            expected.setdefault(name, ([], []))[0].append(step)
            expected[name][1].append(value if np.isfinite(value) else None)
    assert {k: v for k, v in got.items() if not k.startswith(("time/", "memory/"))} == expected
    served_docs = served.client.get(f"/jobs/{run.id}/results/hessian").json()
    timing = ("seconds", "peak_bytes")
    assert [{k: v for k, v in r["data"].items() if k not in timing} for r in served_docs] == [
        {k: v for k, v in d.items() if k not in timing} for kind, _, d in reference.results if kind == "hessian"
    ]
    # against the server job of the same spec: the step's loss is nn.CrossEntropyLoss's fused mean here and the
    # mean of per-example losses there, which differ in the last bits; over 40 steps that stays below 1e-4
    server_job = served.client.post("/jobs", json=job.model_dump(mode="json")).json()
    served.wait_job(server_job["id"], lambda j: j["status"] == "succeeded", 120)
    theirs = _series(served, server_job["id"])
    for name in ("train/loss", "grad/noise_scale", "grad/norm", "hessian/lambda_1", "hessian/threshold"):
        assert got[name][0] == theirs[name][0], name
        np.testing.assert_allclose(np.array(got[name][1], float), np.array(theirs[name][1], float), rtol=1e-4, err_msg=name)
    views = [v["name"] for v in served.client.get(f"/jobs/{run.id}/figures").json()]
    assert views == ["training", "hessian", "gradstats"]
    # each Hessian measurement's eigenvectors, as a server job keeps them (safetensors, the same tensors)
    kept = served.client.get(f"/jobs/{run.id}/artifacts").json()
    assert [(a["kind"], a["step"]) for a in kept] == [("hessian-eigenvectors", s) for s in (0, 10, 20, 30, 40)]
    last = served.client.get(f"/jobs/{run.id}/artifacts/{kept[-1]['id']}").content
    [(_, _, expected, _)] = [a for a in reference.artifacts if a[:2] == ("hessian-eigenvectors", 40)]
    assert {k: v.tolist() for k, v in safetensors_load(last).items()} == {k: v.tolist() for k, v in expected.items()}


def test_offline_runs_and_runs_without_a_server_are_sent_by_sync_once(served: Stack, tmp_path: Path):
    job = JobSpec.model_validate(spec(steps=15, name="offline-digits", checkpoint_every=None) | {"probes": PROBES})
    offline = _tracked(served, job, dir=tmp_path / "offline", mode="offline")
    nowhere = dynascope.init("no-server", url=f"http://127.0.0.1:{free_port()}", token="x", dir=tmp_path / "nowhere")
    for step in range(30):
        nowhere.log({"train/loss": 1.0 / (step + 1)})
    nowhere.finish()
    assert offline.id is None and nowhere.id is None
    env = {**os.environ, "DYNASCOPE_URL": f"http://127.0.0.1:{served.port}", "DYNASCOPE_TOKEN": _token(served)}
    sync = [sys.executable, "-m", "dynascope.cli", "sync", str(tmp_path / "offline"), str(tmp_path / "nowhere")]
    first = subprocess.run(sync, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    ids = [int(line.split("job ")[1].split()[0]) for line in first.stdout.splitlines() if "→ job" in line]
    assert len(ids) == 2
    before = [_series(served, i) for i in ids]
    again = subprocess.run(sync, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and [int(line.split("job ")[1].split()[0]) for line in again.stdout.splitlines() if "→ job" in line] == ids
    assert [_series(served, i) for i in ids] == before  # nothing twice
    sent = before[1]["train/loss"]
    assert sent == (list(range(30)), [1.0 / (s + 1) for s in range(30)])
    assert len(before[0]["train/loss"][0]) == 15 and before[0]["hessian/lambda_1"][0] == [0, 10]
    assert [served.client.get(f"/jobs/{i}").json()["status"] for i in ids] == ["succeeded", "succeeded"]
    # the Hessian's eigenvectors went with the points, once, and left the disk
    kept = served.client.get(f"/jobs/{ids[0]}/artifacts").json()
    assert [(a["kind"], a["step"]) for a in kept] == [("hessian-eigenvectors", 0), ("hessian-eigenvectors", 10)]
    assert not list((tmp_path / "offline" / "artifacts").glob("*"))


KILLED = textwrap.dedent("""
    import sys, time
    import dynascope
    run = dynascope.init("killed", url=sys.argv[1], token=sys.argv[2])
    for step in range(20):
        run.log({"train/loss": float(step)})
    run._put(("flush", done := __import__("threading").Event()))
    done.wait(30)
    print(run.id, flush=True)
    while True:
        time.sleep(1)
""")


def test_a_tracker_killed_with_sigkill_leaves_a_lost_run_with_what_it_sent(served: Stack):
    env = {**os.environ, "DYNASCOPE_TRACKER_HEARTBEAT": "0.5"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, f"http://127.0.0.1:{served.port}", _token(served)], env=env, stdout=subprocess.PIPE, text=True
    )
    run_id = int(proc.stdout.readline())
    time.sleep(2 * TRACKED_TIMEOUT)  # beating: still running
    assert served.client.get(f"/jobs/{run_id}").json()["status"] == "running"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    lost = served.wait_job(run_id, lambda j: j["status"] == "lost", 4 * TRACKED_TIMEOUT)
    assert "stopped sending" in lost["error"]
    assert _series(served, run_id)["train/loss"] == (list(range(20)), [float(s) for s in range(20)])


def _example(served: Stack, tmp_path: Path, name: str) -> int:
    """Run examples/<name> against the server; the id of the run it made."""
    env = {**os.environ, "DYNASCOPE_URL": f"http://127.0.0.1:{served.port}", "DYNASCOPE_TOKEN": _token(served)}
    script = Path(__file__).parents[2] / "examples" / name
    done = subprocess.run(
        [sys.executable, str(script)], env=env | {"DYNASCOPE_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stdout.strip().splitlines()[-1].split("run ")[1].split(":")[0])


def test_the_readmes_plain_loop_example_runs(served: Stack, tmp_path: Path):
    run_id = _example(served, tmp_path, "track_plain_loop.py")
    job = served.client.get(f"/jobs/{run_id}").json()
    assert (job["status"], job["progress"], job["spec"]["config"]["lr"]) == ("succeeded", 1.0, 0.2)
    views = [v["name"] for v in served.client.get(f"/jobs/{run_id}/figures").json()]
    assert views == ["training", "hessian", "gradstats", "collapse"]
    got = _series(served, run_id)
    assert got["collapse/nc1"][0] == [0, 100, 200, 300] and len(got["train/loss"][0]) == 300


def test_the_readmes_lightning_example_runs(served: Stack, tmp_path: Path):
    run_id = _example(served, tmp_path, "track_lightning.py")
    job = served.client.get(f"/jobs/{run_id}").json()
    assert (job["status"], job["spec"]["tracked"]["framework"], job["spec"]["config"]) == (
        "succeeded",
        "lightning",
        {"lr": 0.1, "width": 64},
    )
    got = _series(served, run_id)
    assert got["hessian/lambda_1"][0] == [0, 50, 100, 150] and got["grad/noise_scale"][0] == list(range(0, 150, 5))
    assert len(got["train/loss"][0]) == 150


def test_a_server_away_mid_run_loses_nothing(tmp_path: Path):
    """The server stops with a run going; the loop goes on (its points kept on disk); the server comes back on the
    same address and the tracker sends them by itself, once."""
    (tmp_path / "server").mkdir()
    first = Serve(tmp_path / "server", {"DYNASCOPE_TRACKED_TIMEOUT": "120"})
    port, token = first.port, _token(first)
    run = dynascope.init("through-an-outage", url=f"http://127.0.0.1:{port}", token=token, dir=tmp_path / "run")
    for step in range(100):
        run.log({"train/loss": float(step)}, step=step)
    run._put(("flush", done := __import__("threading").Event()))
    assert done.wait(30)
    first.ctrl_c()
    for step in range(100, 250):
        run.log({"train/loss": float(step)}, step=step)
    run._put(("flush", done := __import__("threading").Event()))
    assert done.wait(30) and run.spill.pending()  # kept while the server is away
    again = Serve(tmp_path / "server", {"DYNASCOPE_TRACKED_TIMEOUT": "120"}, port=port)
    try:
        again.wait(lambda: not run.spill.pending(), 30, "the kept points sent")
        run.finish()
        job = again.client.get(f"/jobs/{run.id}").json()
        assert job["status"] == "succeeded"
        assert _series(again, run.id)["train/loss"] == (list(range(250)), [float(s) for s in range(250)])
    finally:
        again.ctrl_c()


def test_a_run_goes_on_where_it_stopped(served: Stack, tmp_path: Path):
    """A loop that failed (its process raised) is resumed by id: the same job, its steps after the last recorded
    one, nothing twice; a server job cannot be resumed by a tracker."""
    url, token = f"http://127.0.0.1:{served.port}", _token(served)
    with pytest.raises(RuntimeError), dynascope.init("resumable", url=url, token=token, dir=tmp_path / "first") as first:
        for step in range(10):
            first.log({"train/loss": float(step)})
        raise RuntimeError("out of memory")
    assert served.job(first.id)["status"] == "failed"
    again = dynascope.init("resumable", url=url, token=token, dir=tmp_path / "again", resume=first.id)
    assert (again.id, again.step) == (first.id, 10) and served.job(first.id)["status"] == "running"
    for step in range(5):
        again.log({"train/loss": 100.0 + step})
    again.finish()
    assert served.job(first.id)["status"] == "succeeded"
    assert _series(served, first.id)["train/loss"] == (list(range(15)), [float(s) for s in range(10)] + [100.0 + s for s in range(5)])
    assert served.client.get("/jobs", params={"q": "resumable"}).json()["total"] == 1
    server_job = served.submit(spec(steps=5, name="not-resumable"))
    with pytest.raises(dynascope.ApiError, match="not a tracked run"):
        dynascope.init("x", url=url, token=token, dir=tmp_path / "refused", resume=server_job["id"])


def test_ddp_is_one_run_with_the_global_batchs_statistics(served: Stack, tmp_path: Path):
    """Two processes (gloo) each train on half of every batch: one job, whose gradient statistics are those of a
    single process on the whole batch (DDP averages the gradient in another order: ~1e-7 apart), and whose
    Hessian rank 0 alone computes on the probe batch."""
    from tests.integration import ddp_loop

    steps, port, name = 12, free_port(), "ddp-digits"
    script = Path(ddp_loop.__file__)
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), "2", str(port), f"http://127.0.0.1:{served.port}", _token(served), name, str(steps)],
            env={**os.environ, "DYNASCOPE_DIR": str(tmp_path / f"rank{r}"), "PYTHONPATH": str(script.parents[2])},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outputs = [rank.communicate(timeout=240)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    run_id = int(outputs[0].strip().splitlines()[-1].split("run ")[1])
    jobs = served.client.get("/jobs", params={"q": name}).json()
    assert [j["id"] for j in jobs["items"]] == [run_id] and jobs["items"][0]["status"] == "succeeded"  # one run, not one per rank
    assert not (tmp_path / "rank1").exists()  # the follower keeps nothing
    got = _series(served, run_id)
    x, y = ddp_loop.data()
    net, loss_fn = ddp_loop.model(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.3)
    single = dynascope.init("single", mode="offline", dir=tmp_path / "single", total_steps=steps)
    single.watch(net, loss_fn, optimizer, probe_batch=(x, y), probes=ddp_loop.PROBES)
    for idx in ddp_loop.batches(steps):
        loss_fn(net(x[idx]), y[idx]).backward()
        optimizer.step()
        optimizer.zero_grad()
    single.finish()
    expected = kept_series(tmp_path / "single")
    names = [n for n in expected if n.startswith(("grad/", "hessian/lambda"))]
    assert len(names) > 20 and set(names) <= set(got)
    for name in names:
        steps_got, values = got[name]
        assert steps_got == sorted(expected[name]), name
        np.testing.assert_allclose(values, [expected[name][s] for s in steps_got], rtol=2e-6, err_msg=name)
    assert got["grad/temperature"][1][0] == pytest.approx(0.3 / ddp_loop.GLOBAL_BATCH)  # the global batch's size


def test_the_readmes_transformers_example_runs(served: Stack, tmp_path: Path):
    run_id = _example(served, tmp_path, "track_transformers.py")
    job = served.job(run_id)
    assert (job["status"], job["spec"]["tracked"]["framework"], job["spec"]["config"]["model_type"]) == (
        "succeeded",
        "transformers",
        "gpt2",
    )
    got = _series(served, run_id)
    assert got["hessian/lambda_1"][0] == [0, 20, 40, 60] and got["grad/noise_scale"][0] == list(range(0, 60, 5))
    assert len(got["train/loss"][0]) == 60
    views = [v["name"] for v in served.client.get(f"/jobs/{run_id}/figures").json()]
    assert views == ["training", "hessian", "gradstats"]


def test_the_notebook_client_reads_a_jobs_series_results_and_tensors(served: Stack):
    """dynascope.Client as a notebook uses it, against the real server: arrays equal to the API's numbers."""
    raw = spec(steps=120, name="notebook", checkpoint_every=60) | {"probes": {"hessian": {"every": 60, "top_k": 2, "examples": 200}}}
    job = served.submit(raw)
    served.wait_job(job["id"], lambda j: j["status"] == "succeeded", 120)
    with dynascope.Client(served.url, _token(served)) as client:
        metrics = client.metrics(job["id"])
        raw_api = _series(served, job["id"])
        assert set(metrics) == set(raw_api) and {"train/loss", "hessian/lambda_1", "val/accuracy"} <= set(metrics)
        loss = metrics["train/loss"]
        assert loss.steps.dtype == np.int64 and loss.complete and loss.total_points == 120
        np.testing.assert_array_equal(loss.steps, raw_api["train/loss"][0])
        np.testing.assert_array_equal(loss.values, np.array(raw_api["train/loss"][1], dtype=np.float64))
        few = client.metrics(job["id"], ["train/loss"], max_points=20)
        assert list(few) == ["train/loss"] and len(few["train/loss"].steps) <= 20 and not few["train/loss"].complete
        assert set(client.metrics(job["id"], prefix="hessian/")) == {n for n in raw_api if n.startswith("hessian/")}
        frame = metrics.to_pandas()
        assert len(frame) == sum(s.total_points for s in metrics.values()) and list(frame.columns) == ["series", "step", "value"]
        [last] = client.results(job["id"], "hessian", last=1)
        assert last["step"] == 120 and last["data"]["eigenvalues"][0] == metrics["hessian/lambda_1"].values[-1]
        checkpoints = [a for a in client.artifacts(job["id"]) if a["kind"] == "checkpoint"]
        assert [a["step"] for a in checkpoints] == [60, 120]
        arrays = client.artifact(job["id"], checkpoints[-1]["id"])
        tensors = client.artifact(job["id"], checkpoints[-1]["id"], framework="pt")
        assert arrays["1.weight"].shape == (64, 64) and torch.equal(tensors["1.weight"], torch.from_numpy(arrays["1.weight"]))
        with pytest.raises(dynascope.ApiError) as missing:
            client.results(999_999, "hessian")
        assert missing.value.status == 404
