"""Jobs through real processes: the API server, Celery workers, PostgreSQL and Redis."""

import re
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


def ended_analysis(stack: Stack, job_id: int, index: int, timeout: float) -> dict:
    """The job's index-th analysis, once it has ended."""
    box: dict = {}

    def ended() -> bool:
        box["analysis"] = stack.client.get(f"/jobs/{job_id}/analyses").json()[index]
        return box["analysis"]["status"] in TERMINAL

    stack.wait(ended, timeout, f"analysis {index} of job {job_id} to end")
    return box["analysis"]


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
        assert f.get_tensor("1.weight").shape == (64, 64)
    summary = stack.client.get(f"/jobs/{job['id']}/results/summary").json()
    assert summary[-1]["step"] == 400 and summary[-1]["data"]["val_accuracy"] == val["values"][-1]


def test_killed_worker_job_resumes_from_its_checkpoint(stack: Stack):
    steps = 12_000  # killed past step 4,500: the resume comes from the checkpoint at 4,000 or later
    raw = spec(steps=steps, name="survives-kill-9", checkpoint_every=2000)
    first = stack.start_worker("first")
    job = stack.submit(raw)
    stack.wait_job(job["id"], lambda j: j["status"] == "running" and j["step"] > 4500, 120)
    Stack.kill(first)  # kill -9 the worker and its pool child
    stack.start_worker("second")
    done = stack.wait_job(job["id"], lambda j: j["status"] in TERMINAL, 240)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    [resume] = stack.client.get(f"/jobs/{job['id']}/results/resume").json()
    assert resume["data"]["from_step"] >= 4000 and resume["data"]["from_step"] % 2000 == 0, "not from step 0"
    loss = metric(stack, job["id"], "train/loss")
    assert loss["steps"] == list(range(steps)), "no gap and no duplicate step"
    # The resumed run is the run that was never interrupted, bit for bit.
    again = stack.submit({**raw, "name": "uninterrupted"})
    stack.wait_job(again["id"], lambda j: j["status"] in TERMINAL, 240)
    assert metric(stack, again["id"], "train/loss")["values"] == loss["values"]
    checkpoints = [a["step"] for a in stack.client.get(f"/jobs/{job['id']}/artifacts").json()]
    assert checkpoints == list(range(2000, steps + 1, 2000))


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


def read_events(stack: Stack, job_id: int, timeout: float = 120) -> list[tuple[str, dict]]:
    """The whole SSE stream of a job, until its `end` event."""
    import json

    events, kind = [], None
    with stack.client.stream("GET", f"/jobs/{job_id}/events", timeout=timeout) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind:
                events.append((kind, json.loads(line.split(":", 1)[1])))
                if kind == "end":
                    break
    return events


def test_events_stream_progress_and_every_point(stack: Stack):
    job = stack.submit(spec(steps=10_000, name="streamed"))
    stack.start_worker()
    events = read_events(stack, job["id"])
    kinds = [k for k, _ in events]
    assert kinds[0] == "hello" and kinds[-1] == "end" and events[-1][1]["status"] == "succeeded"
    states = [e["status"] for k, e in events if k == "job"]
    assert states[0] == "queued" and "running" in states and states[-1] == "succeeded"
    progress = [e["progress"] for k, e in events if k == "job"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    streamed = [s for k, e in events if k == "metrics" for s in e.get("train/loss", {}).get("steps", [])]
    assert streamed == list(range(10_000)), "every point arrives once, in order"
    assert sum(1 for k in kinds if k == "metrics") >= 2, "points came in several pushes, live"


def _statements(stack: Stack) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = stack.client.get("/operator/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}).text
    return next(f for f in text_string_to_metric_families(text) if f.name == "dynascope_db_statements").samples[0].value


def _viewed_by(stack: Stack, viewers: int, steps: int) -> tuple[float, list[list[tuple[str, dict]]]]:
    """A job followed by `viewers` streams from before it starts: the API's SQL statements meanwhile, and each
    stream's events."""
    import threading

    job = stack.submit(spec(steps=steps, name=f"viewed-by-{viewers}"))
    streams: list[list[tuple[str, dict]]] = []
    threads = [threading.Thread(target=lambda: streams.append(read_events(stack, job["id"], 300))) for _ in range(viewers)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # every stream past its hello
    before = _statements(stack)
    worker = stack.start_worker(f"for-{viewers}")
    for t in threads:
        t.join(300)
    Stack.kill(worker)
    return _statements(stack) - before, streams


METRICS_TOKEN = "a-metrics-token-for-the-worker-tests"


def test_many_streams_of_one_job_share_its_reads_and_each_gets_every_point(make_stack, pg_url, redis_url):
    """The streams of a job share one feed woken by the recorder's notices: 12 viewers cost the database about
    what one does (each stream still reads its own snapshot and rechecks its credentials), and none misses a point."""
    stack = make_stack(pg_url, redis_url, metrics_token=METRICS_TOKEN)
    stack.migrate()
    stack.start_api()
    alone, [stream] = _viewed_by(stack, 1, 6000)
    crowd, streams = _viewed_by(stack, 12, 6000)
    for events in [stream, *streams]:
        assert events[-1] == ("end", {"status": "succeeded"})
        streamed = [s for k, e in events if k == "metrics" for s in e.get("train/loss", {}).get("steps", [])]
        assert streamed == list(range(6000)), "every point arrives once, in order, at every viewer"
    assert crowd < 4 * alone, f"12 viewers: {crowd:.0f} statements; 1 viewer: {alone:.0f} (a poll per stream: about 12×)"


def test_cli_submit_watch_jobs_cancel(stack: Stack, tmp_path):
    import subprocess
    import sys

    import yaml

    cli = [sys.executable, "-m", "dynascope.cli"]
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec(steps=200, name="from-cli")))
    anonymous = subprocess.run(
        [*cli, "submit", str(spec_file)], env={**stack.env, "DYNASCOPE_URL": stack.url}, capture_output=True, text=True, timeout=60
    )
    assert anonymous.returncode == 1 and "401" in anonymous.stdout and "API token" in anonymous.stdout
    env = {**stack.env, "DYNASCOPE_URL": stack.url, "DYNASCOPE_TOKEN": stack.client.headers["authorization"].removeprefix("Bearer ")}
    stack.start_worker()
    done = subprocess.run([*cli, "submit", str(spec_file), "--watch"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({**spec(steps=30, name="cli-grid"), "sweep": {"optimizer.lr": [0.1, 0.2]}}))
    swept = subprocess.run([*cli, "submit", str(grid), "--watch"], env=env, capture_output=True, text=True, timeout=120)
    assert swept.returncode == 0 and "2 jobs queued" in swept.stdout, swept.stdout
    assert "cli-grid[lr=0.2]" in swept.stdout and len(re.findall(r"^job \d+ succeeded$", swept.stdout, re.M)) == 2
    listed = subprocess.run([*cli, "jobs", "-q", "from-cli"], env=env, capture_output=True, text=True, timeout=60)
    assert "from-cli" in listed.stdout and "succeeded" in listed.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**spec(), "optimizer": {"kind": "sgd", "lr": -1}}))
    refused = subprocess.run([*cli, "submit", str(bad)], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "optimizer.lr" in refused.stdout
    job = stack.submit(spec(steps=2_000_000, name="cli-cancel"))
    stack.wait_job(job["id"], lambda j: j["status"] == "running", 60)
    cancelled = subprocess.run([*cli, "cancel", str(job["id"])], env=env, capture_output=True, text=True, timeout=60)
    assert cancelled.returncode == 0 and "stopping" in cancelled.stdout
    assert stack.wait_job(job["id"], lambda j: j["status"] in TERMINAL, 10)["status"] == "cancelled"


def test_hessian_of_a_finished_jobs_checkpoint_on_demand(stack: Stack, tmp_path):
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from backend.spec import JobSpec
    from dynascope.analysis.hessian import hessian_top_eigenpairs
    from worker.training.loop import prepare

    stack.start_worker()
    raw = spec(steps=300, name="analyze-me")
    job = stack.submit(raw)
    stack.wait_job(job["id"], lambda j: j["status"] == "succeeded", 120)
    bad = stack.client.post(f"/jobs/{job['id']}/analyses", json={"step": 150, "top_k": 3})
    assert bad.status_code == 422 and "no checkpoint at step 150; it has [300]" in bad.text
    made = stack.client.post(f"/jobs/{job['id']}/analyses", json={"top_k": 3, "tol": 1e-6, "examples": 100_000, "density": True})
    assert made.status_code == 201, made.text
    assert made.json()["step"] == 300 and made.json()["status"] == "queued"
    analysis = ended_analysis(stack, job["id"], 0, 120)
    assert analysis["status"] == "succeeded", analysis
    [result] = stack.client.get(f"/jobs/{job['id']}/results/hessian_analysis").json()
    assert result["step"] == 300 and result["data"]["analysis_id"] == analysis["id"]
    # Independently: the downloaded checkpoint, the full training split, a tight Lanczos of our own.
    checkpoint = next(a for a in stack.client.get(f"/jobs/{job['id']}/artifacts").json() if a["kind"] == "checkpoint")
    path = tmp_path / "final.safetensors"
    path.write_bytes(stack.client.get(f"/jobs/{job['id']}/artifacts/{checkpoint['id']}").content)
    run = prepare(JobSpec.model_validate(raw), torch.device("cpu"))
    run.model.load_state_dict({k: v for k, v in load_file(str(path)).items() if "/" not in k})
    exact = hessian_top_eigenpairs(run.model, run.loss_fn, [(run.split.x_train, run.split.y_train)], k=3, tol=1e-9)
    assert np.allclose(result["data"]["eigenvalues"], exact.values, rtol=1e-5)
    assert result["data"]["threshold"] == 4.0 and "density" in result["data"]
    kinds = [a["kind"] for a in stack.client.get(f"/jobs/{job['id']}/artifacts").json()]
    assert "hessian-eigenvectors" in kinds
    # A loss surface around the same checkpoint: its centre is the checkpoint's loss on the stated sample.
    from dynascope.probes.samples import stratified_sample

    made = stack.client.post(f"/jobs/{job['id']}/analyses", json={"kind": "landscape", "resolution": 5, "examples": 300})
    assert made.status_code == 201, made.text
    analysis = ended_analysis(stack, job["id"], 1, 120)
    assert analysis["status"] == "succeeded", analysis
    [surface] = stack.client.get(f"/jobs/{job['id']}/results/landscape_analysis").json()
    data = surface["data"]
    rows = stratified_sample(run.split.y_train, 300, raw["train"]["seed"] + 2)
    with torch.no_grad():
        centre = run.loss_fn(run.model.eval()(run.split.x_train[rows]), run.split.y_train[rows]).item()
    assert data["loss"][2][2] == data["centre_loss"] and abs(centre - data["centre_loss"]) <= 1e-6 * centre
    assert data["examples"] == 300 and len(data["loss"]) == 5 and data["xs"][2] == 0.0
    assert "landscape-directions" in [a["kind"] for a in stack.client.get(f"/jobs/{job['id']}/artifacts").json()]
    # CKA against another job's latest checkpoint (another architecture), which the worker builds from that job's spec.
    other_raw = spec(steps=100, name="compare-me", seed=5)
    other_raw["model"]["widths"] = [32]
    other = stack.submit(other_raw)
    stack.wait_job(other["id"], lambda j: j["status"] == "succeeded", 120)
    made = stack.client.post(f"/jobs/{job['id']}/analyses", json={"kind": "representations", "to_job": other["id"], "examples": 200})
    assert made.status_code == 201, made.text
    analysis = ended_analysis(stack, job["id"], 2, 120)
    assert analysis["status"] == "succeeded", analysis
    compared = stack.client.get(f"/jobs/{job['id']}/results/representations_analysis").json()[-1]["data"]
    assert compared["end"] == {"job": other["id"], "step": 100} and compared["to_layers"] == ["1", "3"]
    assert compared["layers"] == ["1", "3", "5"] and all(0 <= v <= 1 + 1e-9 for row in compared["matrix"] for v in row)
    assert compared["matrix"][2][1] > 0.5  # the two networks' logits on the same digits are alike
    missing = stack.client.post(f"/jobs/{job['id']}/analyses", json={"kind": "representations", "to_job": 999_999})
    assert missing.status_code == 422 and "no job 999999" in missing.text


def test_a_large_grid_is_split_into_chunks_and_a_lost_worker_costs_one_chunk(make_stack, pg_url, redis_url, tmp_path):
    import numpy as np
    import torch

    from backend.spec import JobSpec, LandscapeAnalysis
    from worker.training.analyses import analyze_checkpoint
    from worker.training.checkpoint import read

    stack = make_stack(pg_url, redis_url, grid_chunk_points=100)
    stack.migrate()
    stack.start_api()
    first = stack.start_worker("first")
    raw = spec(steps=60, name="split-grid")
    raw["model"] = {"kind": "cnn", "channels": [32, 32]}
    job = stack.submit(raw)
    stack.wait_job(job["id"], lambda j: j["status"] == "succeeded", 120)
    request = {"kind": "landscape", "resolution": 21, "examples": 1000}
    made = stack.client.post(f"/jobs/{job['id']}/analyses", json=request).json()

    def claims() -> list:
        return stack.client.get(f"/jobs/{job['id']}/results/grid_claim").json()

    stack.wait(lambda: bool(claims()), 120, "a chunk claimed")
    Stack.kill(first)  # kill -9 in the middle of a chunk
    stack.start_worker("second")
    analysis = ended_analysis(stack, job["id"], 0, 180)
    assert analysis["status"] == "succeeded" and analysis["id"] == made["id"], analysis
    assert analysis["attempts"] == 2  # the first worker's chunk was sent again, once
    [surface] = stack.client.get(f"/jobs/{job['id']}/results/landscape_analysis").json()
    data = surface["data"]
    assert data["chunks"] == 5 and data["points_done"] == data["points_total"] == 441 and not data["partial"]
    for kind in ("grid_plan", "grid_chunk", "grid_claim"):
        assert stack.client.get(f"/jobs/{job['id']}/results/{kind}").json() == []
    # The assembled surface is the one computed in one piece, here.
    [checkpoint] = [a for a in stack.client.get(f"/jobs/{job['id']}/artifacts").json() if a["kind"] == "checkpoint"]
    path = tmp_path / "final.safetensors"
    path.write_bytes(stack.client.get(f"/jobs/{job['id']}/artifacts/{checkpoint['id']}").content)
    tensors, metadata = read(path)
    whole = analyze_checkpoint(JobSpec.model_validate(raw), LandscapeAnalysis(**request), 60, tensors, metadata, torch.device("cpu"))
    np.testing.assert_allclose(np.array(data["loss"]), np.array(whole.result["loss"]), rtol=1e-6)
    # A long analysis stops when cancelled, its queued chunks with it.
    big = stack.client.post(f"/jobs/{job['id']}/analyses", json={**request, "resolution": 41}).json()
    stack.wait(lambda: stack.client.get(f"/jobs/{job['id']}/analyses").json()[1]["status"] == "running", 60, "running")
    cancelled = stack.client.post(f"/jobs/{job['id']}/analyses/{big['id']}/cancel").json()
    assert cancelled["cancel_requested"] and cancelled["status"] == "running"
    stack.wait(lambda: stack.client.get(f"/jobs/{job['id']}/analyses").json()[1]["status"] == "cancelled", 30, "cancelled")
    assert stack.client.post(f"/jobs/{job['id']}/analyses/999999/cancel").status_code == 404


def test_a_team_over_its_running_quota_waits_while_another_team_runs(make_stack, pg_url, redis_url):
    stack = make_stack(pg_url, redis_url, max_running_jobs=1)
    stack.migrate()
    stack.start_api()
    for name in ("w1", "w2", "w3"):
        stack.start_worker(name)
    first, second = (stack.submit(spec(steps=6000, name=f"a-{i}")) for i in range(2))
    other = stack.client.post(
        "/jobs", json=spec(steps=300, name="b-0"), headers={"authorization": f"Bearer {stack.provision('bob', 'b')}"}
    ).json()
    seen_waiting, both_ran = False, False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        jobs = [stack.job(first["id"]), stack.job(second["id"])]
        assert sum(j["status"] == "running" for j in jobs) <= 1, "team a ran more than its quota"
        seen_waiting |= any(j["stage"].startswith("waiting: its team runs at most 1") for j in jobs)
        if all(j["status"] == "succeeded" for j in jobs):
            both_ran = True
            break
        time.sleep(0.1)
    assert seen_waiting and both_ran
    bob = {"authorization": f"Bearer {stack.provision('bob', 'b')}"}
    b = stack.client.get(f"/jobs/{other['id']}", headers=bob).json()
    later = max(stack.job(first["id"])["started_at"], stack.job(second["id"])["started_at"])
    assert b["status"] == "succeeded" and b["started_at"] < later, "team b's job was held back by team a's quota"
    assert stack.client.get(f"/jobs/{other['id']}").status_code == 404  # and alice does not see it


def test_a_labs_own_model_survives_kill_9_and_a_failing_entry_point_fails_only_its_job(make_stack, pg_url, redis_url):
    from tests.unit.test_entrypoints import lab_job

    stack = make_stack(pg_url, redis_url, entrypoints="dynascope_testlab.")
    stack.migrate()
    stack.start_api()
    first = stack.start_worker("first")
    broken = stack.submit(lab_job(model="dynascope_testlab.models:raises"))
    failed = stack.wait_job(broken["id"], lambda j: j["status"] in TERMINAL, 120)
    assert failed["status"] == "failed" and failed["attempts"] == 1
    last_line = failed["error"].strip().splitlines()[-1]
    assert "dynascope_testlab.models:raises raised ValueError: no such architecture (at " in last_line and "in raises)" in last_line
    steps = 3000
    raw = lab_job(steps=steps, checkpoint_every=500, eval_every=500) | {"name": "own-model-kill-9"}
    job = stack.submit(raw)  # the same worker takes the next job
    stack.wait_job(job["id"], lambda j: j["status"] == "running" and j["step"] > 1200, 120)
    Stack.kill(first)
    stack.start_worker("second")
    done = stack.wait_job(job["id"], lambda j: j["status"] in TERMINAL, 240)
    assert (done["status"], done["attempts"]) == ("succeeded", 2), done
    [resume] = stack.client.get(f"/jobs/{job['id']}/results/resume").json()
    assert resume["data"]["from_step"] >= 1000
    loss = metric(stack, job["id"], "train/loss")
    assert loss["steps"] == list(range(steps))
    again = stack.submit({**raw, "name": "own-model-uninterrupted"})
    stack.wait_job(again["id"], lambda j: j["status"] in TERMINAL, 240)
    assert metric(stack, again["id"], "train/loss")["values"] == loss["values"]  # bit for bit
