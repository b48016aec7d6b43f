"""API tokens for REST and the CLI: shown once, kept as keyed hashes, each acting in one team."""

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from backend.api.auth import SignedIn, Viewer
from backend.api.deps import RowId, SessionDep, SettingsDep
from backend.models import ApiToken, User, utcnow
from backend.schemas import TokenCreate, TokenCreated, TokenOut
from backend.services import accounts

router = APIRouter(prefix="/tokens", tags=["account"])


@router.get("", response_model=list[TokenOut])
def list_tokens(who: SignedIn, session: SessionDep) -> list[TokenOut]:
    """The account's tokens (revoked ones too, with when), newest first."""
    rows = session.scalars(select(ApiToken).where(ApiToken.user_id == who.user_id).order_by(ApiToken.id.desc()))
    return [TokenOut.model_validate(t) for t in rows]


@router.post("", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, who: Viewer, session: SessionDep, settings: SettingsDep) -> TokenCreated:
    """A token acting in the current team with the account's role there. The response is the only time it is shown."""
    user = session.get(User, who.user_id)
    assert user is not None and who.team_id is not None
    row, secret = accounts.create_token(
        session, settings.secret_key.get_secret_value(), user, who.team_id, body.name, body.rate_limit_per_minute
    )
    session.commit()
    return TokenCreated.model_validate({**TokenOut.model_validate(row).model_dump(), "token": secret})


@router.delete("/{token_id}", response_model=TokenOut)
def revoke_token(token_id: RowId, who: SignedIn, session: SessionDep) -> TokenOut:
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != who.user_id:
        raise HTTPException(404, detail=f"token {token_id} not found")
    row.revoked_at = row.revoked_at or utcnow()
    session.commit()
    return TokenOut.model_validate(row)
