import hashlib
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from backend.api.auth import Member, Viewer
from backend.api.deps import OCTET_STREAM_BODY, SessionDep, SettingsDep, StoreDep, read_limited
from backend.models import Dataset, Team
from backend.schemas import DatasetOut
from backend.services import accounts
from backend.services.uploads import UploadError, parse_csv, parse_npz

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    openapi_extra=OCTET_STREAM_BODY,
)
async def upload_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    who: Member,
    name: Annotated[str, Query(min_length=1, max_length=200)],
    format: Annotated[Literal["npz", "csv"], Query(description="npz: arrays X, y; csv: header + numbers")],
    target: Annotated[str | None, Query(max_length=200, description="csv: the target column (default: last)")] = None,
) -> DatasetOut:
    """Upload a dataset as the raw body. It is read as plain arrays only (no pickle) and checked."""
    team = session.get(Team, who.team_id)
    assert team is not None
    limit = accounts.quotas(team, settings).max_upload_bytes
    data = await read_limited(request, limit)
    try:
        if format == "npz":
            parsed = await run_in_threadpool(parse_npz, data, settings.max_dataset_bytes)
        else:
            parsed = await run_in_threadpool(parse_csv, data, target)
    except UploadError as exc:
        raise HTTPException(422, detail=[{"loc": ["body"], "msg": str(exc), "type": "upload_invalid"}]) from None
    blob = parsed.to_npz()
    stored = store.put(blob)
    row = Dataset(
        id=stored.id,
        team_id=who.team_id,
        name=name,
        source_format=format,
        examples=len(parsed.y),
        input_shape=list(parsed.x.shape[1:]),
        classes=parsed.classes,
        size=stored.size,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    session.add(row)
    session.commit()
    return DatasetOut.model_validate(row)


@router.get("", response_model=list[DatasetOut])
def list_datasets(session: SessionDep, who: Viewer) -> list[DatasetOut]:
    rows = session.scalars(select(Dataset).where(Dataset.team_id == who.team_id).order_by(Dataset.created_at.desc()))
    return [DatasetOut.model_validate(d) for d in rows]


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")], session: SessionDep, who: Viewer) -> DatasetOut:
    row = session.get(Dataset, dataset_id)
    if row is None or row.team_id != who.team_id:
        raise HTTPException(404, detail=f"dataset {dataset_id} not found")
    return DatasetOut.model_validate(row)
