"""A small asyncio client of the Faktory wire protocol.

Faktory answers line commands (`VERB [json]\\r\\n`) with RESP-framed replies: `+simple`,
`-ERR message`, `:integer`, `$len\\r\\n<bytes>\\r\\n` (`$-1` is nil). On connect the
server greets with `+HI {"v":2}` (plus `"s"` salt and `"i"` iterations when it has a
password); the client answers `HELLO {...}` carrying `pwdhash`, the hex SHA-256 of
password + salt hashed again `i - 1` times, and the server says `+OK` or
`-ERR Invalid password`.

One connection runs one command at a time. A command cut short (timeout, cancellation,
broken socket) leaves the stream at an unknown place, so the connection is closed and
must not be reused. A command may also be *deferred*: it goes out in the same write as the
connection's next command (Faktory reads them in order and answers each in turn), or on
its own within this turn of the event loop when no other command comes; a future gets
its reply. That saves a write and a wait per job when an ACK rides with the next FETCH.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

PROTOCOL_VERSION = 2
DEFAULT_PORT = 7419
HANDSHAKE_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
FETCH_BLOCK = 2.0  # the server holds a FETCH up to 2 s waiting for a job
READ_LIMIT = 64 * 1024 * 1024


class FaktoryError(OSError):
    """Any failure talking to Faktory (an OSError, like the network errors behind most)."""


class FaktoryUnavailable(FaktoryError):
    """Faktory could not be reached, or the connection broke or timed out mid-command."""


class FaktoryTimeout(FaktoryUnavailable):
    """Faktory did not answer in time (it may be overloaded, or the network partitioned)."""


class FaktoryAuthError(FaktoryError):
    """Authentication failed: wrong or missing password, or a TLS certificate that does
    not verify. A configuration problem: retrying will not help."""


class FaktoryProtocolError(FaktoryError):
    """The server said something this client does not understand."""


class FaktoryReplyError(FaktoryError):
    """The server answered a command with an error; the connection is still usable."""


@dataclass(frozen=True)
class FaktoryAddress:
    """Where Faktory listens, from `tcp://[:password@]host:port` or `tcp+tls://…`."""

    host: str
    port: int
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> FaktoryAddress:
        """Parse a Faktory URL; ValueError when it is not one."""
        parts = urlsplit(url)
        if parts.scheme not in ("tcp", "tcp+tls") or not parts.hostname:
            raise ValueError(
                f"not a Faktory URL: expected tcp://[:password@]host:port, got {url!r}"
            )
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, parts.port or DEFAULT_PORT, password, parts.scheme == "tcp+tls")

    def __str__(self) -> str:
        """The address without its password, fit for logs and error messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tcp+tls' if self.tls else 'tcp'}://{host}:{self.port}"


def password_hash(password: str, salt: str, iterations: int) -> str:
    """Faktory's `pwdhash`: SHA-256 of password + salt, re-hashed until `iterations`."""
    digest = hashlib.sha256((password + salt).encode()).digest()
    for _ in range(max(1, iterations) - 1):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


class FaktoryConnection:
    """One open, authenticated connection to Faktory."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: FaktoryAddress
    ) -> None:
        self.address = address
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self.closed = False
        self._deferred: list[tuple[bytes, asyncio.Future[Any]]] = []  # not yet written
        self._unanswered: deque[asyncio.Future[Any]] = deque()  # written, reply not read
        self._flushing: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        address: FaktoryAddress,
        *,
        wid: str | None = None,
        labels: Sequence[str] = ("switchd",),
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> FaktoryConnection:
        """Connect and complete the HI/HELLO handshake (as a worker when `wid` is given).

        `ssl_context` is used for `tcp+tls://` addresses (default: the system's CAs)."""
        context = (ssl_context or ssl.create_default_context()) if address.tls else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, address.port, ssl=context, limit=READ_LIMIT),
                timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise FaktoryAuthError(f"TLS certificate of Faktory at {address}: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            raise FaktoryUnavailable(
                f"cannot connect to Faktory at {address}: {_describe(exc)}"
            ) from exc
        connection = cls(reader, writer, address)
        try:
            await connection._guarded(connection._handshake(wid, list(labels)), timeout)
        except FaktoryReplyError:  # refused: this connection is of no further use
            connection.abort()
            raise
        return connection

    async def _handshake(self, wid: str | None, labels: list[str]) -> None:
        greeting = await self._read_reply()
        if not isinstance(greeting, str) or not greeting.startswith("HI "):
            raise FaktoryProtocolError(
                f"{self.address} is not Faktory: it greeted {greeting!r:.80}"
            )
        hi = _json_object(greeting[3:].encode())
        try:
            salt, iterations = (str(hi["s"]), int(hi.get("i", 1))) if "s" in hi else (None, 0)
        except (TypeError, ValueError):
            raise FaktoryProtocolError(f"bad HI from {self.address}: {greeting!r:.80}") from None
        hello: dict[str, Any] = {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "labels": labels,
            "v": PROTOCOL_VERSION,
        }
        if wid:
            hello["wid"] = wid
        if salt is not None:
            hello["pwdhash"] = await self._password_hash(salt, iterations)
        self._send("HELLO", hello)
        try:
            reply = await self._read_reply()
        except FaktoryReplyError as exc:
            if "password" in str(exc).lower():
                raise FaktoryAuthError(
                    f"Faktory at {self.address} rejected the password given in FAKTORY_URL"
                ) from None
            raise
        if reply != "OK":
            raise FaktoryProtocolError(
                f"Faktory at {self.address} answered HELLO with {reply!r:.80}"
            )

    async def _password_hash(self, salt: str, iterations: int) -> str:
        if not self.address.password:
            raise FaktoryAuthError(
                f"Faktory at {self.address} requires a password: "
                "give it in FAKTORY_URL as tcp://:PASSWORD@host:port"
            )
        # Thousands of SHA-256 rounds: keep them off the event loop.
        return await asyncio.to_thread(password_hash, self.address.password, salt, iterations)

    async def call(
        self, command: str, payload: Any = None, timeout: float = COMMAND_TIMEOUT
    ) -> Any:
        """Send `command` (with `payload` as JSON) and return the reply: a str for
        `+`, bytes for `$`, None for nil, an int for `:`; `-` raises FaktoryReplyError."""
        async with self._lock:
            if self.closed:
                raise FaktoryUnavailable(f"connection to Faktory at {self.address} is closed")
            self._send(command, payload)
            return await self._guarded(self._drain_and_read(), timeout)

    def defer(self, command: str, payload: Any = None) -> asyncio.Future[Any]:
        """Send `command` with this connection's next command, or within this turn of the
        event loop; the future gets its reply, a FaktoryReplyError, or, when the connection
        broke before the reply was read, a FaktoryUnavailable (it may have been applied)."""
        answer = asyncio.get_running_loop().create_future()
        if self.closed:
            answer.set_exception(self._broken())
            return answer
        self._deferred.append((_line(command, payload), answer))
        if len(self._deferred) == 1:
            asyncio.get_running_loop().call_soon(self._flush_left)
        return answer

    def _flush_left(self) -> None:
        """After the turn that deferred commands: send those no command took along."""
        if self._deferred and self._flushing is None:
            self._flushing = asyncio.create_task(self._flush_all(), name="faktory-deferred")

    async def _flush_all(self) -> None:
        try:
            while self._deferred and not self.closed:  # also those deferred meanwhile
                await self.flush()
        except FaktoryError:
            pass  # their futures hold the error
        finally:
            self._flushing = None

    async def flush(self, timeout: float = COMMAND_TIMEOUT) -> None:
        """Send the deferred commands now, if any, and read their replies."""
        async with self._lock:
            if self._deferred and not self.closed:
                self._send_deferred(b"")
                await self._guarded(self._drain_and_read(own=False), timeout)

    async def _guarded(self, work: Any, timeout: float) -> Any:
        """Await `work` within `timeout`; any failure but an error reply closes the connection."""
        try:
            return await asyncio.wait_for(work, timeout)
        except FaktoryReplyError:
            raise
        except BaseException as exc:
            self.abort()
            if isinstance(exc, TimeoutError):
                raise FaktoryTimeout(
                    f"Faktory at {self.address}: no answer in {timeout:g} s"
                ) from exc
            if isinstance(exc, FaktoryError) or not isinstance(exc, OSError | EOFError):
                raise
            raise FaktoryUnavailable(f"Faktory at {self.address}: {_describe(exc)}") from exc

    async def _drain_and_read(self, own: bool = True) -> Any:
        """Read the replies of the deferred commands just sent, then (`own`) the command's."""
        await self._writer.drain()
        while self._unanswered:
            try:
                reply = await self._read_reply()
            except FaktoryReplyError as exc:
                self._unanswered.popleft().set_exception(exc)
            else:
                self._unanswered.popleft().set_result(reply)
        return await self._read_reply() if own else None

    def _send(self, command: str, payload: Any) -> None:
        """Write the command, after any deferred ones (all in one write)."""
        self._send_deferred(_line(command, payload))

    def _send_deferred(self, then: bytes) -> None:
        lines = [line for line, _ in self._deferred]
        self._unanswered.extend(answer for _, answer in self._deferred)
        self._deferred.clear()
        self._writer.write(b"".join(lines) + then)

    def _broken(self) -> FaktoryUnavailable:
        return FaktoryUnavailable(
            f"connection to Faktory at {self.address} closed before Faktory answered"
        )

    async def _read_reply(self) -> Any:
        line = await self._reader.readuntil(b"\r\n")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            raise FaktoryReplyError(f"Faktory at {self.address}: {body.decode(errors='replace')}")
        if kind in (b"$", b":"):
            try:
                number = int(body)
            except ValueError:
                raise FaktoryProtocolError(f"bad reply from {self.address}: {line!r:.80}") from None
            if kind == b":":
                return number
            return None if number < 0 else (await self._reader.readexactly(number + 2))[:-2]
        raise FaktoryProtocolError(f"bad reply from {self.address}: {line!r:.80}")

    async def _ok(self, command: str, payload: Any) -> None:
        reply = await self.call(command, payload)
        if reply != "OK":
            raise FaktoryProtocolError(f"{command} got {reply!r:.80} from {self.address}")

    async def push(self, job: dict[str, Any]) -> None:
        """PUSH one job."""
        await self._ok("PUSH", job)

    async def push_bulk(
        self, jobs: list[dict[str, Any]], timeout: float = COMMAND_TIMEOUT
    ) -> dict[str, str]:
        """PUSHB several jobs in one round trip; return {jid: error} for those refused."""
        reply = await self.call("PUSHB", jobs, timeout)
        return {str(k): str(v) for k, v in _json_object(reply).items()} if reply else {}

    async def fetch(self, queues: Sequence[str]) -> dict[str, Any] | None:
        """FETCH a job from `queues` (the server waits up to 2 s for one); None if none."""
        reply = await self.call("FETCH " + " ".join(queues), timeout=FETCH_BLOCK + COMMAND_TIMEOUT)
        return None if reply is None else _json_object(reply)

    async def ack(self, jid: str) -> None:
        """ACK a fetched job: it is done."""
        await self._ok("ACK", {"jid": jid})

    async def fail(self, jid: str, errtype: str, message: str, backtrace: list[str]) -> None:
        """FAIL a fetched job: Faktory schedules a retry or moves it to its dead set."""
        failure = {"jid": jid, "errtype": errtype, "message": message, "backtrace": backtrace}
        await self._ok("FAIL", failure)

    async def beat(self, wid: str, current_state: str | None = None) -> str:
        """BEAT for worker `wid`; return the state Faktory wants: running, quiet or terminate."""
        payload = (
            {"wid": wid} if current_state is None else {"wid": wid, "current_state": current_state}
        )
        reply = await self.call("BEAT", payload)
        if reply == "OK":
            return "running"
        data = _json_object(reply)
        return str(data.get("state") or data.get("signal") or "running")  # "signal": Faktory < 1.0

    async def info(self) -> dict[str, Any]:
        """INFO: the server's queue sizes and statistics."""
        return _json_object(await self.call("INFO"))

    async def close(self) -> None:
        """Say END and close; a connection busy with a command is just closed."""
        if not self.closed and not self._lock.locked():
            with contextlib.suppress(OSError, RuntimeError):
                self._send("END", None)
        self.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    def abort(self) -> None:
        """Close the socket at once; deferred commands not answered get an error."""
        self.closed = True
        self._writer.close()
        unanswered = [*self._unanswered, *(answer for _, answer in self._deferred)]
        self._unanswered.clear()
        self._deferred.clear()
        for answer in unanswered:
            if not answer.done():
                answer.set_exception(self._broken())


def _line(command: str, payload: Any) -> bytes:
    text = command if payload is None else f"{command} {orjson.dumps(payload).decode()}"
    return text.encode() + b"\r\n"


def _json_object(raw: Any) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise FaktoryProtocolError(f"expected a JSON object from Faktory: {exc}") from None
    if not isinstance(data, dict):
        raise FaktoryProtocolError("expected a JSON object from Faktory")
    return data


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed by the server"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
