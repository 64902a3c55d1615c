"""The "subscribers" section of bench/run.py: changing subscribers at scale (DESIGN §12).

Figures, at N subscribers with one filter each on one topic (`data["body"]["customer"] ==
"c<i>"`, so one matches each event): creates per second through the API, one create's
and one update's latency, publish latency, start-up time and RSS of `switchd serve`, and
the event loop's lag (how late a 1 ms sleep wakes) while changes are applied, measured in
a switchd that runs in this process with the loop tuned as `switchd serve` tunes it.

Run on its own as `python bench/subscriber_scale.py patch URL TOKEN IDS` it is the client
that sends PATCH requests from another process (so that the measured loop runs switchd only).
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import (  # noqa: E402 - bench/run.py is the harness this section belongs to
    ADMIN_SECRET,
    SECRET,
    Process,
    Publisher,
    percentile,
    run_bounded,
    start_switchd,
    token,
)

CONCURRENT_WRITERS = 32
CHANGES = 1_000
LATENCY_SAMPLES = 200
APPLIED_WAIT_SECONDS = 120


@dataclass(frozen=True)
class Sizes:
    subscribers: int  # N: start-up, RSS, latencies, lag
    existing: int  # subscribers already there when the creates start
    creates: int  # POST /subscribers, CONCURRENT_WRITERS at a time

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        return cls(10_000, 2_000, 2_000) if quick else cls(100_000, 10_000, 10_000)


def customers(sink: Process, count: int, first: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "topic": "scale",
            "target_url": f"{sink.url}/c{i}",
            "filter_expression": f'data["body"]["customer"] == "c{i}"',
        }
        for i in range(first, first + count)
    ]


async def import_subscribers(sink: Process, db: Path, count: int) -> None:
    """N subscribers written by `switchd subscribers import` (another process)."""
    importer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switchd", "subscribers", "import", "-", "--db", str(db),
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    await importer.communicate(orjson.dumps(customers(sink, count)))
    if importer.returncode != 0:
        raise RuntimeError("subscribers import failed")


async def measure_subscribers(sink: Process, workdir: Path, quick: bool) -> dict[str, Any]:
    """Every figure of the section (the subscribers' URLs are the sink's)."""
    sizes = Sizes.of(quick)
    await asyncio.to_thread(workdir.mkdir, exist_ok=True)
    figures: dict[str, Any] = {"sizes": sizes.__dict__}
    figures["creates"] = await measure_creates(sink, workdir / "creates.db", sizes)
    db = workdir / "big.db"
    await import_subscribers(sink, db, sizes.subscribers)
    figures["empty_rss_mb"] = await measure_empty_rss(workdir / "empty.db")
    figures["loaded"] = await measure_loaded(sink, db, sizes)
    figures["lag"] = await measure_lag(db, sizes)
    return figures


async def measure_creates(sink: Process, db: Path, sizes: Sizes) -> dict[str, float]:
    """`creates` POST /subscribers, CONCURRENT_WRITERS at a time, onto `existing`."""
    await import_subscribers(sink, db, sizes.existing)
    app = await start_switchd(db)
    headers = {"Authorization": "Bearer " + token(admin=True)}
    bodies = [orjson.dumps(c) for c in customers(sink, sizes.creates, first=sizes.existing)]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

            async def one(i: int) -> float:
                return await _send(client, "POST", app.url + "/subscribers", bodies[i], headers)

            started = time.perf_counter()
            latencies = await run_bounded(sizes.creates, CONCURRENT_WRITERS, one)
            elapsed = time.perf_counter() - started
        return {
            "creates_per_s": sizes.creates / elapsed,
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
        }
    finally:
        await app.stop()


async def _send(
    client: aiohttp.ClientSession, method: str, url: str, body: bytes, headers: dict[str, str]
) -> float:
    started = time.perf_counter()
    async with client.request(method, url, data=body, headers=headers) as response:
        await response.read()
        if response.status not in (200, 201):
            raise RuntimeError(f"{method} {url} answered {response.status}")
    return time.perf_counter() - started


async def measure_empty_rss(db: Path) -> float:
    """RSS of a `switchd serve` with no subscriber (the base the per-subscriber cost is
    measured from)."""
    app = await start_switchd(db)
    try:
        await asyncio.sleep(1)
        return app.rss_mb()
    finally:
        await app.stop()


async def measure_loaded(sink: Process, db: Path, sizes: Sizes) -> dict[str, float]:
    """`switchd serve` on N subscribers: start-up until /readyz answers 200, RSS, publish
    latency (one of the N matches each event), one create's and one update's latency."""
    started = time.perf_counter()
    app = await start_switchd(db, health="/readyz")
    startup = time.perf_counter() - started
    try:
        rss_loaded = app.rss_mb()
        async with Publisher(app) as load:

            async def publish(i: int) -> float:
                payload = {"body": {"customer": f"c{i * 7919 % sizes.subscribers}"}}
                return await load.publish(orjson.dumps({"topic": "scale", "payload": payload}))

            publishes = await run_bounded(LATENCY_SAMPLES, 1, publish)
        headers = {"Authorization": "Bearer " + token(admin=True)}
        new = [orjson.dumps(c) for c in customers(sink, LATENCY_SAMPLES, sizes.subscribers)]
        async with aiohttp.ClientSession() as client:
            creates = [
                await _send(client, "POST", app.url + "/subscribers", body, headers) for body in new
            ]
            ids = await _some_ids(db, LATENCY_SAMPLES)
            change = orjson.dumps({"filter_expression": 'data["body"]["customer"] == "moved"'})
            updates = [
                await _send(client, "PATCH", f"{app.url}/subscribers/{i}", change, headers)
                for i in ids
            ]
        return {
            "startup_s": startup,
            "rss_mb": rss_loaded,
            "publish_p50_ms": percentile(publishes, 50) * 1000,
            "create_p50_ms": percentile(creates, 50) * 1000,
            "create_p99_ms": percentile(creates, 99) * 1000,
            "update_p50_ms": percentile(updates, 50) * 1000,
            "update_p99_ms": percentile(updates, 99) * 1000,
            "rss_after_changes_mb": app.rss_mb(),
        }
    finally:
        await app.stop()


async def _some_ids(db: Path, count: int) -> list[str]:
    def read() -> list[str]:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT id FROM subscribers ORDER BY created_at LIMIT ?", (count,))
            return [row[0] for row in rows]

    return await asyncio.to_thread(read)


async def measure_lag(db: Path, sizes: Sizes) -> dict[str, float]:
    """The loop's lag in a switchd on N subscribers while CHANGES changes are applied:
    made by another process (the poll applies them), made through the API by a client
    in another process, and during a full reload (GET /refresh)."""
    from switchd.cli.serve import _tune_runtime  # what `switchd serve` does once started
    from switchd.config import Settings
    from switchd.http_api import create_app
    from switchd.logs import configure
    from switchd.service import Switchd

    configure("warning", "json")
    settings = Settings(jwt_secret=SECRET, admin_jwt_secret=ADMIN_SECRET, db_name=str(db))
    service = Switchd(settings)
    await service.start()
    runner = web.AppRunner(create_app(service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    _tune_runtime()
    registry = service.registry
    try:
        ids = list(registry.by_id)[: CHANGES * 2]
        by_others = await _lagged(lambda: _update_elsewhere(db, ids[:CHANGES], registry))
        by_api = await _lagged(lambda: _patch_elsewhere(url, ids[CHANGES:], registry))
        refresh = await _lagged(registry.reload)
        return {"by_another_process": by_others, "by_api": by_api, "full_reload": refresh}
    finally:
        await runner.cleanup()
        await service.stop()


async def _lagged(work: Any) -> dict[str, float]:
    """Run `work()` while a task sleeps 1 ms again and again: the largest overshoot (ms),
    and the most CPU time this thread spent between two of its wake-ups (ms): what
    switchd held the loop for, without the waits for a CPU a busy machine adds."""
    lags: list[float] = []
    held: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            started, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - started - 0.001)
            held.append(time.thread_time() - cpu)

    task = asyncio.create_task(probe())
    try:
        await work()
    finally:
        done.set()
        await task
    return {"lag_max_ms": max(lags) * 1000, "held_max_ms": max(held) * 1000}


async def _update_elsewhere(db: Path, ids: list[str], registry: Any) -> None:
    """Another process changes the filters of `ids` in one transaction; wait until the
    registry holds every change."""
    script = (
        "import sqlite3, sys, time, orjson\n"
        "ids = orjson.loads(sys.stdin.buffer.read())\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "conn.executemany('UPDATE subscribers SET filter_expression = ?, updated_at = ? "
        'WHERE id = ?\', [(f\'data["body"]["customer"] == "o{n}"\', time.time(), i) '
        "for n, i in enumerate(ids)])\n"
        "conn.execute('COMMIT')\n"
    )
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(db), stdin=subprocess.PIPE
    )
    await writer.communicate(orjson.dumps(ids))
    if writer.returncode != 0:
        raise RuntimeError("the other process's update failed")
    await _until(lambda: registry.get(ids[-1]).filter_expression.endswith(f'"o{len(ids) - 1}"'))


async def _patch_elsewhere(url: str, ids: list[str], registry: Any) -> None:
    """A client in another process PATCHes `ids` (CONCURRENT_WRITERS at a time)."""
    client = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "patch", url, token(admin=True), stdin=subprocess.PIPE
    )
    await client.communicate(orjson.dumps(ids))
    if client.returncode != 0:
        raise RuntimeError("the PATCH client failed")
    await _until(lambda: registry.get(ids[-1]).description == "patched")


async def _until(condition: Any) -> None:
    deadline = time.monotonic() + APPLIED_WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the changes were not applied in time")
        await asyncio.sleep(0.01)


async def _patch_client(url: str, admin_token: str, ids: list[str]) -> None:
    headers = {"Authorization": "Bearer " + admin_token}
    body = orjson.dumps({"description": "patched"})
    async with aiohttp.ClientSession() as client:
        await run_bounded(
            len(ids),
            CONCURRENT_WRITERS,
            lambda i: _send(client, "PATCH", f"{url}/subscribers/{ids[i]}", body, headers),
        )


def report(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The section's rows: figure, value, target."""
    sizes, creates, loaded, lag = (figures[k] for k in ("sizes", "creates", "loaded", "lag"))
    n = sizes["subscribers"]
    per_subscriber = (loaded["rss_mb"] - figures["empty_rss_mb"]) * 1024 * 1024 / n
    return [
        (
            f"{sizes['creates']:,} POST /subscribers, {CONCURRENT_WRITERS} at a time, "
            f"onto {sizes['existing']:,}",
            f"{creates['creates_per_s']:,.0f} creates/s (p99 {creates['p99_ms']:.1f} ms)",
            "≥ 500 /s",
        ),
        (
            f"one create / update with {n:,} loaded: p50, p99",
            f"{loaded['create_p50_ms']:.1f}, {loaded['create_p99_ms']:.1f} / "
            f"{loaded['update_p50_ms']:.1f}, {loaded['update_p99_ms']:.1f} ms",
            "p99 ≤ 10 ms",
        ),
        (
            f"loop lag max (CPU held), {CHANGES:,} changes by another process / by the API, "
            f"at {n:,}",
            f"{_lag(lag['by_another_process'])} / {_lag(lag['by_api'])}",
            "≤ 20 ms",
        ),
        (f"loop lag max (CPU held) during a full reload at {n:,}", _lag(lag["full_reload"]), ""),
        (
            f"publish p50, {n:,} filtered subscribers on one topic (one matches)",
            f"{loaded['publish_p50_ms']:.2f} ms",
            "≤ 5 ms",
        ),
        (f"start-up with {n:,} until /readyz is 200", f"{loaded['startup_s']:.1f} s", "≤ 10 s"),
        (
            f"RSS with {n:,} (after {LATENCY_SAMPLES * 2} changes); empty",
            f"{loaded['rss_mb']:.0f} ({loaded['rss_after_changes_mb']:.0f}) MB; "
            f"{figures['empty_rss_mb']:.0f} MB",
            "≤ 400 MB",
        ),
        ("RSS per subscriber", f"{per_subscriber:,.0f} bytes", ""),
    ]


def _lag(figures: dict[str, float]) -> str:
    return f"{figures['lag_max_ms']:.1f} ({figures['held_max_ms']:.1f}) ms"


if __name__ == "__main__" and sys.argv[1:2] == ["patch"]:
    _url, _token = sys.argv[2], sys.argv[3]
    asyncio.run(_patch_client(_url, _token, orjson.loads(sys.stdin.buffer.read())))
