"""Signing in and out of the dashboard, the signed-in account, and the team it acts in."""

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import delete
from sqlalchemy.orm import Session

from backend import security
from backend.api.auth import PUBLIC, SESSION_COOKIE, Principal, SignedIn
from backend.api.deps import SessionDep, SettingsDep
from backend.config import Settings
from backend.models import Team, User, WebSession
from backend.schemas import CodeLogin, Me, PasswordChange, PasswordLogin, TeamChoice, TeamRole
from backend.services import accounts
from backend.services.ratelimit import limiter, storage_uri

router = APIRouter(prefix="/auth", tags=["account"])


def check_sign_in_rate(settings: Settings, address: str, username: str) -> None:
    """A 429 past the sign-in attempts a minute of the client's address, then of the username. The address is
    counted first, so a spray of usernames makes at most that many username counters a minute."""
    uri = storage_uri(settings)
    if (wait := limiter(uri, "sign-in-address").hit(address, settings.login_attempts_per_minute_per_address)) is not None:
        raise HTTPException(429, detail=f"too many sign-in attempts from this address: retry in {wait:.0f} s")
    if (wait := limiter(uri, "sign-in").hit(username.lower(), settings.login_attempts_per_minute)) is not None:
        raise HTTPException(429, detail=f"too many sign-in attempts for this username: retry in {wait:.0f} s")


def _me(session: Session, settings: Settings, user: User, team_id: int | None, session_secret: str | None) -> Me:
    teams = [TeamRole(id=t.id, name=t.name, role=r) for t, r in accounts.memberships(session, user.id)]
    current = next((t for t in teams if t.id == team_id), None)
    csrf = security.csrf_token(settings.secret_key.get_secret_value(), session_secret) if session_secret else None
    return Me(username=user.username, is_admin=user.is_admin, team=current, teams=teams, csrf_token=csrf)


@router.post("/login", response_model=Me, dependencies=[PUBLIC])
def login(body: PasswordLogin | CodeLogin, request: Request, response: Response, session: SessionDep, settings: SettingsDep) -> Me:
    """Sign in with a username and password, or a one-time code; sets the session cookie (HttpOnly, SameSite=Strict)."""
    key = settings.secret_key.get_secret_value()
    if isinstance(body, CodeLogin):
        user = accounts.redeem_login_code(session, key, body.code)
        session.commit()  # a code is spent even when it had expired
        if user is None:
            raise HTTPException(401, detail="this sign-in code is unknown, used or expired")
    else:
        check_sign_in_rate(settings, request.client.host if request.client else "", body.username)
        user = accounts.check_password(session, body.username, body.password)
        if user is None:
            raise HTTPException(401, detail="wrong username or password")
    web, secret = accounts.open_session(session, key, user, settings.session_hours)
    session.commit()
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=int(settings.session_hours * 3600),
        path="/",
        secure=settings.cookie_secure,
        httponly=True,
        samesite="strict",
    )
    return _me(session, settings, user, web.team_id, secret)


@router.post("/logout", status_code=204)
def logout(who: SignedIn, response: Response, session: SessionDep, settings: SettingsDep) -> None:
    """Ends this browser's session (an API token stays valid: revoke it under /tokens)."""
    if who.session_secret:
        session.execute(
            delete(WebSession).where(WebSession.id == security.keyed_hash(settings.secret_key.get_secret_value(), who.session_secret))
        )
        session.commit()
    response.delete_cookie(SESSION_COOKIE, path="/", secure=settings.cookie_secure, httponly=True, samesite="strict")


@router.get("/me", response_model=Me)
def me(who: SignedIn, session: SessionDep, settings: SettingsDep) -> Me:
    """The account, the team requests act in, every team it belongs to, and the CSRF token of a cookie session."""
    user = session.get(User, who.user_id)
    assert user is not None
    return _me(session, settings, user, who.team_id, who.session_secret)


@router.put("/team", response_model=Me)
def switch_team(choice: TeamChoice, who: SignedIn, session: SessionDep, settings: SettingsDep) -> Me:
    """The team the dashboard acts in from now on (an API token always acts in its own team)."""
    if who.session_secret is None:
        raise HTTPException(403, detail="an API token acts in the team it was made for: make a token in the other team")
    if accounts.role_in(session, who.user_id, choice.team_id) is None or session.get(Team, choice.team_id) is None:
        raise HTTPException(404, detail=f"team {choice.team_id} not found")
    web = _web_session(session, settings, who)
    web.team_id = choice.team_id
    session.commit()
    user = session.get(User, who.user_id)
    assert user is not None
    return _me(session, settings, user, choice.team_id, who.session_secret)


def _web_session(session: Session, settings: Settings, who: Principal) -> WebSession:
    assert who.session_secret is not None
    web = accounts.find_session(session, settings.secret_key.get_secret_value(), who.session_secret)
    assert web is not None  # authenticated a moment ago
    return web


@router.put("/password", status_code=204)
def change_password(change: PasswordChange, who: SignedIn, session: SessionDep) -> None:
    user = session.get(User, who.user_id)
    assert user is not None
    if not security.verify_password(user.password_hash, change.current):
        raise HTTPException(403, detail="the current password is not right")
    user.password_hash = security.hash_password(change.new)
    session.commit()
