"""How long the workers' recorders take to flush (a job's buffered points and progress, in one transaction): a
histogram that every worker adds to on the broker's Redis and the operator metrics read. Best effort: a flush
the broker did not hear of is missing from the histogram, never delayed by it."""

import redis
from prometheus_client.core import HistogramMetricFamily

from backend.services import notices

KEY = "dynascope:recorder-flush-seconds"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def observe(seconds: float) -> None:
    if (broker := notices.client()) is None:
        return
    pipe = broker.pipeline(transaction=False)
    for bound in BUCKETS:
        if seconds <= bound:
            pipe.hincrby(KEY, str(bound), 1)
    pipe.hincrby(KEY, "count", 1)
    pipe.hincrbyfloat(KEY, "sum", seconds)
    try:
        pipe.execute()
    except redis.RedisError:
        pass


def family() -> HistogramMetricFamily | None:
    """The histogram so far, or None when the broker cannot be asked."""
    if (broker := notices.client()) is None:
        return None
    try:
        counts = {k.decode(): float(v) for k, v in broker.hgetall(KEY).items()}
    except redis.RedisError:
        return None
    buckets = [(str(bound), counts.get(str(bound), 0.0)) for bound in BUCKETS] + [("+Inf", counts.get("count", 0.0))]
    histogram = HistogramMetricFamily("dynascope_recorder_flush_seconds", "Time a worker's recorder took to write one flush")
    histogram.add_metric([], buckets, sum_value=counts.get("sum", 0.0))
    return histogram
