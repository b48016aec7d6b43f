"""series summaries: each metric chunk's smallest, largest and last finite value (the runs table sorts and
filters on them without reading the points)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 02:45:00
"""

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNKS = sa.table("metric_chunks", sa.column("id"), sa.column("values"), sa.column("vmin"), sa.column("vmax"), sa.column("vlast"))


def upgrade() -> None:
    with op.batch_alter_table("metric_chunks") as batch_op:
        for name in ("vmin", "vmax", "vlast"):
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))
    bind = op.get_bind()
    for row in bind.execute(sa.select(CHUNKS.c.id, CHUNKS.c["values"])).all():
        values = np.frombuffer(row[1], "<f8")
        finite = values[np.isfinite(values)]
        if len(finite):
            summary = {"vmin": float(finite.min()), "vmax": float(finite.max()), "vlast": float(finite[-1])}
            bind.execute(sa.update(CHUNKS).where(CHUNKS.c.id == row[0]).values(**summary))


def downgrade() -> None:
    with op.batch_alter_table("metric_chunks") as batch_op:
        for name in ("vmin", "vmax", "vlast"):
            batch_op.drop_column(name)
