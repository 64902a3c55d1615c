"""PushGroups on its own: how publishes are grouped, answered, cancelled and stopped.

The sender given to PushGroups here records each group instead of talking to Faktory (the
Faktory tests run the same code against the double and a real server)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from switchd.queue.faktory_protocol import FaktoryUnavailable
from switchd.queue.push_groups import Jobs, PushGroups, Refused


class Recorder:
    """A PUSHB sender that records each group, refuses jids named in `refuse`, fails the
    group numbered `fail_group` and waits for `release` before answering (set at first:
    answers at once)."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.refuse: dict[str, str] = {}
        self.fail_group: int | None = None
        self.release = asyncio.Event()
        self.release.set()

    async def send(self, jobs: Jobs) -> Refused:
        self.groups.append([job["jid"] for job in jobs])
        number = len(self.groups) - 1
        await asyncio.sleep(0)  # a PUSHB always waits for its answer
        await self.release.wait()
        if number == self.fail_group:
            raise FaktoryUnavailable("connection closed by the server")
        return {job["jid"]: self.refuse[job["jid"]] for job in jobs if job["jid"] in self.refuse}


def jobs(*jids: str) -> list[dict[str, Any]]:
    return [{"jid": jid} for jid in jids]


async def test_the_first_goes_at_once_the_next_share_a_group_with_their_own_refusals():
    recorder = Recorder()
    recorder.refuse = {"b2": "refused", "a1": "refused too"}
    pushes = PushGroups(recorder.send, lanes=4, max_bytes=1000)
    answers = await asyncio.gather(
        pushes.push(jobs("a1"), 10), pushes.push(jobs("b1", "b2"), 20), pushes.push(jobs("c1"), 10)
    )
    assert recorder.groups == [["a1"], ["b1", "b2", "c1"]] and pushes.groups == 2
    assert answers == [{"a1": "refused too"}, {"b2": "refused"}, {}]


async def test_a_group_stops_at_max_bytes_but_never_splits_a_publish():
    recorder = Recorder()
    pushes = PushGroups(recorder.send, lanes=1, max_bytes=100)
    await asyncio.gather(
        pushes.push(jobs("a1"), 60),
        pushes.push(jobs("b1"), 60),
        pushes.push(jobs("c1", "c2"), 500),
        pushes.push(jobs("d1"), 10),
    )
    assert recorder.groups == [["a1"], ["b1"], ["c1", "c2"], ["d1"]]


async def test_publishes_wait_for_a_free_lane_and_then_go_together():
    recorder = Recorder()
    recorder.release.clear()
    pushes = PushGroups(recorder.send, lanes=1, max_bytes=1000)
    first = asyncio.create_task(pushes.push(jobs("a1"), 10))
    await asyncio.sleep(0.01)  # its PUSHB is out; the next ones wait
    later = [asyncio.create_task(pushes.push(jobs(jid), 10)) for jid in ("b1", "c1")]
    await asyncio.sleep(0.01)
    assert recorder.groups == [["a1"]]
    recorder.release.set()
    assert await asyncio.gather(first, *later) == [{}, {}, {}]
    assert recorder.groups == [["a1"], ["b1", "c1"]]


async def test_a_failed_pushb_fails_every_publish_of_its_group_and_no_other():
    recorder = Recorder()
    recorder.release.clear()
    recorder.fail_group = 1
    pushes = PushGroups(recorder.send, lanes=1, max_bytes=1000)
    first = asyncio.create_task(pushes.push(jobs("a1"), 10))
    await asyncio.sleep(0.01)
    group = [asyncio.create_task(pushes.push(jobs(jid), 10)) for jid in ("b1", "c1")]
    await asyncio.sleep(0.01)
    recorder.release.set()
    results = await asyncio.gather(first, *group, return_exceptions=True)
    assert results[0] == {}
    assert all(isinstance(r, FaktoryUnavailable) for r in results[1:])
    assert await pushes.push(jobs("d1"), 10) == {}  # the next group is sent afresh
    assert recorder.groups == [["a1"], ["b1", "c1"], ["d1"]]


async def test_a_publish_cancelled_before_its_group_went_out_is_not_pushed():
    recorder = Recorder()
    recorder.release.clear()
    pushes = PushGroups(recorder.send, lanes=1, max_bytes=1000)
    first = asyncio.create_task(pushes.push(jobs("a1"), 10))
    await asyncio.sleep(0.01)
    cancelled = asyncio.create_task(pushes.push(jobs("b1"), 10))
    kept = asyncio.create_task(pushes.push(jobs("c1"), 10))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    recorder.release.set()
    assert await asyncio.gather(first, kept) == [{}, {}]
    assert cancelled.cancelled()
    assert recorder.groups == [["a1"], ["c1"]]


async def test_close_fails_the_grouped_publishes_and_refuses_new_ones():
    recorder = Recorder()
    recorder.release.clear()
    pushes = PushGroups(recorder.send, lanes=2, max_bytes=1000)
    alone = asyncio.create_task(pushes.push(jobs("a1"), 10))
    await asyncio.sleep(0.01)
    sent = asyncio.create_task(pushes.push(jobs("b1"), 10))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(pushes.push(jobs("c1"), 10))
    await asyncio.sleep(0.01)
    await pushes.close()
    for task in (sent, waiting):
        with pytest.raises(FaktoryUnavailable, match="stopping"):
            await task
    with pytest.raises(FaktoryUnavailable, match="stopping"):
        await pushes.push(jobs("d1"), 10)
    recorder.release.set()
    assert await alone == {}  # its own PUSHB, in its own task, ends as it would
    assert recorder.groups == [["a1"], ["b1"]]
