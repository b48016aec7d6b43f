"""The job history with 10,000 jobs in one team (and 10,000 in another): the API's answer time for the
dashboard's table queries (first page, filters, search, sort, the last page) and for the runs table's (a field
and a series summary as columns, sorted and filtered by them), on SQLite and on PostgreSQL, against the same
queries with 100 jobs. Median of 15 requests each, through the ASGI app in-process."""

import os
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import insert, text

JOBS = 10_000
QUERIES = {
    "first page (50, newest first)": {},
    "status=succeeded": {"status": "succeeded"},
    "tag=baseline": {"tag": "baseline"},
    "search q=lr0.1": {"q": "lr0.1"},
    "creator + model": {"creator": "ada", "model": "cnn"},
    "sort by name": {"sort": "name"},
    "last page (offset 9,950)": {"offset": JOBS - 50},
}
TABLE = {"fields": "optimizer.lr,model.kind", "metrics": "final:val/loss,min:val/loss"}
TABLE_QUERIES = {
    "runs table, sorted by final val/loss": {**TABLE, "sort": "-final:val/loss"},
    "runs table, lr ≥ 0.3 and final val/loss < 1, by lr": {
        **TABLE,
        "sort": "optimizer.lr",
        "where": ["optimizer.lr>=0.3", "final:val/loss<1"],
    },
    "runs table, last page by min val/loss": {**TABLE, "sort": "min:val/loss", "offset": JOBS - 50},
}
PG_ADMIN = os.environ.get("DYNASCOPE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _fill(url: str, key: str, jobs: int) -> str:
    """`jobs` jobs in team a (ada's, then bo's) and as many in team b; returns a token of ada's in team a."""
    from sqlalchemy.orm import Session

    from backend.db import make_engine
    from backend.migrate import upgrade_head
    from backend.models import Job, JobTag, MetricChunk, Role, utcnow
    from backend.services import accounts

    upgrade_head(url)
    engine = make_engine(url)
    with Session(engine) as session:
        ada = accounts.create_user(session, "ada", None)
        bo = accounts.create_user(session, "bo", None)
        teams = [accounts.get_or_create_team(session, name) for name in ("a", "b")]
        for user in (ada, bo):
            accounts.set_membership(session, user, teams[0], Role.member)
        accounts.set_membership(session, bo, teams[1], Role.member)
        _, token = accounts.create_token(session, key, ada, teams[0].id, "bench")
        statuses = ["succeeded", "failed", "cancelled", "diverged"]  # ended: no worker is there to run them
        start = utcnow() - timedelta(days=30)
        rows = [
            {
                "team_id": teams[i % 2].id,
                "creator_id": (ada if i % 3 else bo).id,
                "name": f"run-{i}-lr{(i % 7) / 10}",
                "spec": {"model": {"kind": "mlp" if i % 4 else "cnn"}, "optimizer": {"lr": (i % 7) / 10}},
                "status": statuses[i % len(statuses)],
                "progress": 1.0,
                "stage": "done",
                "model_kind": "mlp" if i % 4 else "cnn",
                "data_kind": "digits",
                "created_at": start + timedelta(seconds=60 * i),
                "updated_at": start,
                "step": 0,
                "attempts": 1,
                "max_attempts": 3,
                "cancel_requested": False,
            }
            for i in range(2 * jobs)
        ]
        session.execute(insert(Job), rows)
        session.flush()
        ids = session.query(Job.id).filter(Job.team_id == teams[0].id).all()
        session.execute(insert(JobTag), [{"job_id": job_id, "tag": "baseline"} for (job_id,) in ids[::10]])
        session.execute(insert(MetricChunk), [_chunk(job_id) for (job_id,) in ids])
        session.commit()
        if engine.dialect.name == "postgresql":  # the statistics autovacuum keeps (the planner's, for the joins)
            session.execute(text("ANALYZE"))
            session.commit()
    engine.dispose()
    return token


def _chunk(job_id: int) -> dict:
    """One chunk of a val/loss series (100 points) with its summary, as append_points would keep it."""
    values = np.random.default_rng(job_id).uniform(0.2, 2.0, 100)
    steps = np.arange(100, dtype="<i8")
    return {"job_id": job_id, "name": "val/loss", "seq": 0, "first_step": 0, "last_step": 99, "count": 100, "steps": steps.tobytes(),
            "values": values.astype("<f8").tobytes(), "vmin": float(values.min()), "vmax": float(values.max()), "vlast": float(values[-1])}  # fmt: skip


def _time(url: str, jobs: int) -> dict[str, float]:
    from fastapi.testclient import TestClient

    from tests.conftest import reset_caches

    key = "bench-job-history-secret-key-0123456789"
    token = _fill(url, key, jobs)
    os.environ.update({"DYNASCOPE_DATABASE_URL": url, "DYNASCOPE_SECRET_KEY": key, "DYNASCOPE_TOKEN_RATE_LIMIT_PER_MINUTE": "100000"})
    reset_caches()
    from backend.main import create_app

    out = {}
    with TestClient(create_app(), base_url="http://127.0.0.1", headers={"authorization": f"Bearer {token}"}) as client:
        for path, queries in (("/api/v1/jobs", QUERIES), ("/api/v1/jobs-table", TABLE_QUERIES)):
            for label, params in queries.items():
                params = {"limit": 50, **params}
                times = []
                for _ in range(15):
                    began = time.perf_counter()
                    response = client.get(path, params=params)
                    times.append(time.perf_counter() - began)
                    assert response.status_code == 200 and response.json()["total"] <= jobs, response.text
                out[label] = statistics.median(times)
    reset_caches()
    return out


CREATED: list[str] = []


def _pg_url() -> str | None:
    """A fresh database (dropped at the end), or None where PostgreSQL is not reachable."""
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as admin:
            name = f"dynascope_bench_{uuid.uuid4().hex[:8]}"
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        return None
    CREATED.append(name)
    return f"postgresql+psycopg://{PG_ADMIN.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"


def _drop_created() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        for name in CREATED:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    CREATED.clear()


def run() -> list[dict]:
    saved = dict(os.environ)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            backends = {"SQLite": lambda n: f"sqlite:///{Path(tmp) / f'h{n}.db'}", "PostgreSQL": lambda n: _pg_url()}
            for backend, make_url in backends.items():
                small_url, large_url = make_url(100), make_url(JOBS)
                if small_url is None or large_url is None:
                    rows.append({"benchmark": "job history", "case": f"{backend}: not reachable", "ours": "-", "anchor": "-", "ratio": "-"})
                    continue
                small, large = _time(small_url, 100), _time(large_url, JOBS)
                for label in [*QUERIES, *TABLE_QUERIES]:
                    rows.append(
                        {
                            "benchmark": "job history",
                            "case": f"{backend}, {'GET /jobs-table' if label in TABLE_QUERIES else 'GET /jobs'} {label}",
                            "ours": f"{large[label] * 1000:.1f} ms with {JOBS:,} jobs (+{JOBS:,} of another team)",
                            "anchor": f"{small[label] * 1000:.1f} ms with 100",
                            "ratio": f"{large[label] / small[label]:.2f}×",
                        }
                    )
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if CREATED:
            _drop_created()
    return rows
