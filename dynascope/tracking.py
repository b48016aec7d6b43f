"""What a tracker and the server say to each other about a run trained elsewhere (the ingest API, /runs): the
tracker sends these, the server validates them with the same models. Every write is idempotent, so a batch sent
twice (a retry, a repeated `dynascope sync`) changes nothing: points by (series, step), results by their content."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dynascope.settings import Flag, Probes

SERIES_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_/.\-]{0,199}$"
MAX_POINTS = 10_000  # per batch
FRAMEWORKS = ("pytorch", "lightning", "transformers")
# The tensors a tracked run's probes keep (safetensors only): what a worker keeps for a server job's probes.
ArtifactKind = Literal["hessian-eigenvectors", "landscape-directions"]


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrackedFacts(Wire):
    """Where and what the run is: what the tracker can see of the process, the model and the optimizer."""

    host: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
    framework: Literal["pytorch", "lightning", "transformers"] = "pytorch"
    device: str = Field("cpu", max_length=100, pattern=r"^[^\x00-\x1f]*$")
    model: str = Field("", max_length=100, pattern=r"^[^\x00-\x1f]*$", description="the model's class name")
    parameters: int | None = Field(None, ge=0, le=10**13)
    optimizer: str = Field("", max_length=100, pattern=r"^[^\x00-\x1f]*$", description="the optimizer's class name")
    adaptive: Flag = Field(False, description="an Adam-like optimizer: the sharpness is read against its own threshold")
    total_steps: int | None = Field(None, ge=1, le=10**9, description="the steps the run plans (progress), if known")


class RunCreate(Wire):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
    config: dict[str, Any] = Field(default_factory=dict, description="the run's hyperparameters, as the user gives them")
    probes: Probes = Probes()
    facts: TrackedFacts


# The largest integer a float (and a browser's Number) holds exactly. Above it a JSON number written from a float
# may read back as a larger integer than the one meant (the randomized fuzz, seed 422389640, sent 2**62 as a float,
# which reads back as 4611686018427388000), and the dashboard could not tell neighbouring steps apart.
MAX_STEP = 2**53 - 1


class Point(Wire):
    name: str = Field(pattern=SERIES_NAME)
    step: int = Field(ge=0, le=MAX_STEP)
    value: float | None  # null: not finite (the series keeps it as a gap)


class Points(Wire):
    points: list[Point] = Field(max_length=MAX_POINTS)


class ResultIn(Wire):
    kind: str = Field(pattern=r"^[a-z][a-z0-9_]{0,49}$")
    step: int = Field(ge=0, le=MAX_STEP)
    data: dict[str, Any]


class Beat(Wire):
    step: int | None = Field(None, ge=0, le=MAX_STEP)
    stage: str | None = Field(None, max_length=200, pattern=r"^[^\x00-\x1f]*$")


class Finish(Wire):
    status: Literal["succeeded", "failed", "cancelled", "diverged"]
    error: str | None = Field(None, max_length=20_000)


class Resumed(Wire):
    """A tracked run opened again by its tracker (`dynascope.init(resume=ID)`)."""

    id: int
    status: str
    next_step: int = Field(description="the step after the last one any of its series has (0 if none): where the run goes on")


class Ack(Wire):
    """What a write did: how many items it added and how many it had already (a repeat)."""

    accepted: int
    skipped: int


class BeatAck(Wire):
    stop: bool = Field(description="someone cancelled the run: the tracker should stop it")
    status: str
