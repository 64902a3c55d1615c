"""Grouped pushes: concurrent publishes share one PUSHB, as concurrent writes share one
SQLite commit (db.py).

A publish that finds no PUSHB out sends its own at once, in its own task (no wait when
publishes are sparse). One that comes while a PUSHB is out hands its jobs over and waits:
up to `lanes` sender tasks each take whatever is waiting (whole publishes, about
`max_bytes` of jobs at most unless one publish alone is bigger) and push it as one PUSHB;
jobs that arrive meanwhile wait for the next free lane. Faktory answers a PUSHB with the
jids it refused, so each publish gets its own answer: the refusals of its own jobs. When
a PUSHB fails as a whole (the connection broke, no answer in time), every publish of that
group gets the error. A publish cancelled before its group is sent takes its jobs back;
once sent, they may be stored.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from switchd.queue.faktory_protocol import FaktoryUnavailable

Jobs = list[dict[str, Any]]
Refused = dict[str, str]  # jid -> Faktory's error


@dataclass
class _Waiting:
    """One publish's jobs waiting for a PUSHB, and its answer."""

    jobs: Jobs
    size: int
    answer: asyncio.Future[Refused] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class PushGroups:
    """Concurrent pushes grouped into as few PUSHBs as `lanes` senders allow."""

    def __init__(self, send: Callable[[Jobs], Awaitable[Refused]], lanes: int, max_bytes: int):
        self._send = send  # one PUSHB; raises when Faktory did not answer it
        self._lanes = lanes
        self._max_bytes = max_bytes
        self._waiting: deque[_Waiting] = deque()
        self._senders: set[asyncio.Task[None]] = set()
        self._starting = 0  # senders not yet run: they will take what is waiting
        self._out = 0  # PUSHBs sent and not yet answered
        self._alone = 0  # of those, sent by _send_alone
        self._closed = False
        self.groups = 0  # PUSHBs sent so far

    async def push(self, jobs: Jobs, size: int) -> Refused:
        """Push `jobs` (about `size` bytes) with the next PUSHB; the refused ones, by jid.
        Raises what the PUSHB raised when it failed as a whole."""
        if self._closed:
            raise FaktoryUnavailable("switchd is stopping")
        if not self._out and not self._waiting:
            return await self._send_alone(jobs)
        waiting = _Waiting(jobs, size)
        self._waiting.append(waiting)
        self._start_lane()
        return await waiting.answer  # a cancelled publish cancels its answer

    def _start_lane(self) -> None:
        """A sender for what is waiting, unless one is about to run or none is free."""
        busy = len(self._senders) + self._alone
        if self._waiting and not self._starting and busy < self._lanes:
            self._starting += 1
            sender = asyncio.create_task(self._run_lane(), name="faktory-pushb")
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)

    async def close(self) -> None:
        """Stop the senders; publishes still waiting, or coming, get an error."""
        self._closed = True
        for sender in list(self._senders):
            sender.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        _fail(list(self._waiting), FaktoryUnavailable("switchd is stopping"))
        self._waiting.clear()

    async def _run_lane(self) -> None:
        self._starting -= 1
        while group := self._take_group():
            await self._send_group(group)

    def _take_group(self) -> list[_Waiting]:
        """Whole publishes from the front, about `max_bytes` at most (at least one)."""
        group: list[_Waiting] = []
        size = 0
        while self._waiting:
            waiting = self._waiting[0]
            if group and size + waiting.size > self._max_bytes:
                break
            self._waiting.popleft()
            if not waiting.answer.done():  # else its publish was cancelled while it waited
                group.append(waiting)
                size += waiting.size
        return group

    async def _send_alone(self, jobs: Jobs) -> Refused:
        """One publish's own PUSHB, in its own task (it takes a lane meanwhile)."""
        self.groups += 1
        self._out += 1
        self._alone += 1
        try:
            return await self._send(jobs)
        finally:
            self._out -= 1
            self._alone -= 1
            self._start_lane()  # for those that came meanwhile, if every lane was taken

    async def _send_group(self, group: list[_Waiting]) -> None:
        self.groups += 1
        self._out += 1
        try:
            refused = await self._send([job for waiting in group for job in waiting.jobs])
        except Exception as exc:
            _fail(group, exc)
            return
        except BaseException:  # cancelled (close): its publishes must not wait for ever
            _fail(group, FaktoryUnavailable("switchd is stopping"))
            raise
        finally:
            self._out -= 1
        for waiting in group:
            if not waiting.answer.done():
                mine = (job["jid"] for job in waiting.jobs)
                waiting.answer.set_result({jid: refused[jid] for jid in mine if jid in refused})


def _fail(group: list[_Waiting], exc: Exception) -> None:
    for waiting in group:
        if not waiting.answer.done():
            waiting.answer.set_exception(exc)
