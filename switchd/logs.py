"""structlog set-up: JSON lines when not on a TTY (or when asked), readable text otherwise."""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from typing import Any, TextIO

import orjson
import structlog

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
FLUSH_SECONDS = 0.01  # how long a line may wait for the write that carries it


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Route structlog (and stdlib logging) to stderr at `level` in format `fmt`."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    writer = BatchedWriter(sys.stderr)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            Timestamper(),
            structlog.processors.dict_tracebacks if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(LEVELS[level], logging.WARNING), stream=sys.stderr)


class BatchedWriter:
    """A structlog logger writing its lines to stderr at most every FLUSH_SECONDS.

    A busy loop logs thousands of lines a second (one per delivery attempt); one write
    for all of them saves a system call each, and each call gives the GIL up. Outside a
    running loop lines go at once; at exit, what is queued is written."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # where a flush is due
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        """Queue one line; schedule the write."""
        self._lines.append(message + "\n")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._flush_loop is not loop:  # none due, or due on a loop that has ended
            self._flush_loop = loop
            loop.call_later(FLUSH_SECONDS, self.flush)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg

    def flush(self) -> None:
        """Write the queued lines."""
        self._flush_loop = None
        lines, self._lines = self._lines, []
        if lines:
            self._stream.write("".join(lines))
            self._stream.flush()


class Timestamper:
    """Adds ISO 8601 UTC time with microseconds, as structlog's TimeStamper("iso") does,
    formatting the date and time of day once per second rather than once per line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: object, __: str, event: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event


def _dumps(data: object, **_: object) -> str:
    return orjson.dumps(data, default=str).decode()
