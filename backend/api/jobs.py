import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from backend import queue
from backend.api.auth import Member, Principal, Viewer
from backend.api.deps import RowId, SessionDep, SettingsDep, StoreDep, get_job_or_404, send_or_undo
from backend.config import Settings
from backend.formats import Moment, Tag
from backend.models import Dataset, Job, JobStatus, Team
from backend.schemas import BulkAction, BulkOutcome, JobOut, JobPage, JobUpdate
from backend.services import accounts
from backend.services import jobs as job_service
from backend.shapes import misfit
from backend.spec import JobSpec, SpecParseError, field_errors, parse_spec_text
from dynascope import entrypoints

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

JSON_TYPES = {"application/json"}
YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain"}


async def raw_spec_from_body(request: Request) -> dict:
    """The body parsed as JSON or YAML (by Content-Type) into a mapping; malformed text is a 422."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES | YAML_TYPES:
        raise HTTPException(415, detail=f"send the spec as application/json or application/yaml, not {ctype}")
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if ctype in JSON_TYPES else parse_spec_text(text)
        if not isinstance(data, dict):
            raise SpecParseError("the spec must be an object")
    except UnicodeDecodeError:
        raise RequestValidationError([{"loc": ["body"], "msg": "the body is not UTF-8 text", "type": "encoding"}]) from None
    except json.JSONDecodeError as exc:
        msg = f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise RequestValidationError([{"loc": ["body"], "msg": msg, "type": "json_invalid"}]) from None
    except SpecParseError as exc:
        raise RequestValidationError([{"loc": ["body"], "msg": str(exc), "type": "spec_invalid"}]) from None
    return data


async def spec_from_body(request: Request) -> JobSpec:
    """The spec, validated; any problem is a 422 naming the field."""
    data = await raw_spec_from_body(request)
    if "sweep" in data:
        msg = "a spec with `sweep` expands into several jobs: send it to POST /api/v1/sweeps"
        raise RequestValidationError([{"loc": ["body", "sweep"], "msg": msg, "type": "sweep_here"}])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ["body", *e["loc"]]} for e in field_errors(exc, data)]) from None


_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}},
            "application/yaml": {"schema": {"type": "string", "description": "the same spec as YAML"}},
        },
    }
}


def check_entrypoints(spec: JobSpec, settings: Settings) -> None:
    """A spec's entry points, against the operator's allow-list (422 naming the field and the setting); nothing is
    imported here."""
    allow = settings.entrypoint_prefixes
    for section in ("model", "data"):
        part = getattr(spec, section)
        if part.kind == "python" and (reason := entrypoints.refusal(part.entrypoint, allow)) is not None:
            raise RequestValidationError([{"loc": ["body", section, "entrypoint"], "msg": reason, "type": "not_allowed"}])


def check_spec(session: Session, spec: JobSpec, team_id: int | None, settings: Settings) -> Dataset | None:
    """What a spec names beyond its own fields: the entry points it may run, the uploaded dataset it reads."""
    check_entrypoints(spec, settings)
    return check_upload(session, spec, team_id)


def check_upload(session: Session, spec: JobSpec, team_id: int | None) -> Dataset | None:
    """The team's uploaded dataset a spec names, checked against its model and loss (422 naming the field)."""
    if spec.data.kind != "upload":
        return None
    uploaded = session.get(Dataset, spec.data.dataset)
    if uploaded is None or uploaded.team_id != team_id:
        msg = f"no uploaded dataset {spec.data.dataset} (POST /api/v1/datasets first)"
        raise RequestValidationError([{"loc": ["body", "data", "dataset"], "msg": msg, "type": "not_found"}])
    if (reason := misfit(spec, uploaded)) is not None:
        raise RequestValidationError([{"loc": ["body", "model", "kind"], "msg": reason, "type": "misfit"}])
    return uploaded


@router.post("", status_code=201, response_model=JobOut, openapi_extra=_SPEC_BODY)
def create_job(who: Member, spec: Annotated[JobSpec, Depends(spec_from_body)], session: SessionDep, settings: SettingsDep) -> JobOut:
    """Validate a spec, record the job, and queue its id."""
    check_spec(session, spec, who.team_id, settings)
    check_queue_quota(session, settings, who, 1)
    job = job_service.create_job(session, spec, settings.max_attempts, owner(who))
    session.commit()
    send_or_undo(session, lambda: queue_jobs([job]), undo=job)
    return JobOut.model_validate(job)


def owner(who: Principal) -> tuple[int, int]:
    assert who.team_id is not None  # a team role was required
    return who.team_id, who.user_id


def check_queue_quota(session: Session, settings: Settings, who: Principal, adding: int) -> None:
    """429 if `adding` more queued jobs would pass the team's quota."""
    assert who.team_id is not None
    team = session.get(Team, who.team_id)
    assert team is not None
    limit = accounts.quotas(team, settings).max_queued_jobs
    queued = accounts.count_jobs(session, who.team_id, JobStatus.queued)
    if queued + adding > limit:
        raise HTTPException(
            429, detail=f"team quota of {limit} queued jobs reached: {queued} queued now, {adding} more asked for (cancel some or wait)"
        )


def queue_jobs(jobs: list[Job]) -> None:
    for job in jobs:
        job.celery_task_id = queue.enqueue_job(job.id)


def job_filter(
    who: Viewer,
    status: Annotated[list[JobStatus] | None, Query(description="keep only these states")] = None,
    q: Annotated[str | None, Query(max_length=200, description="search in the job name")] = None,
    sweep_id: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="only the jobs of this sweep")] = None,
    tag: Annotated[list[Tag], Query(description="only jobs with every one of these tags")] = [],
    creator: Annotated[str | None, Query(max_length=100, description="username of who submitted it")] = None,
    model: Annotated[str | None, Query(max_length=50, description="model kind (mlp, cnn, resnet, transformer)")] = None,
    data: Annotated[str | None, Query(max_length=50, description="data kind (digits, gaussian_mixture, …)")] = None,
    source: Annotated[Literal["server", "tracked"] | None, Query(description="trained by a worker, or tracked in its own loop")] = None,
    created_after: Annotated[Moment | None, Query()] = None,
    created_before: Annotated[Moment | None, Query()] = None,
) -> job_service.JobFilter:
    """The job list's filters, in the caller's team (the list and the export take them alike)."""
    assert who.team_id is not None
    return job_service.JobFilter(
        team_id=who.team_id,
        creator=creator,
        status=[s.value for s in status] if status else None,
        q=q,
        sweep_id=sweep_id,
        tags=tag,
        model=model,
        data=data,
        source=source,
        created_after=_naive_utc(created_after),
        created_before=_naive_utc(created_before),
    )


JobFilterDep = Annotated[job_service.JobFilter, Depends(job_filter)]
JobIds = Annotated[
    str | None,
    Query(max_length=20_000, pattern=r"^([0-9]{1,10}(,[0-9]{1,10})*)?$", description="comma-separated job ids (with the filters: both)"),
]


def chosen_jobs(session: SessionDep, settings: SettingsDep, filters: JobFilterDep, ids: JobIds = None) -> Select[tuple[Job]]:
    """The jobs a request about many runs names (the export, groups, the sweep report): by ids, by sweep or by
    the job list's filters, in the caller's team; more than `max_export_jobs` answer 413 naming the limit."""
    query = job_service.filtered(filters)
    if ids:
        query = query.where(Job.id.in_([int(i) for i in ids.split(",")]))
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if count > settings.max_export_jobs:
        limit = settings.max_export_jobs
        raise HTTPException(
            413, detail=f"{count} jobs chosen; at most {limit} at once (max_export_jobs): choose fewer by ids, sweep or filters"
        )
    return query


ChosenJobs = Annotated[Select[tuple[Job]], Depends(chosen_jobs)]


@router.get("", response_model=JobPage)
def list_jobs(
    session: SessionDep,
    filters: JobFilterDep,
    sort: Annotated[str, Query(pattern=r"^-?(created|name|status)$", description="field, - for descending")] = "-created",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> JobPage:
    rows, total = job_service.list_jobs(session, filters, limit=limit, offset=offset, sort=sort)
    return JobPage(items=[JobOut.model_validate(j) for j in rows], total=total, limit=limit, offset=offset)


def _naive_utc(moment: datetime | None) -> datetime | None:
    """The database keeps naive UTC times."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


@router.patch("/{job_id}", response_model=JobOut)
def update_job(job_id: RowId, change: JobUpdate, session: SessionDep, who: Member) -> JobOut:
    """Tags and free-text notes; what is not given stays as it is."""
    job = get_job_or_404(session, job_id, who.team_id)
    if change.tags is not None:
        job_service.set_tags(session, job, change.tags)
    if change.notes is not None:
        job.notes = change.notes or None
    session.commit()
    session.refresh(job)
    return JobOut.model_validate(job)


@router.post("/bulk", response_model=BulkOutcome)
def bulk(request: BulkAction, session: SessionDep, store: StoreDep, who: Member) -> BulkOutcome:
    """Cancel or delete many jobs. A delete takes only finished jobs (cancel a running one first) and removes
    their series, results and artifact files."""
    outcome = BulkOutcome(done=[], refused={})
    revoke = []
    for job_id in dict.fromkeys(request.ids):
        job = session.get(Job, job_id)
        if job is None or job.team_id != who.team_id:
            outcome.refused[job_id] = "no such job"
        elif request.action == "cancel":
            if task := job_service.request_cancel(session, job):
                revoke.append(task)
            outcome.done.append(job_id)
        elif job.status in (JobStatus.queued.value, JobStatus.running.value):
            outcome.refused[job_id] = f"still {job.status}: cancel it first"
        else:
            job_service.delete_job(session, job, store)
            outcome.done.append(job_id)
    session.commit()
    for task in revoke:
        try:
            queue.revoke(task)
        except Exception:  # the rows already say cancelled; the worker checks them before running
            log.warning("could not revoke task %s", task, exc_info=True)
    return outcome


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: RowId, session: SessionDep, who: Viewer) -> JobOut:
    return JobOut.model_validate(get_job_or_404(session, job_id, who.team_id))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: RowId, session: SessionDep, who: Member) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next step. Cancelling twice is harmless."""
    job = get_job_or_404(session, job_id, who.team_id)
    revoke_id = job_service.request_cancel(session, job)
    session.commit()
    if revoke_id:
        try:
            queue.revoke(revoke_id)
        except Exception:  # the row already says cancelled; the worker checks it before running
            log.warning("could not revoke task %s", revoke_id, exc_info=True)
    session.refresh(job)
    return JobOut.model_validate(job)
