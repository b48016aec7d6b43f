"""A tracked run's directory on disk: what it is (`run.json`: the request that creates it on the server, and the
server's id once it has one), what was not sent yet (`pending/*.jsonl`, in order; a probe's tensors wait in
`artifacts/<sha256>.safetensors`, named by a pending record), and its end (`end.json`).

The tracker writes here whatever the server did not take (it was down or slow), and everything in offline
mode; `dynascope sync DIR` sends it later. Every record is idempotent on the server, so a record sent twice
(a sync interrupted after sending but before deleting its segment) changes nothing."""

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from dynascope.tracking import Finish, RunCreate

SEGMENT_RECORDS = 1000  # records per pending file


class Spill:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "pending").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._segment: Path | None = None
        self._records = 0

    # what the run is

    def save_run(self, request: RunCreate, server_id: int | None, url: str) -> None:
        self._write_json("run.json", {"create": request.model_dump(mode="json"), "server_id": server_id, "url": url})

    def run(self) -> dict[str, Any]:
        return json.loads((self.root / "run.json").read_text())

    def set_server_id(self, server_id: int, url: str) -> None:
        self._write_json("run.json", self.run() | {"server_id": server_id, "url": url})

    def save_end(self, end: Finish) -> None:
        self._write_json("end.json", end.model_dump(mode="json"))

    def end(self) -> Finish | None:
        path = self.root / "end.json"
        return Finish.model_validate_json(path.read_text()) if path.exists() else None

    def mark_finished(self) -> None:
        (self.root / "end.json").rename(self.root / "end.sent.json")

    def _write_json(self, name: str, value: Any) -> None:
        tmp = self.root / f".{name}.tmp"
        tmp.write_text(json.dumps(value))
        os.replace(tmp, self.root / name)  # a crash leaves the old file or the new one, never half of one

    # a probe's tensors, until the server has them

    def keep_artifact(self, kind: str, step: int, data: bytes) -> dict[str, Any]:
        """The bytes on disk under their hash; the record that sends them."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "artifacts" / f"{digest}.safetensors"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return {"artifact": {"kind": kind, "step": step, "sha256": digest}}

    def artifact(self, digest: str) -> bytes | None:
        """The kept bytes (None: already sent and forgotten)."""
        path = self._artifact_path(digest)
        return path.read_bytes() if path.exists() else None

    def forget_artifact(self, digest: str) -> None:
        self._artifact_path(digest).unlink(missing_ok=True)

    def _artifact_path(self, digest: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"not a sha256: {digest!r}")
        return self.root / "artifacts" / f"{digest}.safetensors"

    # what was not sent

    def append(self, record: dict[str, Any]) -> None:
        """One record (points, or a result) after the others; lines are flushed as they are written."""
        with self._lock:
            if self._segment is None or self._records >= SEGMENT_RECORDS:
                self._segment = self.root / "pending" / f"{self._next_number():08d}.jsonl"
                self._records = 0
            with self._segment.open("a") as f:
                f.write(json.dumps(record) + "\n")
            self._records += 1

    def _next_number(self) -> int:
        numbers = [int(p.stem) for p in (self.root / "pending").glob("*.jsonl")]
        return max(numbers, default=0) + 1

    def segments(self) -> list[Path]:
        """The pending files in the order written; a file still being written is closed off first."""
        with self._lock:
            self._segment = None
            return sorted((self.root / "pending").glob("*.jsonl"))

    @staticmethod
    def records(segment: Path) -> list[dict[str, Any]]:
        # A line cut short by a crash is the one record that cannot be read: everything before it is kept.
        out = []
        for line in segment.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def pending(self) -> bool:
        return any((self.root / "pending").glob("*.jsonl"))
