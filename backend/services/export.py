"""Many jobs' series as one long table (job id, job name, the spec fields that differ between them, series, step,
value), written as Parquet or CSV by pyarrow and streamed a batch at a time: the export is never whole in memory,
on the server or in the database's answer."""

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from backend.db import session_scope
from backend.models import Job, MetricChunk

Format = Literal["parquet", "csv"]
MEDIA = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv"}
BATCH_ROWS = 65_536  # rows per record batch (a Parquet row group)
CHUNKS_PER_FETCH = 64


@dataclass
class Selection:
    jobs: list[tuple[int, str, dict[str, Any]]]  # (id, name, its spec's fields by dotted path)
    fields: list[str]  # the spec fields that are columns
    names: list[str] | None  # the series kept (None: every one)
    prefix: str | None

    def chunks(self) -> Select[tuple[MetricChunk]]:
        query = select(MetricChunk).where(MetricChunk.job_id.in_([j[0] for j in self.jobs]))
        if self.names is not None:
            query = query.where(MetricChunk.name.in_(self.names))
        if self.prefix:
            query = query.where(MetricChunk.name.startswith(self.prefix, autoescape=True))
        return query

    def rows(self, session: Session) -> int:
        """The points the export holds: its rows."""
        query = self.chunks().with_only_columns(func.coalesce(func.sum(MetricChunk.count), 0))
        return int(session.scalar(query) or 0)


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A spec's fields by dotted path (lists as JSON text)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat(value, f"{path}.")
        else:
            out[path] = json.dumps(value) if isinstance(value, list) else value
    return out


def varying(jobs: list[tuple[int, str, dict[str, Any]]]) -> list[str]:
    """The fields whose value is not the same in every job (the sweep's, the seeds, …), in path order (the name is
    a column of its own)."""
    keys = sorted({k for _, _, fields in jobs for k in fields})
    return [k for k in keys if k != "name" and len({json.dumps(fields.get(k)) for _, _, fields in jobs}) > 1]


def select_jobs(
    session: Session, query: Select[tuple[Job]], fields: list[str] | None, names: list[str] | None, prefix: str | None
) -> Selection:
    jobs = [(j.id, j.name, flat(j.spec or {})) for j in session.scalars(query.order_by(Job.id))]
    return Selection(jobs, fields if fields is not None else varying(jobs), names, prefix)


def _column_type(values: list[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def schema(selection: Selection) -> pa.Schema:
    columns = [(f, _column_type([fields.get(f) for _, _, fields in selection.jobs])) for f in selection.fields]
    return pa.schema(
        [
            ("job_id", pa.int64()),
            ("job_name", pa.string()),
            *columns,
            ("series", pa.string()),
            ("step", pa.int64()),
            ("value", pa.float64()),
        ]
    )


class _Sink(io.RawIOBase):
    """A writable file whose bytes are taken away as they come (the response's next piece)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        piece = bytes(data)
        self.parts.append(piece)
        self.position += len(piece)
        return len(piece)

    def tell(self) -> int:
        return self.position

    def drain(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def _batch(target: pa.Schema, job: tuple[int, str, dict[str, Any]], pieces: list[tuple[str, bytes, bytes]]) -> pa.RecordBatch:
    steps = np.concatenate([np.frombuffer(s, "<i8") for _, s, _ in pieces])
    values = np.concatenate([np.frombuffer(v, "<f8") for _, _, v in pieces])
    names = sorted({n for n, _, _ in pieces})
    index = np.repeat([names.index(n) for n, _, _ in pieces], [len(s) // 8 for _, s, _ in pieces]).astype(np.int32)
    n, (job_id, job_name, fields) = len(steps), job
    constant = [pa.array([fields.get(f.name)] * n, f.type) for f in list(target)[2:-3]]  # the spec fields
    series = pa.DictionaryArray.from_arrays(pa.array(index), pa.array(names)).dictionary_decode()
    arrays = [
        pa.array(np.full(n, job_id, np.int64)),
        pa.array([job_name] * n, pa.string()),
        *constant,
        series,
        pa.array(steps),
        pa.array(values),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=target)


def _job_batches(session: Session, selection: Selection, target: pa.Schema) -> Iterator[pa.RecordBatch]:
    jobs = {j[0]: j for j in selection.jobs}
    query = selection.chunks().order_by(MetricChunk.job_id, MetricChunk.name, MetricChunk.seq)
    current, pieces, rows = None, [], 0
    for chunk in session.scalars(query.execution_options(yield_per=CHUNKS_PER_FETCH)):
        if pieces and (chunk.job_id != current or rows >= BATCH_ROWS):
            yield _batch(target, jobs[current], pieces)  # type: ignore[index]
            pieces, rows = [], 0
        current = chunk.job_id
        pieces.append((chunk.name, chunk.steps, chunk.values))
        rows += chunk.count
    if pieces:
        yield _batch(target, jobs[current], pieces)  # type: ignore[index]


def stream(selection: Selection, fmt: Format) -> Iterator[bytes]:
    """The export's bytes, a record batch at a time, read in a session of its own (the response outlives the
    request's)."""
    target, sink = schema(selection), _Sink()
    writer = pq.ParquetWriter(sink, target, compression="zstd") if fmt == "parquet" else pa_csv.CSVWriter(sink, target)
    with session_scope() as session:
        for batch in _job_batches(session, selection, target):
            writer.write_batch(batch)
            yield sink.drain()
    writer.close()
    yield sink.drain()
