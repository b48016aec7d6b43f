"""Artifacts and uploads in an S3-compatible bucket: a real S3 API server (moto in server mode, its own process on
127.0.0.1) behind DYNASCOPE_ARTIFACT_URL; a worker writes checkpoints there, the API streams them back, and a job
trains on a dataset uploaded into the bucket."""

import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from backend.services.artifacts import S3ArtifactStore
from tests.conftest import free_port, spec

BUCKET = "dynascope-test"


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """The AWS variables that point boto3 at a fresh S3 API server with an empty bucket."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(env["AWS_ENDPOINT_URL"], timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the S3 server did not start"
            time.sleep(0.2)
    import boto3

    boto3.client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    ).create_bucket(Bucket=BUCKET)
    yield env
    server.terminate()
    server.wait(10)


def test_the_bucket_store_round_trips_streams_and_deletes(s3: dict[str, str], tmp_path, monkeypatch: pytest.MonkeyPatch):
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    store = S3ArtifactStore(f"s3://{BUCKET}/unit", tmp_path / "cache")
    data = os.urandom(3 * (1 << 20) + 17)  # more than one chunk
    stored = store.put(data)
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    chunks = list(store.chunks(stored.id))
    assert len(chunks) == 4 and b"".join(chunks) == data
    assert store.path(stored.id).read_bytes() == data  # a local copy for the worker's readers
    store.delete(stored.id)
    assert not store.exists(stored.id) and not store.path(stored.id).exists()
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def test_a_worker_writes_checkpoints_to_the_bucket_and_the_api_streams_them(
    s3: dict[str, str], make_stack, pg_url: str, redis_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    for name, value in s3.items():
        monkeypatch.setenv(name, value)  # the stack's processes inherit them
    stack = make_stack(pg_url, redis_url, artifact_url=f"s3://{BUCKET}/stack")
    stack.migrate()
    stack.start_api()
    stack.start_worker()
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, X=rng.normal(size=(200, 4)).astype(np.float32), y=(rng.random(200) > 0.5).astype(np.int64))
    dataset = stack.client.post("/datasets", params={"name": "in-the-bucket", "format": "npz"}, content=buffer.getvalue()).json()
    job = spec(steps=40, checkpoint_every=20) | {"data": {"kind": "upload", "dataset": dataset["id"]}}
    made = stack.submit(job)
    done = stack.wait_job(made["id"], lambda j: j["status"] not in ("queued", "running"), 180)
    assert done["status"] == "succeeded", done["error"]
    artifacts = stack.client.get(f"/jobs/{made['id']}/artifacts").json()
    assert {a["step"] for a in artifacts if a["kind"] == "checkpoint"} >= {20, 40}
    import boto3

    bucket = boto3.client("s3")
    for artifact in artifacts:
        response = stack.client.get(f"/jobs/{made['id']}/artifacts/{artifact['id']}")
        assert response.status_code == 200 and hashlib.sha256(response.content).hexdigest() == artifact["sha256"]
        key = f"stack/{artifact['id'][:2]}/{artifact['id']}"
        assert bucket.get_object(Bucket=BUCKET, Key=key)["ContentLength"] == artifact["size"]
    assert not list((tmp_path / "artifacts").rglob(artifacts[0]["id"])), "nothing kept outside the bucket but the workers' cache"
