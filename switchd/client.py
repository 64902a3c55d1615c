"""Python client for switchd.

Two flavours:

* :func:`publish` — a drop-in for the old "switch" Python SDK (``switcher.publisher``):
  synchronous, standard library only for HTTP, same signature ``publish(topic, author,
  options)``, same wire format (``{"Payload": <base64 JSON>, "Topic": ...}``, a
  ``bearer`` HS256 token holding only ``{"Author": author}``, no Content-Type), same
  environment variables (``SWITCH_BASE_URL``, ``SWITCH_JWT_SECRET``), same return value
  (``True``).
* :class:`AsyncSwitchClient` — an aiohttp client for the whole HTTP API: publishing,
  refresh (publisher credentials), subscribers, dead letters, endpoints (admin
  credentials), health and readiness.

Failures raise :class:`SwitchError` (the server's ``{"error": {"code", "message"}}``)
or :class:`SwitchConnectionError` (the server could not be reached).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from types import TracebackType
from typing import Any, Self

import aiohttp
import jwt

from switchd import __version__
from switchd.auth import ADMIN, ALGORITHM, PUBLISHER, mint

BASE_URL_ENV = "SWITCH_BASE_URL"
SECRET_ENV = "SWITCH_JWT_SECRET"
DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0
DEFAULT_AUTHOR = "switchd-client"
TOKEN_TTL = 300
USER_AGENT = f"switchd-client/{__version__}"

__all__ = [
    "AsyncSwitchClient",
    "SwitchConnectionError",
    "SwitchError",
    "default_base_url",
    "encode_payload",
    "mint_seed_token",
    "mint_token",
    "publish",
    "publish_event",
    "seed_publish_body",
]


class SwitchError(Exception):
    """switchd answered with an error: HTTP `status`, machine `code`, human `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class SwitchConnectionError(SwitchError, ConnectionError):
    """switchd could not be reached (refused, DNS, timeout); `status` is 0."""

    def __init__(self, url: str, reason: object) -> None:
        super().__init__(0, "connection_failed", f"cannot reach switchd at {url}: {reason}")
        self.url = url


# --- tokens and payloads ------------------------------------------------------------


def mint_token(
    secret: str,
    author: str,
    admin: bool = False,
    ttl: float | None = None,
    topics: list[str] | None = None,
) -> str:
    """A switchd token for `author` (claims `author`, `iat`, optional `scope`/`exp`/
    `topics`). Admin tokens need the admin secret (``SWITCH_ADMIN_JWT_SECRET``)."""
    return mint(secret, author, admin=admin, ttl=ttl, topics=topics)


def mint_seed_token(secret: str, author: str) -> str:
    """A token exactly like the seed SDK's: HS256 with the single claim ``Author``."""
    return jwt.encode({"Author": author}, secret, algorithm=ALGORITHM)


def encode_payload(options: dict[str, Any]) -> str:
    """The seed SDK's payload encoding: base64 of ``json.dumps(options)``."""
    return base64.b64encode(json.dumps(options).encode("utf-8")).decode("utf-8")


def seed_publish_body(topic: str, options: dict[str, Any]) -> bytes:
    """The exact ``POST /publish`` body the seed Python SDK sends."""
    return json.dumps({"Payload": encode_payload(options), "Topic": topic}).encode("utf-8")


def default_base_url() -> str:
    """``$SWITCH_BASE_URL`` (the seed SDKs' variable), else ``http://127.0.0.1:8080``."""
    return (os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def _secret_from_env() -> str:
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        raise SwitchError(0, "missing_secret", f"set {SECRET_ENV} or pass secret=")
    return secret


def _error_from_body(status: int, raw: bytes) -> SwitchError:
    """Map an error response to SwitchError, tolerating bodies not in switchd's shape."""
    try:
        error = json.loads(raw)["error"]
        return SwitchError(status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", "replace").strip()[:200]
        return SwitchError(status, f"http_{status}", text or "no error body")


def _decode(status: int, raw: bytes) -> Any:
    """A success answer's JSON (None when empty); SwitchError when it is not JSON."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise SwitchError(status, "invalid_response", "switchd's answer is not JSON") from None


# --- synchronous, seed-compatible publishing ----------------------------------------


class _NoDefaultContentType(urllib.request.BaseHandler):
    """Drop the form Content-Type urllib adds to bodies: the seed SDK sent none."""

    handler_order = 1000  # after AbstractHTTPHandler.do_request_ added it

    def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
        request.remove_header("Content-type")  # how urllib spells the name it added
        return request

    https_request = http_request


_opener = urllib.request.build_opener(_NoDefaultContentType())


def publish_event(
    topic: str,
    author: str,
    options: dict[str, Any] | None = None,
    *,
    base_url: str | None = None,
    secret: str | None = None,
    idempotency_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Publish like the seed SDK and return switchd's 202 answer (``event_id``, ...)."""
    raw = _post_publish(topic, author, options or {}, base_url, secret, idempotency_key, timeout)
    return _decode(200, raw) or {}


def _post_publish(
    topic: str,
    author: str,
    options: dict[str, Any],
    base_url: str | None,
    secret: str | None,
    idempotency_key: str | None,
    timeout: float,
) -> bytes:
    """Send the seed-shaped ``POST /publish``; the raw answer body."""
    url = (base_url.rstrip("/") if base_url else default_base_url()) + "/publish"
    token = mint_seed_token(secret or _secret_from_env(), author)
    headers = {"Authorization": f"bearer {token}", "User-Agent": USER_AGENT}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    request = urllib.request.Request(
        url, data=seed_publish_body(topic, options), headers=headers, method="POST"
    )
    return _send(request, timeout)


def _send(request: urllib.request.Request, timeout: float) -> bytes:
    """Send `request`; SwitchError for an error status, SwitchConnectionError if unreachable."""
    try:
        with _opener.open(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        exc.close()
        raise _error_from_body(exc.code, raw) from None
    except urllib.error.URLError as exc:
        raise SwitchConnectionError(request.full_url, exc.reason) from exc
    except OSError as exc:  # timeouts and resets after the connection was made
        raise SwitchConnectionError(request.full_url, exc) from exc


def publish(
    topic: str,
    author: str,
    options: dict[str, Any] | None = None,
    *,
    base_url: str | None = None,
    secret: str | None = None,
    idempotency_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> bool:
    """Publish `options` on `topic` as `author`, exactly as the seed Python SDK did.

    `options` holds the delivery fields ``body``, ``headers``, ``query_params``,
    ``path_params`` and ``http_method`` (plus anything filters should see).
    Returns ``True`` once switchd accepted the event, and ``False`` without sending
    anything when `topic` is not a string or `options` is not a dict (the seed's
    behaviour). Raises SwitchError on an error answer, SwitchConnectionError when
    switchd cannot be reached. Blocking: in async code use ``asyncio.to_thread`` or
    :class:`AsyncSwitchClient`.
    """
    options = {} if options is None else options
    if not isinstance(topic, str) or not isinstance(options, dict):
        return False
    _post_publish(topic, author, options, base_url, secret, idempotency_key, timeout)
    return True


# --- asynchronous client for the whole API ------------------------------------------


def _quote(identifier: int | str) -> str:
    return urllib.parse.quote(str(identifier), safe="")


def _param(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class AsyncSwitchClient:
    """An aiohttp client for switchd's HTTP API.

    Two kinds of credentials, each a fixed token or a secret from which a short-lived
    token for `author` is minted for each request:

    * publishing (:meth:`publish`, :meth:`refresh`): `token`, or `secret`, the
      publishers' ``SWITCH_JWT_SECRET``;
    * management (subscribers, dead letters): `admin_token`, or `admin_secret`,
      ``SWITCH_ADMIN_JWT_SECRET`` (minted tokens carry the admin scope).

    A call without credentials of its kind sends the other kind's (switchd accepts admin
    tokens for publishing, and answers 403 to a publisher token on a management call).
    A `session` passed in is used and left open; otherwise the client owns one,
    closed by :meth:`close` or by leaving ``async with``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        secret: str | None = None,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        *,
        admin_secret: str | None = None,
        admin_token: str | None = None,
        author: str = DEFAULT_AUTHOR,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = (base_url or default_base_url()).rstrip("/")
        self._credentials = {PUBLISHER: (token, secret), ADMIN: (admin_token, admin_secret)}
        self._author = author
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- plumbing --

    def _auth_headers(self, kind: str | None) -> dict[str, str]:
        """The Authorization header for a call needing `kind` credentials (None: none)."""
        if kind is None:
            return {}
        other = PUBLISHER if kind == ADMIN else ADMIN
        for token_kind in (kind, other):
            token, secret = self._credentials[token_kind]
            if secret and not token:
                admin = token_kind == ADMIN
                token = mint(secret, self._author, admin=admin, ttl=TOKEN_TTL)
            if token:
                return {"Authorization": f"Bearer {token}"}
        return {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (),
        auth: str | None = ADMIN,
    ) -> Any:
        """Call the API with `auth` credentials; the decoded JSON answer (None when empty).

        Statuses in `ok` are returned like 2xx instead of raising SwitchError.
        """
        url = self.base_url + path
        all_headers = {"User-Agent": USER_AGENT, **self._auth_headers(auth), **(headers or {})}
        try:
            async with self._client().request(
                method, url, json=json_body, params=params, headers=all_headers
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise SwitchConnectionError(url, str(exc) or type(exc).__name__) from exc
        if status >= 400 and status not in ok:
            raise _error_from_body(status, raw)
        return _decode(status, raw)

    # -- publishing --

    async def publish(
        self,
        topic: str,
        payload_or_options: dict[str, Any] | str,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Publish an event; returns ``{"event_id", "topic", "matched", "subscribers"}``.

        `payload_or_options` is the payload object (``body``, ``headers``, ...) or an
        already base64-encoded one.
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        body = {"topic": topic, "payload": payload_or_options}
        return await self._request(
            "POST", "/publish", json_body=body, headers=headers, auth=PUBLISHER
        )

    async def refresh(self) -> dict[str, Any]:
        """Make switchd reload its subscribers now; returns ``{"subscribers": count}``."""
        return await self._request("GET", "/refresh", auth=PUBLISHER)

    # -- subscribers --

    async def create_subscriber(self, **fields: Any) -> dict[str, Any]:
        """Create a subscriber; the answer shows its signing secret, this once."""
        return await self._request("POST", "/subscribers", json_body=fields)

    async def import_subscribers(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """Create subscribers in bulk, all or none; entries identical to an existing
        subscriber are skipped. Returns ``{"ids", "created", "skipped", "secrets"}``."""
        return await self._request("POST", "/subscribers/import", json_body=entries)

    async def list_subscribers(self, topic: str | None = None) -> list[dict[str, Any]]:
        """Every subscriber, or those of `topic`."""
        params = {"topic": topic} if topic is not None else None
        answer = await self._request("GET", "/subscribers", params=params)
        return list(answer["subscribers"])

    async def get_subscriber(self, subscriber_id: str) -> dict[str, Any]:
        """One subscriber by id, with the state of its endpoint (``endpoint``)."""
        return await self._request("GET", f"/subscribers/{_quote(subscriber_id)}")

    async def update_subscriber(self, subscriber_id: str, **fields: Any) -> dict[str, Any]:
        """Change some fields of a subscriber; returns it as it is now."""
        path = f"/subscribers/{_quote(subscriber_id)}"
        return await self._request("PATCH", path, json_body=fields)

    async def delete_subscriber(self, subscriber_id: str) -> None:
        """Remove a subscriber."""
        await self._request("DELETE", f"/subscribers/{_quote(subscriber_id)}")

    # -- dead letters --

    async def list_dead(self, **filters: Any) -> dict[str, Any]:
        """One page of dead letters, newest first: ``{"dead_letters": [...],
        "next_cursor": ...}``. Filters (``subscriber_id``, ``topic``, ``event_id``,
        ``replayed``, ``limit``, ``cursor``) become query parameters; None is left out."""
        params = {k: _param(v) for k, v in filters.items() if v is not None}
        return await self._request("GET", "/dead", params=params or None)

    async def get_dead(self, dead_id: int | str) -> dict[str, Any]:
        """One dead letter, payload included."""
        return await self._request("GET", f"/dead/{_quote(dead_id)}")

    async def replay_dead(self, dead_id: int | str) -> dict[str, Any]:
        """Enqueue a fresh delivery of one dead letter."""
        return await self._request("POST", f"/dead/{_quote(dead_id)}/replay")

    async def replay_dead_bulk(
        self, subscriber_id: str | None = None, topic: str | None = None
    ) -> dict[str, Any]:
        """Replay every not yet replayed dead letter of a subscriber and/or a topic;
        returns ``{"replayed": count}``."""
        selector = {"subscriber_id": subscriber_id, "topic": topic}
        selector = {k: v for k, v in selector.items() if v is not None}
        if not selector:
            raise ValueError("replay_dead_bulk needs subscriber_id or topic")
        return await self._request("POST", "/dead/replay", json_body=selector)

    async def delete_dead(self, dead_id: int | str) -> None:
        """Remove one dead letter for good."""
        await self._request("DELETE", f"/dead/{_quote(dead_id)}")

    # -- endpoints --

    async def list_endpoints(self) -> dict[str, Any]:
        """Endpoint isolation's state: ``{"endpoints": [...], "set_aside",
        "set_aside_max"}``, each endpoint with its limit, deliveries in flight, jobs set
        aside, circuit state and since when, and last error; the worst first."""
        return await self._request("GET", "/endpoints")

    # -- operations --

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok"}`` while the server's loop runs."""
        return await self._request("GET", "/healthz", auth=None)

    async def ready(self) -> dict[str, Any]:
        """``GET /readyz``: ``{"status": "ready"}``, or ``{"status": "unavailable",
        "reasons": [...]}`` when switchd answers 503 (returned, not raised)."""
        return await self._request("GET", "/readyz", ok=(503,), auth=None)
