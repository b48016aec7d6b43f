"""The REST client: jobs and sweeps, what a job recorded (as NumPy arrays, for a notebook), and the ingest API of
tracked runs. The CLI and the tracker both use it.

`Client()` reads DYNASCOPE_URL (default http://127.0.0.1:8000) and DYNASCOPE_TOKEN (an API token: the
dashboard's account page makes one). A refused request raises ApiError with the server's message; a server
that cannot be reached raises httpx.TransportError (the tracker spills to disk then)."""

import os
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, BinaryIO

import httpx
import numpy as np
from pydantic import BaseModel

from dynascope.tracking import Ack, Beat, BeatAck, Finish, Points, ResultIn, Resumed, RunCreate

DEFAULT_URL = "http://127.0.0.1:8000"


class ApiError(Exception):
    """The server answered with an error: its status and what it said (each field's problem for a 422)."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status, self.detail = status, detail
        if isinstance(detail, list):
            detail = "\n".join(f"  {'.'.join(map(str, e.get('loc', [])[1:])) or 'body'}: {e.get('msg')}" for e in detail)
        super().__init__(f"error {status}\n{detail}")


MAX_POINTS = 100_000  # the API's most points per series in one answer


@dataclass
class Series:
    """One recorded series: steps (int64) and values (float64; NaN where the value was not finite)."""

    name: str
    steps: np.ndarray
    values: np.ndarray
    total_points: int  # as recorded: more than len(steps) when the server downsampled (keeping each bucket's min and max)

    @property
    def complete(self) -> bool:
        return len(self.steps) == self.total_points


class Metrics(dict[str, Series]):
    """A job's series by name."""

    def to_pandas(self) -> Any:
        """One long DataFrame (series, step, value); needs pandas (pip install pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("Metrics.to_pandas needs pandas: pip install pandas") from exc
        frames = [pd.DataFrame({"series": s.name, "step": s.steps, "value": s.values}) for s in self.values()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["series", "step", "value"])


def _raise_for(response: httpx.Response) -> None:
    """An ApiError with the server's `detail`, for an answer of 400 or more."""
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    raise ApiError(response.status_code, detail)


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("DYNASCOPE_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("DYNASCOPE_TOKEN", "")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=f"{self.url}/api/v1", timeout=timeout, headers=headers)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: BaseModel | None = None, **kw: Any) -> Any:
        if body is not None:
            kw["content"] = body.model_dump_json()
            kw["headers"] = {"content-type": "application/json", **kw.get("headers", {})}
        response = self.http.request(method, path, **kw)
        _raise_for(response)
        return response.json() if response.content else None

    # jobs and sweeps

    def submit(self, text: bytes, content_type: str = "application/yaml", sweep: bool = False) -> dict[str, Any]:
        """A job spec (or a spec with `sweep:`, which becomes a sweep of jobs), as YAML or JSON text."""
        return self.call("POST", "/sweeps" if sweep else "/jobs", content=text, headers={"content-type": content_type})

    def job(self, job_id: int) -> dict[str, Any]:
        return self.call("GET", f"/jobs/{job_id}")

    def jobs(self, **filters: Any) -> dict[str, Any]:
        return self.call("GET", "/jobs", params=filters)

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self.call("POST", f"/jobs/{job_id}/cancel")

    # what a job recorded, for a notebook

    def metrics(self, job_id: int, names: list[str] | None = None, *, prefix: str | None = None, max_points: int | None = None) -> Metrics:
        """The job's series (all, or `names`, or those under `prefix`) as arrays: every point up to MAX_POINTS per
        series (`max_points=None`), fewer when asked; a longer series comes downsampled (see Series.complete)."""
        params: dict[str, Any] = {"max_points": max_points or MAX_POINTS}
        if names is not None:
            params["names"] = ",".join(names)
        if prefix is not None:
            params["prefix"] = prefix
        body = self.call("GET", f"/jobs/{job_id}/metrics", params=params)
        return Metrics(
            (
                s["name"],
                Series(
                    s["name"],
                    np.asarray(s["steps"], dtype=np.int64),
                    np.array([np.nan if v is None else v for v in s["values"]], dtype=np.float64),
                    s["total_points"],
                ),
            )
            for s in body["series"]
        )

    def results(self, job_id: int, kind: str, last: int | None = None) -> list[dict[str, Any]]:
        """The job's result documents of one kind (a probe's name, `<analysis>_analysis`, `summary`), in step order."""
        return self.call("GET", f"/jobs/{job_id}/results/{kind}", params={"last": last} if last else None)

    def groups(self, series: str, by: str = "", **selection: Any) -> dict[str, Any]:
        """Runs (`ids`, `sweep_id` or the job list's filters) grouped by comma-separated spec fields, `series`
        aggregated per group: steps, mean, std, sem, min, max and count (GET /compare/groups)."""
        return self.call(
            "GET", "/compare/groups", params={"series": series, "by": by, **{k: v for k, v in selection.items() if v is not None}}
        )

    def runs_table(self, **query: Any) -> dict[str, Any]:
        """A page of the runs table: `fields`, `metrics` (final:/min:/max:<series>), `where` (a list of
        conditions), `sort`, `limit`, `offset`, and `sweep_id` or the job list's filters (GET /jobs-table)."""
        return self.call("GET", "/jobs-table", params={k: v for k, v in query.items() if v is not None})

    def lr_sensitivity(self, sweep_id: int, by: str | None = None, series: str = "val/loss") -> dict[str, Any]:
        """A learning-rate sweep's curves of final loss against lr (one per value of `by`; "" for one curve), each with
        its LR sensitivity and the largest attention logit at the end (GET /sweeps/{id}/sensitivity)."""
        params = {"series": series} | ({"by": by} if by is not None else {})
        return self.call("GET", f"/sweeps/{sweep_id}/sensitivity", params=params)

    def export(
        self, into: BinaryIO, *, format: str = "parquet", on_bytes: Callable[[int], None] = lambda _: None, **selection: Any
    ) -> tuple[int, int]:
        """Stream an export of many jobs' series into a binary file: `ids` (comma-separated), `sweep_id` or the job
        list's filters, `names`, `prefix`, `fields` (GET /export). Returns (rows, jobs) as the server counted them;
        `on_bytes` hears of each piece written."""
        params = {"format": format, **{k: v for k, v in selection.items() if v is not None}}
        with self.http.stream("GET", "/export", params=params, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            for piece in response.iter_bytes():
                into.write(piece)
                on_bytes(len(piece))
            return int(response.headers["x-dynascope-rows"]), int(response.headers["x-dynascope-jobs"])

    def artifacts(self, job_id: int) -> list[dict[str, Any]]:
        """The tensors the job kept (checkpoints, eigenvectors, directions): id, kind, step, size."""
        return self.call("GET", f"/jobs/{job_id}/artifacts")

    def artifact(self, job_id: int, artifact_id: str, framework: str = "numpy") -> dict[str, Any]:
        """A kept artifact's tensors, read from its safetensors file (never unpickled): NumPy arrays, or torch
        tensors with framework="pt"."""
        response = self.http.get(f"/jobs/{job_id}/artifacts/{artifact_id}")
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text)
        if framework == "pt":
            from safetensors.torch import load
        else:
            from safetensors.numpy import load
        return load(response.content)

    # tracked runs

    def create_run(self, request: RunCreate) -> dict[str, Any]:
        return self.call("POST", "/runs", request)

    def add_points(self, run_id: int, points: Points) -> Ack:
        return Ack.model_validate(self.call("POST", f"/runs/{run_id}/points", points))

    def add_result(self, run_id: int, result: ResultIn) -> Ack:
        return Ack.model_validate(self.call("POST", f"/runs/{run_id}/results", result))

    def add_artifact(self, run_id: int, kind: str, step: int, data: bytes) -> Ack:
        """A probe's tensors, as safetensors bytes."""
        params = {"kind": kind, "step": step}
        headers = {"content-type": "application/octet-stream"}
        return Ack.model_validate(self.call("POST", f"/runs/{run_id}/artifacts", params=params, content=data, headers=headers))

    def resume_run(self, run_id: int) -> Resumed:
        return Resumed.model_validate(self.call("POST", f"/runs/{run_id}/resume"))

    def heartbeat(self, run_id: int, beat: Beat) -> BeatAck:
        return BeatAck.model_validate(self.call("POST", f"/runs/{run_id}/heartbeat", beat))

    def finish(self, run_id: int, end: Finish) -> dict[str, Any]:
        return self.call("POST", f"/runs/{run_id}/finish", end)
