"""Many viewers of one running job: SQL statements per second of the API process (its operator metrics) while 1
and then 50 event streams follow a job, and whether every stream received every point recorded after its `hello`.
Against `dynascope serve` (SQLite, embedded Redis, one worker), in a fresh directory."""

import tempfile
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.viewer import Viewer
from gallery.server import embedded

METRICS_TOKEN = "bench-operator-metrics-token"
STEPS = 20_000
SPEC = {
    "name": "bench-viewers",
    "model": {"kind": "mlp", "widths": [64, 64]},
    "data": {"kind": "digits"},
    "optimizer": {"kind": "sgd", "lr": 0.1},
    "train": {"steps": STEPS, "batch_size": 64, "eval_every": 500, "checkpoint_every": None},
}


def _statements(url: str) -> float:
    text = httpx.get(f"{url}/api/v1/operator/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}).text
    return next(f for f in text_string_to_metric_families(text) if f.name == "dynascope_db_statements").samples[0].value


def _follow(url: str, token: str, job_id: int, out: list[Viewer]) -> None:
    viewer = Viewer()
    with httpx.stream("GET", f"{url}/api/v1/jobs/{job_id}/events", headers={"authorization": f"Bearer {token}"}, timeout=None) as events:
        for line in events.iter_lines():
            if viewer.line(line):
                break
    out.append(viewer)


def _case(url: str, token: str, viewers: int) -> dict:
    api = httpx.Client(base_url=f"{url}/api/v1", headers={"authorization": f"Bearer {token}"}, timeout=30)
    job = api.post("/jobs", json=SPEC).json()
    while api.get(f"/jobs/{job['id']}").json()["status"] == "queued":
        time.sleep(0.05)
    got: list[Viewer] = []
    threads = [threading.Thread(target=_follow, args=(url, token, job["id"], got)) for _ in range(viewers)]
    for t in threads:
        t.start()
    time.sleep(2)  # every stream open and past its hello
    start, counted = time.monotonic(), _statements(url)
    while api.get(f"/jobs/{job['id']}").json()["status"] == "running":
        time.sleep(0.5)
    rate = (_statements(url) - counted) / (time.monotonic() - start)
    for t in threads:
        t.join(60)
    complete = sum(g.complete(list(range(STEPS))) for g in got)
    return {"viewers": viewers, "statements_per_s": rate, "complete": complete}


def run() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="dynascope-bench-") as workdir:
        with embedded(Path(workdir), workers=1, settings={"DYNASCOPE_METRICS_TOKEN": METRICS_TOKEN}) as (url, token):
            one, many = _case(url, token, 1), _case(url, token, 50)
    return [
        {
            "benchmark": "event_streams",
            "case": f"SQL statements/s of the API while event streams follow a {STEPS:,}-step job (SQLite, embedded Redis)",
            "ours": f"50 viewers: {many['statements_per_s']:.0f}/s ({many['complete']}/50 streams got every point)",
            "anchor": f"1 viewer: {one['statements_per_s']:.0f}/s ({one['complete']}/1)",
            "ratio": f"{many['statements_per_s'] / max(one['statements_per_s'], 1e-9):.2f}×",
        }
    ]
