"""The ingest API of tracked runs, in process on the embedded parts: a run is a job like any other, every write
is idempotent (a repeated or reordered batch changes nothing), a document must fit its kind, a silent tracker's
run ends `lost` with what it sent kept, and only a tracked run takes a tracker's writes."""

import pickle
import time

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes

from backend.db import session_scope
from backend.models import Job
from backend.services.jobs import reap_stale_jobs
from dynascope.tracking import Points
from tests.conftest import spec
from tests.helpers import field_errors

API = "/api/v1"
RUN = {"name": "my-resnet", "config": {"lr": 0.1, "depth": 18}, "facts": {"host": "lab-3", "model": "ResNet", "total_steps": 100}}


def _points(client: TestClient, run_id: int, points: list[tuple[str, int, float | None]]) -> dict:
    body = {"points": [{"name": n, "step": s, "value": v} for n, s, v in points]}
    response = client.post(f"{API}/runs/{run_id}/points", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _series(client: TestClient, job_id: int, name: str) -> tuple[list[int], list[float | None]]:
    [series] = client.get(f"{API}/jobs/{job_id}/metrics", params={"names": name, "max_points": 10_000}).json()["series"]
    return series["steps"], series["values"]


def test_a_tracked_run_is_a_job_and_its_writes_are_idempotent(client: TestClient):
    made = client.post(f"{API}/runs", json=RUN)
    assert made.status_code == 201, made.text
    run = made.json()
    assert (run["source"], run["status"], run["worker_host"], run["model_kind"]) == ("tracked", "running", "lab-3", "ResNet")
    assert run["spec"]["config"] == {"lr": 0.1, "depth": 18} and client.get(f"{API}/jobs/{run['id']}").json()["source"] == "tracked"
    first = [("train/loss", s, 1.0 / (s + 1)) for s in range(10)]
    assert _points(client, run["id"], first) == {"accepted": 10, "skipped": 0}
    assert _points(client, run["id"], first) == {"accepted": 0, "skipped": 10}  # the same batch again
    # a batch kept on disk arrives after newer ones: its steps go in their place
    _points(client, run["id"], [("train/loss", s, 1.0 / (s + 1)) for s in range(20, 25)])
    assert _points(client, run["id"], [("train/loss", s, 1.0 / (s + 1)) for s in range(8, 22)]) == {"accepted": 10, "skipped": 4}
    steps, values = _series(client, run["id"], "train/loss")
    assert steps == list(range(25)) and values == [1.0 / (s + 1) for s in range(25)]
    assert _points(client, run["id"], [("grad/norm", 3, None)])["accepted"] == 1  # not finite: a gap
    assert _series(client, run["id"], "grad/norm") == ([3], [None])
    job = client.get(f"{API}/jobs/{run['id']}").json()
    assert job["step"] == 24 and job["progress"] == 0.24


def test_results_fit_their_kind_and_land_once(client: TestClient):
    run = client.post(f"{API}/runs", json=RUN).json()
    doc = {
        "eigenvalues": [3.0, 1.0], "residuals": [1e-4, 1e-4], "converged": True, "hvps_top": 12, "threshold": 4.0,
        "threshold_rule": "2/lr", "examples": 100, "mode": "eval", "loss": 0.5, "parameters": 10, "n_classes": 3, "hvps": 12,
    }  # fmt: skip
    url = f"{API}/runs/{run['id']}/results"
    assert client.post(url, json={"kind": "hessian", "step": 5, "data": doc}).json() == {"accepted": 1, "skipped": 0}
    assert client.post(url, json={"kind": "hessian", "step": 5, "data": doc}).json() == {"accepted": 0, "skipped": 1}
    [row] = client.get(f"{API}/jobs/{run['id']}/results/hessian").json()
    assert row["step"] == 5 and row["data"]["eigenvalues"] == [3.0, 1.0]
    wrong = client.post(url, json={"kind": "hessian", "step": 6, "data": {"eigenvalues": "big"}})
    assert wrong.status_code == 422 and {"data.eigenvalues", "data.converged"} <= set(field_errors(wrong))
    unknown = client.post(url, json={"kind": "made_up", "step": 6, "data": {}})
    assert unknown.status_code == 422 and "not a kind of result" in field_errors(unknown)["kind"]
    assert client.get(f"{API}/jobs/{run['id']}/figures").json()[0]["name"] == "training"


def test_bad_input_names_the_field(client: TestClient):
    assert "facts" in field_errors(client.post(f"{API}/runs", json={"name": "x"}))
    assert "probes.hessian.top_k" in field_errors(client.post(f"{API}/runs", json=RUN | {"probes": {"hessian": {"every": 5, "top_k": 0}}}))
    run = client.post(f"{API}/runs", json=RUN).json()
    bad = client.post(f"{API}/runs/{run['id']}/points", json={"points": [{"name": "has space", "step": 1, "value": 1.0}]})
    assert "points.0.name" in field_errors(bad)
    with pytest.raises(ValidationError, match="at most 10000 items"):
        Points.model_validate({"points": [{"name": "a", "step": s, "value": 0.0} for s in range(10_001)]})


def test_tracked_runs_take_no_place_in_the_running_jobs_quota(client: TestClient):
    for _ in range(3):
        client.post(f"{API}/runs", json=RUN)
    assert client.get(f"{API}/team/quotas").json()["running"] == 0
    assert client.get(f"{API}/jobs", params={"status": "running"}).json()["total"] == 3


def test_only_a_tracked_run_takes_a_trackers_writes(client: TestClient):
    job = client.post(f"{API}/jobs", json=spec(name="server-job")).json()
    refused = client.post(f"{API}/runs/{job['id']}/points", json={"points": []})
    assert refused.status_code == 409 and "not a tracked run" in refused.json()["detail"]
    assert client.post(f"{API}/runs/99999/heartbeat", json={}).status_code == 404


def test_a_silent_tracker_leaves_a_lost_run_that_comes_back_when_it_beats_again(client: TestClient):
    run = client.post(f"{API}/runs", json=RUN).json()
    _points(client, run["id"], [("train/loss", 0, 2.0)])
    time.sleep(1.1)
    with session_scope() as session:
        assert reap_stale_jobs(session, timeout=60, tracked_timeout=1.0) == []  # never requeued: no worker can train it
    lost = client.get(f"{API}/jobs/{run['id']}").json()
    assert lost["status"] == "lost" and "the tracker on lab-3 stopped sending" in lost["error"] and lost["finished_at"]
    assert _series(client, run["id"], "train/loss") == ([0], [2.0])  # kept
    beat = client.post(f"{API}/runs/{run['id']}/heartbeat", json={"step": 1, "stage": "epoch 2"}).json()
    assert beat == {"stop": False, "status": "running"}
    back = client.get(f"{API}/jobs/{run['id']}").json()
    assert (back["status"], back["stage"], back["finished_at"], back["error"]) == ("running", "epoch 2", None, None)


def test_cancel_reaches_the_tracker_and_the_end_is_said_once(client: TestClient):
    run = client.post(f"{API}/runs", json=RUN).json()
    assert client.post(f"{API}/jobs/{run['id']}/cancel").json()["cancel_requested"] is True
    assert client.post(f"{API}/runs/{run['id']}/heartbeat", json={}).json()["stop"] is True
    ended = client.post(f"{API}/runs/{run['id']}/finish", json={"status": "cancelled"}).json()
    assert ended["status"] == "cancelled" and ended["finished_at"]
    again = client.post(f"{API}/runs/{run['id']}/finish", json={"status": "succeeded"}).json()
    assert again["status"] == "cancelled"  # the first end stays
    with session_scope() as session:
        assert session.get(Job, run["id"]).source == "tracked"


def _artifact(client: TestClient, run_id: int, data: bytes, kind: str = "hessian-eigenvectors", step: int = 10):
    headers = {"content-type": "application/octet-stream"}
    return client.post(f"{API}/runs/{run_id}/artifacts", params={"kind": kind, "step": step}, content=data, headers=headers)


def test_a_probes_tensors_arrive_as_safetensors_once_and_nothing_else_does(client: TestClient):
    run = client.post(f"{API}/runs", json=RUN).json()
    vectors = {"v0": torch.randn(50, dtype=torch.float64), "v1": torch.randn(50, dtype=torch.float64)}
    data = safetensors_bytes(vectors, metadata={"mode": "eval"})
    assert _artifact(client, run["id"], data).json() == {"accepted": 1, "skipped": 0}
    assert _artifact(client, run["id"], data).json() == {"accepted": 0, "skipped": 1}  # a repeat (a sync sent twice)
    [listed] = client.get(f"{API}/jobs/{run['id']}/artifacts").json()
    assert (listed["kind"], listed["step"], listed["size"]) == ("hessian-eigenvectors", 10, len(data))
    got = client.get(f"{API}/jobs/{run['id']}/artifacts/{listed['id']}").content
    assert got == data and torch.equal(safetensors_load(got)["v1"], vectors["v1"])
    payload = pickle.dumps({"v0": [1.0]})
    refused = _artifact(client, run["id"], payload)
    assert refused.status_code == 422 and "not a safetensors file" in refused.text
    assert _artifact(client, run["id"], data, kind="checkpoint").status_code == 422  # only a probe's kinds
    assert len(client.get(f"{API}/jobs/{run['id']}/artifacts").json()) == 1
    team_id = client.get(f"{API}/auth/me").json()["team"]["id"]
    assert client.patch(f"{API}/teams/{team_id}/quotas", json={"max_upload_bytes": 1000}).status_code == 200
    big = safetensors_bytes({"v": torch.zeros(1000)})
    too_big = _artifact(client, run["id"], big, step=20)
    assert too_big.status_code == 413 and "limit of 1000 bytes" in too_big.json()["detail"]


def test_a_run_resumed_goes_on_after_its_last_step_from_any_end(client: TestClient):
    run = client.post(f"{API}/runs", json=RUN).json()
    _points(client, run["id"], [("train/loss", s, 1.0) for s in range(7)] + [("grad/norm", 9, 2.0)])
    client.post(f"{API}/jobs/{run['id']}/cancel")
    client.post(f"{API}/runs/{run['id']}/finish", json={"status": "cancelled"})
    resumed = client.post(f"{API}/runs/{run['id']}/resume")
    assert resumed.json() == {"id": run["id"], "status": "running", "next_step": 10}
    job = client.get(f"{API}/jobs/{run['id']}").json()
    assert (job["status"], job["cancel_requested"], job["finished_at"]) == ("running", False, None)
    assert client.post(f"{API}/runs/{run['id']}/heartbeat", json={}).json()["stop"] is False
    fresh = client.post(f"{API}/runs", json=RUN).json()
    assert client.post(f"{API}/runs/{fresh['id']}/resume").json()["next_step"] == 0
    server_job = client.post(f"{API}/jobs", json=spec(name="server-job")).json()
    refused = client.post(f"{API}/runs/{server_job['id']}/resume")
    assert refused.status_code == 409 and "not a tracked run" in refused.json()["detail"]


def test_a_viewer_reads_a_tracked_run_but_writes_none_of_it(client: TestClient):
    from backend.config import get_settings
    from tests.conftest import bearer, provision

    run = client.post(f"{API}/runs", json=RUN).json()
    settings = get_settings()
    viewer = TestClient(
        client.app,
        base_url="http://127.0.0.1",
        headers=bearer(provision(settings.database_url, settings.secret_key.get_secret_value(), "vi", "a", "viewer")),
    )
    assert viewer.get(f"{API}/jobs/{run['id']}").status_code == 200
    writes = ["", f"/{run['id']}/points", f"/{run['id']}/results", f"/{run['id']}/artifacts?kind=hessian-eigenvectors&step=0"]
    writes += [f"/{run['id']}/heartbeat", f"/{run['id']}/finish", f"/{run['id']}/resume"]
    for path in writes:
        response = viewer.post(f"{API}/runs{path}", json={})
        assert response.status_code == 403 and "viewer" in response.json()["detail"], path
