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
    return _verify(token, secret)[0]


class TokenVerifier:
    """`verify` with a bounded cache: publishers resend the same token (the seed SDKs mint
    identical ones), and checking an HMAC and parsing JSON each time costs more than the
    rest of a publish's bookkeeping. Cached tokens are still refused once `exp` passes."""

    def __init__(self, secret: str, size: int = 4096) -> None:
        self.secret = secret
        self.size = size
        self._cache: dict[str, tuple[Principal, float, float]] = {}

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; AuthError otherwise."""
        cached = self._cache.get(token)
        now = time.time()
        if cached is not None and cached[1] <= now < cached[2]:
            return cached[0]
        principal, claims = _verify(token, self.secret)
        window = _validity(claims)
        if window is not None:
            if len(self._cache) >= self.size:
                self._cache.clear()
            self._cache[token] = (principal, *window)
        return principal


def _validity(claims: dict[str, object]) -> tuple[float, float] | None:
    """When a verified token stays valid (leeway included); None if not plain numbers."""
    bounds = []
    for name, default in (("nbf", float("-inf")), ("exp", float("inf"))):
        value = claims.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        bounds.append(float(value))
    return bounds[0] - LEEWAY_SECONDS, bounds[1] + LEEWAY_SECONDS


def _verify(token: str, secret: str) -> tuple[Principal, dict[str, object]]:
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
    return Principal(author=author, admin="admin" in _scopes(claims.get("scope"))), claims


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
