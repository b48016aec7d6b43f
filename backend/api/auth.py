"""Who is asking and what they may do: every API route declares one of the decisions below.

A request is signed in by an API token (`Authorization: Bearer dsk_…`, acting in the token's team) or by the
dashboard's session cookie (acting in the team chosen in the dashboard; state-changing requests must carry the
session's CSRF token in `X-CSRF-Token`). Rows of another team answer 404, as rows that do not exist do.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from backend import security
from backend.api.deps import SessionDep, SettingsDep
from backend.models import Role, User
from backend.services import accounts
from backend.services.ratelimit import limiter, storage_uri

SESSION_COOKIE = "dynascope_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

_bearer = HTTPBearer(auto_error=False, description="an API token, dsk_…")
_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="the dashboard's session")


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    is_admin: bool
    team_id: int | None
    role: Role | None
    session_secret: str | None = None  # signed in by cookie (for the CSRF token)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def authenticate(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> Principal:
    key = settings.secret_key.get_secret_value()
    if bearer is not None:
        token = accounts.find_token(session, key, bearer.credentials)
        if token is None:
            raise _unauthorized("the API token is unknown or revoked")
        limit = token.rate_limit_per_minute or settings.token_rate_limit_per_minute
        if (wait := limiter(storage_uri(settings), "token").hit(token.token_hash, limit)) is not None:
            msg = f"rate limit of this token reached: {limit} requests per minute; retry in {wait:.0f} s"
            raise HTTPException(429, detail=msg, headers={"Retry-After": str(max(1, round(wait)))})
        accounts.touch_token(session, token)
        user = session.get(User, token.user_id)
        assert user is not None  # tokens go with their user (cascade)
        return Principal(user.id, user.username, user.is_admin, token.team_id, accounts.role_in(session, user.id, token.team_id))
    if cookie:
        web = accounts.find_session(session, key, cookie)
        if web is None:
            raise _unauthorized("the session has ended: sign in again")
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not security.same(sent, security.csrf_token(key, cookie)):
                raise HTTPException(403, detail=f"missing or wrong {CSRF_HEADER} header (the dashboard sends it)")
        user = session.get(User, web.user_id)
        assert user is not None
        role = accounts.role_in(session, user.id, web.team_id)
        return Principal(user.id, user.username, user.is_admin, web.team_id if role else None, role, cookie)
    raise _unauthorized("sign in, or send an API token as Authorization: Bearer dsk_…")


Authenticated = Annotated[Principal, Depends(authenticate)]


def still_in_team(request: Request, session: Session, key: str, team_id: int) -> bool:
    """Whether the credentials of a request still open (an event stream) still reach `team_id`: the token not
    revoked, the session not ended nor switched to another team, the membership kept."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secret:
        token = accounts.find_token(session, key, secret)
        return token is not None and token.team_id == team_id and accounts.role_in(session, token.user_id, team_id) is not None
    cookie = request.cookies.get(SESSION_COOKIE)
    web = accounts.find_session(session, key, cookie) if cookie else None
    return web is not None and web.team_id == team_id and accounts.role_in(session, web.user_id, team_id) is not None


def _team_role(minimum: Role) -> Callable[[Principal], Principal]:
    def decide(principal: Authenticated) -> Principal:
        if principal.role is None:
            raise HTTPException(403, detail="you are in no team here: ask a team owner to add you")
        if principal.role.rank < minimum.rank:
            raise HTTPException(403, detail=f"a {principal.role.value} of this team cannot do this (needs {minimum.value})")
        return principal

    decide.authorization = f"team {minimum.value}"  # type: ignore[attr-defined]
    return decide


def _signed_in(principal: Authenticated) -> Principal:
    return principal


def _admin(principal: Authenticated) -> Principal:
    if not principal.is_admin:
        raise HTTPException(403, detail="only an administrator can do this")
    return principal


def _public() -> None:
    """Open to everyone: health and signing in."""


_signed_in.authorization = "signed in"  # type: ignore[attr-defined]
_admin.authorization = "admin"  # type: ignore[attr-defined]
_public.authorization = "public"  # type: ignore[attr-defined]

Viewer = Annotated[Principal, Depends(_team_role(Role.viewer))]  # read the team's rows
Member = Annotated[Principal, Depends(_team_role(Role.member))]  # also submit, cancel, tag, delete, upload
Owner = Annotated[Principal, Depends(_team_role(Role.owner))]  # also manage members
SignedIn = Annotated[Principal, Depends(_signed_in)]  # own account, whatever the team
Admin = Annotated[Principal, Depends(_admin)]
PUBLIC = Depends(_public)
