"""The REST client: jobs and sweeps, and the ingest API of tracked runs. The CLI and the tracker both use it.

`Client()` reads DYNASCOPE_URL (default http://127.0.0.1:8000) and DYNASCOPE_TOKEN (an API token: the
dashboard's account page makes one). A refused request raises ApiError with the server's message; a server
that cannot be reached raises httpx.TransportError (the tracker spills to disk then)."""

import os
from typing import Any

import httpx
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
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
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
