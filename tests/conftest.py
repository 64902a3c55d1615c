"""Shared test parts: a real HTTP sink, a real switchd on a real SQLite file."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from switchd.auth import mint
from switchd.config import Settings
from switchd.http_api import create_app
from switchd.service import Switchd
from tests.real_faktory import BINARY, RealFaktory
from tests.real_faktory import free_port as free_port  # for the tests that import it from here

SECRET = "test-secret-of-at-least-thirty-two-bytes!"  # publishers' (SWITCH_JWT_SECRET)
ADMIN_SECRET = "test-admin-secret-of-at-least-thirty-two-bytes"  # SWITCH_ADMIN_JWT_SECRET
FAST = {
    "retry_schedule": (0.1, 0.1, 0.1),
    "quick_retries": 2,
    "quick_retry_max_wait": 0.02,
    "delivery_timeout": 2.0,
    "shutdown_grace": 2.0,
}


@dataclass
class Received:
    """One request as the sink saw it."""

    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Sink:
    """A subscriber endpoint on 127.0.0.1 that records requests and answers as scripted."""

    base_url: str = ""
    requests: list[Received] = field(default_factory=list)
    script: deque[int] = field(default_factory=deque)  # statuses to answer, then `status`
    status: int = 200
    delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hook") -> str:
        return self.base_url + path

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            Received(
                request.method,
                request.raw_path.split("?")[0],
                request.query_string,
                request.headers,
                body,
                time.time(),
            )
        )
        self._arrived.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            status = self.script.popleft() if self.script else self.status
            return web.Response(
                status=status, text=f"status {status}", headers=self.response_headers
            )
        finally:
            self.in_flight -= 1

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least `count` requests arrived; fail the test otherwise."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"sink got {len(self.requests)} requests, expected {count}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            except TimeoutError:
                continue
        return self.requests


async def start_site(app: web.Application, port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve `app` on 127.0.0.1 (a free port unless given); return the runner and base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def serve_sink() -> tuple[Sink, web.AppRunner]:
    """A Sink served on 127.0.0.1; clean the runner up when done."""
    recorder = Sink()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner, recorder.base_url = await start_site(app)
    return recorder, runner


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    recorder, runner = await serve_sink()
    yield recorder
    await runner.cleanup()


@dataclass
class Running:
    """A switchd service with its HTTP API on 127.0.0.1."""

    service: Switchd
    url: str
    client: aiohttp.ClientSession

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + mint(ADMIN_SECRET, "ops", admin=True)}

    @property
    def publisher(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + mint(SECRET, "svc")}

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.client.request(method, self.url + path, **kwargs) as response:
            raw = await response.read()
            return response.status, orjson.loads(raw) if raw else None

    async def add_subscriber(self, **fields: Any) -> dict[str, Any]:
        status, body = await self.call("POST", "/subscribers", json=fields, headers=self.admin)
        assert status == 201, body
        return body

    async def publish(self, topic: str, payload: dict[str, Any], **kwargs: Any) -> tuple[int, Any]:
        """POST /publish as the publisher "svc"; `kwargs` go to the request, and `headers`
        among them are sent besides (or instead of) the publisher's Authorization."""
        headers = {**self.publisher, **kwargs.pop("headers", {})}
        body = {"topic": topic, "payload": payload}
        return await self.call("POST", "/publish", json=body, headers=headers, **kwargs)

    async def count(self, table: str) -> int:
        row = await self.service.db.fetchone(f"SELECT COUNT(*) FROM {table}")
        assert row is not None
        return int(row[0])


StartSwitchd = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_switchd(tmp_path: Path) -> AsyncIterator[StartSwitchd]:
    """Start switchd services on a temp database; all are stopped at the end."""
    started: list[tuple[Running, web.AppRunner]] = []

    async def start(**overrides: Any) -> Running:
        settings = Settings(
            **{
                "jwt_secret": SECRET,
                "admin_jwt_secret": ADMIN_SECRET,
                "db_name": str(tmp_path / "switch.db"),
                **FAST,
                **overrides,
            }
        )
        service = Switchd(settings)
        await service.start()
        runner, url = await start_site(create_app(service))
        running = Running(service, url, aiohttp.ClientSession())
        started.append((running, runner))
        return running

    yield start
    for running, runner in reversed(started):
        await running.client.close()
        await runner.cleanup()
        await running.service.stop()


def seed_token(claims: dict[str, Any] | None = None) -> str:
    """A token exactly like the seed SDKs': HS256 with only an Author claim."""
    return jwt.encode(claims or {"Author": "svc"}, SECRET, algorithm="HS256")


def seed_body(topic: str, payload: dict[str, Any]) -> bytes:
    """A publish body exactly like the seed SDKs': Topic and base64 Payload."""
    encoded = base64.b64encode(orjson.dumps(payload)).decode()
    return orjson.dumps({"Topic": topic, "Payload": encoded})


_FILTER_CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from switchd.filters import compile_filter, FilterError
try:
    compiled = compile_filter(sys.argv[1])
except FilterError:
    print("rejected")
else:
    print("matched" if compiled.matches(json.loads(sys.argv[2])) else "no-match")
"""


def evaluate_in_child(expression: str, data: dict[str, Any], seconds: float = 5.0) -> str:
    """Compile and evaluate a filter in a child process (2 GiB cap): "rejected",
    "matched", "no-match", or "timeout" when it runs longer than `seconds`."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _FILTER_CHILD, expression, orjson.dumps(data).decode()],
            capture_output=True,
            text=True,
            timeout=seconds,
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()  # log lines may precede the verdict
    return lines[-1] if lines else ""


def clean_environ() -> dict[str, str]:
    """This process's environment without switchd's settings (FAKTORY_URL included), so a
    subprocess runs on exactly the settings a test gives it."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith("SWITCH_") and k != "FAKTORY_URL"
    }


@pytest.fixture(scope="session")
def real_faktory() -> Iterator[RealFaktory]:
    """A real Faktory on 127.0.0.1 for this test session, from ../shared/bin/faktory, stopped
    at the end. Without the binary (a fresh clone) the tests that need it are skipped."""
    if not BINARY.exists():
        pytest.skip(f"no real Faktory: {BINARY} is missing (or set FAKTORY_URL)")
    server = RealFaktory()
    server.start()
    yield server
    server.stop()
