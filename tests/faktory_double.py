"""Test doubles for the Faktory tests. `FaktoryDouble` is NOT Faktory.

FaktoryDouble is a Faktory-protocol server written for switchd's tests. It speaks the
wire protocol that switchd and the PyPI `faktory` client use, over real TCP (optionally
TLS) on 127.0.0.1: HI/HELLO with the salted, iterated SHA-256 password hash (one round
for clients older than protocol 2, as Faktory does), PUSH, PUSHB, FETCH, ACK, FAIL, BEAT,
INFO and END. It keeps the Faktory semantics the tests rely on:

- FETCH waits up to 2 s for a job and reserves it for `reserve_for` (clamped to
  60..86400 s, default 1800); an expired reservation is a failure (errtype
  ReservationExpired) and consumes a retry;
- FAIL counts failures in failure.retry_count (0 after the first) and retries while
  retry_count < retry, after n⁴ + 15 + rand(30)·(n+1) s (at failure.next_at); `retry` 0
  discards the job, exhausted retries move it to the dead set;
- PUSHB answers the refused jobs by jid (`refuse` lets a test refuse valid ones);
- BEAT answers +OK, or {"state": "quiet"|"terminate"} once the worker was signalled
  (by `signal()` or by a BEAT carrying "current_state"), never going back to running;
- PUSH with an `at` in the future keeps the job in the scheduled set until then;
- INFO gives queue sizes and, under faktory.tasks, the sizes of Busy (reservations),
  Scheduled, Retries, Dead and Workers.

Left out: persistence (`stop()` then `start()` keeps the state, like a Faktory restart
with its Redis intact), queue pausing, MUTATE, batches, the web UI. `backoff_scale` and
`reservation_scale` multiply the retry backoff and reservation durations so that tests
run in seconds; the real server's figures are the defaults.

FaktoryProxy is a TCP relay in front of a real Faktory, so that tests can cut it off
(`stop()`) and bring it back (`start()`), or make it hang (`freeze()`, `thaw()`), as they
do with the double.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import ssl
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from switchd.queue.faktory_protocol import password_hash

FETCH_WAIT = 2.0
DEFAULT_RESERVE_FOR = 1800
LINE_LIMIT = 64 * 1024 * 1024


@dataclass
class Reservation:
    """A fetched job waiting for its ACK or FAIL."""

    job: dict[str, Any]
    wid: str
    expires_at: float


def now_text(later: float = 0.0) -> str:
    """The current time (plus `later` seconds) as Faktory writes it (RFC 3339, UTC)."""
    return (datetime.now(UTC) + timedelta(seconds=later)).isoformat().replace("+00:00", "Z")


class FaktoryDouble:
    """An in-memory Faktory-protocol server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        password: str | None = None,
        *,
        backoff_scale: float = 1.0,
        reservation_scale: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
        tick: float = 0.02,
    ) -> None:
        self.password = password
        self.backoff_scale = backoff_scale
        self.reservation_scale = reservation_scale
        self.ssl_context = ssl_context
        self.tick = tick
        self.port = 0
        self.queues: defaultdict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self.working: dict[str, Reservation] = {}
        self.retries: list[tuple[float, dict[str, Any]]] = []
        self.scheduled: list[tuple[float, dict[str, Any]]] = []  # (due, job) of PUSH `at`
        self.dead: list[dict[str, Any]] = []
        self.workers: dict[str, str] = {}  # wid -> running | quiet | terminate
        self.commands: Counter[str] = Counter()
        # A test's own reason to refuse a pushed job (as Faktory refuses an invalid one).
        self.refuse: Callable[[dict[str, Any]], str | None] | None = None
        self.processed = 0
        self.failures = 0
        self._wid_connections: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._arrived = asyncio.Condition()
        self._answering = asyncio.Event()
        self._answering.set()
        self._frozen_verb: str | None = None  # freeze(only=...): hold that command's replies
        self._ticker: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The FAKTORY_URL of this server."""
        scheme = "tcp+tls" if self.ssl_context else "tcp"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (on the same port as before after a `stop()`)."""
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=self.ssl_context, limit=LINE_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        """Go away like a stopped server: refuse connections, drop the open ones."""
        if self._server is None:
            return
        self._server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        for session, writer in list(self._sessions.items()):
            writer.transport.abort()  # reads fail even if a cancellation gets swallowed
            session.cancel()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=1.0)
        await self._server.wait_closed()
        self._server = None

    def freeze(self, only: str | None = None) -> None:
        """Stop answering (connections stay open, nothing comes back), like a partition; or,
        with `only` (a verb such as "PUSHB"), hold back the replies to that command alone."""
        self._frozen_verb = only
        self._answering.clear()

    def thaw(self) -> None:
        """Answer again, held replies first."""
        self._answering.set()

    def signal(self, wid: str, state: str) -> None:
        """Ask worker `wid` to go quiet or terminate (its next BEAT tells it)."""
        self._advance(wid, state)

    # -- connections --------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = asyncio.current_task()
        assert session is not None
        self._sessions[session] = writer
        wid: str | None = None
        try:
            wid = await self._handshake(reader, writer)
            if wid is not None:
                await self._commands(reader, writer, wid)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # stop(): end quietly (asyncio logs cancelled sessions)
            pass
        finally:
            self._sessions.pop(session, None)
            if wid:
                self._wid_connections[wid] -= 1
                if self._wid_connections[wid] <= 0:
                    self.workers.pop(wid, None)
            writer.transport.abort()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> str | None:
        """HI/HELLO; the client's wid ("" for a producer), or None when refused."""
        hi: dict[str, Any] = {"v": 2}
        if self.password:
            hi.update(i=random.randint(4000, 8095), s=secrets.token_hex(8))
        if self._frozen_verb is None:
            await self._answering.wait()
        writer.write(b"+HI " + orjson.dumps(hi) + b"\r\n")
        line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 2.0)
        if not line.startswith(b"HELLO {"):
            return None
        hello = orjson.loads(line[6:])
        if self.password:
            rounds = hi["i"] if int(hello.get("v", 0)) >= 2 else 1
            expected = await asyncio.to_thread(password_hash, self.password, hi["s"], rounds)
            if not secrets.compare_digest(str(hello.get("pwdhash", "")), expected):
                writer.write(b"-ERR Invalid password\r\n")
                await writer.drain()
                return None
        wid = str(hello.get("wid") or "")
        if wid:
            self.workers.setdefault(wid, "running")
            self._wid_connections[wid] += 1
        writer.write(b"+OK\r\n")
        return wid

    async def _commands(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wid: str
    ) -> None:
        while True:
            line = (await reader.readuntil(b"\r\n"))[:-2].decode()
            verb, _, argument = line.partition(" ")
            self.commands[verb] += 1
            if verb == "END":
                return
            handler = getattr(self, "_cmd_" + verb.lower(), None)
            try:
                reply = (
                    await handler(argument, wid) if handler else _error(f"unknown command {verb}")
                )
            except (ValueError, KeyError, TypeError) as exc:
                reply = _error(f"invalid {verb}: {exc}")
            if self._frozen_verb in (None, verb):
                await self._answering.wait()
            writer.write(reply)
            await writer.drain()

    # -- commands -----------------------------------------------------------------------

    async def _cmd_push(self, argument: str, wid: str) -> bytes:
        problem = await self._push(orjson.loads(argument))
        return _error(problem) if problem else b"+OK\r\n"

    async def _cmd_pushb(self, argument: str, wid: str) -> bytes:
        errors = {}
        for job in orjson.loads(argument):
            problem = await self._push(job)
            if problem:
                errors[str(job.get("jid"))] = problem
        return _bulk(errors)

    async def _push(self, job: dict[str, Any]) -> str | None:
        if len(str(job.get("jid") or "")) < 8:
            return "jobs must have a reasonable jid parameter"
        if not job.get("jobtype"):
            return "jobs must have a jobtype parameter"
        if not isinstance(job.get("args"), list):
            return "jobs must have an args parameter"
        if self.refuse is not None and (reason := self.refuse(job)):
            return reason
        job.setdefault("queue", "default")
        job.setdefault("created_at", now_text())
        if job.get("retry") is None:
            job["retry"] = 25
        later = _seconds_until(job.get("at"))
        if later > 0:
            self.scheduled.append((time.monotonic() + later, job))
        else:
            await self._enqueue(job)
        return None

    async def _enqueue(self, job: dict[str, Any]) -> None:
        job["enqueued_at"] = now_text()
        self.queues[job["queue"]].append(job)
        async with self._arrived:
            self._arrived.notify_all()

    async def _cmd_fetch(self, argument: str, wid: str) -> bytes:
        if self.workers.get(wid, "running") != "running":
            await asyncio.sleep(FETCH_WAIT)  # quiet workers get nothing
            return b"$-1\r\n"
        names = argument.split()
        deadline = time.monotonic() + FETCH_WAIT
        while True:
            for name in names:
                if self.queues[name]:
                    return _bulk(self._reserve(self.queues[name].popleft(), wid))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"$-1\r\n"
            async with self._arrived:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)

    def _reserve(self, job: dict[str, Any], wid: str) -> dict[str, Any]:
        seconds = min(86_400, max(60, int(job.get("reserve_for") or DEFAULT_RESERVE_FOR)))
        expires = time.monotonic() + seconds * self.reservation_scale
        self.working[job["jid"]] = Reservation(job, wid, expires)
        return job

    async def _cmd_ack(self, argument: str, wid: str) -> bytes:
        if self.working.pop(orjson.loads(argument)["jid"], None) is not None:
            self.processed += 1
        return b"+OK\r\n"

    async def _cmd_fail(self, argument: str, wid: str) -> bytes:
        report = orjson.loads(argument)
        reservation = self.working.pop(report["jid"], None)
        if reservation is None:
            return _error(f"Job not found {report['jid']}")
        self._failed(reservation.job, report)
        return b"+OK\r\n"

    def _failed(self, job: dict[str, Any], report: dict[str, Any]) -> None:
        """Faktory's processFailure: count, then retry set, dead set or discard."""
        self.failures += 1
        details = {
            "message": str(report.get("message") or "unknown")[:1000],
            "errtype": str(report.get("errtype") or "unknown")[:100],
            "backtrace": list(report.get("backtrace") or [])[:50],
        }
        failure = job.get("failure")
        if failure:
            failure.update(details, retry_count=failure["retry_count"] + 1)
        else:
            job["failure"] = failure = {"retry_count": 0, "failed_at": now_text(), **details}
        retry = job["retry"]
        if retry == 0:
            return  # Faktory: no retry, no death, the job is gone
        if failure["retry_count"] < retry:
            delay = self.backoff(failure["retry_count"])
            failure["next_at"] = now_text(delay)
            self.retries.append((time.monotonic() + delay, job))
        else:
            self.dead.append(job)

    def backoff(self, count: int) -> float:
        """Seconds before retry number `count` + 1: Faktory's n⁴ + 15 + rand(30)·(n+1), scaled."""
        return (count**4 + 15 + random.randrange(30) * (count + 1)) * self.backoff_scale

    async def _cmd_beat(self, argument: str, wid: str) -> bytes:
        beat = orjson.loads(argument)
        worker = str(beat.get("wid", ""))
        if worker not in self.workers:
            return _error(f"unknown worker {worker}")
        if beat.get("current_state"):
            self._advance(worker, str(beat["current_state"]))
        state = self.workers[worker]
        return b"+OK\r\n" if state == "running" else _bulk({"state": state})

    def _advance(self, wid: str, state: str) -> None:
        order = ("running", "quiet", "terminate")
        if wid in self.workers and order.index(state) > order.index(self.workers[wid]):
            self.workers[wid] = state

    async def _cmd_info(self, argument: str, wid: str) -> bytes:
        return _bulk(self.info())

    def info(self) -> dict[str, Any]:
        """What INFO answers."""
        queues = {name: len(jobs) for name, jobs in self.queues.items()}
        return {
            "now": now_text(),
            "faktory": {
                "total_failures": self.failures,
                "total_processed": self.processed,
                "total_enqueued": sum(queues.values()),
                "total_queues": len(queues),
                "queues": queues,
                "tasks": {
                    "Busy": {"size": len(self.working)},
                    "Scheduled": {"size": len(self.scheduled)},
                    "Retries": {"size": len(self.retries)},
                    "Dead": {"size": len(self.dead)},
                    "Workers": {"size": len(self.workers)},
                },
            },
            "server": {"description": "switchd test double (not Faktory)", "faktory_version": "0"},
        }

    # -- time ---------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Move due retries and scheduled jobs to their queues; expire overdue
        reservations."""
        while True:
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            due = [job for at, job in self.retries + self.scheduled if at <= now]
            self.retries = [(at, job) for at, job in self.retries if at > now]
            self.scheduled = [(at, job) for at, job in self.scheduled if at > now]
            for job in due:
                await self._enqueue(job)
            for jid, reservation in list(self.working.items()):
                if reservation.expires_at <= now:
                    del self.working[jid]
                    report = {
                        "errtype": "ReservationExpired",
                        "message": "Faktory job reservation expired",
                    }
                    self._failed(reservation.job, report)


def _seconds_until(at: Any) -> float:
    """Seconds until a job's `at` (RFC 3339); 0 when it has none or it has passed."""
    if not at:
        return 0.0
    return max(0.0, (datetime.fromisoformat(str(at)) - datetime.now(UTC)).total_seconds())


def _bulk(data: Any) -> bytes:
    body = orjson.dumps(data)
    return b"$%d\r\n%s\r\n" % (len(body), body)


def _error(message: str) -> bytes:
    return f"-ERR {message}\r\n".encode()


class FaktoryProxy:
    """A TCP relay on 127.0.0.1 in front of a real Faktory, to cut it off and restore it."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def freeze(self) -> None:
        """Hold every byte in both directions (connections stay open), like a partition."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Relay again."""
        self._flowing.set()

    async def start(self) -> None:
        """Relay connections (on the same port as before after a `stop()`)."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones, as if Faktory went away."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        try:
            await asyncio.gather(
                _pipe(reader, upstream_writer, self._flowing),
                _pipe(upstream_reader, writer, self._flowing),
            )
        except asyncio.CancelledError:  # the test's loop is closing: end quietly
            pass
        finally:
            for w in (writer, upstream_writer):
                self._writers.discard(w)
                w.transport.abort()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
