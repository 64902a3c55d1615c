"""`switchd token`, `switchd check-filter` and `switchd publish`."""

from __future__ import annotations

import argparse
import os
from typing import Any

import orjson

from switchd.auth import mint, parse_topics
from switchd.cli.common import CommandFailed, UsageError, add_json_option, emit, print_json
from switchd.client import SwitchError, publish_event
from switchd.config import ConfigError, parse_duration
from switchd.filters import check_filter
from switchd.payload import HTTP_METHODS


def register(commands: argparse._SubParsersAction) -> None:
    """Add `token`, `check-filter` and `publish` to the parser."""
    token = commands.add_parser(
        "token",
        help="mint a publisher JWT (SWITCH_JWT_SECRET) or, with --admin, an admin JWT "
        "(SWITCH_ADMIN_JWT_SECRET)",
    )
    token.add_argument("--author", required=True)
    token.add_argument(
        "--admin", action="store_true", help="an admin token: SWITCH_ADMIN_JWT_SECRET, admin scope"
    )
    token.add_argument(
        "--topic",
        action="append",
        dest="topics",
        metavar="TOPIC",
        help="allow publishing only to TOPIC (a name or prefix.*); repeatable",
    )
    token.add_argument("--ttl", type=_duration, help="expiry, e.g. 1h (default: none)")
    token.set_defaults(run=run_token)

    check = commands.add_parser("check-filter", help="evaluate a filter against sample data")
    check.add_argument("expression")
    check.add_argument("--data", required=True, help="the payload object as JSON")
    add_json_option(check)
    check.set_defaults(run=run_check_filter)

    publish = commands.add_parser("publish", help="send an event to a running switchd")
    publish.add_argument("topic")
    publish.add_argument("--body", help="the JSON body to deliver")
    publish.add_argument("--header", action="append", default=[], metavar="K=V")
    publish.add_argument("--query", action="append", default=[], metavar="K=V")
    publish.add_argument("--path", action="append", default=[], metavar="K=V")
    publish.add_argument("--method", type=str.upper, choices=HTTP_METHODS)
    publish.add_argument("--url", help="switchd's base URL (default: $SWITCH_BASE_URL or :8080)")
    publish.add_argument("--author", default=os.environ.get("USER") or "cli")
    publish.add_argument("--idempotency-key")
    add_json_option(publish)
    publish.set_defaults(run=run_publish)


def jwt_secret(name: str = "SWITCH_JWT_SECRET") -> str:
    """The secret in variable `name`, stripped as the server strips it."""
    secret = os.environ.get(name, "").strip()
    if not secret:
        raise ConfigError([f"{name} is required: expected the server's secret"])
    return secret


def run_token(args: argparse.Namespace) -> int:
    """Print a token for --author: a publisher one, or an admin one with --admin. Always
    signed with the current secret, never a *_PREVIOUS one."""
    if args.admin and args.topics:
        raise UsageError("--topic limits publisher tokens; admin tokens manage every topic")
    if args.topics:
        try:
            parse_topics(args.topics)
        except ValueError as exc:
            raise UsageError(f"--topic: {exc}") from None
    secret = jwt_secret("SWITCH_ADMIN_JWT_SECRET" if args.admin else "SWITCH_JWT_SECRET")
    print(mint(secret, args.author, admin=args.admin, ttl=args.ttl, topics=args.topics))
    return 0


def run_check_filter(args: argparse.Namespace) -> int:
    """Show whether the expression matches the data, and why not."""
    verdict = check_filter(args.expression, parse_json_object(args.data, "--data"))
    if not verdict.valid:
        raise UsageError(f"invalid filter: {verdict.error}")
    matched, error = bool(verdict.matches), verdict.error
    if args.json:
        print_json({"match": matched, "error": error})
    else:
        print(f"match: {str(matched).lower()}" + (f" (evaluation error: {error})" if error else ""))
    return 0


def run_publish(args: argparse.Namespace) -> int:
    """Publish through the Python client, as the seed SDKs would."""
    options: dict[str, Any] = {}
    if args.body is not None:
        options["body"] = _json_value(args.body)
    for name, pairs in (("headers", args.header), ("path_params", args.path)):
        if pairs:
            options[name] = dict(_pair(p) for p in pairs)
    if args.query:
        query: dict[str, list[str]] = {}
        for key, value in map(_pair, args.query):
            query.setdefault(key, []).append(value)
        options["query_params"] = {k: v[0] if len(v) == 1 else v for k, v in query.items()}
    if args.method:
        options["http_method"] = args.method
    try:
        answer = publish_event(
            args.topic,
            args.author,
            options,
            base_url=args.url,
            secret=jwt_secret(),
            idempotency_key=args.idempotency_key,
        )
    except SwitchError as exc:
        raise CommandFailed(f"publish failed: {exc}") from exc
    subscribers = ", ".join(answer.get("subscribers", [])) or "none"
    emit(
        args,
        answer,
        f"event {answer.get('event_id')}: matched {answer.get('matched')} ({subscribers})",
    )
    return 0


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"expected K=V, got {text!r}")
    return key, value


def _json_value(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"--body is not valid JSON: {exc}") from exc


def parse_json_object(text: str, option: str) -> dict:
    """A JSON object given on the command line."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{option} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{option} must be a JSON object")
    return data


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use e.g. 90s, 15m, 1h, 7d"
        ) from None
