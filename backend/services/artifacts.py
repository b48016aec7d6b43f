"""The artifact store: files kept under server-generated ids, never under a client-provided name."""

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from backend.config import Settings

_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class StoredFile:
    id: str
    size: int
    sha256: str


class ArtifactStore(Protocol):
    def put(self, data: bytes) -> StoredFile: ...
    def path(self, artifact_id: str) -> Path: ...
    def delete(self, artifact_id: str) -> None: ...


class LocalArtifactStore:
    """A directory (local disk or a shared volume): <root>/<id[:2]>/<id>."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, data: bytes) -> StoredFile:
        artifact_id = uuid.uuid4().hex
        target = self.path(artifact_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(target)
        return StoredFile(artifact_id, len(data), hashlib.sha256(data).hexdigest())

    def path(self, artifact_id: str) -> Path:
        if not _ID.match(artifact_id):
            raise ValueError("not an artifact id")
        return self.root / artifact_id[:2] / artifact_id

    def delete(self, artifact_id: str) -> None:
        self.path(artifact_id).unlink(missing_ok=True)


def get_store(settings: Settings) -> ArtifactStore:
    """The deployment's artifact store (artifacts and uploads)."""
    return LocalArtifactStore(settings.artifact_dir)
