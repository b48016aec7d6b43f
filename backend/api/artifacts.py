from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from backend.api.auth import Viewer
from backend.api.deps import RowId, SessionDep, StoreDep, get_job_or_404
from backend.models import Artifact
from backend.schemas import ArtifactOut

router = APIRouter(prefix="/jobs", tags=["artifacts"])


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut])
def list_artifacts(job_id: RowId, session: SessionDep, who: Viewer) -> list[ArtifactOut]:
    get_job_or_404(session, job_id, who.team_id)
    rows = session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.step))
    return [ArtifactOut.model_validate(a) for a in rows]


@router.get(
    "/{job_id}/artifacts/{artifact_id}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file (safetensors)"}},
)
def download_artifact(
    job_id: RowId,
    artifact_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")],
    session: SessionDep,
    who: Viewer,
    store: StoreDep,
) -> StreamingResponse:
    get_job_or_404(session, job_id, who.team_id)
    artifact = session.get(Artifact, artifact_id)
    if artifact is None or artifact.job_id != job_id:
        raise HTTPException(404, detail=f"artifact {artifact_id} not found in job {job_id}")
    if not store.exists(artifact.id):
        raise HTTPException(404, detail=f"artifact {artifact_id} is missing from the store")
    name = f"job{job_id}-{artifact.kind}-step{artifact.step}.safetensors"  # kind and step are ours
    headers = {"content-disposition": f'attachment; filename="{name}"', "content-length": str(artifact.size)}
    return StreamingResponse(store.chunks(artifact.id), media_type="application/octet-stream", headers=headers)
