"""/metrics parsed with prometheus_client's own parser; counters move as expected."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Running, Sink, StartSwitchd, serve_sink

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(app: Running) -> Samples:
    async with app.client.get(app.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def settled(app: Running, disposition: str, count: int) -> Samples:
    """The metrics once `count` jobs were settled with `disposition` (5 s at most)."""
    for _ in range(100):
        samples = await scrape(app)
        if value(samples, "switchd_jobs_settled_total", disposition=disposition) >= count:
            break
        await asyncio.sleep(0.05)
    return samples


async def test_counters_follow_publishes_and_deliveries(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(retry_schedule=(0.05,), quick_retries=0)
    await app.add_subscriber(topic="orders", target_url=sink.url("/ok"))
    await app.add_subscriber(
        topic="orders", target_url=sink.url("/filtered"), filter_expression='data["body"]["n"] > 0'
    )
    before = await scrape(app)
    assert value(before, "switchd_queue_up", queue="local") == 1

    await app.publish("orders", {"body": {"n": 1}})  # both match
    await app.publish("orders", {"body": {}})  # filter raises KeyError: one match
    await app.publish("nobody-listens", {"body": {}})
    await settled(app, "done", 3)  # answered: the sink's script below is for the next one
    sink.script.extend([503, 503])  # one durable retry, then dead
    await app.publish("orders", {"body": {"n": -1}})
    samples = await settled(app, "dead", 1)

    assert value(samples, "switchd_events_published_total", topic="orders") == 3
    assert value(samples, "switchd_events_published_total", topic="other") == 1
    assert value(samples, "switchd_events_matched_total", topic="orders") == 4
    assert value(samples, "switchd_filter_errors_total") == 1
    assert value(samples, "switchd_deliveries_total", outcome="delivered") == 3
    assert value(samples, "switchd_deliveries_total", outcome="transient") == 2
    assert value(samples, "switchd_jobs_settled_total", disposition="done") == 3
    assert value(samples, "switchd_jobs_settled_total", disposition="retry") == 1
    assert value(samples, "switchd_jobs_settled_total", disposition="dead") == 1
    assert value(samples, "switchd_delivery_requests_total", outcome="transient") == 2
    assert value(samples, "switchd_delivery_latency_seconds_count") == 5
    assert value(samples, "switchd_publish_latency_seconds_count") == 4
    assert value(samples, "switchd_queue_depth", queue="local") == 0


async def test_queue_depth_and_oldest_age(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd(consumer_concurrency=0)
    await app.add_subscriber(topic="t", target_url=sink.url())
    await app.publish("t", {"body": {}})
    await app.publish("t", {"body": {}})
    await asyncio.sleep(0.2)
    samples = await scrape(app)
    assert value(samples, "switchd_queue_depth", queue="local") == 2
    assert value(samples, "switchd_queue_oldest_job_age_seconds", queue="local") >= 0.2


async def test_in_flight_gauge_counts_deliveries_under_way(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    await app.add_subscriber(topic="slow", target_url=sink.url())
    assert value(await scrape(app), "switchd_deliveries_in_flight") == 0
    await app.publish("slow", {"body": {"n": 0}})  # an endpoint takes one request until
    await sink.wait_for(1)  # it first answers (endpoints.py)
    sink.delay = 1.0
    for n in range(1, 4):
        await app.publish("slow", {"body": {"n": n}})
    await sink.wait_for(4)
    assert value(await scrape(app), "switchd_deliveries_in_flight") == 3
    sink.delay = 0.0
    for _ in range(100):
        if value(await scrape(app), "switchd_deliveries_in_flight") == 0:
            break
        await asyncio.sleep(0.05)
    assert value(await scrape(app), "switchd_deliveries_in_flight") == 0


async def test_endpoint_metrics_show_open_circuits_and_only_the_worst_limits(
    start_switchd: StartSwitchd, sink: Sink
):
    """12 failing endpoints and a healthy one: every open circuit is counted, the jobs set
    aside by reason, and only the 10 lowest limits are labelled with their origin."""
    app = await start_switchd(circuit_failures=2, circuit_cooldown=600, circuit_max_cooldown=600)
    failing = [await serve_sink() for _ in range(12)]
    try:
        for i, (endpoint, _) in enumerate(failing):
            endpoint.status = 503
            await app.add_subscriber(topic=f"bad-{i}", target_url=endpoint.url())
            await app.publish(f"bad-{i}", {"body": {}})
            await app.publish(f"bad-{i}", {"body": {}})
        await app.add_subscriber(topic="good", target_url=sink.url())
        await app.publish("good", {"body": {}})
        await sink.wait_for(1)
        for _ in range(100):
            samples = await scrape(app)
            if value(samples, "switchd_endpoint_circuit_open") == 12:
                break
            await asyncio.sleep(0.05)
        assert value(samples, "switchd_endpoint_circuit_open") == 12
        assert value(samples, "switchd_jobs_deferred_total", reason="open") >= 1
        limits = {
            dict(labels)["origin"]: count
            for (name, labels), count in samples.items()
            if name == "switchd_endpoint_limit"
        }
        assert len(limits) == 10 and set(limits.values()) <= {1.0, 2.0}  # halved 2-3 times
        assert set(limits) <= {endpoint.base_url for endpoint, _ in failing}
    finally:
        for _, runner in failing:
            await runner.cleanup()
