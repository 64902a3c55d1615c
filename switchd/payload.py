"""Decoding and validating `/publish` bodies (seed base64 form and native JSON form)."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import unicodedata
from typing import Any

import orjson

from switchd.errors import InvalidInput

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
MAX_TOPIC_LENGTH = 255
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # use with fullmatch
CONTROL_RANGES = r"\x00-\x1f\x7f-\x9f"  # C0, DEL and C1: refused in topics and URLs
CONTROL_RANGES_BUT_TAB = r"\x00-\x08\x0a-\x1f\x7f-\x9f"  # refused in header values
CONTROL_CHARS = re.compile(f"[{CONTROL_RANGES}]")
HEADER_VALUE_CONTROL_CHARS = re.compile(f"[{CONTROL_RANGES_BUT_TAB}]")
Scalar = str | int | float | bool | None
MAX_HEADERS = 100
MAX_HEADER_VALUE = 8192
MAX_DEPTH = 64  # orjson writes at most 255 levels; deliveries never need this many
# orjson reads an integer outside this range as a float (a different number): such a
# document is refused. Only a run of 19 digits can hold one, so only then is it checked.
EXACT_INTEGERS = (-(2**63), 2**64 - 1)
DIGITS_AS_ZEROS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))  # for bytes.translate
LONG_DIGIT_RUN = b"0" * 19


def load_json(raw: bytes) -> Any:
    """A request body's JSON document."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}", "invalid_json") from exc
    _refuse_inexact_integers(raw, "invalid_json")
    return document


def load_json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object."""
    document = load_json(raw)
    if not isinstance(document, dict):
        raise InvalidInput("body must be a JSON object", "invalid_json")
    return document


def parse_publish(raw: bytes) -> tuple[str, dict[str, Any]]:
    """Return (topic, payload) from a request body, or raise InvalidInput."""
    document = load_json_object(raw)
    fields = {str(k).lower(): v for k, v in document.items()}
    if len(fields) != len(document):
        raise InvalidInput(
            "body repeats a key in another case (e.g. Topic and topic)", "invalid_json"
        )
    topic = validate_topic(fields.get("topic"))
    if "payload" not in fields:
        raise InvalidInput("'payload' is required", "invalid_payload")
    return topic, validate_payload(decode_payload(fields["payload"]))


def _refuse_inexact_integers(raw: bytes, code: str) -> None:
    """Refuse JSON (that orjson accepted) holding an integer orjson reads as a float: the
    filters and the subscribers would see another number than the one published."""
    if LONG_DIGIT_RUN not in raw.translate(DIGITS_AS_ZEROS):
        return
    try:
        json.loads(raw, parse_int=functools.partial(_exact_integer, code))
    except RecursionError as exc:  # deeper than the payload may be anyway
        raise InvalidInput("JSON nested too deeply", code) from exc


def _exact_integer(code: str, text: str) -> int:
    low, high = EXACT_INTEGERS
    if len(text) <= len(str(low)):  # longer ones are out of range (and int() may refuse them)
        number = int(text)
        if low <= number <= high:
            return number
    raise InvalidInput(f"integer {text[:30]} is outside {low}..{high}", code)


def validate_topic(topic: object) -> str:
    """A topic is a string of 1–255 characters without control characters."""
    if not isinstance(topic, str):
        raise InvalidInput("'topic' must be a string", "invalid_topic")
    problem = _topic_problem(topic)
    if problem:
        raise InvalidInput(problem, "invalid_topic")
    return topic


@functools.lru_cache(maxsize=1024)  # publishers reuse a few topics
def _topic_problem(topic: str) -> str | None:
    if not 1 <= len(topic) <= MAX_TOPIC_LENGTH:
        return f"'topic' must be 1..{MAX_TOPIC_LENGTH} characters"
    if CONTROL_CHARS.search(topic) or any(unicodedata.category(c) == "Cf" for c in topic):
        return "'topic' must not contain control or format (e.g. bidi) characters"
    return None


def decode_payload(value: object) -> dict[str, Any]:
    """Accept a base64 string of a JSON object (seed SDKs) or the object itself."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise InvalidInput(
            "'payload' must be a JSON object or a base64 string of one", "invalid_payload"
        )
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("'payload' is not valid base64", "invalid_payload") from exc
    try:
        payload = orjson.loads(decoded)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("'payload' does not decode to JSON", "invalid_payload") from exc
    _refuse_inexact_integers(decoded, "invalid_payload")
    if not isinstance(payload, dict):
        raise InvalidInput("'payload' must decode to a JSON object", "invalid_payload")
    return payload


def validate_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """Check the delivery fields. Nothing is rewritten: filters see the payload exactly as
    published (the delivery request upper-cases `http_method` itself)."""
    if _deeper_than(payload, MAX_DEPTH):
        raise InvalidInput(f"'payload' is nested deeper than {MAX_DEPTH} levels", "invalid_payload")
    _check_headers(payload.get("headers"))
    _check_scalar_map(payload.get("path_params"), "path_params", lists=False)
    _check_scalar_map(payload.get("query_params"), "query_params", lists=True)
    method = payload.get("http_method")
    if method is not None and (not isinstance(method, str) or method.upper() not in HTTP_METHODS):
        raise InvalidInput(
            f"'http_method' must be one of {', '.join(HTTP_METHODS)}", "invalid_payload"
        )
    return payload


def _deeper_than(value: object, limit: int) -> bool:
    level: list[object] = [value]
    for _ in range(limit):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _check_scalar_map(value: object, name: str, lists: bool) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise InvalidInput(f"'{name}' must be an object", "invalid_payload")
    for key, item in value.items():
        ok = _is_scalar(item) or (lists and isinstance(item, list) and all(map(_is_scalar, item)))
        if not ok:
            kind = "scalars or lists of scalars" if lists else "scalars"
            raise InvalidInput(f"'{name}.{key}' must hold {kind}", "invalid_payload")


def _check_headers(headers: object) -> None:
    _check_scalar_map(headers, "headers", lists=False)
    if headers and len(headers) > MAX_HEADERS:  # type: ignore[arg-type]
        raise InvalidInput(f"at most {MAX_HEADERS} headers", "invalid_header")
    for name, value in (headers or {}).items():  # type: ignore[union-attr]
        if not HEADER_NAME.fullmatch(name):
            raise InvalidInput(f"header name {name!r} is not a valid token", "invalid_header")
        text = scalar_text(value)
        if len(text) > MAX_HEADER_VALUE:
            raise InvalidInput(
                f"header {name!r} is longer than {MAX_HEADER_VALUE} characters", "invalid_header"
            )
        if HEADER_VALUE_CONTROL_CHARS.search(text):
            raise InvalidInput(
                f"header {name!r} contains control characters (CR/LF)", "invalid_header"
            )


def scalar_text(value: Scalar) -> str:
    """How a scalar is written in a URL or header: JSON-like for booleans and null."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
