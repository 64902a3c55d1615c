"""switchd benchmark: figures and their ratio to the same machine's HTTP limit, in one run.

Processes: a sink (bench/sink.py), a `switchd serve`, and this script as the load
generator. Everything talks to 127.0.0.1 only; every loop is bounded in count and time.
The throughput figures and the fixed-rate latency are measured in ROUNDS rounds, each
next to a limit of its own (the machine is shared and noisy): the table gives medians,
and each ratio's (or latency's) median and range over the rounds.

    make bench            # or: .venv/bin/python bench/run.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECRET = "bench-secret-bench-secret-bench-secret!"
ADMIN_SECRET = "bench-admin-secret-bench-admin-secret!"
CONCURRENCY = 64
WAIT_LIMIT_SECONDS = 300
MEMORY_PASSES = 5
ROUNDS = 5  # throughput figures are medians of this many rounds, each with its own limit
# Fixed-rate latency runs at half of each of these fan-out 1 maxima (see measure_round).
FIXED_RATES = {
    "fixed_rate_delivered": "events_delivered_per_s",
    "fixed_rate_accepted": "events_accepted_per_s",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def token(admin: bool) -> str:
    sys.path.insert(0, str(ROOT))
    from switchd.auth import mint

    return mint(ADMIN_SECRET if admin else SECRET, "bench", admin=admin)


@dataclass
class Process:
    """A child process serving HTTP on 127.0.0.1."""

    popen: asyncio.subprocess.Process
    url: str

    def peak_rss_mb(self) -> float:
        return _status_kb(self.popen.pid, "VmHWM") / 1024

    def rss_mb(self) -> float:
        return _status_kb(self.popen.pid, "VmRSS") / 1024

    async def stop(self) -> None:
        self.popen.terminate()
        try:
            await asyncio.wait_for(self.popen.wait(), timeout=40)
        except TimeoutError:
            self.popen.kill()


def _status_kb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return 0.0


async def start(argv: list[str], env: dict[str, str], health: str) -> Process:
    port = free_port()
    env = {**os.environ, **env, "SWITCH_SERVER_PORT": str(port), "BENCH_PORT": str(port)}
    argv = [a.replace("{port}", str(port)) for a in argv]
    popen = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as client:
        for _ in range(300):
            try:
                async with client.get(url + health) as response:
                    if response.status == 200:
                        return Process(popen, url)
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    popen.kill()
    raise RuntimeError(f"{argv[0]} did not start")


async def start_sink() -> Process:
    return await start(
        [sys.executable, str(ROOT / "bench" / "sink.py"), "--quiet", "--port", "{port}"],
        {},
        "/_stats",
    )


async def start_switchd(db: Path, **env: str) -> Process:
    settings = {
        "SWITCH_JWT_SECRET": SECRET,
        "SWITCH_ADMIN_JWT_SECRET": ADMIN_SECRET,
        "SWITCH_DB_NAME": str(db),
        "SWITCH_SERVER_HOST": "127.0.0.1",
        "SWITCH_LOG_FORMAT": "json",
        "SWITCH_CONSUMER_CONCURRENCY_LEVEL": str(CONCURRENCY),  # the limit's concurrency
        **env,
    }
    return await start([sys.executable, "-m", "switchd", "serve"], settings, "/healthz")


async def sink_count(client: aiohttp.ClientSession, sink: Process) -> int:
    async with client.get(sink.url + "/_stats") as response:
        return int((await response.json())["requests"])


async def wait_for_sink(client: aiohttp.ClientSession, sink: Process, target: int) -> float:
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while time.monotonic() < deadline:
        if await sink_count(client, sink) >= target:
            return time.perf_counter()
        await asyncio.sleep(0.01)
    raise RuntimeError(f"sink did not reach {target} requests")


async def run_bounded(
    count: int, concurrency: int, one: Callable[[int], Awaitable[float]]
) -> list[float]:
    """Run `one(i)` for i < count with at most `concurrency` at once; their latencies."""
    latencies: list[float] = []
    next_index = iter(range(count))

    async def worker() -> None:
        for i in next_index:
            latencies.append(await one(i))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def timed_post(
    client: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], expect: int
) -> float:
    started = time.perf_counter()
    async with client.post(url, data=body, headers=headers) as response:
        await response.read()
        if response.status != expect:
            raise RuntimeError(f"{url} answered {response.status}")
    return time.perf_counter() - started


class Publisher:
    """The load: publishes to switchd through switchd's lean HTTP client, which costs the
    shared cores about a third of what aiohttp's client does (about 70 against 200 µs of CPU per
    publish), so that the figures measure switchd rather than the load generator."""

    def __init__(self, app: Process) -> None:
        sys.path.insert(0, str(ROOT))
        from switchd.http_client import HttpClient

        self.url = app.url + "/publish"
        self.headers = {"Authorization": "Bearer " + token(admin=False)}
        self.client = HttpClient()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def publish(self, body: bytes) -> float:
        """Publish one event; its latency in seconds."""
        started = time.perf_counter()
        response = await self.client.request("POST", self.url, self.headers, body, 60, 512)
        if response.status != 202:
            raise RuntimeError(f"/publish answered {response.status}: {response.body!r}")
        return time.perf_counter() - started


async def measure_limit(sink: Process, requests: int) -> dict[str, float]:
    """The same aiohttp stack posting straight to the sink: requests per second."""
    body = orjson.dumps({"order": 1, "items": ["a", "b"]})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        headers = {"Content-Type": "application/json"}
        started = time.perf_counter()
        await run_bounded(
            requests,
            CONCURRENCY,
            lambda i: timed_post(client, sink.url + "/limit", body, headers, 200),
        )
        elapsed = time.perf_counter() - started
    return {"requests_per_s": requests / elapsed}


async def measure_delivery_client(sink: Process, requests: int) -> dict[str, float]:
    """switchd's own delivery client (switchd/http_client.py) posting to the sink, for
    comparison: how much of the limit is the aiohttp client's cost."""
    sys.path.insert(0, str(ROOT))
    from switchd.http_client import HttpClient

    body = orjson.dumps({"order": 1, "items": ["a", "b"]})
    headers = {"Content-Type": "application/json"}
    client = HttpClient()

    async def one(i: int) -> float:
        started = time.perf_counter()
        response = await client.request("POST", sink.url + "/limit", headers, body, 10, 0)
        if response.status != 200:
            raise RuntimeError(f"sink answered {response.status}")
        return time.perf_counter() - started

    started = time.perf_counter()
    await run_bounded(requests, CONCURRENCY, one)
    elapsed = time.perf_counter() - started
    await client.close()
    return {"requests_per_s": requests / elapsed}


async def add_subscribers(
    client: aiohttp.ClientSession, app: Process, sink: Process, topic: str, count: int
) -> None:
    headers = {"Authorization": "Bearer " + token(admin=True)}
    for i in range(count):
        fields = {"topic": topic, "target_url": f"{sink.url}/s{i}", "secret": True}
        async with client.post(app.url + "/subscribers", json=fields, headers=headers) as response:
            assert response.status == 201, await response.text()


def publish_body(topic: str, i: int) -> bytes:
    payload = {"body": {"order": i, "items": ["a", "b"]}, "headers": {"X-Bench": "1"}}
    return orjson.dumps({"topic": topic, "payload": payload})


async def measure_fanout(
    sink: Process, fanout: int, events: int, workdir: Path
) -> dict[str, float]:
    """M events published concurrently to K subscribers: accept rate, delivery rate, RSS."""
    app = await start_switchd(workdir / f"fanout{fanout}.db")
    try:
        async with aiohttp.ClientSession() as client, Publisher(app) as load:
            await add_subscribers(client, app, sink, "bench", fanout)
            before = await sink_count(client, sink)
            started = time.perf_counter()
            latencies = await run_bounded(
                events, CONCURRENCY, lambda i: load.publish(publish_body("bench", i))
            )
            accepted_at = time.perf_counter()
            done_at = await wait_for_sink(client, sink, before + events * fanout)
        return {
            "events_accepted_per_s": events / (accepted_at - started),
            "deliveries_per_s": events * fanout / (done_at - started),
            "events_delivered_per_s": events / (done_at - started),
            "publish_p50_ms": percentile(latencies, 50) * 1000,
            "publish_p99_ms": percentile(latencies, 99) * 1000,
            "peak_rss_mb": app.peak_rss_mb(),
        }
    finally:
        await app.stop()


async def measure_fixed_rate(
    sink: Process, rate: float, seconds: float, db: Path
) -> dict[str, float]:
    """Open-loop publishing at `rate` events/s to one subscriber, on a new database `db`:
    publish latency percentiles, measured after a warm-up second at the same rate (new
    connections, first requests) is discarded."""
    app = await start_switchd(db)
    try:
        async with aiohttp.ClientSession() as client, Publisher(app) as load:
            await add_subscribers(client, app, sink, "bench", 1)

            def one(i: int) -> Awaitable[float]:
                return load.publish(publish_body("bench", i))

            await paced(rate, int(rate), one)  # warm-up
            latencies, lateness = await paced(rate, int(rate * seconds), one)
        return {
            "offered_per_s": rate,
            "publish_p50_ms": percentile(latencies, 50) * 1000,
            "publish_p99_ms": percentile(latencies, 99) * 1000,
            "sender_late_p99_ms": percentile(lateness, 99) * 1000,
        }
    finally:
        await app.stop()


async def paced(
    rate: float, count: int, one: Callable[[int], Awaitable[float]]
) -> tuple[list[float], list[float]]:
    """Start `one(i)` at i / rate seconds; the latencies, and how late each start was.

    Each request records its own latency, and the end waits only for those still running:
    a gather over every request, set up when the last one starts, held this process's
    loop for tens of milliseconds and added as much to the latencies of the last few."""
    started = time.perf_counter()
    latencies: list[float] = []
    lateness: list[float] = []
    failures: list[BaseException] = []
    running: set[asyncio.Task[None]] = set()

    async def timed(i: int) -> None:
        latencies.append(await one(i))

    def finished(task: asyncio.Task[None]) -> None:
        running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    for i in range(count):
        due = started + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        lateness.append(max(0.0, time.perf_counter() - due))
        task = asyncio.create_task(timed(i))
        running.add(task)
        task.add_done_callback(finished)
    while running:
        await asyncio.wait(set(running))
    if failures:
        raise failures[0]  # a failed publish fails the run
    return latencies, lateness


async def measure_memory(sink: Process, deliveries: int, workdir: Path) -> dict[str, float]:
    """RSS after `deliveries` deliveries (fan-out 10), and after each of MEMORY_PASSES - 1
    more passes of the same: flat once the queue is drained, if nothing leaks."""
    app = await start_switchd(workdir / "memory.db")
    try:
        async with aiohttp.ClientSession() as client, Publisher(app) as load:
            await add_subscribers(client, app, sink, "bench", 10)
            rss = []
            for _ in range(MEMORY_PASSES):
                before = await sink_count(client, sink)
                events = deliveries // 10
                await run_bounded(
                    events, CONCURRENCY, lambda i: load.publish(publish_body("bench", i))
                )
                await wait_for_sink(client, sink, before + deliveries)
                await asyncio.sleep(2)
                rss.append(app.rss_mb())
        return {"rss_after_each_pass_mb": rss, "deliveries_each": deliveries}
    finally:
        await app.stop()


async def measure_scale(
    sink: Process, subscribers: int, events: int, workdir: Path
) -> dict[str, float]:
    """Publish latency with N filtered subscribers on one topic (one matches each event)."""
    db = workdir / f"scale{subscribers}.db"
    items = [
        {
            "topic": "scale",
            "target_url": f"{sink.url}/c{i}",
            "filter_expression": f'data["body"]["customer"] == "c{i}"',
        }
        for i in range(subscribers)
    ]
    importer = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "switchd", "subscribers", "import", "-", "--db", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    await importer.communicate(orjson.dumps(items))
    if importer.returncode != 0:
        raise RuntimeError("subscribers import failed")
    app = await start_switchd(db)
    try:
        async with Publisher(app) as load:

            async def one(i: int) -> float:
                payload = {"body": {"customer": f"c{i % subscribers}"}}
                return await load.publish(orjson.dumps({"topic": "scale", "payload": payload}))

            latencies = await run_bounded(events, 1, one)
        return {"subscribers": subscribers, "publish_p50_ms": percentile(latencies, 50) * 1000}
    finally:
        await app.stop()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


async def measure_round(sink: Process, scale: float, workdir: Path) -> dict[str, Any]:
    """The throughput figures, and the publish latency at half of this round's maximum
    rate, measured back to back so that they share the machine's state of the moment.

    "The maximum rate" is read two ways, both measured: the most events per second switchd
    delivers at fan-out 1 (the most it sustains: accepting faster only grows the queue),
    and the most it accepts."""
    await asyncio.to_thread(workdir.mkdir)
    requests = int(20_000 * scale)
    before = await measure_limit(sink, requests)
    figures = {
        "delivery_client": await measure_delivery_client(sink, requests),
        "fanout1": await measure_fanout(sink, 1, int(5_000 * scale), workdir),
        "fanout10": await measure_fanout(sink, 10, int(2_000 * scale), workdir),
    }
    # The machine's speed drifts: the round's limit is the mean of one measured before its
    # switchd runs and one after them.
    after = await measure_limit(sink, requests)
    figures["limit"] = {
        "requests_per_s": (before["requests_per_s"] + after["requests_per_s"]) / 2,
        "before_per_s": before["requests_per_s"],
        "after_per_s": after["requests_per_s"],
    }
    for name, key in FIXED_RATES.items():
        half = figures["fanout1"][key] / 2
        figures[name] = await measure_fixed_rate(sink, half, 10 * scale, workdir / f"{name}.db")
    return figures


def medians(figures: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {key: statistics.median(f[key] for f in figures) for key in figures[0]}


async def main_async(quick: bool) -> dict[str, Any]:
    scale = 0.2 if quick else 1.0
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    }
    sink = await start_sink()
    try:
        with tempfile.TemporaryDirectory(prefix="switchd-bench-") as tmp:
            workdir = Path(tmp)
            rounds = [
                await measure_round(sink, scale, workdir / f"round{i}") for i in range(ROUNDS)
            ]
            results["rounds"] = rounds
            for name in ("limit", "delivery_client", "fanout1", "fanout10", *FIXED_RATES):
                results[name] = medians([r[name] for r in rounds])
            results["memory"] = await measure_memory(sink, int(100_000 * scale), workdir)
            results["scale"] = [
                await measure_scale(sink, n, int(200 * scale) or 20, workdir)
                for n in (1, 100, 1000, 10_000)
            ]
    finally:
        await sink.stop()
    return results


def report(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    limit = results["limit"]["requests_per_s"]  # the median limit
    f1, f10, memory = results["fanout1"], results["fanout10"], results["memory"]

    def ratio(name: str, key: str) -> str:
        """Median over the rounds of the figure over that round's limit, and its range."""
        each = [r[name][key] / r["limit"]["requests_per_s"] for r in results["rounds"]]
        return f"{statistics.median(each):.2f} × limit ({min(each):.2f}–{max(each):.2f})"

    def span(name: str, key: str) -> str:
        """A figure's range over the rounds."""
        each = [r[name][key] for r in results["rounds"]]
        return f"{min(each):.1f}–{max(each):.1f}"

    rows = [
        (
            f"limit: aiohttp client → sink (median of {ROUNDS} rounds, each the mean of 2)",
            f"{limit:,.0f} req/s",
            "1.00",
        ),
        (
            "for comparison: switchd's delivery client → sink",
            f"{results['delivery_client']['requests_per_s']:,.0f} req/s",
            ratio("delivery_client", "requests_per_s"),
        ),
        (
            "fan-out 1: events accepted",
            f"{f1['events_accepted_per_s']:,.0f} /s",
            ratio("fanout1", "events_accepted_per_s"),
        ),
        (
            "fan-out 1: events delivered",
            f"{f1['events_delivered_per_s']:,.0f} /s",
            ratio("fanout1", "events_delivered_per_s"),
        ),
        (
            "fan-out 1: publish p50 / p99",
            f"{f1['publish_p50_ms']:.1f} / {f1['publish_p99_ms']:.1f} ms",
            "",
        ),
        ("fan-out 1: peak RSS", f"{f1['peak_rss_mb']:.0f} MB", ""),
        (
            "fan-out 10: events accepted",
            f"{f10['events_accepted_per_s']:,.0f} /s",
            ratio("fanout10", "events_accepted_per_s"),
        ),
        (
            "fan-out 10: deliveries",
            f"{f10['deliveries_per_s']:,.0f} /s",
            ratio("fanout10", "deliveries_per_s"),
        ),
        (
            "fan-out 10: publish p50 / p99",
            f"{f10['publish_p50_ms']:.1f} / {f10['publish_p99_ms']:.1f} ms",
            "",
        ),
        ("fan-out 10: peak RSS", f"{f10['peak_rss_mb']:.0f} MB", ""),
        *(
            (
                f"publish at {results[name]['offered_per_s']:,.0f}/s "
                f"(half max {key.split('_')[1]}): p50 / p99",
                f"{results[name]['publish_p50_ms']:.1f} / {results[name]['publish_p99_ms']:.1f} ms",
                f"p99 {span(name, 'publish_p99_ms')} ms; "
                f"sender late p99 {results[name]['sender_late_p99_ms']:.1f} ms",
            )
            for name, key in FIXED_RATES.items()
        ),
        (
            f"RSS after each of {MEMORY_PASSES} passes of {memory['deliveries_each']:,} deliveries",
            " → ".join(f"{mb:.0f}" for mb in memory["rss_after_each_pass_mb"]) + " MB",
            "",
        ),
    ]
    rows += [
        (
            f"publish p50, {s['subscribers']:,} filtered subscribers",
            f"{s['publish_p50_ms']:.2f} ms",
            "",
        )
        for s in results["scale"]
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a fifth of the work, for a smoke run")
    args = parser.parse_args()
    results = asyncio.run(main_async(args.quick))
    rows = report(results)
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"{'figure'.ljust(width)}  {'value'.ljust(value_width)}  ratio")
    for name, value, ratio in rows:
        print(f"{name.ljust(width)}  {value.ljust(value_width)}  {ratio}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out.write_bytes(orjson.dumps({**results, "table": rows}, option=orjson.OPT_INDENT_2))
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
