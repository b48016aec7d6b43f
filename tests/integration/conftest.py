from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from backend.migrate import upgrade_head
from tests.conftest import bearer, provision, reset_caches


@pytest.fixture
def client(tmp_path: Path, embedded_redis: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    yield from _client(f"sqlite:///{tmp_path / 'api.db'}", tmp_path, embedded_redis, monkeypatch)


@pytest.fixture(params=["sqlite", "postgresql"])
def either_client(
    request: pytest.FixtureRequest, tmp_path: Path, embedded_redis: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The API on SQLite, then on PostgreSQL (queries whose SQL differs between the two)."""
    url = f"sqlite:///{tmp_path / 'api.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    if request.param == "postgresql":
        monkeypatch.setenv("DYNASCOPE_SECRET_KEY", "a-test-secret-key-of-32-characters-or-more")
    yield from _client(url, tmp_path, embedded_redis, monkeypatch)


def _client(url: str, tmp_path: Path, embedded_redis: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("DYNASCOPE_DATABASE_URL", url)
    monkeypatch.setenv("DYNASCOPE_BROKER_URL", embedded_redis)
    monkeypatch.setenv("DYNASCOPE_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("DYNASCOPE_MAX_BODY_BYTES", "20000")
    reset_caches()
    upgrade_head(url)
    redis.Redis(unix_socket_path=embedded_redis.removeprefix("redis+socket://")).flushdb()
    from backend.config import Settings
    from backend.main import create_app

    # Settings read now, and the caches cleared again before the app starts: a thread of the previous test's app
    # that was still reading the settings while the environment changed could have cached the old ones (once in CI:
    # provision then found a database without tables).
    token = provision(url, Settings().secret_key.get_secret_value(), "alice", "a", admin=True)
    reset_caches()
    with TestClient(create_app(), base_url="http://127.0.0.1", headers=bearer(token)) as test_client:
        yield test_client
    reset_caches()
