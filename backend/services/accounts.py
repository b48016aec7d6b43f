"""Users, teams, memberships, API tokens, browser sessions and one-time sign-ins (database work only)."""

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from backend import security
from backend.config import Settings
from backend.formats import TeamName, Username, violation
from backend.models import ApiToken, Job, JobStatus, LoginCode, Membership, Role, Team, User, WebSession, utcnow

DEFAULT_TEAM = "default"


class AccountError(ValueError):
    """A request about accounts that cannot be done; the message says why."""


def create_user(session: Session, username: str, password: str | None, *, admin: bool = False) -> User:
    if why := violation(Username, username):
        raise AccountError(f"the username {username!r} is not allowed: {why}")
    if session.scalar(select(User.id).where(func.lower(User.username) == username.lower())) is not None:
        raise AccountError(f"the username {username!r} is taken")
    user = User(username=username, password_hash=security.hash_password(password) if password else None, is_admin=admin)
    session.add(user)
    session.flush()
    return user


def get_or_create_team(session: Session, name: str) -> Team:
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        if why := violation(TeamName, name):
            raise AccountError(f"the team name {name!r} is not allowed: {why}")
        team = Team(name=name)
        session.add(team)
        session.flush()
    return team


def set_membership(session: Session, user: User, team: Team, role: Role) -> None:
    row = session.get(Membership, (user.id, team.id))
    if row is None:
        session.add(Membership(user_id=user.id, team_id=team.id, role=role.value))
    else:
        row.role = role.value
    session.flush()


def bootstrap_admin(session: Session, username: str, password: str | None) -> User:
    """The first account: an admin, owner of the team `default` (which holds rows made before accounts)."""
    user = create_user(session, username, password, admin=True)
    set_membership(session, user, get_or_create_team(session, DEFAULT_TEAM), Role.owner)
    return user


def has_users(session: Session) -> bool:
    return session.scalar(select(User.id).limit(1)) is not None


def memberships(session: Session, user_id: int) -> list[tuple[Team, Role]]:
    rows = session.execute(
        select(Team, Membership.role)
        .join(Membership, Membership.team_id == Team.id)
        .where(Membership.user_id == user_id)
        .order_by(Team.name)
    )
    return [(team, Role(role)) for team, role in rows]


def role_in(session: Session, user_id: int, team_id: int | None) -> Role | None:
    if team_id is None:
        return None
    role = session.scalar(select(Membership.role).where(Membership.user_id == user_id, Membership.team_id == team_id))
    return Role(role) if role else None


def owners_left(session: Session, team_id: int, without_user: int) -> int:
    query = select(func.count()).where(
        Membership.team_id == team_id, Membership.role == Role.owner.value, Membership.user_id != without_user
    )
    return session.scalar(query) or 0


# --- API tokens ---


def create_token(session: Session, key: str, user: User, team_id: int, name: str, rate_limit: int | None = None) -> tuple[ApiToken, str]:
    secret, prefix = security.new_api_token()
    row = ApiToken(
        user_id=user.id,
        team_id=team_id,
        name=name,
        prefix=prefix,
        token_hash=security.keyed_hash(key, secret),
        rate_limit_per_minute=rate_limit,
    )
    session.add(row)
    session.flush()
    return row, secret


def find_token(session: Session, key: str, secret: str) -> ApiToken | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == security.keyed_hash(key, secret)))
    return row if row is not None and row.revoked_at is None else None


def touch_token(session: Session, token: ApiToken) -> None:
    """Record the use, at most once a minute (not a write per request)."""
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
        session.commit()


# --- browser sessions and one-time sign-ins ---


def open_session(session: Session, key: str, user: User, hours: float) -> tuple[WebSession, str]:
    session.execute(delete(WebSession).where(WebSession.expires_at < utcnow()))  # ended sessions go as new ones start
    secret = security.new_secret()
    teams = memberships(session, user.id)
    row = WebSession(
        id=security.keyed_hash(key, secret),
        user_id=user.id,
        team_id=teams[0][0].id if teams else None,
        expires_at=utcnow() + timedelta(hours=hours),
    )
    session.add(row)
    session.flush()
    return row, secret


def find_session(session: Session, key: str, secret: str) -> WebSession | None:
    row = session.get(WebSession, security.keyed_hash(key, secret))
    return row if row is not None and row.expires_at > utcnow() else None


def new_login_code(session: Session, key: str, user: User, minutes: float = 15) -> str:
    session.execute(delete(LoginCode).where(LoginCode.expires_at < utcnow()))
    code = security.new_secret()
    session.add(LoginCode(id=security.keyed_hash(key, code), user_id=user.id, expires_at=utcnow() + timedelta(minutes=minutes)))
    session.flush()
    return code


def redeem_login_code(session: Session, key: str, code: str) -> User | None:
    """The code's user, once: the row is deleted as it is used."""
    row = session.get(LoginCode, security.keyed_hash(key, code))
    if row is None:
        return None
    session.delete(row)
    session.flush()
    return session.get(User, row.user_id) if row.expires_at > utcnow() else None


def check_password(session: Session, username: str, password: str) -> User | None:
    user = session.scalar(select(User).where(func.lower(User.username) == username.lower()))
    if user is None or user.password_hash is None:
        security.verify_password(security.dummy_hash(), password)  # the same time as a wrong password
        return None
    return user if security.verify_password(user.password_hash, password) else None


# --- quotas ---


@dataclass(frozen=True)
class Quotas:
    max_running_jobs: int
    max_queued_jobs: int
    max_upload_bytes: int


def quotas(team: Team, settings: Settings) -> Quotas:
    """The team's own quotas, the service's defaults where it has none."""
    return Quotas(
        max_running_jobs=team.max_running_jobs or settings.max_running_jobs,
        max_queued_jobs=team.max_queued_jobs or settings.max_queued_jobs,
        max_upload_bytes=team.max_upload_bytes or settings.max_upload_bytes,
    )


def count_jobs(session: Session, team_id: int, status: JobStatus) -> int:
    """The team's jobs on the workers in that state (the quotas' count: a tracked run uses no worker)."""
    query = select(func.count()).where(Job.team_id == team_id, Job.status == status.value, Job.source == "server")
    return session.scalar(query) or 0
