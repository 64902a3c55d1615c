"""The `switchd` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import orjson
import structlog
from aiohttp import web

from switchd import __version__
from switchd.auth import mint
from switchd.config import ConfigError, Settings, load_settings, parse_duration
from switchd.filters import FilterError, compile_filter
from switchd.http_api import create_app
from switchd.logs import configure
from switchd.service import Switchd

EXIT_USAGE = 2
MIN_SECRET_BYTES = 32
log = structlog.get_logger("switchd")


class UsageError(Exception):
    """A bad command line or value: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> Parser:
    """The argument parser for every subcommand."""
    parser = Parser(prog="switchd", description="switchd event hub")
    parser.add_argument("--version", action="version", version=f"switchd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    commands.add_parser("serve", help="run the HTTP server and consumers")

    token = commands.add_parser("token", help="mint a JWT signed with SWITCH_JWT_SECRET")
    token.add_argument("--author", required=True)
    token.add_argument("--admin", action="store_true", help="add the admin scope")
    token.add_argument("--ttl", type=_duration, help="expiry, e.g. 1h (default: none)")

    check = commands.add_parser("check-filter", help="evaluate a filter against sample data")
    check.add_argument("expression")
    check.add_argument("--data", required=True, help="the payload object as JSON")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point: run a subcommand; errors are one line on stderr."""
    try:
        args = build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
        code = handler(args)
    except UsageError as exc:
        print(f"switchd: error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"switchd: config: {problem}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; exit 0 after a graceful drain."""
    settings = load_settings()
    configure(settings.log_level, settings.log_format)
    if len(settings.jwt_secret.encode()) < MIN_SECRET_BYTES:
        log.warning(
            "weak_jwt_secret", detail=f"SWITCH_JWT_SECRET is under {MIN_SECRET_BYTES} bytes"
        )
    try:
        _run(serve(settings))
    except OSError as exc:
        print(f"switchd: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(coroutine: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


async def serve(settings: Settings) -> None:
    """Start the service and the listener; on a signal, drain and stop."""
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
        await _wait_for_signal()
        log.info("shutting_down", grace_seconds=settings.shutdown_grace)
        service.draining = True
    finally:
        await runner.cleanup()
        await service.stop()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def cmd_token(args: argparse.Namespace) -> int:
    """Print a token for --author (admin scope with --admin)."""
    secret = os.environ.get("SWITCH_JWT_SECRET", "")
    if not secret:
        raise ConfigError(["SWITCH_JWT_SECRET is required: expected the server's secret"])
    print(mint(secret, args.author, admin=args.admin, ttl=args.ttl))
    return 0


def cmd_check_filter(args: argparse.Namespace) -> int:
    """Show whether the expression matches the data, and why not."""
    try:
        data = orjson.loads(args.data)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"--data is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError("--data must be a JSON object")
    try:
        matched, error = compile_filter(args.expression).explain(data)
    except FilterError as exc:
        raise UsageError(f"invalid filter: {exc}") from exc
    if args.json:
        print(orjson.dumps({"match": matched, "error": error}).decode())
    else:
        print(f"match: {str(matched).lower()}" + (f" (evaluation error: {error})" if error else ""))
    return 0


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use e.g. 90s, 15m, 1h, 7d"
        ) from None


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "token": cmd_token,
    "check-filter": cmd_check_filter,
}
