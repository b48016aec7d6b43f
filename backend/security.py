"""Secrets of accounts: password hashing (argon2id), and random tokens kept only as keyed hashes."""

import hashlib
import hmac
import secrets
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_PREFIX = "dsk_"  # API tokens; the visible prefix is this plus the first characters of the secret
VISIBLE_CHARS = 8


@lru_cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    if stored is None:
        return False
    try:
        return _hasher().verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


# Verified against when the username does not exist, so a wrong name takes as long as a wrong password.
@lru_cache
def dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def keyed_hash(key: str, secret: str) -> str:
    """What the database keeps of a token, session or code: a leaked table gives nothing to sign in with."""
    return hmac.new(key.encode(), secret.encode(), hashlib.sha256).hexdigest()


def new_api_token() -> tuple[str, str]:
    """The token (shown once) and its visible prefix."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token[: len(TOKEN_PREFIX) + VISIBLE_CHARS]


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(key: str, session_secret: str) -> str:
    """Bound to the session: a page on another origin can neither read nor guess it."""
    return keyed_hash(key, "csrf:" + session_secret)


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
