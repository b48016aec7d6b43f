"""The broker and the database stopped under running jobs, for real: a Redis server and a PostgreSQL cluster of the
test's own, stopped for OUTAGE seconds and started again. Nothing is lost, nothing runs or is written twice, and
an outage past the operator's limit ends the job with that reason."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.conftest import TERMINAL, OwnPostgres, OwnRedis, Stack, spec

pytestmark = pytest.mark.integration
OUTAGE = 20.0
LONG = 40_000  # steps: some 20 to 60 s of training here
LONGER = 90_000  # steps: the job outlives the outage


def _series_are_whole(stack: Stack, job_id: int, steps: int) -> None:
    """Every series of the job has each of its steps once, in order, and train/loss every step."""
    series = stack.client.get(f"/jobs/{job_id}/metrics", params={"max_points": 100_000}).json()["series"]
    for one in series:
        assert one["steps"] == sorted(set(one["steps"])), f"{one['name']}: a step written twice or out of order"
    loss = next(s for s in series if s["name"] == "train/loss")
    assert loss["steps"] == list(range(steps)), "no step lost or written twice"


def _running_past(stack: Stack, job_id: int, step: int) -> None:
    stack.wait_job(job_id, lambda j: j["status"] == "running" and j["step"] > step, 120)


def test_a_broker_restart_under_a_running_job_loses_no_job(make_stack, pg_url: str, own_redis: OwnRedis):
    """Redis (its queue on disk) stopped for OUTAGE s with one job running and three queued: the running one
    finishes (it records to the database), the queued ones run after the restart, each once; meanwhile the API
    reads on and refuses new jobs with a 503 naming the queue; the worker reconnects by itself."""
    stack: Stack = make_stack(pg_url, own_redis.url)
    stack.migrate()
    stack.start_api()
    stack.start_worker()
    running = stack.submit(spec(steps=LONG, name="running"))["id"]
    queued = [stack.submit(spec(steps=300, name=f"queued-{i}"))["id"] for i in range(3)]
    _running_past(stack, running, 100)
    own_redis.stop()
    outage_ends = time.monotonic() + OUTAGE
    refused = stack.client.post("/jobs", json=spec(steps=10))
    assert refused.status_code == 503 and "queue" in refused.json()["detail"], refused.text
    assert stack.client.get("/jobs").status_code == 200, "the job list is read from the database"
    time.sleep(max(0.0, outage_ends - time.monotonic()))
    own_redis.start()
    done = {j: stack.wait_job(j, lambda job: job["status"] in TERMINAL, 300) for j in (running, *queued)}
    assert {j["status"] for j in done.values()} == {"succeeded"}, done
    assert [j["attempts"] for j in done.values()] == [1, 1, 1, 1], "every job ran exactly once"
    _series_are_whole(stack, running, LONG)
    for job_id in queued:
        _series_are_whole(stack, job_id, 300)


def test_a_database_outage_under_a_running_job_is_ridden_out(make_stack, own_pg: OwnPostgres, redis_url: str, capsys):
    """PostgreSQL stopped for OUTAGE s: the API answers 503 with Retry-After meanwhile and recovers without a
    restart; the worker keeps training, buffers its points and writes them once the database is back; the job
    succeeds with every step once and an `outage` result saying how long it was away. The heartbeat timeout is
    4 s here: the API's reaper must not take the outage's silence for a lost worker."""
    stack: Stack = make_stack(own_pg.url, redis_url, metrics_token="a-metrics-token-for-outages")
    stack.migrate()
    stack.start_api()
    stack.start_worker()
    watched = _submit_and_watch(stack, spec(steps=LONGER, name="through-an-outage", checkpoint_every=5000))
    job_id = stack.client.get("/jobs").json()["items"][0]["id"]
    _running_past(stack, job_id, 100)
    own_pg.stop()
    outage_ends = time.monotonic() + OUTAGE
    away = stack.client.get("/jobs")
    assert away.status_code == 503 and away.headers["retry-after"].isdigit(), away.text
    assert "database" in away.json()["detail"]
    time.sleep(max(0.0, outage_ends - time.monotonic()))
    own_pg.start()
    restarted = time.monotonic()
    stack.wait(lambda: stack.client.get("/jobs").status_code == 200, 30, "the API back without a restart")
    back_after = time.monotonic() - restarted
    job = stack.wait_job(job_id, lambda j: j["status"] in TERMINAL, 300)
    assert (job["status"], job["attempts"]) == ("succeeded", 1), job
    _series_are_whole(stack, job_id, LONGER)
    outages = stack.client.get(f"/jobs/{job_id}/results/outage").json()
    assert len(outages) == 1 and outages[0]["data"]["seconds"] >= OUTAGE - 5, outages
    outage = outages[0]["data"]
    assert outage["to_step"] > (outage["from_step"] // 5000 + 1) * 5000, "training went on past a checkpoint while the database was away"
    kept = {a["step"] for a in stack.client.get(f"/jobs/{job_id}/artifacts").json() if a["kind"] == "checkpoint"}
    assert kept == set(range(5000, LONGER + 1, 5000)), "every checkpoint recorded, those taken during the outage too"
    with capsys.disabled():
        print(f"\noutage: {outage}; the API answered 200 again {back_after:.1f} s after the restart")
    scrape = stack.client.get("/operator/metrics", headers={"authorization": "Bearer a-metrics-token-for-outages"}).text
    assert "dynascope_recorder_flush_seconds_count" in scrape
    shown, _ = watched.communicate(timeout=60)
    assert watched.returncode == 0 and f"job {job_id} succeeded" in shown, "the CLI's watch waited out the outage"
    assert "waiting for the server (503: the database is unreachable" in shown


def _submit_and_watch(stack: Stack, job: dict) -> subprocess.Popen:
    """`dynascope submit --watch` of a job, running: its output once it ends."""
    path = stack.workdir / f"{job['name']}.json"
    path.write_text(json.dumps(job))
    token = stack.client.headers["authorization"].removeprefix("Bearer ")
    env = {**stack.env, "DYNASCOPE_URL": stack.url, "DYNASCOPE_TOKEN": token, "COLUMNS": "200"}
    argv = [sys.executable, "-m", "dynascope.cli", "submit", str(path), "--watch"]
    watched = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stack.wait(lambda: stack.client.get("/jobs").json()["total"] == 1, 60, "the CLI's job")
    return watched


def test_past_the_outage_limit_the_job_fails_with_the_reason_and_keeps_what_was_written(make_stack, own_pg: OwnPostgres, redis_url: str):
    stack: Stack = make_stack(own_pg.url, redis_url, database_outage_seconds=5)
    stack.migrate()
    stack.start_api()
    stack.start_worker()
    job_id = stack.submit(spec(steps=LONG, name="outage-too-long"))["id"]
    _running_past(stack, job_id, 500)
    own_pg.stop()
    time.sleep(7)  # past the limit: the worker gives up, then waits (up to the limit again) to write why
    own_pg.start()
    job = stack.wait_job(job_id, lambda j: j["status"] in TERMINAL, 60)
    assert job["status"] == "failed" and "DYNASCOPE_DATABASE_OUTAGE_SECONDS=5" in job["error"], job
    loss = stack.client.get(f"/jobs/{job_id}/metrics", params={"names": "train/loss", "max_points": 100_000}).json()["series"][0]
    assert len(loss["steps"]) > 500 and loss["steps"] == list(range(len(loss["steps"]))), "what was written before is kept"


def test_a_job_a_worker_takes_while_the_database_is_away_goes_back_to_the_queue(make_stack, own_pg: OwnPostgres, redis_url: str):
    stack: Stack = make_stack(own_pg.url, redis_url)
    stack.migrate()
    stack.start_api()
    job_id = stack.submit(spec(steps=200, name="queued-through-an-outage"))["id"]
    own_pg.stop()
    stack.start_worker()
    log = stack.workdir / "worker-w1.log"
    stack.wait(lambda: log.exists() and log.read_text().count("queued again") >= 2, 90, "the worker to requeue the job twice")
    own_pg.start()
    job = stack.wait_job(job_id, lambda j: j["status"] in TERMINAL, 120)
    assert (job["status"], job["attempts"]) == ("succeeded", 1), job


def test_the_embedded_broker_keeps_its_queue_across_a_crash(tmp_path):
    """`dynascope serve`'s Redis logs every write: its queue survives kill -9, not only a clean shutdown."""
    from backend.queue import JOB_QUEUE, start_embedded_broker

    broker = start_embedded_broker(tmp_path)
    broker.rpush(JOB_QUEUE, "a", "b", "c")
    time.sleep(1.5)  # (the log is flushed every second)
    crashed = psutil.Process(broker.pid)
    os.kill(broker.pid, signal.SIGKILL)
    threading.Thread(target=crashed.wait, daemon=True).start()  # (reaped: a zombie would look alive)
    psutil.wait_procs([crashed], timeout=10)
    again = start_embedded_broker(tmp_path)
    try:
        assert again.lrange(JOB_QUEUE, 0, -1) == [b"a", b"b", b"c"]
    finally:
        again.shutdown()
