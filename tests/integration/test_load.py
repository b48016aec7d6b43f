"""The load test's short form (the full one, 50 viewers + 20 clients for 2 minutes, is `make bench` → load): live
viewers of a running job and API clients reading in a loop, against `dynascope serve`. No answer is ≥ 500, and
every viewer receives every step the job recorded after its hello."""

import asyncio

import pytest

from bench.load import READS, SETTINGS, load_test
from gallery.server import embedded

pytestmark = pytest.mark.integration


def test_viewers_and_clients_under_load_get_no_error_and_every_point(tmp_path, capsys):
    with embedded(tmp_path, workers=1, settings=SETTINGS) as (url, token):
        load = asyncio.run(load_test(url, token, viewers=12, clients=6, seconds=20))
    assert load.errors == 0, load.statuses
    assert all(len(latencies) > 20 for latencies in load.latencies.values()), "the clients were answered throughout"
    assert len(load.viewers) == 12 and load.complete == 12, f"{12 - load.complete} viewers missed points"
    assert load.live and len(load.recorded) > 1000, "the job ran throughout the load"
    with capsys.disabled():
        print("\n" + "; ".join(f"{read}: p95 {load.percentile(read, 95) * 1e3:.0f} ms" for read in READS))
