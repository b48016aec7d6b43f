"""Series downsampling that keeps every spike: per bucket, the minimum and the maximum (in step order).

Random or stride sampling drops the one step where the loss exploded; min/max buckets cannot.
"""

import math
from typing import Any

import numpy as np


def downsample_minmax(steps: np.ndarray, values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Return at most `max_points` points of (steps, values) keeping each bucket's extremes.

    Non-finite values (NaN, ±Inf) are kept too: a bucket holding one reports its first non-finite point
    in place of its minimum, so a divergence always shows as a gap at the right step.
    """
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    n = len(values)
    if n <= max_points:
        return steps, values
    n_buckets = max_points // 2
    edges = np.linspace(0, n, n_buckets + 1).astype(np.int64)
    keep: list[int] = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        chunk = values[a:b]
        finite = np.isfinite(chunk)
        if finite.all():
            picks = {int(np.argmin(chunk)), int(np.argmax(chunk))}
        elif not finite.any():
            picks = {0}
        else:
            first_bad = int(np.argmin(finite))
            masked = np.where(finite, chunk, -np.inf)
            picks = {first_bad, int(np.argmax(masked))}
        keep.extend(sorted(a + p for p in picks))
    idx = np.asarray(keep, dtype=np.int64)
    return steps[idx], values[idx]


def json_safe(value: Any) -> Any:
    """Data for JSON at any depth: NaN and ±Inf become null (drawn as gaps), arrays become lists."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
