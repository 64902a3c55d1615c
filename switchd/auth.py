"""Bearer JWT verification (HS256 only) and token minting."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
LEEWAY_SECONDS = 10


class AuthError(Exception):
    """The request carries no usable token; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's author and whether it may administer."""

    author: str
    admin: bool


def bearer_token(header: str | None) -> str:
    """Extract the token from an Authorization header; the scheme is case-insensitive."""
    if not header:
        raise AuthError("missing Authorization header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization header must be 'Bearer <token>'")
    return token.strip()


def verify(token: str, secret: str) -> Principal:
    """Check signature, algorithm, exp/nbf; return the principal."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            leeway=LEEWAY_SECONDS,
            options={"verify_aud": False, "verify_iss": False},
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token has expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise AuthError("token is not valid yet") from exc
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    author = claims.get("author", claims.get("Author"))
    if not isinstance(author, str) or not author:
        raise AuthError("token has no 'author' claim")
    return Principal(author=author, admin="admin" in _scopes(claims.get("scope")))


def _scopes(scope: object) -> set[str]:
    if isinstance(scope, str):
        return set(scope.split())
    if isinstance(scope, list):
        return {s for s in scope if isinstance(s, str)}
    return set()


def mint(secret: str, author: str, admin: bool = False, ttl: float | None = None) -> str:
    """Create a token for `author`, optionally with the admin scope and an expiry."""
    now = int(time.time())
    claims: dict[str, object] = {"author": author, "iat": now}
    if admin:
        claims["scope"] = "admin"
    if ttl:
        claims["exp"] = now + int(ttl)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
