"""A lean HTTP/1.1 client for deliveries: keep-alive connections per origin, one request
at a time per connection, responses parsed by httptools (llhttp, in C).

Why not aiohttp's client: a delivery needs one request, a status, one header
(Retry-After) and the start of the body. Against the same sink, aiohttp's client spent
124–210 µs of CPU per request on the dev machine, a prototype of this one 43–44 µs
(README, "Performance"), and the delivery path is CPU-bound. Redirects are never
followed and no proxy is used, as before.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools

MAX_HEAD_BYTES = 64 * 1024  # status line and headers of a response
MAX_DRAIN_BYTES = 64 * 1024  # body read beyond the excerpt before giving up the connection
SWEEP_SECONDS = 5.0
BODYLESS_REQUESTS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})


@dataclass(frozen=True)
class HttpResponse:
    """What a delivery needs of a response."""

    status: int
    retry_after: str | None
    body: bytes  # at most the excerpt asked for


@dataclass(frozen=True)
class Target:
    """Where a request goes, parsed from an absolute http(s) URL."""

    origin: tuple[str, str, int]  # scheme, host, port
    host_header: str
    path: str
    authorization: str | None  # Basic credentials from the URL's user info

    @classmethod
    @functools.lru_cache(maxsize=4096)
    def parse(cls, url: str) -> Target:
        """The target of `url`; ValueError when it is not an absolute http(s) URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an absolute http(s) URL: {url[:100]}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authorization = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
        return cls(
            origin=(parts.scheme, parts.hostname, port),
            host_header=host if port == default else f"{host}:{port}",
            path=path,
            authorization=authorization,
        )


class ResponseError(ConnectionError):
    """The peer's answer was not a usable HTTP response."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._timer: asyncio.TimerHandle | None = None
        self._reset(None, 0, head_only=False)

    def _reset(self, waiter: asyncio.Future[None] | None, excerpt: int, head_only: bool) -> None:
        self._waiter = waiter
        self._excerpt = excerpt
        self._head_only = head_only
        self._head_bytes = 0
        self._headers_done = False
        self._complete = False
        self.received_any = False
        self.status = 0
        self.retry_after: str | None = None
        self.body = bytearray()
        self._body_seen = 0
        self.reusable = False

    def begin(
        self, data: bytes, excerpt: int, head_only: bool, deadline: float
    ) -> asyncio.Future[None]:
        """Send one request; the future resolves when the response is read, or fails with
        TimeoutError (closing the connection) if it is not read by `deadline` (loop time).
        A timer of the loop's costs a fraction of `asyncio.timeout` for each request."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._reset(waiter, excerpt, head_only)
        self._timer = loop.call_at(deadline, self._fail, TimeoutError())
        assert self.transport is not None
        self.transport.write(data)
        return waiter

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if not self._headers_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish(reusable=False)
        except httptools.HttpParserError as exc:
            self._fail(ResponseError(f"invalid HTTP response: {exc}"))
        if not self._headers_done and self._head_bytes > MAX_HEAD_BYTES:
            self._fail(ResponseError(f"response headers exceed {MAX_HEAD_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._headers_done and not self._complete:
            self._finish(reusable=False)  # a body delimited by the connection's end
        else:
            self._fail(ConnectionResetError("the server closed the connection before answering"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:
            self.retry_after = None  # an interim response: the real one follows
            return
        self._headers_done = True
        if self._head_only:
            self._finish(reusable=False)  # no body follows, whatever Content-Length says

    def on_body(self, body: bytes) -> None:
        room = self._excerpt - len(self.body)
        if room > 0:
            self.body += body[:room]
        self._body_seen += len(body)
        if self._body_seen > self._excerpt + MAX_DRAIN_BYTES:
            self._finish(reusable=False)

    def on_message_complete(self) -> None:
        if self._headers_done:
            self._finish(reusable=self._parser.should_keep_alive())

    def _finish(self, reusable: bool) -> None:
        self._complete = True
        self.reusable = reusable and not self.closed
        self._stop_timer()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def close(self) -> None:
        """Close the connection now."""
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class HttpClient:
    """Keep-alive HTTP/1.1 connections per origin, for one request per call."""

    def __init__(self, keepalive: float = 30.0, tls: ssl.SSLContext | None = None) -> None:
        self.keepalive = keepalive
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl = tls  # made on first use unless given
        self._swept = time.monotonic()

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        excerpt: int,
    ) -> HttpResponse:
        """Send one request and read its response; `timeout` bounds it all, connect included.

        Raises TimeoutError, OSError (ConnectionError included) or ValueError (a URL or
        header that cannot be sent)."""
        target = Target.parse(url)
        data = _serialize(method, target, headers, body)
        head_only = method == "HEAD"
        deadline = asyncio.get_running_loop().time() + timeout
        connection = self._idle_connection(target.origin)
        reused = connection is not None
        if connection is None:
            connection = await self._connect(target.origin, deadline)
        try:
            try:
                await connection.begin(data, excerpt, head_only, deadline)
            except ConnectionError:
                if not reused or connection.received_any:
                    raise
                # A kept-alive connection the server closed as we reused it: once more.
                connection = await self._connect(target.origin, deadline)
                await connection.begin(data, excerpt, head_only, deadline)
        except BaseException:
            connection.close()  # failed, timed out or cancelled mid-response
            raise
        self._release(target.origin, connection)
        return HttpResponse(connection.status, connection.retry_after, bytes(connection.body))

    def _idle_connection(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed and time.monotonic() - connection.idle_since < self.keepalive:
                return connection
            connection.close()
        return None

    async def _connect(self, origin: tuple[str, str, int], deadline: float) -> _Connection:
        """A new connection (TLS handshake included) by `deadline`, else TimeoutError."""
        scheme, host, port = origin
        tls = self._tls() if scheme == "https" else None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(deadline):
            _, connection = await loop.create_connection(
                _Connection, host, port, ssl=tls, server_hostname=host if tls else None
            )
        return connection

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _release(self, origin: tuple[str, str, int], connection: _Connection) -> None:
        if not connection.reusable or connection.closed:
            connection.close()
            return
        now = time.monotonic()
        connection.idle_since = now
        self._idle.setdefault(origin, []).append(connection)
        if now - self._swept > SWEEP_SECONDS:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Close connections idle beyond the keep-alive time."""
        self._swept = now
        for origin, idle in list(self._idle.items()):
            fresh = [c for c in idle if not c.closed and now - c.idle_since < self.keepalive]
            for connection in idle:
                if connection not in fresh:
                    connection.close()
            if fresh:
                self._idle[origin] = fresh
            else:
                del self._idle[origin]

    async def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def _serialize(
    method: str, target: Target, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    """The request's bytes: request line, headers, body."""
    lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.host_header}"]
    given = {name.lower() for name in headers}
    if "accept" not in given:
        lines.append("Accept: */*")
    if target.authorization and "authorization" not in given:
        lines.append(f"Authorization: {target.authorization}")
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    elif method not in BODYLESS_REQUESTS:
        lines.append("Content-Length: 0")
    head = "\n".join(lines)
    if "\r" in head or "\0" in head or head.count("\n") != len(lines) - 1:
        raise ValueError("a header or the URL contains a line break or NUL")
    encoded = (head.replace("\n", "\r\n") + "\r\n\r\n").encode()
    return encoded + body if body else encoded
