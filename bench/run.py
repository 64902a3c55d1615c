"""switchd benchmark: figures and their ratio to the same machine's HTTP limit, in one run.

Processes: a sink (bench/sink.py, on uvloop), a `switchd serve`, and this script as the
load generator (on uvloop too); with the real Faktory at ../shared/bin (tests/real_faktory.py)
also a Faktory and its redis. Everything talks to 127.0.0.1 only; every loop is bounded
in count and time. The throughput figures and the fixed-rate latency are measured in
ROUNDS rounds, each next to a limit of its own (the machine is shared and noisy): the
fastest plain client → sink rate of the round, of an aiohttp client and switchd's own
delivery client, each the mean of a run before and one after the round's switchd runs.
The table gives medians, and each ratio's (or latency's) median and range over the rounds.

    make bench            # or: .venv/bin/python bench/run.py [--quick] [--rounds N] [--only S]

The "subscribers" section (bench/subscriber_scale.py) changes subscribers at scale.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
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
sys.path.insert(0, str(ROOT))

from switchd.auth import mint  # noqa: E402
from switchd.cli.serve import run_loop  # noqa: E402
from switchd.http_client import HttpClient  # noqa: E402
from switchd.queue.faktory_protocol import FaktoryAddress, FaktoryConnection  # noqa: E402
from tests import real_faktory  # noqa: E402
from tests.real_faktory import RealFaktory, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SECRET = "bench-secret-bench-secret-bench-secret!"
ADMIN_SECRET = "bench-admin-secret-bench-admin-secret!"
CONCURRENCY = 64
WAIT_LIMIT_SECONDS = 300
START_LIMIT_SECONDS = 60
SECTIONS = ("throughput", "memory", "scale", "subscribers")
MEMORY_PASSES = 5
ROUNDS = 5  # throughput figures are medians of this many rounds, each with its own limit
CEILING_BATCH = 100  # jobs per PUSHB in the Faktory ceiling
# Fixed-rate latency runs at half of each of these fan-out 1 maxima (see measure_round).
FIXED_RATES = {
    "fixed_rate_delivered": "events_delivered_per_s",
    "fixed_rate_accepted": "events_accepted_per_s",
}


def token(admin: bool) -> str:
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
    deadline = time.monotonic() + START_LIMIT_SECONDS
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < deadline:
            try:
                async with client.get(url + health) as response:
                    if response.status == 200:
                        return Process(popen, url)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    popen.kill()
    raise RuntimeError(f"{argv[0]} did not start")


async def start_sink() -> Process:
    return await start(
        [sys.executable, str(ROOT / "bench" / "sink.py"), "--quiet", "--port", "{port}"],
        {},
        "/_stats",
    )


async def start_switchd(db: Path, health: str = "/healthz", **env: str) -> Process:
    settings = {
        "SWITCH_JWT_SECRET": SECRET,
        "SWITCH_ADMIN_JWT_SECRET": ADMIN_SECRET,
        "SWITCH_DB_NAME": str(db),
        "SWITCH_SERVER_HOST": "127.0.0.1",
        "SWITCH_LOG_FORMAT": "json",
        "SWITCH_CONSUMER_CONCURRENCY_LEVEL": str(CONCURRENCY),  # the limit's concurrency
        **env,
    }
    return await start([sys.executable, "-m", "switchd", "serve"], settings, health)


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


LIMIT_BODY = orjson.dumps({"order": 1, "items": ["a", "b"]})
LIMIT_HEADERS = {"Content-Type": "application/json"}


async def measure_aiohttp_client(sink: Process, requests: int) -> float:
    """An aiohttp client (on this process's uvloop) posting straight to the sink: req/s."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        started = time.perf_counter()
        await run_bounded(
            requests,
            CONCURRENCY,
            lambda i: timed_post(client, sink.url + "/limit", LIMIT_BODY, LIMIT_HEADERS, 200),
        )
        return requests / (time.perf_counter() - started)


async def measure_delivery_client(sink: Process, requests: int) -> float:
    """switchd's own delivery client (switchd/http_client.py) posting to the sink: req/s."""
    client = HttpClient()

    async def one(i: int) -> float:
        started = time.perf_counter()
        response = await client.request(
            "POST", sink.url + "/limit", LIMIT_HEADERS, LIMIT_BODY, 10, 0
        )
        if response.status != 200:
            raise RuntimeError(f"sink answered {response.status}")
        return time.perf_counter() - started

    try:
        started = time.perf_counter()
        await run_bounded(requests, CONCURRENCY, one)
        return requests / (time.perf_counter() - started)
    finally:
        await client.close()


async def measure_clients(sink: Process, requests: int) -> dict[str, float]:
    """Both plain clients → sink, in req/s."""
    return {
        "aiohttp_per_s": await measure_aiohttp_client(sink, requests),
        "delivery_client_per_s": await measure_delivery_client(sink, requests),
    }


def the_limit(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The round's limit: the faster plain client, each the mean of its runs before and after
    the round's switchd runs (the machine's speed drifts)."""
    means = {key: (before[key] + after[key]) / 2 for key in before}
    return {"requests_per_s": max(means.values()), **means}


@dataclass
class Backend:
    """Where switchd keeps its jobs: the embedded queue, or a real Faktory."""

    prefix: str  # of the names of its figures: "" or "faktory_"
    faktory: RealFaktory | None = None

    def env(self) -> dict[str, str]:
        """switchd's settings for it; each switchd gets a Faktory queue of its own."""
        if self.faktory is None:
            return {}
        queue = "bench-" + secrets.token_hex(4)
        return {"FAKTORY_URL": self.faktory.url, "SWITCH_PRODUCTION_QUEUE": queue}

    def pids(self) -> list[int]:
        """The processes of the queue server: Faktory and its redis (none when embedded)."""
        return [] if self.faktory is None else self.faktory.pids()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes `pids` have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


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
    sink: Process, fanout: int, events: int, workdir: Path, backend: Backend
) -> dict[str, float]:
    """M events published concurrently to K subscribers: accept rate, delivery rate, RSS, and
    the CPU (in cores) switchd and the queue server used meanwhile. A first CONCURRENCY
    events are a warm-up, discarded: they open the connections (to the sink, and under
    Faktory one per consumer and per producer, each with a password handshake)."""
    app = await start_switchd(workdir / f"{backend.prefix}fanout{fanout}.db", **backend.env())
    try:
        async with aiohttp.ClientSession() as client, Publisher(app) as load:
            await add_subscribers(client, app, sink, "bench", fanout)

            def publish_all(count: int) -> Awaitable[list[float]]:
                return run_bounded(
                    count, CONCURRENCY, lambda i: load.publish(publish_body("bench", i))
                )

            warm_up = await sink_count(client, sink)
            await publish_all(CONCURRENCY)
            await wait_for_sink(client, sink, warm_up + CONCURRENCY * fanout)
            before = await sink_count(client, sink)
            cpu = [cpu_seconds([app.popen.pid]), cpu_seconds(backend.pids())]
            started = time.perf_counter()
            latencies = await publish_all(events)
            accepted_at = time.perf_counter()
            done_at = await wait_for_sink(client, sink, before + events * fanout)
            switchd_cpu = cpu_seconds([app.popen.pid]) - cpu[0]
            server_cpu = cpu_seconds(backend.pids()) - cpu[1]
        return {
            "events_accepted_per_s": events / (accepted_at - started),
            "deliveries_per_s": events * fanout / (done_at - started),
            "events_delivered_per_s": events / (done_at - started),
            "publish_p50_ms": percentile(latencies, 50) * 1000,
            "publish_p99_ms": percentile(latencies, 99) * 1000,
            "peak_rss_mb": app.peak_rss_mb(),
            "switchd_cpu_cores": switchd_cpu / (done_at - started),
            "queue_server_cpu_cores": server_cpu / (done_at - started),
        }
    finally:
        await app.stop()


async def measure_fixed_rate(
    sink: Process, rate: float, seconds: float, db: Path, backend: Backend
) -> dict[str, float]:
    """Open-loop publishing at `rate` events/s to one subscriber, on a new database `db`:
    publish latency percentiles, measured after a warm-up second at the same rate (new
    connections, first requests) is discarded."""
    app = await start_switchd(db, **backend.env())
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


async def measure_faktory_ceiling(faktory: RealFaktory, jobs: int) -> dict[str, float]:
    """Faktory's own rate on this machine, through switchd's protocol client: `jobs` no-op
    jobs pushed with PUSHB (CEILING_BATCH a time) over CONCURRENCY connections while as many
    connections (one worker, as switchd's consumers are) FETCH and ACK them."""
    address = FaktoryAddress.parse(faktory.url)
    queue, wid = "ceiling-" + secrets.token_hex(4), secrets.token_hex(8)
    pushers = [await FaktoryConnection.open(address) for _ in range(CONCURRENCY)]
    workers = [await FaktoryConnection.open(address, wid=wid) for _ in range(CONCURRENCY)]
    batches = iter(
        [
            {"jid": secrets.token_hex(12), "jobtype": "noop", "queue": queue, "args": []}
            for _ in range(start, min(jobs, start + CEILING_BATCH))
        ]
        for start in range(0, jobs, CEILING_BATCH)
    )
    acked: list[float] = []

    async def push(connection: FaktoryConnection) -> None:
        for batch in batches:
            if await connection.push_bulk(batch):
                raise RuntimeError("Faktory refused ceiling jobs")

    async def work(connection: FaktoryConnection) -> None:
        while len(acked) < jobs:
            job = await connection.fetch([queue])  # None after 2 s without a job
            if job is not None:
                await connection.ack(job["jid"])
                acked.append(time.perf_counter())

    cpu = cpu_seconds(faktory.pids())
    started = time.perf_counter()
    try:
        await asyncio.gather(*map(push, pushers), *map(work, workers))
    finally:
        await asyncio.gather(*(c.close() for c in pushers + workers))
    elapsed = max(acked) - started
    return {
        "jobs_per_s": jobs / elapsed,
        "queue_server_cpu_cores": (cpu_seconds(faktory.pids()) - cpu) / elapsed,
    }


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


async def measure_round(
    sink: Process, scale: float, workdir: Path, backends: list[Backend]
) -> dict[str, Any]:
    """The throughput figures, and the publish latency at half of this round's maximum
    rate, measured back to back so that they share the machine's state of the moment.

    "The maximum rate" is read two ways, both measured: the most events per second switchd
    delivers at fan-out 1 (the most it sustains: accepting faster only grows the queue),
    and the most it accepts."""
    await asyncio.to_thread(workdir.mkdir)
    requests = int(20_000 * scale)
    before = await measure_clients(sink, requests)
    figures: dict[str, Any] = {}
    for backend in backends:
        if backend.faktory is not None:
            figures["faktory_ceiling"] = await measure_faktory_ceiling(backend.faktory, requests)
        for fanout, events in ((1, 5_000), (10, 2_000)):
            figures[f"{backend.prefix}fanout{fanout}"] = await measure_fanout(
                sink, fanout, int(events * scale), workdir, backend
            )
    figures["limit"] = the_limit(before, await measure_clients(sink, requests))
    for backend in backends:
        for name, key in FIXED_RATES.items():
            half = figures[f"{backend.prefix}fanout1"][key] / 2
            db = workdir / f"{backend.prefix}{name}.db"
            figures[backend.prefix + name] = await measure_fixed_rate(
                sink, half, 10 * scale, db, backend
            )
    return figures


def medians(figures: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {key: statistics.median(f[key] for f in figures) for key in figures[0]}


async def start_faktory() -> RealFaktory | None:
    """The real Faktory of the Faktory rows, or None (said why) when it cannot run here."""
    problem = real_faktory.missing()
    if problem:
        print(f"no Faktory rows: {problem}", file=sys.stderr)
        return None
    faktory = RealFaktory()
    await asyncio.to_thread(faktory.start)
    return faktory


async def main_async(scale: float, rounds: int, sections: tuple[str, ...]) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    }
    faktory = await start_faktory() if "throughput" in sections else None
    backends = [Backend(""), *([Backend("faktory_", faktory)] if faktory else [])]
    sink = await start_sink()
    try:
        with tempfile.TemporaryDirectory(prefix="switchd-bench-") as tmp:
            workdir = Path(tmp)
            if "throughput" in sections:
                results["rounds"] = [
                    await measure_round(sink, scale, workdir / f"round{i}", backends)
                    for i in range(rounds)
                ]
                for name in results["rounds"][0]:
                    results[name] = medians([r[name] for r in results["rounds"]])
            if "memory" in sections:
                results["memory"] = await measure_memory(sink, int(100_000 * scale), workdir)
            if "scale" in sections:
                results["scale"] = [
                    await measure_scale(sink, n, int(200 * scale) or 20, workdir)
                    for n in (1, 100, 1000, 10_000)
                ]
            if "subscribers" in sections:  # last: it tunes this process's loop like serve's
                from subscriber_scale import measure_subscribers

                figures = await measure_subscribers(sink, workdir / "subs", scale < 1)
                results["subscribers"] = figures
    finally:
        await sink.stop()
        if faktory is not None:
            await asyncio.to_thread(faktory.stop)
    return results


def report(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The table's rows (figure, value, ratio or target) of the sections that ran."""
    rows = throughput_rows(results) if "rounds" in results else []
    if "memory" in results:
        memory = results["memory"]
        rows.append(
            (
                f"RSS after each of {MEMORY_PASSES} passes of {memory['deliveries_each']:,} "
                "deliveries",
                " → ".join(f"{mb:.0f}" for mb in memory["rss_after_each_pass_mb"]) + " MB",
                "",
            )
        )
    rows += [
        (
            f"publish p50, {s['subscribers']:,} filtered subscribers",
            f"{s['publish_p50_ms']:.2f} ms",
            "",
        )
        for s in results.get("scale", ())
    ]
    if "subscribers" in results:
        from subscriber_scale import report as subscriber_rows

        rows += subscriber_rows(results["subscribers"])
    return rows


def throughput_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The rows of the rounds: the limit, both queue backends, the Faktory ceiling."""
    rounds, limit = results["rounds"], results["limit"]

    def ratio(name: str, key: str, base: str = "limit", base_key: str = "requests_per_s") -> str:
        """Median over the rounds of the figure over that round's `base` (the limit, or the
        Faktory ceiling), and its range."""
        each = [r[name][key] / r[base][base_key] for r in rounds]
        label = base.removeprefix("faktory_")
        return f"{statistics.median(each):.2f} × {label} ({min(each):.2f}–{max(each):.2f})"

    def span(name: str, key: str) -> str:
        """A figure's range over the rounds."""
        each = [r[name][key] for r in rounds]
        return f"{min(each):.1f}–{max(each):.1f}"

    def against_ceiling(name: str, key: str, target: float) -> str:
        """The ratio to the limit, then to the Faktory ceiling with its target."""
        to_ceiling = ratio(name, key, "faktory_ceiling", "jobs_per_s")
        return f"{ratio(name, key)}; {to_ceiling}, target ≥ {target}"

    def backend_rows(prefix: str, title: str) -> list[tuple[str, str, str]]:
        """The rows of one queue backend; `title` starts their names."""
        f1, f10 = results[prefix + "fanout1"], results[prefix + "fanout10"]
        faktory = bool(prefix)
        rows = []
        fanouts = ((1, "events_delivered_per_s", "events delivered", 0.5),
                   (10, "deliveries_per_s", "deliveries", 0.8))  # fmt: skip
        for fanout, delivered, label, target in fanouts:
            name, figure = f"{prefix}fanout{fanout}", results[f"{prefix}fanout{fanout}"]
            rows += [
                (
                    f"{title}fan-out {fanout}: events accepted",
                    f"{figure['events_accepted_per_s']:,.0f} /s",
                    ratio(name, "events_accepted_per_s"),
                ),
                (
                    f"{title}fan-out {fanout}: {label}",
                    f"{figure[delivered]:,.0f} /s",
                    against_ceiling(name, delivered, target) if faktory else ratio(name, delivered),
                ),
                (
                    f"{title}fan-out {fanout}: publish p50 / p99",
                    f"{figure['publish_p50_ms']:.1f} / {figure['publish_p99_ms']:.1f} ms",
                    "",
                ),
            ]
        rows.append(
            (
                f"{title}peak RSS (fan-out 1 / fan-out 10)",
                f"{f1['peak_rss_mb']:.0f} / {f10['peak_rss_mb']:.0f} MB",
                "",
            )
        )
        if faktory:
            rows.append(
                (
                    f"{title}CPU of switchd / Faktory + redis (fan-out 1; fan-out 10)",
                    f"{f1['switchd_cpu_cores']:.2f} / {f1['queue_server_cpu_cores']:.2f}; "
                    f"{f10['switchd_cpu_cores']:.2f} / {f10['queue_server_cpu_cores']:.2f} cores",
                    "",
                )
            )
        for name, key in FIXED_RATES.items():
            fixed = results[prefix + name]
            rows.append(
                (
                    f"{title}publish at {fixed['offered_per_s']:,.0f}/s "
                    f"(half max {key.split('_')[1]}): p50 / p99",
                    f"{fixed['publish_p50_ms']:.1f} / {fixed['publish_p99_ms']:.1f} ms",
                    f"p99 {span(prefix + name, 'publish_p99_ms')} ms"
                    + ("; target ≤ 50 ms" if faktory else "")
                    + f"; sender late p99 {fixed['sender_late_p99_ms']:.1f} ms",
                )
            )
        return rows

    rows = [
        (
            f"limit: fastest plain client → sink (median of {len(rounds)} rounds; each the "
            "faster of the two below, mean of 2 runs)",
            f"{limit['requests_per_s']:,.0f} req/s",
            "1.00",
        ),
        (
            "aiohttp client → sink, both on uvloop",
            f"{limit['aiohttp_per_s']:,.0f} req/s",
            ratio("limit", "aiohttp_per_s"),
        ),
        (
            "switchd's delivery client → sink",
            f"{limit['delivery_client_per_s']:,.0f} req/s",
            ratio("limit", "delivery_client_per_s"),
        ),
        *backend_rows("", ""),
    ]
    if "faktory_ceiling" in results:
        ceiling = results["faktory_ceiling"]
        rows += [
            (
                f"Faktory ceiling: no-op jobs, PUSHB of {CEILING_BATCH} and FETCH + ACK, "
                f"{CONCURRENCY} connections each",
                f"{ceiling['jobs_per_s']:,.0f} jobs/s "
                f"(Faktory + redis CPU {ceiling['queue_server_cpu_cores']:.2f} cores)",
                ratio("faktory_ceiling", "jobs_per_s"),
            ),
            *backend_rows("faktory_", "Faktory, "),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a fifth of the work, for a smoke run")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"default {ROUNDS}")
    parser.add_argument(
        "--only", choices=SECTIONS, action="append", help="run this section only (repeatable)"
    )
    args = parser.parse_args()
    sections = tuple(args.only or SECTIONS)
    results = run_loop(main_async(0.2 if args.quick else 1.0, max(1, args.rounds), sections))
    rows = report(results)
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"{'figure'.ljust(width)}  {'value'.ljust(value_width)}  ratio / target")
    for name, value, ratio in rows:
        print(f"{name.ljust(width)}  {value.ljust(value_width)}  {ratio}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out.write_bytes(orjson.dumps({**results, "table": rows}, option=orjson.OPT_INDENT_2))
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
