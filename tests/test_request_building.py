"""Unit tests for switchd.delivery request building, signing, and outcome classification."""

from __future__ import annotations

import base64
import email.utils
import json
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from multidict import CIMultiDict
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from switchd import __version__
from switchd.delivery import build_request, build_url, classify, parse_retry_after, sign
from switchd.models import Job

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
TARGET = "https://sink.example.com:8443/hooks"


def job(payload: dict[str, Any], **fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": "job-1",
        "event_id": "evt_0123456789",
        "subscriber_id": "sub-1",
        "topic": "orders.created",
        "author": "billing",
        "target_url": TARGET,
        "filter_expression": "True",
        "payload": payload,
    }
    values.update(fields)
    return Job(**values)


def lower_keys(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


# --- build_url ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path_params", "expected"),
    [
        ("http://h/users/:id", {"id": "42"}, "http://h/users/42"),
        ("http://h/users/:id", {"id": 42}, "http://h/users/42"),
        ("http://h/users/:id/orders/:oid", {"id": 1, "oid": "x"}, "http://h/users/1/orders/x"),
        ("http://h/files/:name", {"name": "a/b"}, "http://h/files/a%2Fb"),
        ("http://h/files/:name", {"name": ".."}, "http://h/files/%2E%2E"),
        ("http://h/files/:name", {"name": "."}, "http://h/files/%2E"),
        ("http://h/files/:name", {"name": "a.b"}, "http://h/files/a.b"),
        ("http://h/files/:name", {"name": "a b?c#d&e"}, "http://h/files/a%20b%3Fc%23d%26e"),
        ("http://h/files/:name", {"name": "é"}, "http://h/files/%C3%A9"),
        ("http://h/files/:name", {"name": True}, "http://h/files/true"),
        ("http://h/files/:name", {"name": "%2F"}, "http://h/files/%252F"),
        ("http://h/users/:id", {}, "http://h/users/:id"),
        ("http://h/users/:id", {"other": "1"}, "http://h/users/:id"),
        ("http://h/users/:id/:missing", {"id": "7"}, "http://h/users/7/:missing"),
        ("http://h:8080/users/:id", {"id": "5"}, "http://h:8080/users/5"),
        ("http://h:8080/x", {"8080": "nope"}, "http://h:8080/x"),
        ("http://user:pw@h:9000/:id", {"pw": "x", "id": "1"}, "http://user:pw@h:9000/1"),
        ("http://h/users/x:id", {"id": "5"}, "http://h/users/x:id"),
        ("http://h/users/:id#frag", {"id": "5"}, "http://h/users/5#frag"),
        ("http://h/", {}, "http://h/"),
    ],
)
def test_path_params(target: str, path_params: dict[str, Any], expected: str) -> None:
    assert build_url(target, path_params, {}) == expected


@pytest.mark.parametrize(
    ("target", "query_params", "expected"),
    [
        ("http://h/x", {"a": "1"}, "http://h/x?a=1"),
        ("http://h/x", {"a": 1, "b": 2.5}, "http://h/x?a=1&b=2.5"),
        ("http://h/x", {"a": [1, 2, "three"]}, "http://h/x?a=1&a=2&a=three"),
        ("http://h/x", {"t": True, "f": False}, "http://h/x?t=true&f=false"),
        ("http://h/x", {"n": None}, "http://h/x?n="),
        ("http://h/x", {"a": []}, "http://h/x"),
        ("http://h/x", {"q": "a b&c=d"}, "http://h/x?q=a+b%26c%3Dd"),
        ("http://h/x?existing=1", {"a": "2"}, "http://h/x?existing=1&a=2"),
        ("http://h/x?existing=1", {"a": [True, 3]}, "http://h/x?existing=1&a=true&a=3"),
        ("http://h/x?existing=1", {}, "http://h/x?existing=1"),
        ("http://h:81/x?e=1#f", {"a": "2"}, "http://h:81/x?e=1&a=2#f"),
    ],
)
def test_query_params(target: str, query_params: dict[str, Any], expected: str) -> None:
    assert build_url(target, {}, query_params) == expected


def test_path_and_query_together() -> None:
    url = build_url("https://h:8443/a/:id/b?keep=yes", {"id": "x/y"}, {"list": [1, 2], "on": True})
    parts = urlsplit(url)
    assert parts.netloc == "h:8443"
    assert parts.path == "/a/x%2Fy/b"
    assert parse_qsl(parts.query) == [("keep", "yes"), ("list", "1"), ("list", "2"), ("on", "true")]


# --- build_request: method, url, body ----------------------------------------------------------


def test_defaults_to_post_with_json_body() -> None:
    request = build_request(job({"body": {"x": 1}}), TARGET, None, 1_700_000_000)
    assert request.method == "POST"
    assert request.url == TARGET
    assert json.loads(request.body or b"") == {"x": 1}
    assert request.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("method", "expected"),
    [("get", "GET"), ("PUT", "PUT"), ("patch", "PATCH"), ("Delete", "DELETE"), ("bogus", "POST")],
)
def test_method_from_payload(method: str, expected: str) -> None:
    request = build_request(job({"http_method": method}), TARGET, None, 1)
    assert request.method == expected


def test_url_uses_target_argument_with_params() -> None:
    payload = {"path_params": {"id": "a/b"}, "query_params": {"v": [1, 2]}}
    request = build_request(job(payload), "http://h:8080/u/:id?z=0", None, 1)
    assert request.url == "http://h:8080/u/a%2Fb?z=0&v=1&v=2"


@pytest.mark.parametrize("payload", [{}, {"body": None}, {"headers": {"A": "1"}}])
def test_no_body_when_absent_or_null(payload: dict[str, Any]) -> None:
    request = build_request(job(payload), TARGET, None, 1)
    assert request.body is None
    assert "content-type" not in lower_keys(request.headers)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (False, b"false"),
        (0, b"0"),
        ("", b'""'),
        ({}, b"{}"),
        ([], b"[]"),
        ("text", b'"text"'),
        ({"é": [1, None]}, '{"é":[1,null]}'.encode()),
    ],
)
def test_falsy_bodies_are_still_sent(value: Any, encoded: bytes) -> None:
    request = build_request(job({"body": value}), TARGET, None, 1)
    assert request.body == encoded
    assert request.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("name", ["Content-Type", "content-type", "CONTENT-TYPE"])
def test_given_content_type_is_kept(name: str) -> None:
    payload = {"body": "x", "headers": {name: "text/plain"}}
    request = build_request(job(payload), TARGET, None, 1)
    content_types = CIMultiDict(request.headers).getall("Content-Type")
    assert content_types == ["text/plain"]


def test_given_content_type_without_body_is_kept() -> None:
    request = build_request(job({"headers": {"Content-Type": "text/csv"}}), TARGET, None, 1)
    assert request.body is None
    assert request.headers["Content-Type"] == "text/csv"


# --- build_request: headers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "keep-alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "upgrade",
        "Host",
        "HOST",
        "Content-Length",
        "content-length",
    ],
)
def test_hop_by_hop_and_framing_headers_are_dropped(name: str) -> None:
    payload = {"body": {"a": 1}, "headers": {name: "value", "X-Keep": "yes"}}
    request = build_request(job(payload), TARGET, None, 1)
    assert name.lower() not in lower_keys(request.headers)
    assert request.headers["X-Keep"] == "yes"


@pytest.mark.parametrize("value", ["a\r\nInjected: 1", "a\nb", "a\rb", "a\x00b", "a\x7fb"])
def test_header_values_with_control_characters_are_dropped(value: str) -> None:
    payload = {"headers": {"X-Bad": value, "X-Good": "fine"}}
    request = build_request(job(payload), TARGET, None, 1)
    assert "X-Bad" not in request.headers
    assert not any("Injected" in k or "Injected" in v for k, v in request.headers.items())
    assert request.headers["X-Good"] == "fine"


def test_bad_header_names_are_dropped() -> None:
    payload = {"headers": {"Bad Name": "v", "X:Y": "v", "X-Ok": "v"}}
    request = build_request(job(payload), TARGET, None, 1)
    assert "Bad Name" not in request.headers
    assert "X:Y" not in request.headers
    assert request.headers["X-Ok"] == "v"


def test_caller_headers_and_scalars() -> None:
    payload = {
        "headers": {
            "Authorization": "Bearer downstream",
            "X-Int": 5,
            "X-Bool": True,
            "X-None": None,
            "X-Tab": "a\tb",
        }
    }
    request = build_request(job(payload), TARGET, None, 1)
    assert request.headers["Authorization"] == "Bearer downstream"
    assert request.headers["X-Int"] == "5"
    assert request.headers["X-Bool"] == "true"
    assert request.headers["X-None"] == ""
    assert request.headers["X-Tab"] == "a\tb"


def test_non_dict_fields_are_ignored() -> None:
    payload = {"headers": "nope", "path_params": ["x"], "query_params": 3, "body": 1}
    request = build_request(job(payload), "http://h/:x", None, 1)
    assert request.url == "http://h/:x"
    assert request.body == b"1"


def test_switchd_headers_are_present() -> None:
    request = build_request(job({"body": {"a": 1}}), TARGET, None, 1_700_000_123)
    headers = request.headers
    assert headers["User-Agent"] == f"switchd/{__version__}"
    assert headers["X-Switch-Topic"] == "orders.created"
    assert headers["X-Switch-Event-Id"] == "evt_0123456789"
    assert headers["X-Switch-Author"] == "billing"
    assert headers["webhook-id"] == "evt_0123456789"
    assert headers["webhook-timestamp"] == "1700000123"
    assert "webhook-signature" not in lower_keys(headers)


def test_switchd_headers_override_same_case_caller_headers() -> None:
    payload = {"headers": {"User-Agent": "evil", "X-Switch-Author": "mallory"}}
    request = build_request(job(payload), TARGET, None, 1)
    assert request.headers["User-Agent"] == f"switchd/{__version__}"
    assert request.headers["X-Switch-Author"] == "billing"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("x-switch-author", "billing"),
        ("X-SWITCH-TOPIC", "orders.created"),
        ("x-switch-event-id", "evt_0123456789"),
        ("WEBHOOK-ID", "evt_0123456789"),
        ("Webhook-Timestamp", "1700000000"),
        ("user-agent", f"switchd/{__version__}"),
    ],
)
def test_caller_cannot_duplicate_switchd_headers_in_another_case(name: str, expected: str) -> None:
    payload = {"body": {"a": 1}, "headers": {name: "forged"}}
    request = build_request(job(payload), TARGET, SECRET, 1_700_000_000)
    assert CIMultiDict(request.headers).getall(name) == [expected]


def test_caller_cannot_add_a_second_signature_header() -> None:
    payload = {"body": {"a": 1}, "headers": {"Webhook-Signature": "v1,forged"}}
    request = build_request(job(payload), TARGET, SECRET, 1_700_000_000)
    assert len(CIMultiDict(request.headers).getall("webhook-signature")) == 1


def test_topic_and_author_with_control_characters_are_made_header_safe() -> None:
    request = build_request(job({}, topic="a\r\nb", author="x\ny"), TARGET, None, 1)
    assert request.headers["X-Switch-Topic"] == "a  b"
    assert request.headers["X-Switch-Author"] == "x y"


# --- signatures ---------------------------------------------------------------------------------


def test_sign_matches_the_standard_webhooks_test_vector() -> None:
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_present_only_with_a_secret() -> None:
    unsigned = build_request(job({"body": {"a": 1}}), TARGET, None, 1)
    assert "webhook-signature" not in lower_keys(unsigned.headers)
    empty = build_request(job({"body": {"a": 1}}), TARGET, "", 1)
    assert "webhook-signature" not in lower_keys(empty.headers)
    signed = build_request(job({"body": {"a": 1}}), TARGET, SECRET, 1)
    assert signed.headers["webhook-signature"].startswith("v1,")


def test_signature_verifies_with_standardwebhooks() -> None:
    now = int(time.time())
    payload = {"body": {"order": 7, "items": ["a", "é"]}, "headers": {"X-A": "1"}}
    request = build_request(job(payload), TARGET, SECRET, now)
    assert request.body is not None
    verified = Webhook(SECRET).verify(request.body, dict(request.headers))
    assert verified == {"order": 7, "items": ["a", "é"]}


def test_signature_without_body_verifies_over_empty_string() -> None:
    now = int(time.time())
    request = build_request(job({"http_method": "GET"}), TARGET, SECRET, now)
    assert request.body is None
    Webhook(SECRET).verify(b"", dict(request.headers), json_parse=False)


def test_signature_fails_for_other_body_or_secret() -> None:
    now = int(time.time())
    request = build_request(job({"body": {"a": 1}}), TARGET, SECRET, now)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(b'{"a":2}', dict(request.headers))
    other = "whsec_" + base64.b64encode(b"o" * 24).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(request.body or b"", dict(request.headers))


def test_signature_covers_id_and_timestamp() -> None:
    a = sign(SECRET, "evt_1", 100, b"{}")
    assert a != sign(SECRET, "evt_2", 100, b"{}")
    assert a != sign(SECRET, "evt_1", 101, b"{}")
    assert a != sign(SECRET, "evt_1", 100, b"[]")
    assert a == sign(SECRET, "evt_1", 100, b"{}")


# --- classify ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "delivered"),
        (201, "delivered"),
        (202, "delivered"),
        (204, "delivered"),
        (299, "delivered"),
        (301, "permanent"),
        (302, "permanent"),
        (304, "permanent"),
        (307, "permanent"),
        (308, "permanent"),
        (400, "permanent"),
        (401, "permanent"),
        (403, "permanent"),
        (404, "permanent"),
        (405, "permanent"),
        (409, "permanent"),
        (410, "permanent"),
        (413, "permanent"),
        (422, "permanent"),
        (408, "transient"),
        (425, "transient"),
        (429, "transient"),
        (500, "transient"),
        (502, "transient"),
        (503, "transient"),
        (504, "transient"),
        (599, "transient"),
    ],
)
def test_classify(status: int, kind: str) -> None:
    assert classify(status) == kind


# --- Retry-After -------------------------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("5", 5.0),
        ("120", 120.0),
        (" 30 ", 30.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("Wed, 32 Foo 2024 99:99:99 GMT", None),
    ],
)
def test_retry_after_seconds_and_junk(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_http_date_in_the_future() -> None:
    value = email.utils.formatdate(NOW + 90, usegmt=True)
    assert value.endswith("GMT")
    assert parse_retry_after(value, NOW) == pytest.approx(90.0)


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    value = email.utils.formatdate(NOW - 3600, usegmt=True)
    assert parse_retry_after(value, NOW) == 0.0


def test_retry_after_rfc_example_date() -> None:
    # RFC 9110's example date, read relative to a 'now' ten seconds earlier.
    when = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", when - 10) == pytest.approx(10.0)
