from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.api.auth import Member, Viewer
from backend.api.deps import RowId, SessionDep, SettingsDep, send_or_undo
from backend.api.jobs import check_queue_quota, check_spec, owner, queue_jobs, raw_spec_from_body
from backend.figures.sweep import sensitivity_figures
from backend.models import Job, Sweep
from backend.schemas import JobOut, SweepOut
from backend.services import jobs as job_service
from backend.services.phase import phase_diagram
from backend.services.sensitivity import NoLearningRate, SensitivityOut, default_by, learning_rate_field, sensitivity
from backend.sweeps import SweepError, expand

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

_SWEEP_SCHEMA = {
    "type": "object",
    "description": "a JobSpec plus `sweep`: dotted spec paths mapped to the values each takes",
    "required": ["sweep"],
    "properties": {"sweep": {"type": "object", "additionalProperties": {"type": "array", "minItems": 1}}},
}
_SWEEP_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _SWEEP_SCHEMA}, "application/yaml": {"schema": {"type": "string"}}},
    }
}


def _out(sweep: Sweep, jobs: list[Job]) -> SweepOut:
    return SweepOut(
        id=sweep.id,
        name=sweep.name,
        created_at=sweep.created_at,
        grid=sweep.spec["sweep"],
        jobs=[JobOut.model_validate(j) for j in jobs],
    )


@router.post("", status_code=201, response_model=SweepOut, openapi_extra=_SWEEP_BODY)
def create_sweep(who: Member, raw: Annotated[dict, Depends(raw_spec_from_body)], session: SessionDep, settings: SettingsDep) -> SweepOut:
    """A spec with `sweep: {dotted.path: [values]}`: one ordinary job per point of the grid, grouped."""
    try:
        children = expand(raw, settings.max_sweep_jobs)
    except SweepError as exc:
        raise RequestValidationError([{**e, "loc": ["body", *e["loc"]]} for e in exc.errors]) from None
    for _, spec in children:
        check_spec(session, spec, who.team_id, settings)
    check_queue_quota(session, settings, who, len(children))
    sweep = Sweep(team_id=who.team_id, name=str(raw.get("name", "sweep"))[:200], spec=raw)
    session.add(sweep)
    session.flush()
    jobs = [job_service.create_job(session, spec, settings.max_attempts, owner(who), sweep, params) for params, spec in children]
    session.commit()
    send_or_undo(session, lambda: queue_jobs(jobs), undo=sweep)
    return _out(sweep, jobs)


def _sweep_or_404(session: Session, sweep_id: int, team_id: int | None) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or sweep.team_id != team_id:
        raise HTTPException(404, detail=f"sweep {sweep_id} not found")
    return sweep


@router.get("/{sweep_id}", response_model=SweepOut)
def get_sweep(sweep_id: RowId, session: SessionDep, who: Viewer) -> SweepOut:
    sweep = _sweep_or_404(session, sweep_id, who.team_id)
    jobs = list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)))
    return _out(sweep, jobs)


@router.get("/{sweep_id}/phase")
def get_phase_diagram(
    sweep_id: RowId,
    session: SessionDep,
    who: Viewer,
    metric: Annotated[
        str,
        Query(
            pattern=r"^((final|max|min):[A-Za-z0-9_/.\-]{1,200}|diverged)$",
            description="final:val/loss, max:hessian/sharpness, diverged, …",
        ),
    ] = "final:val/loss",
    x: Annotated[str | None, Query(max_length=200, description="the swept field across (default: the first)")] = None,
    y: Annotated[str | None, Query(max_length=200, description="the swept field down (default: the second, if any)")] = None,
) -> dict[str, Any]:
    """A number per job on the grid of two swept fields (the mean where other swept fields vary in a cell)."""
    sweep = _sweep_or_404(session, sweep_id, who.team_id)
    fields = list(sweep.spec["sweep"])
    x = x or fields[0]
    y = y if y is not None else (fields[1] if len(fields) > 1 and fields[1] != x else None)
    for name, value in (("x", x), ("y", y)):
        if value is not None and value not in fields:
            raise RequestValidationError(
                [{"loc": ["query", name], "msg": f"not a swept field; the sweep has {fields}", "type": "value_error"}]
            )
    jobs = list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)))
    return phase_diagram(session, jobs, x, y, metric)


def _query_error(name: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ["query", name], "msg": message, "type": "value_error"}])


@router.get("/{sweep_id}/sensitivity", response_model=SensitivityOut)
def get_lr_sensitivity(
    sweep_id: RowId,
    session: SessionDep,
    who: Viewer,
    lr: Annotated[
        str | None, Query(max_length=200, description="the swept learning rate (default: the first swept field named lr)")
    ] = None,
    by: Annotated[
        str | None,
        Query(max_length=200, description="the swept field of the curves (default: the first other than the lr and seeds; '' for none)"),
    ] = None,
    series: Annotated[
        str, Query(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_/.\-]{0,199}$", description="the loss read: its final value, and ℓ₀ at step 0")
    ] = "val/loss",
) -> SensitivityOut:
    """Final loss against learning rate, a curve per value of `by` (other swept fields, seeds among them, averaged),
    each with its LR sensitivity (Wortsman et al. 2023), and the largest attention logit at the end (the instability
    probe's) beside it. A 422 says why where the sweep does not vary a learning rate."""
    sweep = _sweep_or_404(session, sweep_id, who.team_id)
    fields = list(sweep.spec["sweep"])
    try:
        lr = lr or learning_rate_field(fields)
    except NoLearningRate as exc:
        raise _query_error("lr", str(exc)) from None
    for name, value in (("lr", lr), ("by", by)):
        if value and value not in fields:
            raise _query_error(name, f"not a swept field; the sweep has {fields}")
    if by == lr:
        raise _query_error("by", "the curves are drawn by a field other than the learning rate")
    by = default_by(fields, lr) if by is None else (by or None)
    jobs = list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)))
    out = sensitivity(session, jobs, lr, by, series)
    return out.model_copy(update={"figures": sensitivity_figures(out)})
