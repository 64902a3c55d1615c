"""A small, dependency-free sd_notify client: READY=1, STATUS=, STOPPING=1, WATCHDOG=1.

systemd passes a unix datagram socket in `$NOTIFY_SOCKET` (a filesystem path, or
`@name` for the abstract namespace) to a `Type=notify` service, and `$WATCHDOG_USEC`
(plus `$WATCHDOG_PID`) when the unit has `WatchdogSec=`. The protocol is one datagram
of newline-separated `KEY=value` fields per notification (see sd_notify(3)).

Every send is one non-blocking `sendto()` on a unix datagram socket: it never waits,
so it is safe to call from the event loop. A failure (systemd gone, queue full, no
socket) is logged at debug level and otherwise ignored: notifications are advisory and
must never take the service down. Without `$NOTIFY_SOCKET` every method is a no-op.

`watchdog()` pings from the event loop itself, so a loop that stops turning stops the
pings and systemd restarts the service after `WatchdogSec=`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("switchd.systemd")

_IGNORED_SEND_ERRORS = (BlockingIOError, ConnectionRefusedError, FileNotFoundError)


class Notifier:
    """Sends sd_notify messages to systemd; a no-op when not run under `Type=notify`."""

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        """Notify `address` (a path, or `@name` for an abstract socket; None = disabled).

        `watchdog_usec` is the watchdog timeout in microseconds (None = no watchdog pings).
        """
        self.address = address
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._target: str | None = _socket_address(address) if address else None
        self._socket: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build from `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (default: os.environ).

        The watchdog is enabled only when `WATCHDOG_USEC` is a positive integer and
        `WATCHDOG_PID`, when set, is this process's pid (systemd addresses it to the main
        process; a child that inherited the variables must not ping in its place).
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not (address.startswith("/") or address.startswith("@")):
            log.warning(
                "notify_socket_unsupported",
                notify_socket=address,
                detail="expected an absolute path or @abstract name; notifications disabled",
            )
            address = None
        return cls(address, _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        """True when notifications go somewhere (NOTIFY_SOCKET was set)."""
        return self._target is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the timeout), or None when disabled."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, *fields: str) -> bool:
        """Send one datagram of `KEY=value` fields; True when the kernel accepted it.

        Never blocks and never raises for a delivery failure.
        """
        if self._target is None or not fields:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto(message, self._target)
        except _IGNORED_SEND_ERRORS as exc:
            log.debug("sd_notify_not_sent", fields=list(fields), error=repr(exc))
            return False
        except OSError as exc:  # e.g. EPERM, EMSGSIZE: still never fatal
            log.debug("sd_notify_failed", fields=list(fields), error=repr(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up is complete (`READY=1`), optionally with a status line."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(_status_field(status))
        return self.notify(*fields)

    def stopping(self) -> bool:
        """Tell systemd the service is shutting down (`STOPPING=1`)."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """Set the free-form status shown by `systemctl status` (`STATUS=...`)."""
        return self.notify(_status_field(text))

    def ping(self) -> bool:
        """Send one `WATCHDOG=1` keep-alive."""
        return self.notify("WATCHDOG=1")

    async def watchdog(self) -> None:
        """Send `WATCHDOG=1` every WATCHDOG_USEC/2 from the running loop until cancelled.

        Returns at once when there is no notify socket or no watchdog configured.
        """
        interval = self.watchdog_interval
        if interval is None:
            return
        log.debug("watchdog_started", interval_seconds=interval)
        while True:
            self.ping()
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Close the socket (a later notification opens a new one)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(address: str) -> str:
    """The address for sendto(): `@name` becomes the abstract name `\\0name`."""
    return "\0" + address[1:] if address.startswith("@") else address


def _status_field(text: str) -> str:
    """`STATUS=text` on one line (a newline would start a new field)."""
    return "STATUS=" + " ".join(text.splitlines())


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC as a positive int when it is meant for this process, else None."""
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("watchdog_usec_invalid", value=raw, detail="expected microseconds")
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec
