"""The runs table: a team's runs (or a sweep's), a column per chosen spec field and per summary of a series
(its final, smallest or largest finite value, read from each chunk's summary rather than its points), sorted
and filtered in the database and paged, so that 10,000 runs answer as fast as 100."""

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from backend.models import Job, MetricChunk
from backend.services.export import flat

SUMMARIES = ("final", "min", "max")
METRIC = re.compile(r"^(final|min|max):([A-Za-z0-9_][A-Za-z0-9_/.\-]{0,199})$")
FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+){0,9}$")
CONDITION = re.compile(r"^(?P<column>[^<>=!]+)(?P<op>>=|<=|!=|=|>|<)(?P<value>.{0,200})$")
DEFAULT_FIELDS = ["model.kind", "data.kind", "optimizer.kind", "optimizer.lr", "train.batch_size", "train.seed"]
DEFAULT_METRICS = ["final:val/loss", "final:train/loss"]


class TableError(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class RunRow(BaseModel):
    id: int
    name: str
    status: str
    sweep_id: int | None
    fields: dict[str, Any]
    metrics: dict[str, float | None]


class RunsTable(BaseModel):
    fields: list[str]
    metrics: list[str]
    total: int
    limit: int
    offset: int
    items: list[RunRow]


@dataclass
class Columns:
    """What each chosen column is in SQL, by its name."""

    expressions: dict[str, ColumnElement[Any]]
    numeric: dict[str, bool]


def _metric(series: str, summary: str) -> Select[Any]:
    """(job_id, value) of one series' summary over its chunks."""
    chunks = select(MetricChunk.job_id).where(MetricChunk.name == series).group_by(MetricChunk.job_id)
    if summary == "min":
        return chunks.add_columns(func.min(MetricChunk.vmin).label("value"))
    if summary == "max":
        return chunks.add_columns(func.max(MetricChunk.vmax).label("value"))
    latest = (
        select(
            MetricChunk.job_id,
            MetricChunk.vlast.label("value"),
            func.row_number().over(partition_by=MetricChunk.job_id, order_by=MetricChunk.seq.desc()).label("rank"),
        )
        .where(MetricChunk.name == series, MetricChunk.vlast.is_not(None))
        .subquery()
    )
    return select(latest.c.job_id, latest.c.value).where(latest.c.rank == 1)


def _field(path: str, sample: Any) -> tuple[ColumnElement[Any], bool]:
    element = Job.spec[tuple(path.split("."))]
    if isinstance(sample, bool):
        return element.as_boolean(), False
    if isinstance(sample, (int, float)):
        return element.as_float(), True
    return element.as_string(), False


def _parse(value: str, numeric: bool, column: str) -> Any:
    if not numeric:
        return {"true": True, "false": False}.get(value, value)
    try:
        return float(value)
    except ValueError:
        raise TableError("where", f"{column} holds numbers: {value!r} is not one") from None


def build(
    session: Session, base: Select[tuple[Job]], fields: list[str], metrics: list[str], where: list[str], sort: str
) -> tuple[Select[Any], Columns]:
    """The filtered, sorted query of the rows (job, its metric values) and the columns' expressions."""
    for f in fields:
        if not FIELD.match(f):
            raise TableError("fields", f"{f!r} is not a dotted spec path")
    for m in metrics:
        if not METRIC.match(m):
            raise TableError("metrics", f"{m!r} is not final:, min: or max: and a series name")
    sample = flat(session.scalar(base.with_only_columns(Job.spec).limit(1)) or {})
    columns = Columns({}, {})
    query = base
    for f in fields:
        columns.expressions[f], columns.numeric[f] = _field(f, sample.get(f))
    for i, m in enumerate(metrics):
        summary, series = m.split(":", 1)
        sub = _metric(series, summary).subquery(f"m{i}")
        query = query.outerjoin(sub, sub.c.job_id == Job.id).add_columns(sub.c.value.label(f"m{i}"))
        columns.expressions[m], columns.numeric[m] = sub.c.value, True
    for condition in where:
        found = CONDITION.match(condition)
        if found is None or found["column"] not in columns.expressions:
            raise TableError("where", f"{condition!r}: give <column><op><value>, a chosen field or metric and one of >= <= > < = !=")
        column, op = found["column"], found["op"]
        expression, value = columns.expressions[column], _parse(found["value"], columns.numeric[column], column)
        query = query.where(
            {
                ">=": expression >= value,
                "<=": expression <= value,
                ">": expression > value,
                "<": expression < value,
                "=": expression == value,
                "!=": expression != value,
            }[op]
        )
    key = sort.lstrip("-")
    order = columns.expressions.get(key, {"created": Job.created_at, "name": Job.name, "status": Job.status, "id": Job.id}.get(key))
    if order is None:
        raise TableError("sort", f"{key!r} is not a chosen column (nor created, name, status, id)")
    query = query.order_by(order.desc().nulls_last() if sort.startswith("-") else order.asc().nulls_last(), Job.id.desc())
    return query, columns


def table(
    session: Session, base: Select[tuple[Job]], fields: list[str], metrics: list[str], where: list[str], sort: str, limit: int, offset: int
) -> RunsTable:
    query, _ = build(session, base, fields, metrics, where, sort)
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    items = []
    for row in session.execute(query.limit(limit).offset(offset)):
        job, values = row[0], row[1:]
        spec = flat(job.spec or {})
        items.append(
            RunRow(
                id=job.id,
                name=job.name,
                status=job.status,
                sweep_id=job.sweep_id,
                fields={f: spec.get(f) for f in fields},
                metrics=dict(zip(metrics, values, strict=True)),
            )
        )
    return RunsTable(fields=fields, metrics=metrics, total=total, limit=limit, offset=offset, items=items)
