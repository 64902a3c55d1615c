"""Unit tests for switchd.payload: the seed base64 form, the native form, and every 400."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from switchd.errors import ApiError, InvalidInput
from switchd.payload import decode_payload, parse_publish, validate_topic


def b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


PAYLOAD = {
    "body": {"x": 1, "items": [1, 2]},
    "headers": {"y": "z", "X-Count": 3},
    "query_params": {"page": 2, "tag": ["a", "b"], "flag": True},
    "path_params": {"id": "42"},
    "http_method": "put",
    "special_key": "special value",
}


def invalid(raw: bytes) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse_publish(raw)
    error = info.value
    assert isinstance(error, ApiError)
    assert error.status == 400
    assert error.message
    assert error.body() == {"error": {"code": error.code, "message": error.message}}
    return error


# --- accepted forms ----------------------------------------------------------------------------


def test_seed_form_with_base64_payload() -> None:
    inner = {"body": {"x": 1}, "headers": {"y": "z"}}
    topic, payload = parse_publish(body({"Topic": "orders", "Payload": b64(inner)}))
    assert topic == "orders"
    assert payload == inner


def test_seed_form_full_payload_is_kept_as_published() -> None:
    topic, payload = parse_publish(body({"Topic": "t", "Payload": b64(PAYLOAD)}))
    assert topic == "t"
    assert payload == PAYLOAD  # "http_method": "put" stays lower case: filters see it so


def test_native_form_with_object() -> None:
    topic, payload = parse_publish(body({"topic": "t", "payload": dict(PAYLOAD)}))
    assert topic == "t"
    assert payload["body"] == {"x": 1, "items": [1, 2]}
    assert payload["http_method"] == "put"
    assert payload["special_key"] == "special value"


@pytest.mark.parametrize(
    "document",
    [
        {"TOPIC": "t", "payload": {"body": 1}},
        {"topic": "t", "PAYLOAD": {"body": 1}},
        {"ToPiC": "t", "PayLoad": {"body": 1}},
        {"Topic": "t", "Payload": {"body": 1}},
    ],
)
def test_keys_are_case_insensitive(document: dict[str, Any]) -> None:
    assert parse_publish(body(document)) == ("t", {"body": 1})


def test_extra_top_level_keys_are_ignored() -> None:
    assert parse_publish(body({"topic": "t", "payload": {}, "other": 1})) == ("t", {})


def test_base64_with_surrounding_whitespace() -> None:
    assert parse_publish(body({"topic": "t", "payload": "  " + b64({"a": 1}) + "\n"})) == (
        "t",
        {"a": 1},
    )


@pytest.mark.parametrize("method", ["get", "Post", "pUt", "patch", "DELETE", "head", "options"])
def test_http_method_in_any_case_is_accepted_and_kept_as_published(method: str) -> None:
    _, payload = parse_publish(body({"topic": "t", "payload": {"http_method": method}}))
    assert payload["http_method"] == method


def test_http_method_absent_stays_absent() -> None:
    _, payload = parse_publish(body({"topic": "t", "payload": {"body": None}}))
    assert "http_method" not in payload


def test_empty_payload_object_is_accepted() -> None:
    assert parse_publish(body({"topic": "t", "payload": b64({})})) == ("t", {})


EDGE_INTEGERS = [-(2**63), 2**64 - 1, 10**18, -(10**18)]


@pytest.mark.parametrize("number", EDGE_INTEGERS)
def test_integers_up_to_64_bits_are_kept_exactly(number: int) -> None:
    inner = {"body": {"n": number, "text": "12345678901234567890123"}}
    for document in ({"topic": "t", "payload": inner}, {"Topic": "t", "Payload": b64(inner)}):
        _, payload = parse_publish(body(document))
        assert payload == inner and type(payload["body"]["n"]) is int


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30, -(10**300)])
def test_integers_beyond_64_bits_are_refused_not_turned_into_floats(number: int) -> None:
    """orjson would read them as floats: filters and subscribers would see another number."""
    inner = {"body": {"n": number}}
    assert "outside" in invalid(body({"topic": "t", "payload": inner})).message
    seed = invalid(body({"Topic": "t", "Payload": b64(inner)}))
    assert seed.code == "invalid_payload" and str(number)[:20] in seed.message


@pytest.mark.parametrize(
    "fields",
    [
        {"headers": {"A": "1", "B": 2, "C": 1.5, "D": True, "E": None}},
        {"headers": {"X-Tab": "a\tb"}},
        {"headers": {}},
        {"query_params": {"a": [1, "two", None, False], "b": None}},
        {"path_params": {"id": 7, "slug": "a/b", "flag": False, "none": None}},
        {"headers": None, "query_params": None, "path_params": None},
        {"body": [1, 2, {"deep": {"er": [None]}}]},
        {"body": "plain string"},
    ],
)
def test_valid_delivery_fields(fields: dict[str, Any]) -> None:
    _, payload = parse_publish(body({"topic": "t", "payload": fields}))
    assert payload == fields


# --- validate_topic --------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["t", "orders.created", "a" * 255, "ünïcode/topic", "with space"])
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize(
    "topic",
    [None, 5, 1.5, True, ["t"], {"t": 1}, "", "a" * 256, "a\nb", "a\rb", "a\x00b", "\tt", "t\x7f"],
)
def test_invalid_topics(topic: object) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_topic(topic)
    assert info.value.code == "invalid_topic"
    assert info.value.status == 400


@pytest.mark.parametrize("topic", ["a\x85b", "a\x9bb"])
def test_c1_control_characters_are_rejected_in_topics(topic: str) -> None:
    with pytest.raises(InvalidInput):
        validate_topic(topic)


# --- decode_payload --------------------------------------------------------------------------


def test_decode_payload_object_is_returned_as_is() -> None:
    value = {"a": 1}
    assert decode_payload(value) is value


def test_decode_payload_base64() -> None:
    assert decode_payload(b64({"a": [1, 2]})) == {"a": [1, 2]}


@pytest.mark.parametrize(
    "value",
    [
        "!!!not base64!!!",
        "YWJj=",  # bad padding
        "eyJh",  # valid base64 of truncated JSON
        base64.b64encode(b"not json").decode(),
        base64.b64encode(b"\xff\xfe").decode(),
        base64.b64encode(b"").decode(),
        b64([1, 2, 3]),
        b64("string"),
        b64(42),
        b64(None),
        "",
        None,
        42,
        ["a"],
        True,
    ],
)
def test_decode_payload_rejects(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_payload(value)
    assert info.value.code == "invalid_payload"


# --- every 400 through parse_publish ------------------------------------------------------------


def doc(payload: Any = None, topic: Any = "t", **extra: Any) -> bytes:
    document: dict[str, Any] = {"topic": topic, "payload": payload if payload is not None else {}}
    document.update(extra)
    return body(document)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "invalid_json"),
        (b"not json", "invalid_json"),
        (b'{"topic": "t", ', "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"string"', "invalid_json"),
        (b"null", "invalid_json"),
        (b"42", "invalid_json"),
        (body({"payload": {}}), "invalid_topic"),
        (doc(topic="a" * 256), "invalid_topic"),
        (doc(topic=""), "invalid_topic"),
        (doc(topic="a\nb"), "invalid_topic"),
        (doc(topic="a\x01b"), "invalid_topic"),
        (doc(topic=5), "invalid_topic"),
        (doc(topic=None), "invalid_topic"),
        (doc(topic=["t"]), "invalid_topic"),
        (body({"topic": "t"}), "invalid_payload"),
        (body({"topic": "t", "payload": "%%%"}), "invalid_payload"),
        (body({"topic": "t", "payload": base64.b64encode(b"{oops").decode()}), "invalid_payload"),
        (body({"topic": "t", "payload": b64([{"body": 1}])}), "invalid_payload"),
        (body({"topic": "t", "payload": [{"body": 1}]}), "invalid_payload"),
        (body({"topic": "t", "payload": 12}), "invalid_payload"),
        (body({"topic": "t", "payload": None}), "invalid_payload"),
        (doc({"headers": "X-A: 1"}), "invalid_payload"),
        (doc({"headers": ["X-A", "1"]}), "invalid_payload"),
        (doc({"headers": {"X-A": {"nested": 1}}}), "invalid_payload"),
        (doc({"headers": {"X-A": ["1", "2"]}}), "invalid_payload"),
        (doc({"headers": {"X-A": "a\r\nInjected: yes"}}), "invalid_header"),
        (doc({"headers": {"X-A": "line\nbreak"}}), "invalid_header"),
        (doc({"headers": {"X-A": "carriage\rreturn"}}), "invalid_header"),
        (doc({"headers": {"X-A": "nul\x00"}}), "invalid_header"),
        (doc({"headers": {"Bad Name": "v"}}), "invalid_header"),
        (doc({"headers": {"Bad:Name": "v"}}), "invalid_header"),
        (doc({"headers": {"": "v"}}), "invalid_header"),
        (doc({"headers": {"X-\nA": "v"}}), "invalid_header"),
        (doc({"headers": {"Ä": "v"}}), "invalid_header"),
        (doc({"headers": {"X" * 257: "v"}}), "invalid_header"),
        (doc({"query_params": {"a": {"nested": 1}}}), "invalid_payload"),
        (doc({"query_params": {"a": [1, {"b": 2}]}}), "invalid_payload"),
        (doc({"query_params": {"a": [[1]]}}), "invalid_payload"),
        (doc({"query_params": "a=1"}), "invalid_payload"),
        (doc({"query_params": [["a", 1]]}), "invalid_payload"),
        (doc({"path_params": {"id": [1, 2]}}), "invalid_payload"),
        (doc({"path_params": {"id": {"x": 1}}}), "invalid_payload"),
        (doc({"path_params": ["id"]}), "invalid_payload"),
        (doc({"http_method": "FETCH"}), "invalid_payload"),
        (doc({"http_method": "CONNECT"}), "invalid_payload"),
        (doc({"http_method": "TRACE"}), "invalid_payload"),
        (doc({"http_method": ""}), "invalid_payload"),
        (doc({"http_method": " post"}), "invalid_payload"),
        (doc({"http_method": 1}), "invalid_payload"),
        (doc({"http_method": ["GET"]}), "invalid_payload"),
        (doc({"http_method": True}), "invalid_payload"),
    ],
)
def test_every_400_path(raw: bytes, code: str) -> None:
    assert invalid(raw).code == code


def test_same_errors_via_seed_base64_form() -> None:
    bad = {"headers": {"X-A": "a\r\nb"}}
    assert invalid(body({"Topic": "t", "Payload": b64(bad)})).code == "invalid_header"
    bad = {"query_params": {"a": {"b": 1}}}
    assert invalid(body({"Topic": "t", "Payload": b64(bad)})).code == "invalid_payload"
    bad = {"http_method": "brew"}
    assert invalid(body({"Topic": "t", "Payload": b64(bad)})).code == "invalid_payload"


def test_messages_name_the_field() -> None:
    assert "topic" in invalid(doc(topic="")).message
    assert "payload" in invalid(body({"topic": "t"})).message
    assert "X-A" in invalid(doc({"headers": {"X-A": "a\nb"}})).message
    assert "query_params.a" in invalid(doc({"query_params": {"a": {"b": 1}}})).message
    assert "path_params.id" in invalid(doc({"path_params": {"id": [1]}})).message
    assert "http_method" in invalid(doc({"http_method": "BREW"})).message


def test_topic_is_checked_before_payload() -> None:
    assert invalid(body({"topic": "", "payload": "%%%"})).code == "invalid_topic"
