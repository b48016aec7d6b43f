"""Requests per key and minute, counted by the `limits` library (a sliding window of two weighted minute counters):
in Redis when the API has a broker, so that every API process shares one count, else in this process's memory.
Either way a counter expires with its window, so keys that stop coming take no memory."""

import logging
import time
from functools import cache

from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from backend.config import Settings

log = logging.getLogger(__name__)
PREFIX = "dynascope-limits"


def storage_uri(settings: Settings) -> str:
    """The broker's Redis (a TCP URL, or the embedded one's unix socket), else this process's memory."""
    url = settings.broker_redis_url
    if url is None:
        return "memory://"
    return "redis+" + url if url.startswith("unix://") else url


class Limiter:
    def __init__(self, uri: str, namespace: str) -> None:
        # A Redis that does not answer within a second is treated as away (see hit), not waited for.
        options = {"key_prefix": PREFIX, "socket_timeout": 1.0, "socket_connect_timeout": 1.0} if not uri.startswith("memory") else {}
        self.store: Storage = storage_from_string(uri, wrap_exceptions=True, **options)
        self.namespace = namespace
        self._limiter = SlidingWindowCounterRateLimiter(self.store)

    def hit(self, key: str, limit: int) -> float | None:
        """Count a request; None if within `limit` a minute, else the seconds until the next is allowed. A store
        that cannot be reached (Redis away) lets the request through: limits are not worth an outage."""
        item = RateLimitItemPerMinute(limit, namespace=self.namespace)
        try:
            if self._limiter.hit(item, key):
                return None
            return max(0.0, self._limiter.get_window_stats(item, key).reset_time - time.time())
        except StorageError as exc:
            log.warning("rate limits not counted: their store is unreachable (%s)", exc)
            return None

    def size(self) -> int:
        """The counters the store holds now (all namespaces)."""
        if isinstance(self.store, MemoryStorage):
            return len(self.store.storage)
        assert isinstance(self.store, RedisStorage)
        return sum(1 for _ in self.store.storage.scan_iter(f"{PREFIX}:*"))


@cache
def limiter(uri: str, namespace: str) -> Limiter:
    """One limiter per store and kind of key, for the life of the process."""
    return Limiter(uri, namespace)
