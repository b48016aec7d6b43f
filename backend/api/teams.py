"""Teams, their members and quotas; accounts (administrators make them)."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from backend.api.auth import Admin, Owner, SignedIn, Viewer
from backend.api.deps import RowId, SessionDep, SettingsDep
from backend.config import Settings
from backend.models import JobStatus, Membership, Role, Team, User
from backend.schemas import MemberIn, MemberOut, QuotaOut, QuotaUpdate, TeamCreate, TeamRole, UserCreate, UserOut
from backend.services import accounts

router = APIRouter(tags=["teams"])
UsernamePath = Annotated[str, Path(max_length=100)]


@router.get("/teams", response_model=list[TeamRole])
def my_teams(who: SignedIn, session: SessionDep) -> list[TeamRole]:
    return [TeamRole(id=t.id, name=t.name, role=r) for t, r in accounts.memberships(session, who.user_id)]


@router.post("/teams", status_code=201, response_model=TeamRole)
def create_team(body: TeamCreate, who: Admin, session: SessionDep) -> TeamRole:
    """A new team; the administrator who makes it is its first owner."""
    if session.scalar(select(Team.id).where(func.lower(Team.name) == body.name.lower())) is not None:
        raise HTTPException(409, detail=f"a team named {body.name!r} exists")
    team = accounts.get_or_create_team(session, body.name)
    user = session.get(User, who.user_id)
    assert user is not None
    accounts.set_membership(session, user, team, Role.owner)
    session.commit()
    return TeamRole(id=team.id, name=team.name, role=Role.owner)


@router.get("/team/members", response_model=list[MemberOut])
def members(who: Viewer, session: SessionDep) -> list[MemberOut]:
    """The members of the current team."""
    rows = session.execute(
        select(User.username, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.team_id == who.team_id)
        .order_by(User.username)
    )
    return [MemberOut(username=u, role=Role(r)) for u, r in rows]


def _user_or_404(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(func.lower(User.username) == username.lower()))
    if user is None:
        raise HTTPException(404, detail=f"no account {username!r} (an administrator makes accounts)")
    return user


@router.put("/team/members/{username}", response_model=MemberOut)
def set_member(username: UsernamePath, body: MemberIn, who: Owner, session: SessionDep) -> MemberOut:
    """Add an account to the current team, or change its role there."""
    user = _user_or_404(session, username)
    team = session.get(Team, who.team_id)
    assert team is not None
    if (
        body.role != Role.owner
        and accounts.role_in(session, user.id, team.id) == Role.owner
        and not accounts.owners_left(session, team.id, user.id)
    ):
        raise HTTPException(409, detail="a team keeps at least one owner")
    accounts.set_membership(session, user, team, body.role)
    session.commit()
    return MemberOut(username=user.username, role=body.role)


@router.delete("/team/members/{username}", status_code=204)
def remove_member(username: UsernamePath, who: Owner, session: SessionDep) -> None:
    user = _user_or_404(session, username)
    if accounts.role_in(session, user.id, who.team_id) is None:
        raise HTTPException(404, detail=f"{username!r} is not in this team")
    assert who.team_id is not None
    if not accounts.owners_left(session, who.team_id, user.id):
        raise HTTPException(409, detail="a team keeps at least one owner")
    session.execute(delete(Membership).where(Membership.user_id == user.id, Membership.team_id == who.team_id))
    session.commit()


@router.get("/team/quotas", response_model=QuotaOut)
def team_quotas(who: Viewer, session: SessionDep, settings: SettingsDep) -> QuotaOut:
    """The current team's limits and what it uses of them now."""
    assert who.team_id is not None
    return _quota_out(session, settings, who.team_id)


@router.patch("/teams/{team_id}/quotas", response_model=QuotaOut)
def set_quotas(team_id: RowId, body: QuotaUpdate, who: Admin, session: SessionDep, settings: SettingsDep) -> QuotaOut:
    team = session.get(Team, team_id)
    if team is None:
        raise HTTPException(404, detail=f"team {team_id} not found")
    for field in body.model_fields_set:
        setattr(team, field, getattr(body, field))
    session.commit()
    return _quota_out(session, settings, team_id)


def _quota_out(session: Session, settings: Settings, team_id: int) -> QuotaOut:
    team = session.get(Team, team_id)
    assert team is not None
    limits = accounts.quotas(team, settings)
    return QuotaOut(
        max_running_jobs=limits.max_running_jobs,
        max_queued_jobs=limits.max_queued_jobs,
        max_upload_bytes=limits.max_upload_bytes,
        running=accounts.count_jobs(session, team_id, JobStatus.running),
        queued=accounts.count_jobs(session, team_id, JobStatus.queued),
    )


@router.post("/users", status_code=201, response_model=UserOut)
def create_user(body: UserCreate, who: Admin, session: SessionDep) -> UserOut:
    """An account (in no team until an owner adds it)."""
    try:
        user = accounts.create_user(session, body.username, body.password, admin=body.admin)
    except accounts.AccountError as exc:
        raise HTTPException(409, detail=str(exc)) from None
    session.commit()
    return UserOut.model_validate(user)
