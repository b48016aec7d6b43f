"""Rate limits counted by the `limits` library: one count across API processes that share a Redis, and a bounded
store under a spray of usernames at sign-in (in memory and in Redis)."""

import pytest
from fastapi import HTTPException

from backend.api.account import check_sign_in_rate
from backend.config import Settings
from backend.services.ratelimit import limiter, storage_uri
from tests.conftest import bearer


def test_a_token_limit_holds_across_two_api_processes(make_stack, pg_url: str, redis_url: str):
    one, two = make_stack(pg_url, redis_url), make_stack(pg_url, redis_url)
    one.migrate()
    one.start_api()
    two.start_api()
    limited = one.client.post("/tokens", json={"name": "two-apis", "rate_limit_per_minute": 10}).json()["token"]
    codes = [(one, two)[i % 2].client.get("/jobs", headers=bearer(limited)).status_code for i in range(14)]
    assert codes == [200] * 10 + [429] * 4  # one process alone counted 7 of them


def _spray(settings: Settings, names: int) -> int:
    """Sign-in rate checks for `names` distinct usernames from one address; how many passed."""
    passed = 0
    for i in range(names):
        try:
            check_sign_in_rate(settings, "203.0.113.7", f"sprayed-{i}")
            passed += 1
        except HTTPException as refused:
            assert refused.status_code == 429
    return passed


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_username_spray_keeps_the_sign_in_counters_bounded(store: str, redis_url: str):
    settings = Settings(broker_url=redis_url if store == "redis" else "", login_attempts_per_minute_per_address=50)
    limiter.cache_clear()
    names = 100_000 if store == "memory" else 10_000  # (Redis: a round trip each)
    passed = _spray(settings, names)
    usernames = limiter(storage_uri(settings), "sign-in")
    assert passed == 50
    assert usernames.size() <= 2 * 50 + 2, "a counter (this minute's, and last minute's) per admitted username, and the address's"
    limiter.cache_clear()


def test_an_unreachable_store_lets_requests_through():
    """Limits are not worth an outage: with their Redis away, requests pass (and the log says why)."""
    from tests.conftest import free_port

    away = limiter(f"redis://127.0.0.1:{free_port()}/0", "token")
    assert [away.hit("a-token", 1) for _ in range(3)] == [None, None, None]
