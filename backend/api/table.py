from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError

from backend.api.deps import SessionDep
from backend.api.jobs import JobFilterDep
from backend.models import Sweep
from backend.services import runs_table
from backend.services.jobs import filtered

router = APIRouter(prefix="/jobs-table", tags=["jobs"])


def _listed(text: str | None) -> list[str] | None:
    return [t for t in text.split(",") if t] if text is not None else None


@router.get("", response_model=runs_table.RunsTable)
def get_runs_table(
    session: SessionDep,
    filters: JobFilterDep,
    fields: Annotated[
        str | None,
        Query(
            max_length=2000,
            pattern=r"^[A-Za-z0-9_.,]*$",
            description="comma-separated spec fields (default: a sweep's swept fields, else the usual ones)",
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        Query(
            max_length=2000,
            pattern=r"^[A-Za-z0-9_/.,:\-]*$",
            description="comma-separated final:/min:/max:<series> (default: final val/loss and train/loss)",
        ),
    ] = None,
    where: Annotated[
        list[str], Query(max_length=300, description="conditions <column><op><value>, op one of >= <= > < = != (all must hold)")
    ] = [],
    sort: Annotated[
        str, Query(max_length=300, pattern=r"^-?[A-Za-z0-9_/.:\-]+$", description="a column, or created/name/status/id; - for descending")
    ] = "-created",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> runs_table.RunsTable:
    """A team's runs (or a sweep's: `sweep_id`; or the job list's filters) with a column per spec field and per
    summary of a series (its final, smallest or largest finite value), sorted, filtered by ranges and values and
    paged in the database."""
    chosen = _listed(fields)
    if chosen is None:
        sweep = session.get(Sweep, filters.sweep_id) if filters.sweep_id is not None else None
        chosen = list(sweep.spec["sweep"]) if sweep is not None and sweep.team_id == filters.team_id else runs_table.DEFAULT_FIELDS
    try:
        return runs_table.table(
            session, filtered(filters), chosen, _listed(metrics) or runs_table.DEFAULT_METRICS, where, sort, limit, offset
        )
    except runs_table.TableError as exc:
        raise RequestValidationError([{"loc": ["query", exc.parameter], "msg": str(exc), "type": "value_error"}]) from None
