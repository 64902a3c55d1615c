"""The console's server side: static files with their security headers, `GET /overview`
and `POST /filters/check`, against a real switchd and real sinks on 127.0.0.1."""

from __future__ import annotations

import math
import re
import time
from html.parser import HTMLParser
from importlib import resources

import pytest

from switchd.web_console import CONTENT_TYPES
from tests.conftest import Running, Sink, StartSwitchd
from tests.test_event_log import eventually

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
NOT_LOADED = {"http://www.w3.org/2000/svg", "https://example.com/hooks/:id"}  # no fetches
CONSOLE_FILES = {
    item.name: item.read_text()
    for item in (resources.files("switchd") / "console").iterdir()
    if item.name.endswith(tuple(CONTENT_TYPES))
}


def assert_secured(headers) -> None:
    assert headers["Content-Security-Policy"] == CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/console/", "text/html"),
        ("/console/index.html", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
    ],
)
async def test_static_files_need_no_token_and_carry_the_csp(
    path: str, content_type: str, start_switchd: StartSwitchd
):
    app = await start_switchd(consumer_concurrency=0)
    async with app.client.get(app.url + path) as answer:
        assert answer.status == 200
        assert answer.content_type == content_type and answer.charset == "utf-8"
        assert answer.headers["Cache-Control"] == "no-cache"
        assert_secured(answer.headers)
        etag = answer.headers["ETag"]
    async with app.client.get(app.url + path, headers={"If-None-Match": etag}) as again:
        assert again.status == 304 and await again.read() == b""
        assert_secured(again.headers)


async def test_console_redirects_to_the_slash_and_unknown_files_are_json_404(
    start_switchd: StartSwitchd,
):
    app = await start_switchd(consumer_concurrency=0)
    async with app.client.get(app.url + "/console", allow_redirects=False) as answer:
        assert answer.status == 302 and answer.headers["Location"] == "console/"
        assert_secured(answer.headers)
    async with app.client.get(app.url + "/console") as followed:
        assert followed.status == 200 and str(followed.url) == app.url + "/console/"
    async with app.client.get(app.url + "/console/nope.js") as missing:
        assert missing.status == 404
        assert (await missing.json())["error"]["code"] == "not_found"
        assert_secured(missing.headers)
    for name in ("..%2fhttp_api.py", "%2e%2e/openapi.py", "..%5chttp_api.py"):
        async with app.client.get(app.url + "/console/" + name) as outside:
            assert outside.status == 404, name
            assert (await outside.json())["error"]["code"] == "not_found"


class _Markup(HTMLParser):
    """Collects what a strict CSP would block in an HTML file."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "style" or "style" in names or any(n.startswith("on") for n in names):
            self.problems.append(f"inline style or handler in <{tag}>")
        if tag == "script" and "src" not in names:
            self.problems.append("inline <script>")


def test_console_files_are_csp_clean_and_load_nothing_from_elsewhere():
    assert {"index.html", "app.js", "style.css"} <= set(CONSOLE_FILES)
    markup = _Markup()
    markup.feed(CONSOLE_FILES["index.html"])
    assert markup.problems == []
    for name, text in CONSOLE_FILES.items():
        urls = set(re.findall(r"https?://[^\s\"'`]+", text)) - NOT_LOADED
        assert not urls and not re.search(r"[\"'(]//\w", text), (name, urls)
        assert "innerHTML" not in text and "eval(" not in text, name
        if name.endswith(".js"):
            assert "localStorage" not in text, name  # the token lives in sessionStorage


async def test_overview_counts_per_minute_from_the_delivery_log(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    ok = await app.add_subscriber(topic="orders", target_url=sink.url("/ok"))
    bad = await app.add_subscriber(
        topic="orders", target_url=sink.url("/bad"), filter_expression='data["body"]["n"] == 3'
    )
    before = time.time()
    for n in range(3):
        status, _ = await app.publish("orders", {"body": {"n": n}})
        assert status == 202
    await sink.wait_for(3)
    sink.status = 400  # the next delivery (to both) is refused: two dead letters at once
    await app.publish("orders", {"body": {"n": 3}})
    await app.publish("nobody-listens", {"body": {}})
    await sink.wait_for(5)

    async def settled() -> dict | None:
        await app.service.event_log.flush()
        status, body = await app.call("GET", "/overview?minutes=5", headers=app.admin)
        assert status == 200, body
        # The attempts reach the delivery log after the outcomes' commit: wait for both.
        done = body["totals"]["dead"] == body["totals"]["failed"] == 2
        return body if done and body["queue"]["depth"] == 0 else None

    body = await eventually(settled, "two dead letters, their attempts and an empty queue")
    assert body["totals"] == {"published": 5, "delivered": 3, "failed": 2, "dead": 2}
    assert body["bucket_seconds"] == 60 and body["start"] % 60 == 0
    assert all(len(values) == 5 for values in body["series"].values())
    first = math.floor((before - body["start"]) / 60)
    assert sum(body["series"]["published"][first:]) == 5  # in the minute(s) they came
    assert body["start"] + 5 * 60 > body["now"] >= body["start"] + 4 * 60
    assert body["queue"] == {"backend": "local", "depth": 0, "oldest_age_seconds": None}
    assert body["ready"] is True and body["reasons"] == []
    assert sorted(r.path for r in sink.requests) == ["/bad", *["/ok"] * 4]
    for subscriber in (ok, bad):
        status, stats = await app.call(
            "GET", f"/subscribers/{subscriber['id']}/stats", headers=app.admin
        )
        assert status == 200 and stats["last_hour"]["failed"] == 1


async def test_overview_shows_waiting_jobs_and_their_age(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(consumer_concurrency=0)  # nothing is delivered
    await app.add_subscriber(topic="orders", target_url=sink.url())
    await app.publish("orders", {"body": {}})
    await app.publish("orders", {"body": {}})
    status, body = await app.call("GET", "/overview", headers=app.admin)
    assert status == 200 and len(body["series"]["published"]) == 60
    assert body["queue"]["depth"] == 2 and 0 <= body["queue"]["oldest_age_seconds"] < 60


@pytest.mark.parametrize("minutes", ["0", "1441", "abc", "-1", "1.5", "\u00b2"])
async def test_overview_refuses_a_bad_window(minutes: str, start_switchd: StartSwitchd):
    app = await start_switchd(consumer_concurrency=0)
    status, body = await app.call("GET", f"/overview?minutes={minutes}", headers=app.admin)
    assert status == 400 and body["error"]["code"] == "invalid_request"


SAMPLE = {"body": {"status": "paid"}, "headers": {"X-Region": "eu"}}
VERDICTS = [
    ('data["body"]["status"] == "paid"', {"valid": True, "matches": True, "error": None}),
    ('data["headers"]["X-Region"] == "us"', {"valid": True, "matches": False, "error": None}),
    ("True", {"valid": True, "matches": True, "error": None}),
    ("", {"valid": True, "matches": True, "error": None}),
    ('data["missing"] == 1', {"valid": True, "matches": False, "error": "KeyError: 'missing'"}),
    ("data[", {"valid": False, "matches": None, "error": re.compile("^syntax error")}),
    ("__import__('os')", {"valid": False, "matches": None, "error": re.compile("unknown name")}),
    ("1 or " * 2000 + "1", {"valid": False, "matches": None, "error": re.compile("longer")}),
]


@pytest.mark.parametrize(("expression", "expected"), VERDICTS)
async def test_filter_check(expression: str, expected: dict, start_switchd: StartSwitchd):
    app = await start_switchd(consumer_concurrency=0)
    status, body = await app.call(
        "POST",
        "/filters/check",
        json={"expression": expression, "data": SAMPLE},
        headers=app.admin,
    )
    assert status == 200
    pattern = expected["error"]
    if isinstance(pattern, re.Pattern):
        assert pattern.search(body["error"]), body
        expected = {**expected, "error": body["error"]}
    assert body == expected


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"data": {}}, "invalid_filter"),
        ({"expression": 1}, "invalid_filter"),
        ({"expression": "True", "data": []}, "invalid_payload"),
        ({"expression": "True", "data": {"headers": {"X": {"a": 1}}}}, "invalid_payload"),
        ({"expression": "True", "data": {"headers": {"bad name": "v"}}}, "invalid_header"),
        ({"expression": "True", "extra": 1}, "invalid_request"),
    ],
)
async def test_filter_check_refuses_bad_requests(
    payload: dict, code: str, start_switchd: StartSwitchd
):
    app = await start_switchd(consumer_concurrency=0)
    status, body = await app.call("POST", "/filters/check", json=payload, headers=app.admin)
    assert status == 400 and body["error"]["code"] == code, body


@pytest.mark.parametrize(("method", "path"), [("GET", "/overview"), ("POST", "/filters/check")])
async def test_console_endpoints_need_an_admin_token(
    method: str, path: str, start_switchd: StartSwitchd
):
    app: Running = await start_switchd(consumer_concurrency=0)
    body = {"expression": "True"}
    async with app.client.request(method, app.url + path, json=body) as answer:
        assert answer.status == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
        assert (await answer.json())["error"]["code"] == "unauthorized"
    status, answer = await app.call(method, path, json=body, headers=app.publisher)
    assert status == 403 and answer["error"]["code"] == "forbidden"
    status, _ = await app.call(method, path, json=body, headers=app.admin)
    assert status == 200
