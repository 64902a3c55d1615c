"""Parsing the command line and turning every failure into one line and an exit code."""

from __future__ import annotations

import asyncio
import inspect
import sys

from switchd import __version__
from switchd.cli import dead, serve, subscribers, tools
from switchd.cli.common import CommandFailed, Parser, UsageError
from switchd.config import ConfigError

EXIT_FAILED = 1
EXIT_USAGE = 2
GROUPS = (serve, subscribers, dead, tools)


def build_parser() -> Parser:
    """The argument parser for every subcommand."""
    parser = Parser(prog="switchd", description="switchd event hub")
    parser.add_argument("--version", action="version", version=f"switchd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point: run a subcommand; errors are one line on stderr."""
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run a command line and return its exit code."""
    try:
        args = build_parser().parse_args(argv)
        result = args.run(args)
        return asyncio.run(result) if inspect.iscoroutine(result) else result
    except UsageError as exc:
        print(f"switchd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"switchd: config: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"switchd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
