"""Jobs through real processes: the API server, Celery workers, PostgreSQL and Redis."""

import time

import pytest
from safetensors import safe_open

from tests.conftest import TERMINAL, Stack, spec

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(make_stack, pg_url, redis_url) -> Stack:
    s = make_stack(pg_url, redis_url)
    s.migrate()
    s.start_api()
    return s


def metric(stack: Stack, job_id: int, name: str) -> dict:
    body = stack.client.get(f"/jobs/{job_id}/metrics", params={"names": name, "max_points": 100_000}).json()
    return body["series"][0]


def test_job_succeeds_with_metrics_and_checkpoint(stack: Stack, tmp_path):
    stack.start_worker()
    job = stack.submit(spec(steps=400, name="pg-redis"))
    done = stack.wait_job(job["id"], lambda j: j["status"] in TERMINAL, 120)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1 and done["progress"] == 1.0 and done["device"] == "cpu"
    loss = metric(stack, job["id"], "train/loss")
    assert loss["steps"] == list(range(400))
    val = metric(stack, job["id"], "val/accuracy")
    assert val["steps"] == [0, 50, 100, 150, 200, 250, 300, 350, 400] and val["values"][-1] > 0.8
    [artifact] = stack.client.get(f"/jobs/{job['id']}/artifacts").json()
    download = stack.client.get(f"/jobs/{job['id']}/artifacts/{artifact['id']}")
    assert download.status_code == 200 and len(download.content) == artifact["size"]
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(download.content)
    with safe_open(str(path), "pt") as f:
        assert f.get_tensor("0.weight").shape == (64, 64)
    summary = stack.client.get(f"/jobs/{job['id']}/results/summary").json()
    assert summary[-1]["step"] == 400 and summary[-1]["data"]["val_accuracy"] == val["values"][-1]


def test_killed_worker_job_is_picked_up_again(stack: Stack):
    steps = 40_000
    first = stack.start_worker("first")
    job = stack.submit(spec(steps=steps, name="survives-kill-9"))
    stack.wait_job(job["id"], lambda j: j["status"] == "running" and j["step"] > 500, 120)
    Stack.kill(first)  # kill -9 the worker and its pool child
    stack.start_worker("second")
    done = stack.wait_job(job["id"], lambda j: j["status"] in TERMINAL, 240)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    loss = metric(stack, job["id"], "train/loss")
    assert loss["steps"] == list(range(steps)), "the rerun left no duplicate or missing step"


def test_attempt_cap_fails_the_job(make_stack, pg_url, redis_url):
    stack = make_stack(pg_url, redis_url, max_attempts=1)
    stack.migrate()
    stack.start_api()
    worker = stack.start_worker()
    job = stack.submit(spec(steps=40_000, name="capped"))
    stack.wait_job(job["id"], lambda j: j["status"] == "running" and j["step"] > 100, 120)
    Stack.kill(worker)
    done = stack.wait_job(job["id"], lambda j: j["status"] in TERMINAL, 60)
    assert done["status"] == "failed" and "worker lost 1 times" in done["error"]


def test_cancel_running_job_within_seconds(stack: Stack):
    stack.start_worker()
    job = stack.submit(spec(steps=1_000_000, name="to-cancel"))
    stack.wait_job(job["id"], lambda j: j["status"] == "running" and j["step"] > 100, 120)
    asked = time.monotonic()
    assert stack.client.post(f"/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    done = stack.wait_job(job["id"], lambda j: j["status"] in TERMINAL, 10)
    assert done["status"] == "cancelled" and time.monotonic() - asked < 5
    loss = metric(stack, job["id"], "train/loss")
    assert len(loss["steps"]) >= 100 and loss["steps"] == list(range(len(loss["steps"])))


def test_cancelled_while_queued_never_runs(stack: Stack):
    job = stack.submit(spec(steps=200, name="never-runs"))
    assert stack.client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    stack.start_worker()
    follow = stack.submit(spec(steps=50, name="runs-after"))
    stack.wait_job(follow["id"], lambda j: j["status"] == "succeeded", 120)
    after = stack.job(job["id"])
    assert after["status"] == "cancelled" and after["attempts"] == 0 and after["started_at"] is None


def test_diverging_run_ends_diverged_with_history(stack: Stack):
    stack.start_worker()
    raw = spec(steps=2000, lr=100.0, name="diverges", divergence_factor=50.0)
    raw["model"]["activation"] = "tanh"
    job = stack.submit(raw)
    done = stack.wait_job(job["id"], lambda j: j["status"] in TERMINAL, 120)
    assert done["status"] == "diverged", done
    loss = metric(stack, job["id"], "train/loss")
    assert len(loss["steps"]) >= 2 and loss["values"][-1] > 50 * loss["values"][0]
    assert stack.client.get(f"/jobs/{job['id']}/artifacts").json() == []
