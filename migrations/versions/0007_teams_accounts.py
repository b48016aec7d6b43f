"""teams, accounts and tokens: memberships with roles, browser sessions, one-time sign-ins, quotas

Rows made before accounts existed go to a team named "default"; the first account made becomes its owner.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 22:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("teams") as batch_op:
        batch_op.add_column(sa.Column("max_running_jobs", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_queued_jobs", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_upload_bytes", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("api_tokens") as batch_op:
        batch_op.add_column(sa.Column("team_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("name", sa.String(length=100), server_default="", nullable=False))
        batch_op.add_column(sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_api_tokens_team_id_teams", "teams", ["team_id"], ["id"], ondelete="CASCADE")
        batch_op.create_index(batch_op.f("ix_api_tokens_team_id"), ["team_id"], unique=False)
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "team_id"),
    )
    op.create_index(op.f("ix_memberships_team_id"), "memberships", ["team_id"], unique=False)
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_web_sessions_user_id"), "web_sessions", ["user_id"], unique=False)
    op.create_table(
        "login_codes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    bind = op.get_bind()
    teams = sa.table("teams", sa.column("id", sa.Integer), sa.column("name", sa.String), sa.column("created_at", sa.DateTime))
    owned = [sa.table(name, sa.column("team_id", sa.Integer)) for name in ("jobs", "sweeps", "datasets")]
    if any(bind.execute(sa.select(sa.func.count()).select_from(t).where(t.c.team_id.is_(None))).scalar() for t in owned):
        team_id = bind.execute(sa.select(teams.c.id).where(teams.c.name == "default")).scalar()
        if team_id is None:
            bind.execute(teams.insert().values(name="default", created_at=sa.func.now()))
            team_id = bind.execute(sa.select(teams.c.id).where(teams.c.name == "default")).scalar()
        for t in owned:
            bind.execute(t.update().where(t.c.team_id.is_(None)).values(team_id=team_id))


def downgrade() -> None:
    op.drop_table("login_codes")
    op.drop_index(op.f("ix_web_sessions_user_id"), table_name="web_sessions")
    op.drop_table("web_sessions")
    op.drop_index(op.f("ix_memberships_team_id"), table_name="memberships")
    op.drop_table("memberships")
    with op.batch_alter_table("api_tokens") as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_team_id"))
        batch_op.drop_constraint("fk_api_tokens_team_id_teams", type_="foreignkey")
        batch_op.drop_column("rate_limit_per_minute")
        batch_op.drop_column("name")
        batch_op.drop_column("team_id")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("is_admin")
    with op.batch_alter_table("teams") as batch_op:
        batch_op.drop_column("max_upload_bytes")
        batch_op.drop_column("max_queued_jobs")
        batch_op.drop_column("max_running_jobs")
