"""Bearer JWT verification (HS256 only), topic scopes and token minting.

Two kinds of token: publisher tokens, signed with `SWITCH_JWT_SECRET` (every publisher
holds it), and admin tokens, signed with `SWITCH_ADMIN_JWT_SECRET`. Only an admin token
whose `scope` holds `admin` may manage; a publisher token never does, whatever it claims.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, zip_longest

import jwt

from switchd.errors import InvalidInput
from switchd.payload import validate_topic

ALGORITHM = "HS256"
LEEWAY_SECONDS = 10
PUBLISHER = "publisher"
ADMIN = "admin"
PATTERN_SUFFIX = ".*"


class AuthError(Exception):
    """The request carries no usable token; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TopicScope:
    """Where a token may publish: exact topic names and `prefix.*` patterns.

    `orders.*` matches `orders.` followed by at least one character (`orders.created`,
    `orders.eu.created`), never `orders`, `orders.` or `ordersX`.
    """

    exact: frozenset[str]
    prefixes: tuple[str, ...]  # each ends with "."

    def allows(self, topic: str) -> bool:
        """Whether publishing to `topic` is allowed."""
        if topic in self.exact:
            return True
        return any(len(topic) > len(p) and topic.startswith(p) for p in self.prefixes)


def parse_topics(entries: object) -> TopicScope:
    """A `topics` claim (a list of topic names or `prefix.*` patterns); ValueError if not."""
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ValueError("'topics' must be a list of topic names or 'prefix.*' patterns")
    exact, prefixes = set(), []
    for entry in entries:
        try:
            validate_topic(entry)
        except InvalidInput as exc:
            raise ValueError(f"topic {entry!r} in 'topics': {exc.message}") from None
        if entry == PATTERN_SUFFIX:
            raise ValueError("'.*' in 'topics' needs a prefix, e.g. 'orders.*'")
        if entry.endswith(PATTERN_SUFFIX):
            prefixes.append(entry[:-1])  # "orders.*" -> "orders."
        else:
            exact.add(entry)
    return TopicScope(frozenset(exact), tuple(prefixes))


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's author, which secret signed it, what it may do."""

    author: str
    kind: str = PUBLISHER  # PUBLISHER or ADMIN: the kind of secret that signed the token
    admin_scope: bool = False  # its `scope` claim holds `admin`
    topics: TopicScope | None = None  # None: any topic

    @property
    def admin(self) -> bool:
        """May use the management API: signed with an admin secret and scoped `admin`."""
        return self.kind == ADMIN and self.admin_scope

    def may_publish(self, topic: str) -> bool:
        """Whether the token's `topics` claim (if any) allows publishing to `topic`."""
        return self.topics is None or self.topics.allows(topic)


def bearer_token(header: str | None) -> str:
    """Extract the token from an Authorization header; the scheme is case-insensitive."""
    if not header:
        raise AuthError("missing Authorization header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization header must be 'Bearer <token>'")
    return token.strip()


Keys = Sequence[tuple[str, str]]  # (secret, kind), tried in order


def verify(token: str, secret: str, kind: str = PUBLISHER) -> Principal:
    """Check signature, algorithm, exp/nbf and claims against one secret of `kind`."""
    return _verify(token, ((secret, kind),))[0]


class TokenVerifier:
    """Verification against every configured secret, with a bounded cache: publishers
    resend the same token (the seed SDKs mint identical ones), and checking an HMAC and
    parsing JSON each time costs more than the rest of a publish's bookkeeping. Cached
    tokens are still refused once `exp` passes.

    Secrets are tried current ones first (publishers' before admins'), then previous
    ones, so a token signed with the current publisher secret costs one HMAC as before.
    """

    def __init__(
        self, publisher: Sequence[str | None], admin: Sequence[str | None] = (), size: int = 4096
    ) -> None:
        if set(filter(None, publisher)) & set(filter(None, admin)):
            raise ValueError("an admin secret must differ from every publisher secret")
        pairs = zip_longest(((s, PUBLISHER) for s in publisher), ((s, ADMIN) for s in admin))
        self.keys: Keys = [key for key in chain.from_iterable(pairs) if key and key[0]]
        self.admin_configured = any(kind == ADMIN for _, kind in self.keys)
        self.size = size
        self._cache: dict[str, tuple[Principal, float, float]] = {}

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; AuthError otherwise."""
        cached = self._cache.get(token)
        now = time.time()
        if cached is not None and cached[1] <= now < cached[2]:
            return cached[0]
        principal, claims = _verify(token, self.keys)
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


def _verify(token: str, keys: Keys) -> tuple[Principal, dict[str, object]]:
    """The principal and claims of `token`, signed with one of `keys`."""
    for secret, kind in keys:
        try:
            claims = _decode(token, secret)
        except jwt.InvalidSignatureError:
            continue  # the next secret may have signed it
        return _principal(claims, kind), claims
    raise AuthError("invalid token: Signature verification failed")


def _decode(token: str, secret: str) -> dict[str, object]:
    """The claims; pyjwt checks the signature before exp/nbf, so only a token this secret
    signed gets past InvalidSignatureError."""
    try:
        return jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            leeway=LEEWAY_SECONDS,
            options={"verify_aud": False, "verify_iss": False},
        )
    except jwt.InvalidSignatureError:
        raise
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token has expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise AuthError("token is not valid yet") from exc
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from exc


def _principal(claims: dict[str, object], kind: str) -> Principal:
    author = claims.get("author", claims.get("Author"))
    if not isinstance(author, str) or not author:
        raise AuthError("token has no 'author' claim")
    topics = None
    if "topics" in claims:
        try:
            topics = parse_topics(claims["topics"])
        except ValueError as exc:
            raise AuthError(f"invalid 'topics' claim: {exc}") from None
    admin_scope = "admin" in _scopes(claims.get("scope"))
    return Principal(author=author, kind=kind, admin_scope=admin_scope, topics=topics)


def _scopes(scope: object) -> set[str]:
    if isinstance(scope, str):
        return set(scope.split())
    if isinstance(scope, list):
        return {s for s in scope if isinstance(s, str)}
    return set()


def mint(
    secret: str,
    author: str,
    admin: bool = False,
    ttl: float | None = None,
    topics: Sequence[str] | None = None,
) -> str:
    """Create a token for `author`, optionally with the admin scope, an expiry and a
    `topics` claim. The secret decides the kind: pass the admin secret for admin tokens."""
    now = int(time.time())
    claims: dict[str, object] = {"author": author, "iat": now}
    if admin:
        claims["scope"] = "admin"
    if topics is not None:
        claims["topics"] = list(topics)
    if ttl:
        claims["exp"] = now + int(ttl)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
