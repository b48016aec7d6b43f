"""job tags, notes, and the model and data kinds for filtering

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 20:40:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("model_kind", sa.String(length=50), nullable=True))
        batch_op.add_column(sa.Column("data_kind", sa.String(length=50), nullable=True))
        batch_op.add_column(sa.Column("notes", sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_model_kind"), ["model_kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_data_kind"), ["data_kind"], unique=False)
    op.create_table(
        "job_tags",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "tag"),
    )
    with op.batch_alter_table("job_tags") as batch_op:
        batch_op.create_index(batch_op.f("ix_job_tags_tag"), ["tag"], unique=False)
    # the kinds of the jobs already there, from their specs
    bind = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("spec", sa.JSON), sa.column("model_kind"), sa.column("data_kind"))
    for job_id, spec in bind.execute(sa.select(jobs.c.id, jobs.c.spec)).all():
        spec = json.loads(spec) if isinstance(spec, str) else spec
        bind.execute(jobs.update().where(jobs.c.id == job_id).values(model_kind=spec["model"]["kind"], data_kind=spec["data"]["kind"]))


def downgrade() -> None:
    with op.batch_alter_table("job_tags") as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_tags_tag"))
    op.drop_table("job_tags")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_data_kind"))
        batch_op.drop_index(batch_op.f("ix_jobs_model_kind"))
        batch_op.drop_column("notes")
        batch_op.drop_column("data_kind")
        batch_op.drop_column("model_kind")
