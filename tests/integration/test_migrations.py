"""The migrations and the ORM models describe the same schema, on SQLite and on PostgreSQL."""

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from backend.db import make_engine
from backend.migrate import upgrade_head
from backend.models import Base


def assert_no_drift(url: str) -> None:
    upgrade_head(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
    assert {"jobs", "metric_chunks", "results", "artifacts", "teams", "users", "api_tokens"} <= tables


def test_sqlite(tmp_path: Path):
    assert_no_drift(f"sqlite:///{tmp_path / 'm.db'}")


def test_postgres(pg_url: str):
    assert_no_drift(pg_url)


def test_upgrade_is_idempotent(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    upgrade_head(url)
    upgrade_head(url)
