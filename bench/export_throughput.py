"""How fast GET /export streams many jobs' series as one long table: 50 jobs × 10 series × 4,000 points (2,000,000
rows), as Parquet and as CSV, read to the end through the ASGI app in-process, on SQLite and on PostgreSQL;
against what a user does without it: each job's series by GET /jobs/{id}/metrics (JSON), joined into one pandas
frame and written as Parquet. Rows per second, the best of 3."""

import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.job_history import CREATED, _drop_created, _pg_url

JOBS, SERIES, POINTS = 50, 10, 4000


def _fill(url: str, key: str) -> tuple[str, list[int]]:
    from sqlalchemy.orm import Session

    from backend.db import make_engine
    from backend.migrate import upgrade_head
    from backend.models import Job, Role, utcnow
    from backend.services import accounts
    from backend.services.series import append_points

    upgrade_head(url)
    engine = make_engine(url)
    rng = np.random.default_rng(0)
    with Session(engine) as session:
        ada = accounts.create_user(session, "ada", None)
        team = accounts.get_or_create_team(session, "a")
        accounts.set_membership(session, ada, team, Role.member)
        _, token = accounts.create_token(session, key, ada, team.id, "bench")
        jobs = []
        for i in range(JOBS):
            spec = {"optimizer": {"kind": "sgd", "lr": 0.1 * (1 + i % 5)}, "train": {"seed": i // 5}}
            job = Job(team_id=team.id, creator_id=ada.id, name=f"run-{i}", spec=spec, status="succeeded", progress=1.0, stage="done",
                      model_kind="mlp", data_kind="digits", created_at=utcnow(), updated_at=utcnow(), step=POINTS, attempts=1, max_attempts=3,
                      cancel_requested=False)  # fmt: skip
            session.add(job)
            session.flush()
            for s in range(SERIES):
                append_points(session, job.id, f"series/{s}", np.arange(POINTS), rng.normal(size=POINTS))
            jobs.append(job.id)
        session.commit()
    engine.dispose()
    return token, jobs


def _best(fn, repeats: int = 3) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def _measure(url: str) -> dict[str, float]:
    import pandas as pd
    from fastapi.testclient import TestClient

    from tests.conftest import reset_caches

    key = "bench-export-secret-key-0123456789abcdef"
    token, jobs = _fill(url, key)
    os.environ.update({"DYNASCOPE_DATABASE_URL": url, "DYNASCOPE_SECRET_KEY": key, "DYNASCOPE_TOKEN_RATE_LIMIT_PER_MINUTE": "100000"})
    reset_caches()
    from backend.main import create_app

    rows = JOBS * SERIES * POINTS
    out = {}
    with TestClient(create_app(), base_url="http://127.0.0.1", headers={"authorization": f"Bearer {token}"}) as client:

        def export(fmt: str) -> None:
            with client.stream("GET", "/api/v1/export", params={"format": fmt}) as response:
                assert response.status_code == 200 and int(response.headers["x-dynascope-rows"]) == rows
                for _ in response.iter_bytes():
                    pass

        def by_rest() -> None:
            frames = []
            for job in jobs:
                body = client.get(f"/api/v1/jobs/{job}/metrics", params={"max_points": POINTS}).json()
                for s in body["series"]:
                    frames.append(pd.DataFrame({"job_id": job, "series": s["name"], "step": s["steps"], "value": s["values"]}))
            table = pd.concat(frames)
            assert len(table) == rows
            table.to_parquet(io.BytesIO())

        for fmt in ("parquet", "csv"):
            out[fmt] = rows / _best(lambda fmt=fmt: export(fmt))
        out["rest"] = rows / _best(by_rest)
    reset_caches()
    return out


def run() -> list[dict]:
    saved = dict(os.environ)
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for backend, url in (("SQLite", f"sqlite:///{Path(tmp) / 'export.db'}"), ("PostgreSQL", _pg_url())):
                if url is None:
                    results.append({"benchmark": "export", "case": f"{backend}: not reachable", "ours": "-", "anchor": "-", "ratio": "-"})
                    continue
                speed = _measure(url)
                for fmt in ("parquet", "csv"):
                    results.append(
                        {
                            "benchmark": "export",
                            "case": f"{backend}, GET /export {fmt}: {JOBS} jobs × {SERIES} series × {POINTS:,} points",
                            "ours": f"{speed[fmt]:,.0f} rows/s",
                            "anchor": f"GET /jobs/{{id}}/metrics per job → pandas → Parquet: {speed['rest']:,.0f} rows/s",
                            "ratio": f"{speed[fmt] / speed['rest']:.1f}×",
                        }
                    )
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if CREATED:
            _drop_created()
    return results
