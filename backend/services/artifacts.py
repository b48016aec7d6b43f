"""The artifact store: files kept under server-generated ids, never under a client-provided name, in a directory or
an S3-compatible bucket."""

import hashlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from backend.config import Settings

_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class StoredFile:
    id: str
    size: int
    sha256: str


CHUNK = 1 << 20


class ArtifactStore(Protocol):
    def put(self, data: bytes) -> StoredFile: ...
    def path(self, artifact_id: str) -> Path:
        """A local file holding the artifact (for the worker's readers); it may be missing."""
        ...

    def exists(self, artifact_id: str) -> bool: ...
    def chunks(self, artifact_id: str) -> Iterator[bytes]:
        """The artifact's bytes, streamed (a download never holds the whole file)."""
        ...

    def delete(self, artifact_id: str) -> None: ...


def _checked(artifact_id: str) -> str:
    if not _ID.match(artifact_id):
        raise ValueError("not an artifact id")
    return artifact_id


def _stored(data: bytes) -> StoredFile:
    return StoredFile(uuid.uuid4().hex, len(data), hashlib.sha256(data).hexdigest())


class LocalArtifactStore:
    """A directory (local disk or a shared volume): <root>/<id[:2]>/<id>."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, data: bytes) -> StoredFile:
        stored = _stored(data)
        target = self.path(stored.id)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(target)
        return stored

    def path(self, artifact_id: str) -> Path:
        return self.root / artifact_id[:2] / _checked(artifact_id)

    def exists(self, artifact_id: str) -> bool:
        return self.path(artifact_id).is_file()

    def chunks(self, artifact_id: str) -> Iterator[bytes]:
        with self.path(artifact_id).open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def delete(self, artifact_id: str) -> None:
        self.path(artifact_id).unlink(missing_ok=True)


class S3ArtifactStore:
    """An S3-compatible bucket, `s3://bucket/prefix`: objects <prefix>/<id[:2]>/<id>. The endpoint and credentials
    come from the usual AWS variables (AWS_ENDPOINT_URL for a store other than AWS, AWS_ACCESS_KEY_ID, …). The API
    streams an artifact from the bucket; a worker reads it through a local copy kept under `cache`."""

    def __init__(self, url: str, cache: Path) -> None:
        import boto3

        parsed = urlparse(url)
        self.bucket, self.prefix, self.cache = parsed.netloc, parsed.path.strip("/"), Path(cache)
        self.client = boto3.client("s3")

    def _key(self, artifact_id: str) -> str:
        return "/".join(p for p in (self.prefix, artifact_id[:2], _checked(artifact_id)) if p)

    def put(self, data: bytes) -> StoredFile:
        stored = _stored(data)
        self.client.put_object(Bucket=self.bucket, Key=self._key(stored.id), Body=data)
        return stored

    def path(self, artifact_id: str) -> Path:
        local = self.cache / artifact_id[:2] / _checked(artifact_id)
        if not local.is_file() and self.exists(artifact_id):
            local.parent.mkdir(parents=True, exist_ok=True)
            part = local.with_suffix(f".{uuid.uuid4().hex}.part")  # several workers may fetch it at once
            self.client.download_file(self.bucket, self._key(artifact_id), str(part))
            part.replace(local)
        return local

    def exists(self, artifact_id: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(artifact_id))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def chunks(self, artifact_id: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(artifact_id))["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def delete(self, artifact_id: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(artifact_id))
        (self.cache / artifact_id[:2] / artifact_id).unlink(missing_ok=True)


def get_store(settings: Settings) -> ArtifactStore:
    """The deployment's artifact store (artifacts and uploads): the bucket of DYNASCOPE_ARTIFACT_URL, else the
    directory DYNASCOPE_ARTIFACT_DIR."""
    if settings.artifact_url:
        return _bucket(settings.artifact_url, settings.artifact_dir / "s3-cache")
    return LocalArtifactStore(settings.artifact_dir)


@cache
def _bucket(url: str, cache: Path) -> S3ArtifactStore:
    """One store (one S3 client, which is thread-safe and slow to make) per bucket and process."""
    return S3ArtifactStore(url, cache)
