"""Uploaded datasets: plain arrays only, limits enforced while streaming, and jobs that train on them."""

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from backend.spec import JobSpec
from tests.conftest import spec
from tests.helpers import field_errors, job_count
from tests.helpers import ListRecorder
from worker.training.loop import Outcome, train


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload(client, body: bytes, fmt: str = "npz", **params):
    return client.post(
        "/api/v1/datasets",
        params={"name": "mine", "format": fmt, **params},
        content=body,
        headers={"content-type": "application/octet-stream"},
    )


def blobs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 6)).astype(np.float32), rng.integers(0, 3, size=200)


def test_npz_upload_then_a_job_trains_on_it(client, tmp_path: Path):
    x, y = blobs()
    made = upload(client, npz(X=x, y=y))
    assert made.status_code == 201, made.text
    dataset = made.json()
    assert dataset["examples"] == 200 and dataset["input_shape"] == [6] and dataset["classes"] == 3
    assert client.get(f"/api/v1/datasets/{dataset['id']}").json() == dataset
    raw = {**spec(steps=40), "data": {"kind": "upload", "dataset": dataset["id"]}}
    check = client.post("/api/v1/specs/validate", json=raw).json()
    assert check["parameters"] == 6 * 64 + 64 + 64 * 64 + 64 + 64 * 3 + 3
    assert client.post("/api/v1/jobs", json=raw).status_code == 201
    # The worker reads the stored file (without pickle) and trains.
    from backend.config import get_settings
    from backend.services.artifacts import LocalArtifactStore

    store = LocalArtifactStore(get_settings().artifact_dir)
    rec = ListRecorder()
    assert train(JobSpec.model_validate(raw), rec, torch.device("cpu"), uploads=store.path) is Outcome.finished
    assert rec.results[0][2]["classes"] == 3 and len(rec.series("train/loss")) == 40


def test_csv_with_a_named_target_and_a_regression(client):
    rng = np.random.default_rng(1)
    rows = "\n".join(f"{a:.3f},{b:.3f},{int(a > 0)},{a + b:.3f}" for a, b in rng.normal(size=(50, 2)))
    classes = upload(client, f"a,b,label,sum\n{rows}\n".encode(), "csv", target="label").json()
    assert classes["classes"] == 2 and classes["input_shape"] == [3]
    regression = upload(client, f"a,b,label,sum\n{rows}\n".encode(), "csv").json()
    assert regression["classes"] is None
    raw = {**spec(), "data": {"kind": "upload", "dataset": regression["id"]}}
    assert "regression" in field_errors(client.post("/api/v1/jobs", json=raw))["model.kind"]
    raw = {**spec(), "model": {"kind": "cnn"}, "data": {"kind": "upload", "dataset": classes["id"]}}
    assert "needs images" in field_errors(client.post("/api/v1/jobs", json=raw))["model.kind"]


def test_pickles_and_bombs_are_refused_and_nothing_is_stored(client):
    before = len(client.get("/api/v1/datasets").json())
    x, _ = blobs()
    cases = {
        "pickled objects are never loaded": npz(X=x, y=np.array([{"a": 1}] * 200, dtype=object)),
        "not a .npz": pickle.dumps({"X": x}),
        "must hold arrays X and y": npz(X=x),
        "one value per example": npz(X=x, y=np.zeros(10, dtype=np.int64)),
        "hold numbers": npz(X=np.array(["a"] * 200), y=np.zeros(200, dtype=np.int64)),
    }
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("X.npy", b"\0" * 50_000_000)
        z.writestr("y.npy", b"\0" * 10)
    cases["a zip bomb"] = bomb.getvalue()
    for says, body in cases.items():
        response = upload(client, body)
        assert response.status_code == 422 and says in response.text, (says, response.text)
    assert "every value must be a number" in upload(client, b"a,b\n1,x\n", "csv").text
    assert len(client.get("/api/v1/datasets").json()) == before


def test_oversize_upload_is_refused_by_counting_the_stream(client, monkeypatch):
    """A chunked body with no Content-Length: the route counts chunks as they come and stops at the limit."""
    from backend.config import get_settings

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 100_000)
    before = len(client.get("/api/v1/datasets").json())

    def body():
        for _ in range(1000):
            yield b"\0" * 10_000

    response = client.post("/api/v1/datasets", params={"name": "big", "format": "npz"}, content=body())
    assert response.status_code == 413 and "100000 bytes" in response.text
    assert len(client.get("/api/v1/datasets").json()) == before


def test_unknown_dataset_is_named(client):
    before = job_count()
    raw = {**spec(), "data": {"kind": "upload", "dataset": "0" * 32}}
    assert "no uploaded dataset" in field_errors(client.post("/api/v1/jobs", json=raw))["data.dataset"]
    raw["data"]["dataset"] = "../../etc/passwd"
    assert "data.dataset" in field_errors(client.post("/api/v1/jobs", json=raw))
    assert job_count() == before
