"""The ingest API: a tracker in the user's own training loop creates a run (or resumes one) and sends its
points, results, tensors, heartbeats and end (dynascope.tracking holds the shapes; every write is idempotent)."""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from backend.api.auth import Member
from backend.api.deps import OCTET_STREAM_BODY, RowId, SessionDep, SettingsDep, StoreDep, get_job_or_404, read_limited
from backend.models import Job, Team
from backend.schemas import JobOut
from backend.services import accounts, tracked
from dynascope.tracking import MAX_STEP, Ack, ArtifactKind, Beat, BeatAck, Finish, Points, ResultIn, Resumed, RunCreate

router = APIRouter(prefix="/runs", tags=["tracked runs"])


def _run(job_id: RowId, session: SessionDep, who: Member) -> Job:
    """The team's tracked run, locked for this write (another team's id answers 404 before the body is read)."""
    try:
        return tracked.writable(session, get_job_or_404(session, job_id, who.team_id))
    except tracked.RefusedWrite as exc:
        raise HTTPException(409, detail=str(exc)) from None


TrackedRun = Annotated[Job, Depends(_run)]


@router.post("", status_code=201, response_model=JobOut)
def create_run(body: RunCreate, session: SessionDep, who: Member) -> JobOut:
    """A run trained elsewhere: a job that is running from now on, reported by its tracker."""
    job = tracked.create_run(session, body, (who.team_id, who.user_id))
    session.commit()
    return JobOut.model_validate(job)


@router.post("/{job_id}/points", response_model=Ack)
def add_points(run: TrackedRun, body: Points, session: SessionDep) -> Ack:
    """Series points (at most 10,000 per batch); a point at or before its series' last step is a repeat."""
    ack = tracked.record_points(session, run, body.points)
    session.commit()
    return ack


@router.post("/{job_id}/results", response_model=Ack)
def add_result(run: TrackedRun, body: ResultIn, session: SessionDep) -> Ack:
    """A probe's result document (the schema of its kind: see GET /jobs/{id}/results/{kind})."""
    try:
        ack = tracked.record_result(session, run, body.kind, body.step, body.data)
    except tracked.RefusedWrite as exc:
        raise HTTPException(422, detail=[{"loc": ["body", "kind"], "msg": str(exc), "type": "value_error"}]) from None
    except ValidationError as exc:  # the document does not fit its kind's model
        raise RequestValidationError([{**e, "loc": ["body", "data", *e["loc"]]} for e in exc.errors(include_url=False)]) from None
    session.commit()
    return ack


@router.post("/{job_id}/artifacts", response_model=Ack, openapi_extra=OCTET_STREAM_BODY)
async def add_artifact(
    run: TrackedRun,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    kind: Annotated[ArtifactKind, Query(description="what the tensors are")],
    step: Annotated[int, Query(ge=0, le=MAX_STEP)],
) -> Ack:
    """A probe's tensors (Hessian eigenvectors, landscape directions) as the raw body, in safetensors format only
    (never unpickled), up to the team's upload limit; downloaded from GET /jobs/{id}/artifacts like a worker's."""
    team = session.get(Team, run.team_id)
    assert team is not None
    data = await read_limited(request, accounts.quotas(team, settings).max_upload_bytes)
    try:
        ack = await run_in_threadpool(tracked.record_artifact, session, store, run, kind, step, data)
    except tracked.RefusedWrite as exc:
        raise HTTPException(422, detail=[{"loc": ["body"], "msg": str(exc), "type": "value_error"}]) from None
    session.commit()
    return ack


@router.post("/{job_id}/resume", response_model=Resumed)
def resume_run(run: TrackedRun, session: SessionDep) -> Resumed:
    """Open the run again (its tracker goes on with it: `dynascope.init(resume=ID)`), from any end or while it runs;
    the answer says the step it goes on from."""
    resumed = tracked.resume(session, run)
    session.commit()
    return resumed


@router.post("/{job_id}/heartbeat", response_model=BeatAck)
def heartbeat(run: TrackedRun, body: Beat, session: SessionDep) -> BeatAck:
    """The tracker is alive (it beats every few seconds); the answer says whether someone cancelled the run."""
    tracked.beat(session, run, body.step, body.stage)
    session.commit()
    session.refresh(run)
    return BeatAck(stop=run.cancel_requested, status=run.status)


@router.post("/{job_id}/finish", response_model=JobOut)
def finish_run(run: TrackedRun, body: Finish, session: SessionDep) -> JobOut:
    """The run's end; a repeat (or an end after the run ended) changes nothing."""
    tracked.finish(session, run, body)
    session.commit()
    session.refresh(run)
    return JobOut.model_validate(run)
