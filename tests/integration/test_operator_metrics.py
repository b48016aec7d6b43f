"""Operator metrics, scraped as Prometheus would: off until a token is set, refused without it, and then the
database's and the broker's state as they are, with the API's request latencies by route."""

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import reset_caches, spec

URL = "/api/v1/operator/metrics"
TOKEN = "an-operator-metrics-token-of-some-length"


def _scrape(client) -> dict:
    response = client.get(URL, headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def test_operator_metrics_are_off_until_a_token_is_set_and_need_it(client, monkeypatch: pytest.MonkeyPatch):
    off = client.get(URL)
    assert off.status_code == 404 and "DYNASCOPE_METRICS_TOKEN" in off.json()["detail"]
    monkeypatch.setenv("DYNASCOPE_METRICS_TOKEN", TOKEN)
    reset_caches()
    assert client.get(URL).status_code == 401  # an API token is not the metrics token
    assert client.get(URL, headers={"authorization": f"Bearer {TOKEN}x"}).status_code == 401


def test_a_scrape_shows_jobs_by_state_the_queue_and_request_latencies(client, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DYNASCOPE_METRICS_TOKEN", TOKEN)
    reset_caches()
    made = [client.post("/api/v1/jobs", json=spec(steps=5)).json()["id"] for _ in range(3)]
    assert client.post(f"/api/v1/jobs/{made[0]}/cancel").status_code == 200
    families = _scrape(client)
    jobs = {s.labels["status"]: s.value for s in families["dynascope_jobs"].samples}
    assert jobs == {"queued": 2, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 1, "diverged": 0, "lost": 0}
    assert families["dynascope_queue_depth"].samples[0].value == 3  # no worker: every submission waits in Redis
    before = families["dynascope_db_statements"].samples[0].value
    assert before > 0 and _scrape(client)["dynascope_db_statements"].samples[0].value > before  # a scrape reads the database
    counts = {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for s in families["dynascope_request_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts[("POST", "/api/v1/jobs", "2xx")] >= 3 and counts[("POST", "/api/v1/jobs/{job_id}/cancel", "2xx")] >= 1
    assert not any(re.search(r"/\d+(/|$)", route) for _, route, _ in counts), "routes are templates, not paths"
