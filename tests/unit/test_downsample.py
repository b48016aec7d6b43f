import numpy as np
import pytest

from backend.services.downsample import downsample_minmax, json_safe


def test_short_series_are_returned_whole():
    steps, values = np.arange(10), np.random.default_rng(0).normal(size=10)
    s, v = downsample_minmax(steps, values, 100)
    assert np.array_equal(s, steps) and np.array_equal(v, values)


@pytest.mark.parametrize("max_points", [2, 3, 10, 100, 999, 1000])
def test_never_more_than_max_points(max_points):
    steps = np.arange(100_000)
    values = np.random.default_rng(1).normal(size=100_000)
    s, v = downsample_minmax(steps, values, max_points)
    assert len(s) == len(v) <= max_points
    assert np.all(np.diff(s) > 0), "points stay in step order"


def test_every_spike_survives():
    rng = np.random.default_rng(2)
    values = rng.normal(0, 0.01, size=100_000) + 1.0
    # One event per bucket at most (1000 points = 500 buckets of 200 steps): each must come through.
    spikes = np.arange(20) * 5000 + rng.integers(0, 2000, size=20)
    values[spikes] = 50.0 + np.arange(20)
    dips = np.arange(20) * 5000 + 2500 + rng.integers(0, 2000, size=20)
    values[dips] = -50.0
    s, v = downsample_minmax(np.arange(100_000), values, 1000)
    assert set(spikes) <= set(s.tolist())
    assert set(dips) <= set(s.tolist())
    assert v.max() == values.max() and v.min() == values.min()


def test_random_sampling_would_have_missed_it():
    # The control: a stride sample of the same budget loses the spike, so the test above can fail.
    values = np.ones(100_000)
    values[12_345] = 100.0
    stride = np.arange(0, 100_000, 100)
    assert values[stride].max() == 1.0
    _, v = downsample_minmax(np.arange(100_000), values, 1000)
    assert v.max() == 100.0


def test_non_finite_points_are_kept_and_become_null():
    values = np.linspace(1, 2, 10_000)
    values[5000] = np.nan
    values[-1] = np.inf
    s, v = downsample_minmax(np.arange(10_000), values, 100)
    assert 5000 in s.tolist() and 9999 in s.tolist()
    out = json_safe(v)
    assert out[s.tolist().index(5000)] is None and out[-1] is None
    assert all(x is None or np.isfinite(x) for x in out)
