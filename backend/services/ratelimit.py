"""Sliding one-minute windows of request counts, kept in this API process."""

import threading
import time
from collections import defaultdict, deque


class MinuteWindow:
    def __init__(self) -> None:
        self._hits: defaultdict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, key: str, limit: int) -> float | None:
        """Count a request; None if within `limit` a minute, else the seconds until the next is allowed."""
        now = time.monotonic()
        with self._lock:
            hits = self._hits[key]
            while hits and hits[0] <= now - 60:
                hits.popleft()
            if len(hits) >= limit:
                return 60 - (now - hits[0])
            hits.append(now)
            return None

    def clear(self, key: str) -> None:
        with self._lock:
            self._hits.pop(key, None)
