"""Hostile input over the wire: /publish, /subscribers and filters (DESIGN §4, §5, §7, §10).

Every row of the big table is one hostile request against a real switchd on a real SQLite
file, with one subscriber of topic "t" pointing at a real sink, so that anything wrongly
accepted would be stored and delivered. Each row asserts, in this order:

1. the process is still healthy (`/healthz` and `/readyz` answer 200),
2. nothing was stored (row counts and every subscriber row unchanged)   -> `Stored`,
3. the status is the expected one                                      -> `WrongStatus`,
4. the answer is the JSON error shape with the expected code           -> `NotJsonError`,
5. the sink received nothing.

Rows for known bugs are `xfail(strict=True, raises=...)` with the *specific* failure class,
so a bug row that starts failing for another reason (say, the process is unhealthy) is a
real failure, and a fixed bug turns the row into an XPASS that fails the run.

Further tables cover inputs that are accepted by design but must be neutralised: what the
sink receives for hostile path/query params, headers and authors, and filters that compile
but must stay harmless (bounded time and memory) when evaluated.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import time
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from switchd.auth import mint
from tests.conftest import ADMIN_SECRET, SECRET, Running, Sink, StartSwitchd, evaluate_in_child

ADMIN = "Bearer " + mint(ADMIN_SECRET, "ops", admin=True)
PUBLISHER = "Bearer " + mint(SECRET, "svc")
TABLES = ("subscribers", "events", "jobs", "dead_letters", "idempotency_keys")
MIB = 1 << 20


# --- failure classes: an xfail row names the one it expects ---------------------------------


class Stored(AssertionError):
    """The hostile request changed the database (it was accepted)."""


class WrongStatus(AssertionError):
    """The status differs from the expected one (e.g. a 500 instead of a 400)."""


class NotJsonError(AssertionError):
    """The answer is not `{"error": {"code", "message"}}` with the expected code."""


class Unbounded(AssertionError):
    """Evaluating a filter took too much memory or time."""


def bug(reason: str, raises: type[AssertionError] | tuple[type[AssertionError], ...]) -> Any:
    return pytest.mark.xfail(reason=f"BUG: {reason}", strict=True, raises=raises)


# --- helpers --------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: dict[str, Any],
    claims: Any,
    key: bytes = SECRET.encode(),
    digest: Any = hashlib.sha256,
    signature: bytes | None = None,
) -> str:
    """A bearer token with any header and claims, HMAC-signed with `key` unless given."""
    signing_input = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(claims))}"
    if signature is None:
        signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"Bearer {signing_input}.{b64url(signature)}"


def token(claims: dict[str, Any], secret: str = SECRET) -> str:
    return "Bearer " + jwt.encode(claims, secret, algorithm="HS256")


def doc(payload: Any = None, topic: Any = "t", **extra: Any) -> bytes:
    """A /publish body; the subscriber of every row listens on topic "t"."""
    return orjson.dumps({"topic": topic, "payload": {} if payload is None else payload, **extra})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def nested(depth: int) -> bytes:
    """A publish body whose payload body is `depth` nested arrays."""
    return b'{"topic":"t","payload":{"body":' + b"[" * depth + b"]" * depth + b"}}"


def raw_request(head: str, body: bytes = b"", auth: str = PUBLISHER) -> bytes:
    """A hand-written HTTP/1.1 request to /publish (for what aiohttp's client won't send)."""
    lines = ["POST /publish HTTP/1.1", "Host: switchd", f"Authorization: {auth}", head]
    return ("\r\n".join(line for line in lines if line) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Row:
    """One hostile request and the answer it must get."""

    method: str
    path: str
    status: int
    code: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent as is on a fresh socket instead of `method`/`path`


def pub(body: bytes, status: int, code: str, auth: str | None = PUBLISHER, **headers: str) -> Row:
    sent = {"Authorization": auth} if auth is not None else {}
    sent.update({name.replace("_", "-"): value for name, value in headers.items()})
    return Row("POST", "/publish", status, code, body, sent)


def adm(method: str, path: str, body: Any, status: int, code: str, auth: str = ADMIN) -> Row:
    data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    return Row(method, path, status, code, data, {"Authorization": auth})


def create(fields: dict[str, Any], status: int = 400, code: str = "invalid_request") -> Row:
    return adm("POST", "/subscribers", {"topic": "t2", "target_url": "http://h/x", **fields},
               status, code)  # fmt: skip


def bad_filter(expression: str) -> Row:
    return create({"filter_expression": expression}, 400, "invalid_filter")


NEVER_EVALUATE = [  # (filter, id): refused when saved, as they could never match anything
    ("9**9**9", "pow-tower"),
    ("'a' * 10**10", "string-product"),
    ("[0] * 10**8", "list-product"),
    ("1 << 10**6", "left-shift"),
    ("[[[1] * 100000] * 100000] * 100000", "nested-list-bomb"),
    ("str([[1] * 99999] * 99999)", "str-of-list-bomb"),
    ("data['x'] == 1 or 9**9**9", "pow-behind-short-circuit"),
    ("'%099999999d' % 1", "percent-width-100m"),
    ("'%.99999999f' % 1.0", "percent-precision-100m"),
    ('"{0}".format(data)', "format-method"),
    ("'{0.__class__.__init__.__globals__}'.format(data)", "format-globals"),
    ("str.format('{0.__class__}', data)", "str-format-via-type"),
    ("data['body'].update({'x': 2}) or True", "mutating-update"),
    ("'abc'.get(data['x'])", "method-of-another-type"),
    ("data['x'] == int('x')", "constant-that-raises"),
]


def raw(data: bytes, status: int = 400, code: str = "bad_request") -> Row:
    return Row("RAW", "", status, code, raw=data)


# --- the table -------------------------------------------------------------------------------

GZIP_BOMB = gzip.compress(b'{"topic":"t","payload":{"body":"' + b"x" * (20 * MIB) + b'"}}')
CHUNK = 64 * 1024
CHUNKED_OVER = b"".join(b"%x\r\n%s\r\n" % (CHUNK, b"x" * CHUNK) for _ in range(17)) + b"0\r\n\r\n"
PROTOCOL = (
    "aiohttp's HTTP parser answers malformed requests itself in text/plain, before switchd's "
    "middleware; DESIGN §4 says every error is JSON"
)
DEEP = (
    "orjson.loads accepts 1024 nesting levels but orjson.dumps (Switchd.publish, "
    "idempotency.fingerprint) stops at 255: TypeError 'Recursion limit reached' -> 500 "
    "internal_error instead of a 400"
)
BIDI = (
    "validate_topic rejects only Cc controls; Unicode bidi controls (U+202A-202E, U+2066-2069) "
    "pass into topics, logs, the console and X-Switch-Topic (Trojan-Source-style spoofing)"
)
URL_CONTROL = (
    "validate_url checks ord(c) < 32 only: DEL and C1 controls are accepted (201), then every "
    "delivery fails ('Forbidden control character', or the receiver's 400) into dead letters"
)
HEADER_BOUND = (
    "no bound on the number or size of payload headers: accepted (202), yet no receiver takes "
    "them (431/400 'Too many headers' / 'Got more than 8190 bytes') so every delivery is "
    "dead-lettered; expected 400 invalid_header"
)

SUB = "/subscribers/{sid}"  # {sid}: the id of the row's existing subscriber

ROWS = [
    # --- /publish: encodings the JSON parser must refuse ---------------------------------------
    pytest.param(pub(b'{"topic":"t","payload":{"body":"\xff\xfe"}}', 400, "invalid_json"),
                 id="pub-invalid-utf8-bytes"),
    pytest.param(pub(b'{"topic":"t\xc0\xaf","payload":{}}', 400, "invalid_json"),
                 id="pub-overlong-utf8-slash"),
    pytest.param(pub(b'{"topic":"\xed\xa0\x80","payload":{}}', 400, "invalid_json"),
                 id="pub-utf8-encoded-surrogate"),
    pytest.param(pub(b"\xef\xbb\xbf" + doc(), 400, "invalid_json"), id="pub-utf8-bom"),
    pytest.param(pub(doc().decode().encode("utf-16"), 400, "invalid_json"), id="pub-utf16-bom"),
    pytest.param(pub(doc().decode().encode("utf-16-le"), 400, "invalid_json",
                     Content_Type="application/json; charset=utf-16"),
                 id="pub-utf16-declared-charset"),
    pytest.param(pub(doc().decode().encode("utf-32"), 400, "invalid_json"), id="pub-utf32"),
    pytest.param(pub(b'{"topic":"\\ud800","payload":{}}', 400, "invalid_json"),
                 id="pub-lone-high-surrogate-escape"),
    pytest.param(pub(b'{"topic":"t","payload":{"body":"\\udc00"}}', 400, "invalid_json"),
                 id="pub-lone-low-surrogate-escape"),
    pytest.param(pub(b'{"topic":"t","payload":{"body":1e999999}}', 400, "invalid_json"),
                 id="pub-overlong-number-1e999999"),
    pytest.param(pub(b'{"topic":"t","payload":{"body":NaN}}', 400, "invalid_json"),
                 id="pub-nan-literal"),
    pytest.param(pub(b'{"topic":"t","payload":{"body":Infinity}}', 400, "invalid_json"),
                 id="pub-infinity-literal"),
    pytest.param(pub(b'{"topic":"t","payload":{"body":-Infinity}}', 400, "invalid_json"),
                 id="pub-minus-infinity-literal"),
    pytest.param(pub(nested(100_000), 400, "invalid_json"), id="pub-arrays-nested-100k"),
    pytest.param(pub(b'{"topic":"t","payload":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001,
                     400, "invalid_json"),
                 id="pub-objects-nested-100k"),
    pytest.param(pub(nested(256), 400, "invalid_payload"), id="pub-arrays-nested-256"),
    pytest.param(pub(nested(256), 400, "invalid_payload", Idempotency_Key="deep-1"),
                 id="pub-arrays-nested-256-idempotent"),
    pytest.param(pub(doc() + b"\x00", 400, "invalid_json"), id="pub-trailing-nul"),
    pytest.param(pub(doc() + doc(), 400, "invalid_json"), id="pub-two-documents"),
    pytest.param(pub(b" \r\n\t ", 400, "invalid_json"), id="pub-only-whitespace"),
    pytest.param(pub(b'{"Topic":"other","topic":"t","payload":{}}', 400, "invalid_json"),
                 id="pub-duplicate-topic-keys-differing-case"),
    # --- /publish: topics ----------------------------------------------------------------------
    pytest.param(pub(doc(topic="t\x00"), 400, "invalid_topic"), id="pub-topic-nul-byte"),
    pytest.param(pub(doc(topic="\x00"), 400, "invalid_topic"), id="pub-topic-only-nul"),
    pytest.param(pub(doc(topic="t\u202e"), 400, "invalid_topic"), id="pub-topic-rtl-override"),
    pytest.param(pub(doc(topic="\U0001f600" * 256), 400, "invalid_topic"),
                 id="pub-topic-256-astral-chars"),
    pytest.param(pub(doc(topic={"$ne": ""}), 400, "invalid_topic"), id="pub-topic-operator-object"),
    pytest.param(pub(doc(topic=True), 400, "invalid_topic"), id="pub-topic-boolean"),
    # --- /publish: payload decoding ------------------------------------------------------------
    pytest.param(pub(doc(b64(doc().decode().encode("utf-16"))), 400, "invalid_payload"),
                 id="pub-payload-base64-of-utf16"),
    pytest.param(pub(doc(base64.urlsafe_b64encode(b'{"body":"\xfb\xff"}').decode()),
                     400, "invalid_payload"),
                 id="pub-payload-urlsafe-base64"),
    pytest.param(pub(doc(base64.encodebytes(b'{"body":"' + b"x" * 100 + b'"}').decode()),
                     400, "invalid_payload"),
                 id="pub-payload-base64-with-newlines"),
    pytest.param(pub(doc(b64(b'{"body":"\xff"}')), 400, "invalid_payload"),
                 id="pub-payload-base64-invalid-utf8"),
    pytest.param(pub(doc(b64(b'{"body":NaN}')), 400, "invalid_payload"),
                 id="pub-payload-base64-nan"),
    pytest.param(pub(doc(b64(b"[" * 2000 + b"]" * 2000)), 400, "invalid_payload"),
                 id="pub-payload-base64-nested-2000"),
    pytest.param(pub(doc(True), 400, "invalid_payload"), id="pub-payload-boolean"),
    # --- /publish: header injection in payload headers -----------------------------------------
    pytest.param(pub(doc({"headers": {"X-A": "a\r\n X-Evil: 1"}}), 400, "invalid_header"),
                 id="pub-header-obs-fold"),
    pytest.param(pub(doc({"headers": {"X-A": "a\nSet-Cookie: s=1"}}), 400, "invalid_header"),
                 id="pub-header-lf-injection"),
    pytest.param(pub(doc({"headers": {"X-A": "a\x7f"}}), 400, "invalid_header"),
                 id="pub-header-value-del"),
    pytest.param(pub(doc({"headers": {"X-A": "a\x85b"}}), 400, "invalid_header"),
                 id="pub-header-value-nel"),
    pytest.param(pub(doc({"headers": {"X-A": "\x1b[31mred"}}), 400, "invalid_header"),
                 id="pub-header-value-ansi-escape"),
    pytest.param(pub(doc({"headers": {"X-A: 1\r\nX-B": "v"}}), 400, "invalid_header"),
                 id="pub-header-name-crlf-injection"),
    pytest.param(pub(doc({"headers": {"X-A:": "v"}}), 400, "invalid_header"),
                 id="pub-header-name-trailing-colon"),
    pytest.param(pub(doc({"headers": {" X-A": "v"}}), 400, "invalid_header"),
                 id="pub-header-name-leading-space"),
    pytest.param(pub(doc({"headers": {"X-\u00c9vil": "v"}}), 400, "invalid_header"),
                 id="pub-header-name-unicode"),
    pytest.param(pub(doc({"headers": {"X-\uff21": "v"}}), 400, "invalid_header"),
                 id="pub-header-name-fullwidth"),
    pytest.param(pub(doc({"headers": {"X\x00": "v"}}), 400, "invalid_header"),
                 id="pub-header-name-nul"),
    pytest.param(pub(doc({"headers": {"X-Evil\n": "v"}}), 400, "invalid_header"),
                 id="pub-header-name-trailing-newline"),
    pytest.param(pub(doc({"headers": {f"X-H{i}": "v" for i in range(10_000)}}),
                     400, "invalid_header"),
                 id="pub-10k-headers"),
    pytest.param(pub(doc({"headers": {"X-Big": "v" * 100_000}}), 400, "invalid_header"),
                 id="pub-100k-header-value"),
    # --- /publish: params and method -----------------------------------------------------------
    pytest.param(pub(doc({"path_params": "a/b"}), 400, "invalid_payload"),
                 id="pub-path-params-string"),
    pytest.param(pub(doc({"query_params": {"a": [None, ["x"]]}}), 400, "invalid_payload"),
                 id="pub-query-param-nested-list"),
    pytest.param(pub(doc({"http_method": "GET\r\nX-Evil: 1"}), 400, "invalid_payload"),
                 id="pub-method-crlf"),
    pytest.param(pub(doc({"http_method": "\uff47et"}), 400, "invalid_payload"),
                 id="pub-method-fullwidth"),
    pytest.param(pub(doc({"http_method": "GET "}), 400, "invalid_payload"),
                 id="pub-method-trailing-space"),
    # --- /publish: sizes and content encodings -------------------------------------------------
    pytest.param(pub(doc({"body": "x" * (2 * MIB)}), 413, "payload_too_large"),
                 id="pub-2mib-with-content-length"),
    pytest.param(raw(raw_request("Transfer-Encoding: chunked\r\nConnection: close", CHUNKED_OVER),
                     413, "payload_too_large"),
                 id="pub-chunked-over-1mib-no-content-length"),
    pytest.param(raw(raw_request("Content-Length: 2000000\r\nConnection: close", doc()),
                     413, "payload_too_large"),
                 id="pub-content-length-claims-2mb"),
    pytest.param(pub(GZIP_BOMB, 413, "payload_too_large", Content_Encoding="gzip"),
                 id="pub-gzip-bomb-20mib"),
    pytest.param(pub(b"this is not gzip", 400, "invalid_request", Content_Encoding="gzip"),
                 id="pub-content-encoding-gzip-lie"),
    pytest.param(pub(b"--x\r\nContent-Disposition: form-data\r\n\r\n--x--", 400, "invalid_json",
                     Content_Type="multipart/form-data; boundary=x"),
                 id="pub-content-type-multipart-lie"),
    pytest.param(pub(b"topic=t&payload=e30%3D", 400, "invalid_json",
                     Content_Type="application/x-www-form-urlencoded"),
                 id="pub-content-type-form-lie"),
    pytest.param(pub(b"<topic>t</topic>", 400, "invalid_json", Content_Type="application/json"),
                 id="pub-content-type-json-but-xml"),
    # --- protocol-level attacks (answered by aiohttp's parser) ---------------------------------
    pytest.param(raw(raw_request("Transfer-Encoding: chunked", b"zz\r\nabc\r\n0\r\n\r\n")),
                 id="proto-bad-chunk-size", marks=bug(PROTOCOL, NotJsonError)),
    pytest.param(raw(raw_request("Content-Length: 5\r\nTransfer-Encoding: chunked",
                                 b"0\r\n\r\n")),
                 id="proto-cl-te-smuggling", marks=bug(PROTOCOL, NotJsonError)),
    pytest.param(raw(raw_request("Content-Length: -1", doc())), id="proto-negative-length",
                 marks=bug(PROTOCOL, NotJsonError)),
    pytest.param(raw(raw_request(f"Content-Length: {len(doc())}", doc(), "Bearer " + "a" * 20_000)),
                 id="proto-20kb-token", marks=bug(PROTOCOL, NotJsonError)),
    pytest.param(raw(raw_request(f"X-Trace: a\x00b\r\nContent-Length: {len(doc())}", doc())),
                 id="proto-nul-in-header", marks=bug(PROTOCOL, NotJsonError)),
    # --- JWT abuse -----------------------------------------------------------------------------
    pytest.param(pub(doc(), 401, "unauthorized", forge({"alg": "NONE"}, {"author": "svc"},
                                                       signature=b"")),
                 id="jwt-alg-NONE-uppercase"),
    pytest.param(pub(doc(), 401, "unauthorized", forge({"alg": "HS512"}, {"author": "svc"},
                                                       digest=hashlib.sha512)),
                 id="jwt-hs512-with-right-secret"),
    pytest.param(pub(doc(), 401, "unauthorized", forge({"alg": "RS256"}, {"author": "svc"})),
                 id="jwt-rs256-header-hmac-signature"),
    pytest.param(pub(doc(), 401, "unauthorized",
                     forge({"alg": "HS256", "kid": "../../../../dev/null"}, {"author": "svc"},
                           key=b"")),
                 id="jwt-kid-path-traversal-empty-key"),
    pytest.param(pub(doc(), 401, "unauthorized",
                     forge({"alg": "HS256", "jku": "http://127.0.0.1:9/jwks.json", "kid": "k"},
                           {"author": "svc"}, key=b"attacker-key")),
                 id="jwt-jku-attacker-key"),
    pytest.param(pub(doc(), 401, "unauthorized",
                     forge({"alg": "HS256", "jwk": {"kty": "oct", "k": b64url(b"attacker")}},
                           {"author": "svc"}, key=b"attacker")),
                 id="jwt-embedded-jwk"),
    pytest.param(pub(doc(), 401, "unauthorized", forge({"alg": "HS256"}, ["author", "svc"])),
                 id="jwt-claims-not-an-object"),
    pytest.param(pub(doc(), 401, "unauthorized", "Bearer " + "A" * 7000),
                 id="jwt-7kb-garbage"),
    pytest.param(pub(doc(), 401, "unauthorized", "Bearer a.b.c.d.e"), id="jwt-five-segments"),
    pytest.param(pub(doc(), 401, "unauthorized", token({"author": "svc", "exp": "tomorrow"})),
                 id="jwt-exp-non-numeric-string"),
    pytest.param(pub(doc(), 401, "unauthorized", token({"author": "svc", "exp": "1"})),
                 id="jwt-exp-past-numeric-string"),
    pytest.param(pub(doc(), 401, "unauthorized", token({"author": "svc", "nbf": "9999999999"})),
                 id="jwt-nbf-future-string"),
    pytest.param(pub(doc(), 401, "unauthorized",
                     token({"author": "svc", "iat": int(time.time()) + 10**6})),
                 id="jwt-iat-in-the-future"),
    pytest.param(pub(doc(), 401, "unauthorized", token({"author": ["svc"]})), id="jwt-author-list"),
    pytest.param(pub(doc(), 401, "unauthorized", token({"author": ""})), id="jwt-author-empty"),
    pytest.param(pub(doc(), 401, "unauthorized", "Bearer " + PUBLISHER[7:] + " extra"),
                 id="jwt-two-tokens"),
    pytest.param(adm("GET", "/subscribers", None, 403, "forbidden",
                     token({"author": "ops", "scope": 1}, ADMIN_SECRET)),
                 id="jwt-scope-number"),
    pytest.param(adm("GET", "/subscribers", None, 403, "forbidden",
                     token({"author": "ops", "scope": {"admin": True}}, ADMIN_SECRET)),
                 id="jwt-scope-object"),
    pytest.param(adm("GET", "/subscribers", None, 403, "forbidden",
                     token({"author": "ops", "scope": [["admin"]]}, ADMIN_SECRET)),
                 id="jwt-scope-nested-list"),
    pytest.param(adm("GET", "/subscribers", None, 403, "forbidden",
                     token({"author": "ops", "scope": "ADMIN administrator admin:read"},
                           ADMIN_SECRET)),
                 id="jwt-scope-lookalikes"),
    pytest.param(adm("POST", "/subscribers", {"topic": "t", "target_url": "http://h/x"}, 403,
                     "forbidden", token({"author": "ops", "Scope": "admin"}, ADMIN_SECRET)),
                 id="jwt-scope-claim-capitalised"),
    pytest.param(adm("POST", "/subscribers", {"topic": "t", "target_url": "http://h/x"}, 403,
                     "forbidden", token({"author": "ops", "scope": "admin"})),
                 id="jwt-admin-scope-on-a-publisher-token"),
    pytest.param(pub(doc(), 403, "topic_not_allowed", token({"author": "svc", "topics": ["t.*"]}),
                     Idempotency_Key="scoped-1"),
                 id="jwt-topics-prefix-is-not-the-bare-name"),
    pytest.param(pub(doc(), 403, "topic_not_allowed", token({"author": "svc", "topics": ["T"]})),
                 id="jwt-topics-case-sensitive"),
    pytest.param(pub(doc(), 403, "topic_not_allowed", token({"author": "svc", "topics": []})),
                 id="jwt-topics-empty-list"),
    pytest.param(pub(doc(), 401, "unauthorized", token({"author": "svc", "topics": "t"})),
                 id="jwt-topics-string"),
    pytest.param(pub(doc(), 401, "unauthorized", token({"author": "svc", "topics": ["t", 7]})),
                 id="jwt-topics-not-strings"),
    # --- Idempotency-Key -----------------------------------------------------------------------
    pytest.param(pub(doc(), 400, "invalid_idempotency_key", Idempotency_Key="k" * 256),
                 id="idem-key-256-chars"),
    pytest.param(pub(doc(), 400, "invalid_idempotency_key", Idempotency_Key=""),
                 id="idem-key-empty"),
    # --- /subscribers: target_url tricks -------------------------------------------------------
    pytest.param(create({"target_url": "file:///etc/passwd"}), id="sub-url-file"),
    pytest.param(create({"target_url": "javascript:alert(1)//http://h/"}), id="sub-url-javascript"),
    pytest.param(create({"target_url": "data:text/html,<script>alert(1)</script>"}),
                 id="sub-url-data"),
    pytest.param(create({"target_url": "http://h\r\nHost: evil/x"}), id="sub-url-crlf-in-host"),
    pytest.param(create({"target_url": "http://user\n@h/x"}), id="sub-url-lf-in-userinfo"),
    pytest.param(create({"target_url": "http://h/" + "a" * 3000}), id="sub-url-3000-chars"),
    pytest.param(create({"target_url": "http://[::1/x"}), id="sub-url-ipv6-unclosed"),
    pytest.param(create({"target_url": "http://[127.0.0.1]/x"}), id="sub-url-ipv4-in-brackets"),
    pytest.param(create({"target_url": "http://::1/x"}), id="sub-url-ipv6-unbracketed"),
    pytest.param(create({"target_url": "http://[]/x"}), id="sub-url-empty-brackets"),
    pytest.param(create({"target_url": "http://h:+80/x"}), id="sub-url-signed-port"),
    pytest.param(create({"target_url": "//h/x"}), id="sub-url-scheme-relative"),
    pytest.param(create({"target_url": "http:\\\\h\\x"}), id="sub-url-backslashes"),
    pytest.param(create({"target_url": ["http://h/x"]}), id="sub-url-list"),
    pytest.param(create({"target_url": "http://h/\u3000x"}), id="sub-url-ideographic-space"),
    pytest.param(create({"target_url": "http://h/a\x7f"}), id="sub-url-del"),
    pytest.param(create({"target_url": "http://h/a\x9b"}), id="sub-url-c1-csi"),
    # --- /subscribers: other fields and bodies -------------------------------------------------
    pytest.param(create({"topic": "t\x00"}, 400, "invalid_topic"), id="sub-topic-nul"),
    pytest.param(create({"topic": "t\u202e"}, 400, "invalid_topic"), id="sub-topic-rtl-override"),
    pytest.param(create({"id": "chosen-id"}), id="sub-create-chooses-id"),
    pytest.param(create({"created_at": 0}), id="sub-create-sets-created-at"),
    pytest.param(create({"secret": "whsec_" + b64(b"k" * 10)}), id="sub-secret-too-short"),
    pytest.param(create({"secret": "whsec_" + b64(b"k" * 65)}), id="sub-secret-too-long"),
    pytest.param(create({"secret": "whsec_" + base64.urlsafe_b64encode(b"\xfb" * 30).decode()}),
                 id="sub-secret-urlsafe-alphabet"),
    pytest.param(create({"description": "d" * 1001}), id="sub-description-too-long"),
    pytest.param(create({"description": {"html": "<b>"}}), id="sub-description-object"),
    pytest.param(adm("POST", "/subscribers", b"\xef\xbb\xbf" + orjson.dumps({"topic": "t"}), 400,
                     "invalid_json"),
                 id="sub-body-bom"),
    pytest.param(adm("POST", "/subscribers", b"[" * 2000 + b"]" * 2000, 400, "invalid_json"),
                 id="sub-body-nested-2000"),
    pytest.param(adm("POST", "/subscribers", {"topic": "t", "description": "d" * 70_000}, 413,
                     "payload_too_large"),
                 id="sub-body-over-64kib"),
    pytest.param(adm("PATCH", SUB, {"target_url": "javascript:alert(1)"}, 400,
                     "invalid_request"),
                 id="sub-patch-url-javascript"),
    pytest.param(adm("PATCH", SUB, {"id": "other"}, 400, "invalid_request"),
                 id="sub-patch-id"),
    pytest.param(adm("PATCH", SUB, {"enabled": "false"}, 400, "invalid_request"),
                 id="sub-patch-enabled-string"),
    pytest.param(adm("PATCH", SUB, {"topic": None}, 400, "invalid_topic"),
                 id="sub-patch-topic-null"),
    pytest.param(adm("PATCH", SUB, {"filter_expression": "data.__class__"}, 400,
                     "invalid_filter"),
                 id="sub-patch-filter-escape"),
    pytest.param(adm("GET", "/subscribers/%00", None, 404, "not_found"), id="sub-get-nul-id"),
    pytest.param(adm("DELETE", "/subscribers/..%2F..%2Fhealthz", None, 404, "not_found"),
                 id="sub-delete-traversal-id"),
    pytest.param(adm("DELETE", "/subscribers/%27%20OR%201%3D1--", None, 404, "not_found"),
                 id="sub-delete-sql-injection-id"),
    # --- filters that must not compile (→ 400 invalid_filter, nothing stored) -----------------
    pytest.param(bad_filter("().__class__"), id="filter-tuple-class"),
    pytest.param(bad_filter("data.__class__.__init__.__globals__"), id="filter-globals"),
    pytest.param(bad_filter("data.get.__self__"), id="filter-method-self"),
    pytest.param(bad_filter('getattr(data, "__class__")'), id="filter-getattr"),
    pytest.param(bad_filter("f'{data.__class__}'"), id="filter-fstring"),
    pytest.param(bad_filter("f'{data!r:>{10**9}}'"), id="filter-fstring-width"),
    pytest.param(bad_filter("(w := data)"), id="filter-walrus"),
    pytest.param(bad_filter("{k: v for k, v in data.items()}"), id="filter-dict-comprehension"),
    pytest.param(bad_filter("any(x for x in data)"), id="filter-generator"),
    pytest.param(bad_filter("(lambda: data)()"), id="filter-lambda-call"),
    pytest.param(bad_filter("[*data]"), id="filter-starred"),
    pytest.param(bad_filter('max(**{"key": len})'), id="filter-keyword-unpacking"),
    pytest.param(bad_filter("(yield data)"), id="filter-yield"),
    pytest.param(bad_filter("__import__('os').system('id')"), id="filter-import"),
    pytest.param(bad_filter("True or data.__class__"), id="filter-dunder-behind-short-circuit"),
    pytest.param(bad_filter('data["body"].__getitem__("x")'), id="filter-getitem-dunder"),
    pytest.param(bad_filter("\uff44ata.__class__"), id="filter-fullwidth-data-dunder"),
    pytest.param(bad_filter("data.\uff3f\uff3fclass\uff3f\uff3f"),
                 id="filter-fullwidth-underscores"),
    pytest.param(bad_filter("data.__\uff43lass__"), id="filter-nfkc-dunder"),
    pytest.param(bad_filter("\uff47etattr(data, 'x')"), id="filter-fullwidth-getattr"),
    pytest.param(bad_filter("data\x00"), id="filter-nul-byte"),
    pytest.param(bad_filter("(" * 10_000 + "1" + ")" * 10_000), id="filter-10k-parentheses"),
    pytest.param(bad_filter("1 or " * 12_000 + "1"), id="filter-60k-chars"),
    pytest.param(bad_filter("[[[[[[[[[[" * 5 + "]]]]]]]]]]" * 5), id="filter-nested-list-50"),
    *(pytest.param(bad_filter(e), id=f"filter-{name}") for e, name in NEVER_EVALUATE),
    pytest.param(create({"filter_expression": "1 or " * 20_000 + "1"}, 413, "payload_too_large"),
                 id="filter-100k-chars"),
    # --- /dead (same input-hardening gap) -----------------------------------------------------
    pytest.param(adm("GET", "/dead?limit=%C2%B2", None, 400, "invalid_request"),
                 id="dead-limit-superscript-digit"),
    pytest.param(adm("GET", "/dead/%C2%B2", None, 404, "not_found"),
                 id="dead-id-superscript-digit"),
]  # fmt: skip


# --- running one row --------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    www_authenticate: str | None


async def send(app: Running, row: Row, subscriber_id: str) -> Answer:
    if row.raw is not None:
        return await send_raw(app.url, row.raw)
    url = URL(app.url + row.path.replace("{sid}", subscriber_id), encoded=True)
    async with app.client.request(row.method, url, data=row.body, headers=row.headers) as response:
        return Answer(
            response.status,
            response.headers.get("Content-Type", ""),
            await response.read(),
            response.headers.get("WWW-Authenticate"),
        )


async def send_raw(base_url: str, data: bytes) -> Answer:
    """Write bytes on a fresh connection; parse the first response."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    received = b""
    try:
        writer.write(data)
        await writer.drain()
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in received or len(received) < _response_length(received):
            chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            if not chunk:
                break
            received += chunk
    finally:
        writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    body = body[: int(headers.get("content-length", len(body)))]
    status = int(lines[0].split()[1])
    return Answer(status, headers.get("content-type", ""), body, headers.get("www-authenticate"))


def _response_length(received: bytes) -> int:
    head, sep, _ = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + len(sep) + int(value.strip())
    return len(received) + 1  # unknown: read until the server closes


async def snapshot(app: Running) -> dict[str, Any]:
    """Everything a rejected request must leave untouched."""
    state: dict[str, Any] = {table: await app.count(table) for table in TABLES}
    state["subscriber_rows"] = await app.service.store.rows()
    return state


async def assert_healthy(app: Running) -> None:
    for path in ("/healthz", "/readyz"):
        status, body = await app.call("GET", path)
        assert status == 200, (path, body)


def check_answer(answer: Answer, status: int, code: str) -> None:
    if answer.status != status:
        raise WrongStatus(f"expected {status}, got {answer.status}: {answer.body[:300]!r}")
    try:
        if not answer.content_type.startswith("application/json"):
            raise ValueError(f"Content-Type {answer.content_type!r}")
        document = orjson.loads(answer.body)
        assert set(document) == {"error"}, document
        assert set(document["error"]) == {"code", "message"}, document
        message = document["error"]["message"]
        assert isinstance(message, str) and message.strip(), document
        assert "Traceback" not in message
    except (ValueError, AssertionError) as exc:
        raise NotJsonError(f"{exc}: {answer.body[:300]!r}") from exc
    assert document["error"]["code"] == code, document
    if status == 401:
        assert answer.www_authenticate == "Bearer"


@pytest.mark.parametrize("row", ROWS)
async def test_hostile_request_is_rejected_and_changes_nothing(
    start_switchd: StartSwitchd, sink: Sink, row: Row
) -> None:
    app = await start_switchd()
    subscriber = await app.add_subscriber(topic="t", target_url=sink.url("/hooks/:id"))
    before = await snapshot(app)
    answer = await send(app, row, subscriber["id"])
    await assert_healthy(app)
    after = await snapshot(app)
    if after != before:
        raise Stored(f"status {answer.status}: {answer.body[:200]!r}")
    check_answer(answer, row.status, row.code)
    await asyncio.sleep(0.05)
    assert sink.requests == []


# Positive controls: the helpers above can produce requests that ARE accepted, so the rows
# fail for the hostile part and not for a broken helper.


async def test_controls_forged_token_and_raw_request_are_accepted(
    start_switchd: StartSwitchd, sink: Sink
) -> None:
    app = await start_switchd()
    await app.add_subscriber(topic="t", target_url=sink.url("/hooks/:id"))
    forged = forge({"alg": "HS256", "typ": "JWT"}, {"author": "svc", "topics": ["x.*", "t"]})
    answer = await send(app, pub(doc(), 202, "", forged), "")
    assert answer.status == 202, answer
    body = doc({"body": {"n": 1}})
    answer = await send_raw(app.url, raw_request(f"Content-Length: {len(body)}", body))
    assert answer.status == 202, answer
    answer = await send(app, create({}), "")
    assert answer.status == 201, answer
    compressed = gzip.compress(doc({"body": "x" * 1000}))
    answer = await send(app, pub(compressed, 202, "", Content_Encoding="gzip"), "")
    assert answer.status == 202, answer
    await sink.wait_for(3)
    assert await app.count("events") == 3


# --- neutralised, not rejected: what the sink receives --------------------------------------


@dataclass
class RawHit:
    method: str
    raw_path: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class RawSink:
    """A low-level HTTP endpoint that records every request exactly as it arrived."""

    base_url: str = ""
    hits: list[RawHit] = field(default_factory=list)

    async def handle(self, request: web.BaseRequest) -> web.Response:
        self.hits.append(
            RawHit(request.method, request.raw_path, request.headers, await request.read())
        )
        return web.Response(text="ok")

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[RawHit]:
        deadline = time.monotonic() + timeout
        while len(self.hits) < count:
            assert time.monotonic() < deadline, f"sink got {len(self.hits)} of {count} requests"
            await asyncio.sleep(0.01)
        return self.hits

    def url(self, path: str) -> str:
        return self.base_url + path


@pytest.fixture
async def raw_sink() -> AsyncIterator[RawSink]:
    recorder = RawSink()
    runner = web.ServerRunner(web.Server(recorder.handle), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    recorder.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield recorder
    await runner.cleanup()


URL_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%/?&=+:")

NEUTRALISED = [
    # (payload, expected raw path segment for ":id" (None: target unchanged), expected query)
    pytest.param({"path_params": {"id": "../../admin"}}, "..%2F..%2Fadmin", "",
                 id="path-dotdot-slash"),
    pytest.param({"path_params": {"id": ".."}}, "%2E%2E", "", id="path-dotdot"),
    pytest.param({"path_params": {"id": "..."}}, "%2E%2E%2E", "", id="path-three-dots"),
    pytest.param({"path_params": {"id": "%2e%2e"}}, "%252e%252e", "", id="path-encoded-dotdot"),
    pytest.param({"path_params": {"id": "%2F..%2F"}}, "%252F..%252F", "", id="path-encoded-slash"),
    pytest.param({"path_params": {"id": "/"}}, "%2F", "", id="path-slash"),
    pytest.param({"path_params": {"id": "\\..\\"}}, "%5C..%5C", "", id="path-backslashes"),
    pytest.param({"path_params": {"id": "..;/x"}}, "..%3B%2Fx", "", id="path-semicolon"),
    pytest.param({"path_params": {"id": "a?b=c#d"}}, "a%3Fb%3Dc%23d", "", id="path-query-fragment"),
    pytest.param({"path_params": {"id": "\u65e5\u672c\u202e"}}, "%E6%97%A5%E6%9C%AC%E2%80%AE", "",
                 id="path-unicode-rtl"),
    pytest.param({"path_params": {"id": "a\r\nX-Evil: 1"}}, "a%0D%0AX-Evil%3A%201", "",
                 id="path-crlf"),
    pytest.param({"path_params": {"id": "\x00"}}, "%00", "", id="path-nul"),
    pytest.param({"path_params": {"id": "http://evil/"}}, "http%3A%2F%2Fevil%2F", "",
                 id="path-absolute-url"),
    pytest.param({"query_params": {"a&b=c": "d&e=f#g"}}, None, "a%26b%3Dc=d%26e%3Df%23g",
                 id="query-amp-eq-hash"),
    pytest.param({"query_params": {"x": ["1&y=2", "#", "fixed=2"]}}, None,
                 "x=1%26y%3D2&x=%23&x=fixed%3D2", id="query-list-injection"),
    pytest.param({"query_params": {"q": "\r\nX-Evil: 1"}}, None, "q=%0D%0AX-Evil%3A+1",
                 id="query-crlf"),
    pytest.param({"query_params": {"\u00e9": "\u65e5\u672c"}}, None,
                 "%C3%A9=%E6%97%A5%E6%9C%AC", id="query-unicode"),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "segment", "query"), NEUTRALISED)
async def test_path_and_query_params_reach_the_sink_encoded(
    start_switchd: StartSwitchd, raw_sink: RawSink, payload: dict, segment: str | None, query: str
) -> None:
    app = await start_switchd()
    await app.add_subscriber(topic="t", target_url=raw_sink.url("/hooks/:id/tail?fixed=1"))
    status, answer = await app.publish("t", payload)
    assert status == 202 and answer["matched"] == 1, answer
    [hit] = await raw_sink.wait_for(1)
    path, _, got_query = hit.raw_path.partition("?")
    assert set(hit.raw_path) <= URL_SAFE, hit.raw_path  # nothing raw: all else is %-encoded
    assert path == f"/hooks/{':id' if segment is None else segment}/tail"
    assert got_query == "fixed=1" + (f"&{query}" if query else "")
    assert "X-Evil" not in hit.headers
    await assert_healthy(app)


async def test_author_with_crlf_is_made_header_safe_at_the_sink(
    start_switchd: StartSwitchd, raw_sink: RawSink
) -> None:
    app = await start_switchd()
    await app.add_subscriber(topic="t", target_url=raw_sink.base_url + "/hooks")
    headers = {"Authorization": token({"author": "svc\r\nX-Evil: 1\r\n\r\nsmuggled"})}
    status, answer = await app.call("POST", "/publish", data=doc({"body": {"a": 1}}),
                                    headers=headers)  # fmt: skip
    assert status == 202 and answer["matched"] == 1, answer
    [hit] = await raw_sink.wait_for(1)
    assert hit.headers.getall("X-Switch-Author") == ["svc  X-Evil: 1    smuggled"]
    assert "X-Evil" not in hit.headers
    assert orjson.loads(hit.body) == {"a": 1}


async def test_framing_headers_from_the_payload_never_reach_the_sink(
    start_switchd: StartSwitchd, raw_sink: RawSink
) -> None:
    app = await start_switchd()
    await app.add_subscriber(topic="t", target_url=raw_sink.base_url + "/hooks")
    forged = {
        "Host": "evil.example",
        "Content-Length": "0",
        "Transfer-Encoding": "chunked",
        "Connection": "close, X-Switch-Topic",
        "X-Switch-Topic": "forged",
        "webhook-signature": "v1,forged",
        "X-Unicode": "\u65e5\u672c\u2028",
    }
    status, answer = await app.publish("t", {"headers": forged, "body": {"big": "x" * 5000}})
    assert status == 202 and answer["matched"] == 1, answer
    [hit] = await raw_sink.wait_for(1)
    assert hit.headers["Host"] == raw_sink.base_url.removeprefix("http://")
    assert "Transfer-Encoding" not in hit.headers
    assert hit.headers.getall("Content-Length") == [str(len(hit.body))]
    assert orjson.loads(hit.body) == {"big": "x" * 5000}
    assert hit.headers.getall("X-Switch-Topic") == ["t"]
    assert "webhook-signature" not in hit.headers  # the subscriber has no secret
    assert "close" not in hit.headers.get("Connection", "")
    assert hit.headers["X-Unicode"] == "\u65e5\u672c\u2028"


async def test_unicode_target_url_is_rejected_or_sent_percent_encoded(
    start_switchd: StartSwitchd, raw_sink: RawSink
) -> None:
    """An IRI target must be refused at creation or encoded on delivery, never sent raw."""
    app = await start_switchd()
    status, created = await app.call(
        "POST",
        "/subscribers",
        json={"topic": "t", "target_url": raw_sink.base_url + "/caf\u00e9/:id"},
        headers=app.admin,
    )
    if status == 400:
        assert created["error"]["code"] == "invalid_request"
        return
    assert status == 201, created
    assert (await app.publish("t", {"path_params": {"id": "x"}}))[0] == 202
    deadline = time.monotonic() + 5
    while not raw_sink.hits and await app.count("dead_letters") == 0:
        assert time.monotonic() < deadline, "neither delivered nor dead-lettered"
        await asyncio.sleep(0.02)
    assert [hit.raw_path for hit in raw_sink.hits] == ["/caf%C3%A9/x"]


# --- filters that compile but must stay harmless when evaluated ---------------------------------

PEAK_BYTES = 32 * MIB
FORMAT_BOMB = (
    "the '%' operator (ast.Mod) is not bounded: printf-style width/precision builds a string of "
    "any size on the event loop ('%.999999999f' % 1.0 takes ~4 s and 1 GB); with a benign "
    "filter like data[...] % 7 == 0 the format string comes from the attacker's payload"
)

EVALUATED = [
    # (filter, payload body); constant bombs are refused when saved (the rows above)
    pytest.param("data['body']['s'] * 10**6", {"s": "x" * 1000}, id="payload-string-product"),
    pytest.param("data['body']['s'] ** data['body']['s']", {"s": 10**5}, id="payload-pow"),
    pytest.param("data['body']['s'] << 10**6", {"s": 1}, id="payload-left-shift"),
    pytest.param("[data['body']['s']] * 10**8", {"s": 1}, id="payload-list-product"),
    pytest.param("data['body']['s'].lower()", {"s": [1]}, id="str-method-on-a-list"),
    pytest.param("data['body']['n'] % 7 == 0", {"n": "%0199999999d"},
                 id="benign-modulo-attacker-format"),
]  # fmt: skip


@pytest.mark.parametrize(("expression", "body"), EVALUATED)
async def test_evaluated_hostile_filter_is_bounded_and_matches_nothing(
    start_switchd: StartSwitchd, sink: Sink, expression: str, body: dict
) -> None:
    app = await start_switchd()
    hostile = await app.add_subscriber(topic="t", target_url=sink.url("/hostile"),
                                       filter_expression=expression)  # fmt: skip
    plain = await app.add_subscriber(topic="t", target_url=sink.url("/plain"))
    tracemalloc.start()
    try:
        started = time.monotonic()
        status, answer = await app.publish("t", {"body": body})
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if peak >= PEAK_BYTES or elapsed >= 2.0:
        raise Unbounded(f"publish allocated {peak / MIB:.0f} MiB and took {elapsed:.2f}s")
    assert status == 202, answer
    assert answer["subscribers"] == [plain["id"]]  # the hostile filter matched nothing
    [received] = await sink.wait_for(1)
    assert received.path == "/plain" and received.json() == body  # and changed nothing
    compiled = app.service.registry.get(hostile["id"]).compiled  # type: ignore[union-attr]
    assert compiled.errors == 1
    await assert_healthy(app)


async def test_fullwidth_data_is_just_data(start_switchd: StartSwitchd, sink: Sink) -> None:
    """NFKC makes `ｄata` the name `data`: no new name, nothing reachable beyond `data`."""
    app = await start_switchd()
    await app.add_subscriber(topic="t", target_url=sink.url(),
                             filter_expression="\uff44ata['body']['x'] == 1")  # fmt: skip
    assert (await app.publish("t", {"body": {"x": 2}}))[1]["matched"] == 0
    assert (await app.publish("t", {"body": {"x": 1}}))[1]["matched"] == 1


# The event loop runs filters: an evaluation that never ends stops the whole process, so these
# run in a child process with a watchdog.
ROUND_BOMB = (
    "round() is a helper and int.__round__ with a huge negative ndigits computes 10**-ndigits: "
    "round(1, -10**7) takes ~14 s, round(1, -10**9) never ends, blocking the event loop; also "
    "reachable from the payload: round(data[...], data[...]) with ndigits=-10**18"
)


@pytest.mark.parametrize(
    "expression",
    [
        pytest.param("'%s' % data == 'x'", id="percent-format-of-data"),
        pytest.param("round(2.5, 10**18) == 2.5", id="round-float-huge-ndigits"),
        pytest.param("round(1, -10**9) == 0", id="round-int-huge-negative-ndigits"),
        pytest.param("round(1, data['body']['x']) == 0", id="round-payload-ndigits"),
    ],
)  # fmt: skip
def test_filter_evaluation_terminates(expression: str) -> None:
    assert evaluate_in_child(expression, {"body": {"x": -(10**18)}}, 3.0) in (
        "rejected",
        "no-match",
        "matched",
    )
