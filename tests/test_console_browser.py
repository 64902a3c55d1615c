"""The web console in real headless Chromium (Debian's `chromium`, driven by Playwright),
against a real switchd and a real sink on 127.0.0.1.

Every test fails on a JavaScript error or a console error (CSP violations are reported
there), except the errors it expects (e.g. the 401 of a refused token).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from playwright.async_api import Page, async_playwright, expect

from switchd.auth import mint
from tests.conftest import ADMIN_SECRET, SECRET, Running, Sink, StartSwitchd, serve_sink
from tests.test_event_log import event_where

CHROMIUM = os.environ.get("SWITCH_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN = mint(ADMIN_SECRET, "ops", admin=True)
TIMEOUT_MS = 10_000


@dataclass
class Console:
    """A browser tab and the errors it logged."""

    page: Page
    errors: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)  # substrings of tolerated errors

    async def open(self, app: Running) -> None:
        await self.page.goto(app.url + "/console/")

    async def sign_in(self, app: Running, token: str = ADMIN) -> None:
        await self.open(app)
        await self.page.get_by_label("Admin token").fill(token)
        await self.page.get_by_role("button", name="Sign in").click()
        await expect(self.page.get_by_role("heading", name="Overview")).to_be_visible()

    async def view(self, name: str) -> None:
        await self.page.get_by_role("navigation").get_by_role("link", name=name).click()
        await expect(self.page.get_by_role("heading", name=name, exact=True)).to_be_visible()


@pytest.fixture
async def console() -> AsyncIterator[Console]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(TIMEOUT_MS)
        tab = Console(page)
        page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: tab.errors.append(f"uncaught: {exc}"))
        yield tab
        await browser.close()
    unexpected = [e for e in tab.errors if not any(x in e for x in tab.expected)]
    assert unexpected == [], unexpected


def row(page: Page, table: str, record_id: str):
    return page.locator(f"table.{table} tr[data-id='{record_id}']")


async def test_publish_deliver_fail_dead_letter_replay(
    console: Console, start_switchd: StartSwitchd, sink: Sink
):
    """The issue's scenario: from sign-in to a replayed dead letter the sink received."""
    app = await start_switchd()
    page = console.page
    await console.sign_in(app)

    await console.view("Subscribers")
    await page.get_by_role("button", name="Add subscriber").click()
    await page.get_by_label("Topic").fill("orders")
    await page.get_by_label("Target URL").fill(sink.url("/hook"))
    await page.get_by_label("Filter expression").fill('data["body"]["kind"] == "order"')
    await page.get_by_role("button", name="Create subscriber").click()
    await expect(page.locator("#new-secret")).to_contain_text("whsec_")
    await expect(page.locator("tbody tr")).to_have_count(1)
    subscriber_id = await page.locator("tbody tr").first.get_attribute("data-id")
    assert app.service.registry.get(subscriber_id).topic == "orders"

    status, first = await app.publish("orders", {"body": {"kind": "order", "n": 1}})
    assert status == 202 and first["matched"] == 1
    await event_where(app, first["event_id"], lambda e: e["status"] == "delivered")
    await console.view("Events")
    delivered = row(page, "events", first["event_id"])
    await expect(delivered.locator(".badge")).to_have_text("delivered")
    await delivered.get_by_role("button", name="Attempts").click()
    attempts = page.locator(f"#ev-{first['event_id']} table.attempts tbody tr")
    await expect(attempts).to_have_count(1)
    await expect(attempts.locator("td").nth(2)).to_have_text("200")

    sink.status = 400  # refused: a dead letter at once
    status, second = await app.publish("orders", {"body": {"kind": "order", "n": 2}})
    await event_where(app, second["event_id"], lambda e: e["status"] == "dead")
    await page.get_by_role("button", name="Apply").click()
    await expect(row(page, "events", second["event_id"]).locator(".badge")).to_have_text("dead")

    await console.view("Dead letters")
    dead = page.locator("table.dead tbody tr").first
    await expect(dead.locator("td").nth(5)).to_have_text("400")
    await dead.get_by_role("button", name="Inspect").click()
    await expect(page.locator("table.dead .detail pre")).to_contain_text('"n": 2')

    sink.status = 200
    await dead.get_by_role("button", name="Replay").click()
    await expect(page.get_by_role("status")).to_contain_text("Replayed 1 dead letter")
    received = await sink.wait_for(3)
    assert received[2].path == "/hook" and received[2].json() == {"kind": "order", "n": 2}
    await expect(page.locator("table.dead tbody tr").first.locator("td").nth(7)).not_to_have_text(
        "no"
    )

    await event_where(app, second["event_id"], lambda e: e["status"] == "delivered")
    await console.view("Events")
    await expect(row(page, "events", second["event_id"]).locator(".badge")).to_have_text(
        "delivered"
    )
    await console.view("Overview")
    await expect(page.locator(".chart-published .chart-total")).to_have_text("2")
    await expect(page.locator(".chart-dead .chart-total")).to_have_text("1")


async def test_event_lookup_by_id_and_deep_link(
    console: Console, start_switchd: StartSwitchd, sink: Sink
):
    """From the event_id that POST /publish answered to the event's fate: by the lookup
    field, by a shared #/events/<id> link (after signing in), and not found."""
    app = await start_switchd()
    page = console.page
    console.expected = ["status of 404"]  # the unknown id's answer
    await app.add_subscriber(topic="orders", target_url=sink.url("/hook"))
    sink.script.append(503)  # the first try fails, the quick retry is delivered
    status, published = await app.publish("orders", {"body": {"n": 1}})
    assert status == 202
    event_id = published["event_id"]
    await event_where(app, event_id, lambda e: e["status"] == "delivered")
    await console.sign_in(app)
    await console.view("Events")

    listed = row(page, "events", event_id).locator("code.event-id")
    await expect(listed).to_have_attribute("title", event_id)
    await expect(listed).to_have_text(event_id)  # whole, so a selection copies all of it
    shown = await listed.evaluate("el => [el.clientWidth, el.scrollWidth]")
    assert shown[0] < shown[1], "the id is shortened on screen"

    found = page.locator("section.found")
    statuses = found.locator("table.attempts tbody tr td:nth-child(3)")
    await page.get_by_label("Event id").fill(f" {event_id} ")
    await page.get_by_label("Event id").press("Enter")
    await expect(found.get_by_role("heading", level=2)).to_be_focused()
    await expect(found.locator("h2 .badge")).to_have_text("delivered")
    await expect(statuses).to_have_text(["503", "200"])
    await expect(found.locator("table.attempts .badge")).to_have_text(["transient", "delivered"])
    assert page.url.endswith(f"/console/#/events/{event_id}")

    unknown = "0b7e3f55-no-such-event"
    await page.get_by_label("Event id").fill(unknown)
    await page.get_by_role("button", name="Look up").click()
    await expect(page.get_by_role("alert")).to_contain_text(f"No event with id “{unknown}”")
    await expect(found).to_have_count(0)

    await page.get_by_label("Author").fill("nobody")
    await page.get_by_role("button", name="Apply").click()
    await expect(page.get_by_text("No events match these filters.")).to_be_visible()
    await page.get_by_label("Author").fill("svc")  # the publisher token's author
    await page.get_by_role("button", name="Apply").click()
    await expect(row(page, "events", event_id)).to_be_visible()

    link = f"{app.url}/console/#/events/{event_id}"
    await page.get_by_role("button", name="Sign out").click()
    await page.goto("about:blank")
    await page.goto(link)  # a shared link: sign in first, then straight to the event
    await page.get_by_label("Admin token").fill(ADMIN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Events", exact=True)).to_be_visible()
    await expect(statuses).to_have_text(["503", "200"])
    await expect(page.get_by_label("Event id")).to_have_value(event_id)
    assert ADMIN not in page.url

    await page.goto("about:blank")
    await page.goto(link)  # the same tab keeps its token in sessionStorage
    await expect(statuses).to_have_text(["503", "200"])
    await found.get_by_role("button", name="Close").click()
    await expect(found).to_have_count(0)
    await expect(page.get_by_label("Event id")).to_be_focused()
    assert page.url.endswith("/console/#/events")


async def test_sign_in_refuses_bad_tokens_and_sign_out_forgets(
    console: Console, start_switchd: StartSwitchd
):
    app = await start_switchd(consumer_concurrency=0)
    page = console.page
    console.expected = ["status of 401", "status of 403"]  # the refused tokens' answers
    await console.open(app)
    alert = page.get_by_role("alert")
    for token, message in (
        ("not-a-jwt", "switchd refused the token"),
        (mint("wrong-secret-of-at-least-thirty-two-bytes", "ops", admin=True), "refused"),
        (mint(SECRET, "svc"), "Not an admin token: publisher tokens"),
        (mint(SECRET, "ops", admin=True), "publisher tokens (signed with SWITCH_JWT_SECRET)"),
        (mint(ADMIN_SECRET, "ops"), "needs a token with the 'admin' scope"),
    ):
        await page.get_by_label("Admin token").fill(token)
        await page.get_by_role("button", name="Sign in").click()
        await expect(alert).to_contain_text(message)
        assert await page.evaluate("sessionStorage.length") == 0

    await console.sign_in(app)
    assert ADMIN not in page.url
    assert await page.evaluate("Object.values(sessionStorage)") == [ADMIN]
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Admin token")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0

    await console.sign_in(app)  # a token that stops working mid-session: back to sign-in
    await page.evaluate("sessionStorage.setItem(sessionStorage.key(0), 'expired')")
    await console.page.get_by_role("link", name="Events").click()
    await expect(alert).to_contain_text("Signed out: switchd refused the token")


async def test_sign_in_says_when_admin_access_is_not_configured(
    console: Console, start_switchd: StartSwitchd
):
    app = await start_switchd(consumer_concurrency=0, admin_jwt_secret=None)
    page = console.page
    await console.open(app)
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Admin access is not configured")
    await expect(alert).to_contain_text("SWITCH_ADMIN_JWT_SECRET is not set")
    await expect(page.get_by_label("Admin token")).to_be_disabled()
    await expect(page.get_by_role("button", name="Sign in")).to_be_disabled()
    assert await page.evaluate("sessionStorage.length") == 0

    await page.evaluate(f"sessionStorage.setItem('switchd.admin-token', '{ADMIN}')")
    console.expected = ["status of 403"]  # a token kept from before: refused, named
    await page.reload()
    await expect(page.get_by_label("Admin token")).to_be_disabled()  # back to sign-in
    await expect(alert).to_contain_text("Admin access is not configured")
    assert await page.evaluate("sessionStorage.length") == 0


async def test_filter_editor_evaluates_as_you_type(console: Console, start_switchd: StartSwitchd):
    app = await start_switchd(consumer_concurrency=0)
    page = console.page
    checks: list[str] = []
    page.on("request", lambda r: checks.append(r.url) if r.url.endswith("/filters/check") else None)
    await console.sign_in(app)
    await console.view("Subscribers")
    await expect(page.get_by_text("No subscribers yet")).to_be_visible()
    await page.get_by_role("button", name="Add subscriber").click()
    verdict = page.locator("#filter-verdict")
    expression = page.get_by_label("Filter expression")
    await expect(verdict).to_have_text("Matches the sample event")  # True

    await expression.fill("")
    before = len(checks)
    await expression.press_sequentially('data["body"]["order_id"] == 7', delay=15)
    await expect(verdict).to_have_text("Does not match the sample event")
    assert len(checks) - before < 5, "checks are debounced while typing"
    await expression.fill('data["body"]["order_id"] == 42')
    await expect(verdict).to_have_text("Matches the sample event")
    await expression.fill('data["missing"] > 1')
    await expect(verdict).to_contain_text("No match: evaluating it failed (KeyError")
    await expression.fill("data[")
    await expect(verdict).to_contain_text("Invalid filter: syntax error")
    await page.get_by_label("Sample event").fill("{not json")
    await expect(verdict).to_contain_text("The sample event is not valid JSON")

    await page.get_by_role("button", name="Create subscriber").click()  # empty topic, bad filter
    await page.get_by_label("Topic").fill("orders")
    await page.get_by_label("Target URL").fill("http://127.0.0.1:9/hook")
    await page.get_by_role("button", name="Create subscriber").click()
    await expect(page.get_by_role("alert")).to_contain_text("Not saved: 'filter_expression'")
    console.expected = ["status of 400"]  # the refused save


async def tab(page: Page, times: int) -> str:
    """Press Tab `times` times; the focused element's id, or else its text."""
    for _ in range(times):
        await page.keyboard.press("Tab")
    return await page.evaluate(
        "document.activeElement.id || document.activeElement.textContent.trim()"
    )


async def test_keyboard_only_sign_in_and_navigation(console: Console, start_switchd: StartSwitchd):
    app = await start_switchd(consumer_concurrency=0)
    page = console.page
    await console.open(app)
    assert await tab(page, 0) == "token"  # the token field has the focus
    await page.keyboard.type(ADMIN)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Overview")).to_be_focused()

    await page.evaluate("document.activeElement.blur()")
    assert await tab(page, 1) == "Skip to content"
    assert await tab(page, 2) == "Subscribers"
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid", "focus is visible"
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Subscribers")).to_be_focused()
    assert await tab(page, 2) == "Add subscriber"
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("Topic")).to_be_focused()


async def test_endpoint_states_on_the_overview_and_beside_subscribers(
    console: Console, start_switchd: StartSwitchd, sink: Sink
):
    """Endpoint isolation in the console: an endpoint whose circuit opened shows as open,
    with its limit and last error, on the Overview and beside its subscriber; a healthy
    one as closed."""
    app = await start_switchd(circuit_failures=2, circuit_cooldown=600, circuit_max_cooldown=600)
    failing, runner = await serve_sink()
    try:
        failing.status = 503
        bad = await app.add_subscriber(topic="bad", target_url=failing.url("/hook"))
        good = await app.add_subscriber(topic="good", target_url=sink.url("/hook"))
        await app.publish("bad", {"body": {"n": 1}})
        await app.publish("good", {"body": {"n": 1}})
        await failing.wait_for(2)
        await sink.wait_for(1)
        page = console.page
        await console.sign_in(app)
        card = page.locator(".card", has_text="Open circuits")
        await expect(card.locator(".card-value")).to_have_text("1")
        opened = page.locator(f"table.endpoints tr[data-origin='{failing.base_url}']")
        await expect(opened.locator(".badge")).to_have_text("open")
        await expect(opened.locator("td").nth(2)).to_have_text("2/10")  # halved twice
        await expect(opened.locator("td").nth(5)).to_contain_text("HTTP 503")
        healthy = page.locator(f"table.endpoints tr[data-origin='{sink.base_url}']")
        await expect(healthy.locator(".badge")).to_have_text("closed")

        await console.view("Subscribers")
        cell = page.locator(f"tr[data-id='{bad['id']}'] td.endpoint")
        await expect(cell.locator(".badge")).to_have_text("open")
        await expect(cell).to_contain_text("limit 2/10")
        await expect(cell).to_contain_text("HTTP 503")
        fine = page.locator(f"tr[data-id='{good['id']}'] td.endpoint")
        await expect(fine.locator(".badge")).to_have_text("closed")
        await expect(fine).to_contain_text("limit 10/10")
    finally:
        await runner.cleanup()
