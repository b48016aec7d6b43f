"""A bounded load test on loopback: VIEWERS live viewers follow one running job's event stream while CLIENTS API
clients read in a loop (the job list; a metrics read of the running job) for SECONDS; then the job is cancelled.
Reports the requests, the responses ≥ 500, the p50/p95 latency of each read, and how many viewers received every
step the job recorded after their `hello`. Against `dynascope serve` (SQLite, embedded Redis, one worker), in a
fresh directory; `make test` runs a short form (tests/integration/test_load.py)."""

import asyncio
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.viewer import Viewer
from gallery.server import embedded

VIEWERS, CLIENTS, SECONDS = 50, 20, 120.0
SPEC = {
    "name": "load-test",
    "model": {"kind": "mlp", "widths": [256, 256]},
    "data": {"kind": "digits"},
    "optimizer": {"kind": "sgd", "lr": 0.05},
    # Cancelled when the load stops, before it reaches 99,000 steps: every point then fits one exact metrics read.
    "train": {"steps": 99_000, "batch_size": 128, "eval_every": 500, "checkpoint_every": None},
}
# The clients share one token: its rate limit is lifted, since this measures what the server answers, not the limiter.
SETTINGS = {"DYNASCOPE_TOKEN_RATE_LIMIT_PER_MINUTE": "1000000"}
READS = {"GET /jobs": "/jobs?limit=50", "GET /jobs/{id}/metrics": "/jobs/{id}/metrics?names=train/loss,val/loss&max_points=1000"}


@dataclass
class Load:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {read: [] for read in READS})
    statuses: Counter = field(default_factory=Counter)
    viewers: list[Viewer] = field(default_factory=list)
    recorded: list[int] = field(default_factory=list)  # the job's train/loss steps, once it ended
    live: bool = False  # the job was still running when the load stopped

    @property
    def complete(self) -> int:
        return sum(viewer.complete(self.recorded) for viewer in self.viewers)

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def percentile(self, read: str, q: float) -> float:
        return float(np.percentile(self.latencies[read], q)) if self.latencies[read] else float("nan")


async def _view(api: httpx.AsyncClient, job_id: int, load: Load) -> None:
    viewer = Viewer()
    load.viewers.append(viewer)
    async with api.stream("GET", f"/jobs/{job_id}/events", timeout=None) as events:
        load.statuses[events.status_code] += 1
        async for line in events.aiter_lines():
            if viewer.line(line):
                return


async def _read(api: httpx.AsyncClient, job_id: int, until: float, load: Load) -> None:
    """One API client: each read in turn, as fast as the answers come, until the deadline."""
    while time.monotonic() < until:
        for read, path in READS.items():
            started = time.perf_counter()
            response = await api.get(path.format(id=job_id))
            load.latencies[read].append(time.perf_counter() - started)
            load.statuses[response.status_code] += 1


async def load_test(url: str, token: str, viewers: int, clients: int, seconds: float) -> Load:
    """The load on a fresh running job; returns what was measured (the job is cancelled at the end)."""
    load = Load()
    limits = httpx.Limits(max_connections=viewers + clients + 5)
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers, timeout=60, limits=limits) as api:
        job_id = (await api.post("/jobs", json=SPEC)).raise_for_status().json()["id"]
        streams = [asyncio.create_task(_view(api, job_id, load)) for _ in range(viewers)]
        while (await api.get(f"/jobs/{job_id}")).json()["status"] == "queued":
            await asyncio.sleep(0.1)
        until = time.monotonic() + seconds
        await asyncio.gather(*(_read(api, job_id, until, load) for _ in range(clients)))
        load.live = (await api.get(f"/jobs/{job_id}")).json()["status"] == "running"
        (await api.post(f"/jobs/{job_id}/cancel")).raise_for_status()
        await asyncio.wait_for(asyncio.gather(*streams), timeout=120)
        recorded = (await api.get(f"/jobs/{job_id}/metrics", params={"names": "train/loss", "max_points": 100_000})).json()
    load.recorded = recorded["series"][0]["steps"]
    return load


def run() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="dynascope-bench-") as workdir:
        with embedded(Path(workdir), workers=1, settings=SETTINGS) as (url, token):
            load = asyncio.run(load_test(url, token, VIEWERS, CLIENTS, SECONDS))
    requests = sum(load.statuses.values())
    reads = "; ".join(
        f"{read} p50 {load.percentile(read, 50) * 1e3:.0f} ms, p95 {load.percentile(read, 95) * 1e3:.0f} ms" for read in READS
    )
    return [
        {
            "benchmark": "load",
            "case": f"{VIEWERS} live viewers + {CLIENTS} API clients for {SECONDS:.0f} s on one running job (SQLite, embedded Redis)",
            "ours": f"{requests:,} requests, {load.errors} ≥ 500; {reads}",
            "anchor": f"{load.complete}/{VIEWERS} viewers got every one of the {len(load.recorded):,} recorded steps"
            + ("" if load.live else " (the job ended before the load did)"),
            "ratio": f"{requests / SECONDS:.0f} requests/s",
        }
    ]
