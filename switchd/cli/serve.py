"""`switchd serve`: the HTTP server and consumers until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import structlog
from aiohttp import web

from switchd.config import ADMIN_SECRETS, PUBLISHER_SECRETS, VARIABLES, Settings, load_settings
from switchd.http_api import create_app
from switchd.logs import configure
from switchd.service import Switchd
from switchd.systemd import Notifier

MIN_SECRET_BYTES = 32
GC_YOUNG_THRESHOLD = 10_000  # allocations between young-generation collections (default 700)
GIL_SWITCH_SECONDS = 0.0005  # measured: +9 % events delivered at fan-out 1 over the default
log = structlog.get_logger("switchd")


def register(commands: argparse._SubParsersAction) -> None:
    """Add `serve` to the parser."""
    serve_parser = commands.add_parser("serve", help="run the HTTP server and consumers")
    serve_parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run until a signal; exit 0 after a graceful drain, 1 if it cannot start."""
    settings = load_settings()
    configure(settings.log_level, settings.log_format)
    _warn_about_weak_secrets(settings)
    try:
        run_loop(serve(settings))
    except OSError as exc:
        print(f"switchd: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _warn_about_weak_secrets(settings: Settings) -> None:
    for name in PUBLISHER_SECRETS + ADMIN_SECRETS:
        secret = getattr(settings, VARIABLES[name][0])
        if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
            log.warning("weak_jwt_secret", detail=f"{name} is under {MIN_SECRET_BYTES} bytes")


def run_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on uvloop when available, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def serve(settings: Settings) -> None:
    """Start the service and the listener; on a signal, drain and stop."""
    notifier = Notifier.from_environ()
    watchdog: asyncio.Task[None] | None = None
    service = Switchd(settings)
    await service.start()
    runner = web.AppRunner(
        create_app(service), access_log=None, handle_signals=False, shutdown_timeout=5
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.server_host, settings.server_port, reuse_address=True)
        await site.start()
        log.info("listening", host=settings.server_host, port=settings.server_port, pid=os.getpid())
        _tune_runtime()
        notifier.ready(f"listening on {settings.server_host}:{settings.server_port}")
        watchdog = asyncio.create_task(notifier.watchdog(), name="sd-watchdog")
        await _wait_for_signal()
        notifier.stopping()
        log.info("shutting_down", grace_seconds=settings.shutdown_grace)
        service.draining = True
    finally:
        await runner.cleanup()
        await service.stop()
        if watchdog is not None:
            watchdog.cancel()
        notifier.close()


def _tune_runtime() -> None:
    """Once started: keep start-up's long-lived objects out of garbage collections and
    collect young objects less often (a busy loop allocates many short-lived objects per
    event); and let SQLite's threads take the GIL back sooner than Python's default 5 ms,
    since each database hand-off waits for it while the event loop is busy."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    sys.setswitchinterval(GIL_SWITCH_SECONDS)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
