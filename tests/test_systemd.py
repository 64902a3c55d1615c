"""sd_notify: the Notifier against a real unix datagram socket, the unit file, and serve."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from switchd.systemd import Notifier
from tests.test_process import Server

pytestmark = pytest.mark.timeout(60)

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "switchd.service"
UNIX_PATH_MAX = 107  # sun_path is 108 bytes, NUL included


@dataclass
class Message:
    """One notification as systemd would see it: fields, sender pid, arrival time."""

    fields: dict[str, str]
    pid: int | None
    at: float


@dataclass
class NotifySocket:
    """A bound unix datagram socket playing systemd's side of `$NOTIFY_SOCKET`.

    Like systemd it sets SO_PASSCRED, so every message carries the sender's pid.
    """

    sock: socket.socket
    address: str  # what goes into NOTIFY_SOCKET
    messages: list[Message] = field(default_factory=list)
    _changed: asyncio.Event | None = None

    def attach(self) -> None:
        """Start reading datagrams on the running loop."""
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def detach(self) -> None:
        """Stop reading on the loop."""
        asyncio.get_running_loop().remove_reader(self.sock.fileno())

    def _read(self) -> None:
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                break
            self.messages.append(Message(_fields(data), _sender_pid(ancdata), time.monotonic()))
        if self._changed is not None:
            self._changed.set()

    def drain(self) -> list[Message]:
        """Read what is queued now, without the loop (for synchronous tests)."""
        self._read()
        return self.messages

    def with_key(self, key: str, value: str = "1") -> list[Message]:
        """The messages that carry `key=value`."""
        return [m for m in self.messages if m.fields.get(key) == value]

    async def wait_for(
        self, key: str, value: str = "1", count: int = 1, timeout: float = 5
    ) -> None:
        """Wait until `count` messages carry `key=value`."""
        assert self._changed is not None, "attach() first"
        deadline = time.monotonic() + timeout
        while len(self.with_key(key, value)) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{count} x {key}={value} not received: {self.messages}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


def _fields(data: bytes) -> dict[str, str]:
    lines = data.decode().split("\n")
    return dict(line.split("=", 1) for line in lines if line)


def _sender_pid(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return struct.unpack("3i", payload[:12])[0]
    return None


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(address)
    sock.setblocking(False)
    return sock


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    """A notify socket bound to a file in tmp_path (or a short temp dir if that is too long)."""
    path = tmp_path / "notify.sock"
    short: tempfile.TemporaryDirectory[str] | None = None
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        short = tempfile.TemporaryDirectory(prefix="sd")
        path = Path(short.name) / "notify.sock"
    sock = _bind(str(path))
    try:
        yield NotifySocket(sock, str(path))
    finally:
        sock.close()
        if short is not None:
            short.cleanup()


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    """A notify socket in the abstract namespace (`@name` in NOTIFY_SOCKET)."""
    name = f"switchd-test-{uuid.uuid4().hex}"
    sock = _bind("\0" + name)
    try:
        yield NotifySocket(sock, "@" + name)
    finally:
        sock.close()


# --- Notifier -------------------------------------------------------------------------


def test_ready_stopping_and_status_reach_the_socket(notify_socket: NotifySocket):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": notify_socket.address})
    assert notifier.enabled
    try:
        assert notifier.ready()
        assert notifier.ready("listening on 127.0.0.1:8080")
        assert notifier.status("draining\n3 in flight")
        assert notifier.stopping()
    finally:
        notifier.close()
    messages = notify_socket.drain()
    assert [m.fields for m in messages] == [
        {"READY": "1"},
        {"READY": "1", "STATUS": "listening on 127.0.0.1:8080"},
        {"STATUS": "draining 3 in flight"},  # a newline would have started a new field
        {"STOPPING": "1"},
    ]
    assert {m.pid for m in messages} == {os.getpid()}


def test_abstract_socket_name(abstract_socket: NotifySocket):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": abstract_socket.address})
    try:
        assert notifier.ready("up")
        assert notifier.stopping()
    finally:
        notifier.close()
    assert [m.fields for m in abstract_socket.drain()] == [
        {"READY": "1", "STATUS": "up"},
        {"STOPPING": "1"},
    ]


async def test_watchdog_pings_at_half_the_interval_from_the_loop(notify_socket: NotifySocket):
    notifier = Notifier.from_environ(
        {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "200000"}
    )
    assert notifier.watchdog_interval == pytest.approx(0.1)
    notify_socket.attach()
    task = asyncio.create_task(notifier.watchdog())
    try:
        started = time.monotonic()
        await notify_socket.wait_for("WATCHDOG", count=6, timeout=5)
        elapsed = time.monotonic() - started
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notify_socket.detach()
        notifier.close()
    pings = notify_socket.with_key("WATCHDOG")
    gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
    # the first ping is immediate, then one every 0.1 s
    assert 0.45 <= elapsed < 1.5, elapsed
    assert all(0.05 <= gap < 0.4 for gap in gaps), gaps
    assert {m.pid for m in pings} == {os.getpid()}


async def test_a_blocked_loop_stops_the_pings(notify_socket: NotifySocket):
    notifier = Notifier.from_environ(
        {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "100000"}
    )
    notify_socket.attach()
    task = asyncio.create_task(notifier.watchdog())
    try:
        await notify_socket.wait_for("WATCHDOG", count=2)
        time.sleep(0.5)  # noqa: ASYNC251 (a stuck event loop: no ping may be sent meanwhile)
        await notify_socket.wait_for("WATCHDOG", count=4)
    finally:
        task.cancel()
        notify_socket.detach()
        notifier.close()
    pings = notify_socket.with_key("WATCHDOG")
    gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
    assert max(gaps) >= 0.45, gaps


async def test_watchdog_is_off_without_watchdog_usec_or_for_another_pid(
    notify_socket: NotifySocket,
):
    base = {"NOTIFY_SOCKET": notify_socket.address}
    for extra in (
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)},
        {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "not-a-pid"},
    ):
        notifier = Notifier.from_environ({**base, **extra})
        assert notifier.enabled
        assert notifier.watchdog_interval is None, extra
        await asyncio.wait_for(notifier.watchdog(), 1)  # returns at once
    assert notify_socket.drain() == []
    mine = Notifier.from_environ(
        {**base, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert mine.watchdog_interval == 15


async def test_everything_is_a_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    for notifier in (Notifier.from_environ(), Notifier.from_environ({"NOTIFY_SOCKET": ""})):
        assert not notifier.enabled
        assert notifier.watchdog_interval is None
        assert not notifier.ready("up")
        assert not notifier.status("x")
        assert not notifier.stopping()
        assert not notifier.ping()
        await asyncio.wait_for(notifier.watchdog(), 1)
        notifier.close()


def test_unsupported_notify_socket_disables_notifications():
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled and not notifier.ready()
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_environment_reads_os_environ(monkeypatch: pytest.MonkeyPatch, abstract_socket):
    monkeypatch.setenv("NOTIFY_SOCKET", abstract_socket.address)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier.from_environ()
    assert notifier.enabled and notifier.watchdog_interval == 2
    assert notifier.stopping()
    notifier.close()


def test_send_failures_are_swallowed(tmp_path: Path):
    missing = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert not missing.ready()  # FileNotFoundError
    missing.close()

    stale = tmp_path / "stale.sock"
    _bind(str(stale)).close()  # the file stays, nobody listens
    refused = Notifier.from_environ({"NOTIFY_SOCKET": str(stale)})
    assert not refused.ready()  # ConnectionRefusedError
    refused.close()

    gone = Notifier.from_environ({"NOTIFY_SOCKET": f"@switchd-absent-{uuid.uuid4().hex}"})
    assert not gone.stopping()
    gone.close()


def test_a_full_receiver_never_blocks_the_sender(notify_socket: NotifySocket):
    """Nobody reads: the kernel queue fills, sends fail fast with EAGAIN, no exception."""
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": notify_socket.address})
    started = time.monotonic()
    results = [notifier.ping() for _ in range(5000)]
    elapsed = time.monotonic() - started
    notifier.close()
    assert any(results) and not all(results)
    assert elapsed < 2, elapsed
    received = notify_socket.drain()
    assert len(received) == results.count(True)


# --- the unit file --------------------------------------------------------------------


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit syntax: [Section], Key=value, repeated keys accumulate, # and ; comment."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines not expected"
        if line.startswith("["):
            assert line.endswith("]"), f"line {number}: bad section header {line!r}"
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number}: setting outside a section"
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*=.*", line), f"line {number}: {line!r}"
        key, value = line.split("=", 1)
        current.setdefault(key, []).append(value)
    return sections


def test_unit_file_is_a_hardened_notify_service():
    unit = _unit(UNIT)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = {key: values[-1] for key, values in unit["Service"].items()}
    required = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "EnvironmentFile": "-/etc/switchd/switchd.env",
        "StateDirectory": "switchd",
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "PrivateDevices": "yes",
        "KillSignal": "SIGTERM",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "UMask": "0077",
        "RestartPreventExitStatus": "2",  # a configuration error: restarting cannot help
    }
    for key, value in required.items():
        assert service.get(key) == value, f"{key}={service.get(key)!r}, expected {value!r}"
    assert service["ExecStart"].endswith("/bin/switchd serve")
    assert "SWITCH_DB_NAME=/var/lib/switchd/switch.db" in unit["Service"]["Environment"]
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]

    watchdog = _seconds(service["WatchdogSec"])
    assert 0 < watchdog <= 120
    # the stop timeout must outlast the default drain grace (SWITCH_SHUTDOWN_GRACE=30)
    assert _seconds(service["TimeoutStopSec"]) > 30


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)\s*(s|sec|min|m)?", value.strip())
    assert match, f"unexpected time span {value!r}"
    return int(match[1]) * (60 if match[2] in ("min", "m") else 1)


# --- end to end -----------------------------------------------------------------------


async def test_serve_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, notify_socket: NotifySocket
):
    server = Server(tmp_path / "s.db", NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="400000")
    server.env.pop("WATCHDOG_PID", None)
    notify_socket.attach()
    try:
        await server.start()  # returns once /healthz answers 200
        assert server.process is not None
        await notify_socket.wait_for("READY", timeout=5)
        await notify_socket.wait_for("WATCHDOG", count=2, timeout=5)
        assert not notify_socket.with_key("STOPPING")

        assert await server.stop(signal.SIGTERM, timeout=15) == 0
        await notify_socket.wait_for("STOPPING", timeout=1)
    finally:
        await server.stop(signal.SIGKILL)
        notify_socket.detach()
    messages = notify_socket.messages
    # NotifyAccess=main: every message must come from the main process itself
    assert {m.pid for m in messages} == {server.process.pid}
    lifecycle = [key for m in messages for key in ("READY", "STOPPING") if key in m.fields]
    assert lifecycle == ["READY", "STOPPING"]
    ready_at = notify_socket.with_key("READY")[0].at
    assert all(m.at >= ready_at for m in notify_socket.with_key("WATCHDOG"))
