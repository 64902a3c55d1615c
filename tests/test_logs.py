"""The batched log writer: lines of a busy loop share one write, and none is left behind."""

from __future__ import annotations

import asyncio
import io

from switchd.logs import FLUSH_SECONDS, BatchedWriter


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_outside_a_loop_are_written_at_once() -> None:
    stream = CountingStream()
    BatchedWriter(stream).msg("one")
    assert stream.getvalue() == "one\n"


async def test_lines_of_a_busy_loop_share_one_write() -> None:
    stream = CountingStream()
    writer = BatchedWriter(stream)
    for n in range(100):
        writer.msg(f"line {n}")
    assert stream.getvalue() == ""  # not yet: they wait for the flush
    await asyncio.sleep(FLUSH_SECONDS * 5)
    assert stream.getvalue() == "".join(f"line {n}\n" for n in range(100))
    assert stream.writes == 1


def test_a_line_left_by_a_loop_that_ended_goes_out_with_the_next_loops_lines() -> None:
    stream = CountingStream()
    writer = BatchedWriter(stream)

    async def log(message: str, wait: float) -> None:
        writer.msg(message)
        await asyncio.sleep(wait)

    asyncio.run(log("from the first loop", 0))  # ends before its flush is due
    asyncio.run(log("from the second loop", FLUSH_SECONDS * 5))
    assert stream.getvalue() == "from the first loop\nfrom the second loop\n"
