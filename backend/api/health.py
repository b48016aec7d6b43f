from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter
from sqlalchemy import text

from backend.api.auth import PUBLIC
from backend.api.deps import SessionDep
from backend.schemas import Health

router = APIRouter(tags=["health"])


def _version() -> str:
    try:
        return version("dynascope")
    except PackageNotFoundError:
        return "unknown"


@router.get("/health", response_model=Health, dependencies=[PUBLIC])
def health(session: SessionDep) -> Health:
    session.execute(text("SELECT 1"))
    return Health(status="ok", database="ok", version=_version())
