"""Request and response bodies of the REST API (the job spec itself lives in backend.spec)."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, computed_field

from backend.models import Role, utcnow
from backend.formats import Tag, TeamName, Username

UTCTime = Annotated[datetime, PlainSerializer(lambda d: d.isoformat(timespec="milliseconds") + "Z", return_type=str)]


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    source: str = Field("server", description="server: trained by a worker from its spec; tracked: trained in the user's own loop")
    status: str
    progress: float
    stage: str
    step: int
    attempts: int
    max_attempts: int
    cancel_requested: bool
    error: str | None
    worker_host: str | None
    device: str | None
    created_at: UTCTime
    started_at: UTCTime | None
    finished_at: UTCTime | None
    heartbeat_at: UTCTime | None
    spec: dict[str, Any]
    sweep_id: int | None = None
    sweep_params: dict[str, Any] | None = None
    model_kind: str | None = None
    data_kind: str | None = None
    tags: list[str] = []
    notes: str | None = None
    creator: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.finished_at or utcnow()) - self.started_at).total_seconds()


class JobUpdate(BaseModel):
    """What a user may change on a job after submitting it."""

    model_config = ConfigDict(extra="forbid")

    tags: list[Tag] | None = Field(None, max_length=32)
    notes: str | None = Field(None, max_length=10_000)


class BulkAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["cancel", "delete"]
    ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(min_length=1, max_length=1000)


class BulkOutcome(BaseModel):
    done: list[int]
    refused: dict[int, str]  # job id → why (not found, or still running for a delete)


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class SweepOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: UTCTime
    grid: dict[str, list[Any]]
    jobs: list[JobOut]


class SeriesOut(BaseModel):
    name: str
    steps: list[int]
    values: list[float | None]
    total_points: int


class MetricsOut(BaseModel):
    job_id: int
    max_points: int
    series: list[SeriesOut]


class ResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    step: int
    data: dict[str, Any]
    created_at: UTCTime


class ArtifactOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    step: int
    size: int
    sha256: str
    created_at: UTCTime


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]]


class Health(BaseModel):
    status: str
    database: str
    version: str


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    source_format: str
    examples: int
    input_shape: list[int]
    classes: int | None
    size: int
    sha256: str
    created_at: UTCTime


class AnalysisOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    kind: str
    step: int
    params: dict
    status: str
    stage: str
    error: str | None
    cancel_requested: bool
    attempts: int
    created_at: UTCTime
    finished_at: UTCTime | None


# --- accounts ---

Password = Annotated[str, Field(min_length=8, max_length=256)]


class PasswordLogin(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(max_length=100)
    password: str = Field(max_length=256)


class CodeLogin(BaseModel):
    """A one-time code (`dynascope serve` prints one for the local user, `dynascope user login-code` for anyone)."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(max_length=100)


class TeamRole(BaseModel):
    id: int
    name: str
    role: Role


class Me(BaseModel):
    username: str
    is_admin: bool
    team: TeamRole | None
    teams: list[TeamRole]
    csrf_token: str | None = Field(None, description="send it as X-CSRF-Token with state-changing requests (cookie sign-in only)")


class TeamChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    team_id: int = Field(ge=1, le=2**31 - 1)


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current: str = Field(max_length=256)
    new: Password


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    rate_limit_per_minute: int | None = Field(None, ge=1, le=1_000_000, description="default: the service's")


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    team_id: int | None
    rate_limit_per_minute: int | None
    created_at: UTCTime
    last_used_at: UTCTime | None
    revoked_at: UTCTime | None


class TokenCreated(TokenOut):
    token: str = Field(description="shown this once; only a hash of it is kept")


class TeamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TeamName


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role


class MemberOut(BaseModel):
    username: str
    role: Role


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username
    password: Password
    admin: bool = False


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    is_admin: bool


class QuotaUpdate(BaseModel):
    """Null returns a quota to the service default."""

    model_config = ConfigDict(extra="forbid")

    max_running_jobs: int | None = Field(None, ge=1, le=100_000)
    max_queued_jobs: int | None = Field(None, ge=1, le=10_000_000)
    max_upload_bytes: int | None = Field(None, ge=1, le=1 << 40)


class QuotaOut(BaseModel):
    max_running_jobs: int
    max_queued_jobs: int
    max_upload_bytes: int
    running: int
    queued: int
