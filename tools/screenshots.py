"""Screenshots of the web console for the README: `make screenshots` (or
`python tools/screenshots.py OUT_DIR [--minutes N]`).

Starts switchd (embedded queue, a temporary database) and a sink on 127.0.0.1, publishes
real traffic for a few minutes (so the per-minute charts have bars), then captures each
view at 1280×800 in Debian's headless chromium. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path

from aiohttp import web
from playwright.async_api import Page, async_playwright, expect

from switchd.auth import mint
from switchd.config import Settings
from switchd.http_api import create_app
from switchd.service import Switchd
from switchd.subscribers import validate_fields

SECRET = "screenshots-secret-of-at-least-thirty-two-bytes"
ADMIN_SECRET = "screenshots-admin-secret-of-at-least-thirty-two-bytes"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}
ROUND_SECONDS = 15


class Sink:
    """Subscriber endpoints: /orders accepts, /invoices refuses big amounts (400, so dead
    letters), /shipping fails every third request once (503, then the quick retry works)."""

    def __init__(self) -> None:
        self.shipping = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        await asyncio.sleep(random.uniform(0.003, 0.04))
        if request.path == "/invoices" and body.get("amount", 0) > 900:
            return web.Response(status=400, text="amount above the approval limit")
        if request.path == "/shipping":
            self.shipping += 1
            if self.shipping % 3 == 0:
                return web.Response(status=503, text="busy")
        return web.Response(status=200, text="ok")


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """`app` on a free port of 127.0.0.1."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def add_subscribers(service: Switchd, sink_url: str) -> None:
    """Three subscribers, one of them disabled."""
    for fields in (
        {"topic": "orders", "target_url": f"{sink_url}/orders", "description": "order service",
         "filter_expression": 'data["body"]["total"] > 100', "secret": True},
        {"topic": "orders", "target_url": f"{sink_url}/shipping", "description": "shipping"},
        {"topic": "invoices", "target_url": f"{sink_url}/invoices", "description": "billing"},
        {"topic": "audit", "target_url": f"{sink_url}/audit", "enabled": False,
         "description": "paused during migration"},
    ):  # fmt: skip
        await service.store.create(validate_fields(fields, partial=False))
    await service.registry.reload()


async def traffic(service: Switchd, minutes: float) -> None:
    """Rounds of publishes every ROUND_SECONDS for `minutes`."""
    rng = random.Random(7)
    rounds = max(1, round(minutes * 60 / ROUND_SECONDS))
    for i in range(rounds):
        for _ in range(rng.randint(4, 12)):
            total = rng.randint(20, 400)
            await service.publish(
                "orders", "shop", {"body": {"id": rng.randint(1, 9999), "total": total}}
            )
        for amount in [rng.choice([60, 120, 450, 980]) for _ in range(rng.randint(1, 4))] + [1200]:
            await service.publish("invoices", "billing", {"body": {"amount": amount}})
        await service.publish("signups", "web", {"body": {"plan": "free"}})
        if i < rounds - 1:
            await asyncio.sleep(ROUND_SECONDS)
    await asyncio.sleep(2)
    await service.event_log.flush()


async def capture(page: Page, url: str, out: Path) -> None:
    """Sign in and capture every view."""
    await page.goto(url + "/console/")
    await page.get_by_label("Admin token").fill("")
    await page.screenshot(path=out / "signin.png")
    await page.get_by_label("Admin token").fill(mint(ADMIN_SECRET, "ops", admin=True))
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator(".chart-published .chart-total")).not_to_have_text("0")
    await page.screenshot(path=out / "overview.png")

    await page.get_by_role("link", name="Subscribers").click()
    await page.locator("tr", has_text="order service").get_by_role("button", name="Edit").click()
    sample = '{\n  "body": {"id": 1042, "total": 250},\n  "headers": {"X-Region": "eu"}\n}'
    await page.get_by_label("Sample event").fill(sample)
    await expect(page.locator("#filter-verdict")).to_have_text("Matches the sample event")
    await page.screenshot(path=out / "subscribers.png", full_page=True)

    await page.get_by_role("link", name="Events").click()
    await page.get_by_label("Topic").fill("orders")
    await page.get_by_role("button", name="Apply").click()
    retried = page.locator("table.events tbody tr[data-id]").filter(
        has=page.locator(".badge-delivered")
    )
    for i in range(await retried.count()):  # an event delivered after a 503: look it up
        candidate = retried.nth(i)
        await candidate.get_by_role("button", name="Attempts").click()
        await expect(page.locator("tr.expanded .detail")).to_be_visible()
        transient = await page.locator("tr.expanded .badge-transient").count()
        await candidate.get_by_role("button", name="Hide").click()
        if transient:
            await page.get_by_label("Event id").fill(await candidate.get_attribute("data-id"))
            await page.get_by_label("Event id").press("Enter")
            await expect(page.locator("section.found table.attempts").first).to_be_visible()
            break
    await page.screenshot(path=out / "events.png")

    await page.get_by_role("link", name="Dead letters").click()
    await page.locator("table.dead tbody tr").first.get_by_role("button", name="Inspect").click()
    await expect(page.locator("tr.expanded pre")).to_be_visible()
    await page.screenshot(path=out / "dead-letters.png")


async def main(out: Path, minutes: float) -> None:
    sink_app = web.Application()
    sink_app.router.add_route("*", "/{tail:.*}", Sink().handle)
    sink_runner, sink_url = await serve(sink_app)
    with tempfile.TemporaryDirectory() as tmp:
        service = Switchd(Settings(jwt_secret=SECRET, admin_jwt_secret=ADMIN_SECRET,
                                   db_name=f"{tmp}/switch.db", log_payloads=True))  # fmt: skip
        await service.start()
        runner, url = await serve(create_app(service))
        try:
            await add_subscribers(service, sink_url)
            print(f"switchd at {url}/console/: publishing for {minutes} min…", flush=True)
            await traffic(service, minutes)
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = await browser.new_page(viewport=VIEWPORT)
                await capture(page, url, out)
                await browser.close()
        finally:
            await runner.cleanup()
            await service.stop()
            await sink_runner.cleanup()
    print(f"screenshots written to {out}/")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs/console"))
    parser.add_argument("--minutes", type=float, default=3.0, help="traffic duration")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args.out, args.minutes))
