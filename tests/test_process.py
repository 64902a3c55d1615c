"""`switchd` as a real subprocess: start-up errors, SIGTERM, SIGKILL and restart."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from switchd.auth import ADMIN, mint, verify
from tests.conftest import ADMIN_SECRET, SECRET, Sink, clean_environ, free_port

pytestmark = pytest.mark.timeout(60)


class Server:
    """A `switchd serve` subprocess on a free port."""

    arguments: tuple[str, ...] = ("-m", "switchd", "serve")  # of the Python interpreter

    def __init__(self, db: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **clean_environ(),
            "SWITCH_JWT_SECRET": SECRET,
            "SWITCH_ADMIN_JWT_SECRET": ADMIN_SECRET,
            "SWITCH_DB_NAME": str(db),
            "SWITCH_SERVER_HOST": "127.0.0.1",
            "SWITCH_SERVER_PORT": str(self.port),
            "SWITCH_LOG_FORMAT": "json",
            **env,
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            *self.arguments,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        async with aiohttp.ClientSession() as client:
            for _ in range(200):
                try:
                    async with client.get(self.url + "/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        raise AssertionError("switchd did not start")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def call(
        self, method: str, path: str, body: object, admin: bool = False
    ) -> tuple[int, dict]:
        token = mint(ADMIN_SECRET, "ops", admin=True) if admin else mint(SECRET, "svc")
        async with (
            aiohttp.ClientSession() as client,
            client.request(
                method,
                self.url + path,
                data=orjson.dumps(body),
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            return response.status, orjson.loads(await response.read())


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean_environ(), **(env or {})},
    )


def test_bad_configuration_exits_2_with_one_line_per_variable(tmp_path: Path):
    env = clean_environ()
    env.update({"SWITCH_SERVER_PORT": "http", "SWITCH_RETRY_SCHEDULE": "5,soon"})
    result = subprocess.run(
        [sys.executable, "-m", "switchd", "serve"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert any("SWITCH_SERVER_PORT" in line for line in lines)
    assert any("SWITCH_RETRY_SCHEDULE" in line for line in lines)
    assert any("SWITCH_JWT_SECRET" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_cli_usage_error_is_one_line():
    result = run_cli("token")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--author" in result.stderr


def test_token_and_check_filter(tmp_path: Path):
    env = {"SWITCH_JWT_SECRET": SECRET, "SWITCH_ADMIN_JWT_SECRET": ADMIN_SECRET}
    result = run_cli("token", "--author", "ops", "--admin", "--ttl", "1h", env=env)
    assert result.returncode == 0
    principal = verify(result.stdout.strip(), ADMIN_SECRET, ADMIN)
    assert principal.author == "ops" and principal.admin

    ok = run_cli("check-filter", 'data["body"]["x"] == 1', "--data", '{"body": {"x": 1}}')
    assert ok.returncode == 0 and ok.stdout.strip() == "match: true"
    missing = run_cli("check-filter", 'data["headers"]["y"] == "z"', "--data", "{}", "--json")
    assert missing.returncode == 0
    assert orjson.loads(missing.stdout) == {"match": False, "error": "KeyError: 'headers'"}
    bad = run_cli("check-filter", "data[", "--data", "{}")
    assert bad.returncode == 2 and "syntax error" in bad.stderr and "Traceback" not in bad.stderr


async def test_sigterm_lets_in_flight_delivery_finish_and_exits_0(tmp_path: Path, sink: Sink):
    server = Server(tmp_path / "s.db", SWITCH_SHUTDOWN_GRACE="5")
    await server.start()
    try:
        sink.delay = 1.0
        status, _ = await server.call(
            "POST", "/subscribers", {"topic": "t", "target_url": sink.url()}, admin=True
        )
        assert status == 201
        status, _ = await server.call("POST", "/publish", {"topic": "t", "payload": {"body": {}}})
        assert status == 202
        await sink.wait_for(1)
        started = time.monotonic()
        assert await server.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 5
        assert sink.in_flight == 0  # the delivery completed before exit
    finally:
        await server.stop(signal.SIGKILL)
    with __import__("sqlite3").connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


async def test_sigkill_mid_delivery_is_redelivered_after_restart(tmp_path: Path, sink: Sink):
    env = {"SWITCH_DELIVERY_TIMEOUT": "1", "SWITCH_LEASE_SECONDS": "2", "SWITCH_QUICK_RETRIES": "0"}
    first = Server(tmp_path / "s.db", **env)
    await first.start()
    sink.delay = 30  # the first delivery hangs until the process dies
    await first.call("POST", "/subscribers", {"topic": "t", "target_url": sink.url()}, admin=True)
    status, published = await first.call(
        "POST", "/publish", {"topic": "t", "payload": {"body": {"n": 1}}}
    )
    assert status == 202
    await sink.wait_for(1)
    await first.stop(signal.SIGKILL)
    killed_at = time.time()

    sink.delay = 0
    second = Server(tmp_path / "s.db", **env)
    await second.start()
    try:
        requests = await sink.wait_for(2, timeout=15)
        ids = {r.headers["X-Switch-Event-Id"] for r in requests}
        assert ids == {published["event_id"]}
        assert requests[1].at >= killed_at  # redelivered by the new process after the lease
    finally:
        assert await second.stop() == 0
