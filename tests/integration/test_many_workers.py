"""Many workers on one broker: 4 worker processes, 40 short jobs from 2 teams. Every job runs exactly once, no two
workers hold one job, each team's running-jobs quota holds at every moment, and the team that submitted second is
not starved behind the first's queue."""

import threading
import time
from collections import Counter

import httpx
import pytest

from tests.conftest import TERMINAL, Stack, bearer, spec

pytestmark = pytest.mark.integration
WORKERS, JOBS_A, JOBS_B, QUOTA = 4, 28, 12, 2


def _watch(clients: dict[str, httpx.Client], stop: threading.Event, seen: dict[str, Counter], holders: dict[int, set[str]]) -> None:
    """Samples each team's running jobs until stopped: the most at once, and which worker held each job."""
    while not stop.is_set():
        for team, client in clients.items():
            running = client.get("/jobs", params={"status": "running", "limit": 100}).json()["items"]
            seen[team][len(running)] += 1
            for job in running:
                holders.setdefault(job["id"], set()).add(job["worker_host"])
        time.sleep(0.1)


def test_forty_jobs_of_two_teams_on_four_workers_run_once_each_within_quota(make_stack, pg_url: str, redis_url: str):
    stack: Stack = make_stack(pg_url, redis_url, max_running_jobs=QUOTA, max_queued_jobs=100)
    stack.migrate()
    stack.start_api()
    for i in range(WORKERS):
        stack.start_worker(f"w{i}")
    bob = httpx.Client(base_url=stack.client.base_url, timeout=30, headers=bearer(stack.provision("bob", "b")))
    seen: dict[str, Counter] = {"a": Counter(), "b": Counter()}
    holders: dict[int, set[str]] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=({"a": stack.client, "b": bob}, stop, seen, holders))
    watcher.start()
    try:
        a_jobs = [stack.submit(spec(steps=150, name=f"a-{i}"))["id"] for i in range(JOBS_A)]
        b_jobs = [bob.post("/jobs", json=spec(steps=150, name=f"b-{i}")).json()["id"] for i in range(JOBS_B)]
        done = {j: stack.wait_job(j, lambda job: job["status"] in TERMINAL, 600) for j in a_jobs}
        done |= {j: _wait(bob, j) for j in b_jobs}
    finally:
        stop.set()
        watcher.join()
    assert {j["status"] for j in done.values()} == {"succeeded"}
    assert [j["attempts"] for j in done.values()] == [1] * (JOBS_A + JOBS_B), "every job ran exactly once"
    assert all(len(hosts) == 1 for hosts in holders.values()), f"a job held by two workers: {holders}"
    assert max(seen["a"]) <= QUOTA and max(seen["b"]) <= QUOTA, seen
    first_b = min(done[j]["started_at"] for j in b_jobs)
    assert first_b < max(done[j]["started_at"] for j in a_jobs), "team b waited for all of team a's jobs"
    assert len({j["worker_host"] for j in done.values()}) == WORKERS, "every worker took jobs"
    for job_id in (a_jobs[0], b_jobs[-1]):
        client = stack.client if job_id in a_jobs else bob
        loss = client.get(f"/jobs/{job_id}/metrics", params={"names": "train/loss", "max_points": 1000}).json()["series"][0]
        assert loss["steps"] == list(range(150)), "no step recorded twice"


def _wait(client: httpx.Client, job_id: int) -> dict:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end")
