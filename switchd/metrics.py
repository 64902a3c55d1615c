"""Prometheus metrics, one registry per service (so tests can run several in one process).

Topic labels are bounded: a topic is used as a label only while some subscriber listens
to it (an operator-controlled set); any other topic is counted as `other`. Endpoint
origins label only the few endpoints with the lowest limits (endpoints.py).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

OTHER_TOPIC = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every switchd metric, registered in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Counter, str], Counter] = {}
        r = self.registry
        self.published = Counter(
            "switchd_events_published", "Events accepted by /publish", ["topic"], registry=r
        )
        self.matched = Counter(
            "switchd_events_matched",
            "Jobs created: one per (event, matching subscriber)",
            ["topic"],
            registry=r,
        )
        self.deliveries = Counter(
            "switchd_deliveries",
            "Deliveries (quick retries included) by outcome: delivered, transient, "
            "permanent, skipped",
            ["outcome"],
            registry=r,
        )
        self.settled = Counter(
            "switchd_jobs_settled",
            "What happened to jobs after a delivery: done, retry (durable retry scheduled), "
            "dead (moved to the dead-letter store)",
            ["disposition"],
            registry=r,
        )
        self.requests = Counter(
            "switchd_delivery_requests",
            "HTTP requests sent to subscribers",
            ["outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "switchd_delivery_latency_seconds",
            "Duration of one HTTP request to a subscriber",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_latency = Histogram(
            "switchd_publish_latency_seconds",
            "Time to match and durably store an event",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.filter_errors = Counter(
            "switchd_filter_errors",
            "Filter evaluations that raised (counted as no match)",
            registry=r,
        )
        self.queue_depth = Gauge(
            "switchd_queue_depth", "Jobs waiting or in flight", ["queue"], registry=r
        )
        self.oldest_job_age = Gauge(
            "switchd_queue_oldest_job_age_seconds",
            "Age of the oldest job still queued (0 when empty)",
            ["queue"],
            registry=r,
        )
        self.queue_up = Gauge(
            "switchd_queue_up", "1 when the queue backend answers, else 0", ["queue"], registry=r
        )
        self.faktory_up = Gauge(
            "switchd_faktory_up", "1 while Faktory answers, 0 while jobs spill locally", registry=r
        )
        self.faktory_spilled = Gauge(
            "switchd_faktory_spilled_jobs",
            "Jobs stored in the local queue because Faktory was unreachable (since start)",
            registry=r,
        )
        self.faktory_unsent = Gauge(
            "switchd_faktory_unsent_acks", "ACK/FAIL commands waiting for Faktory", registry=r
        )
        self.in_flight = Gauge("switchd_deliveries_in_flight", "Deliveries under way", registry=r)
        self.jobs_deferred = Counter(
            "switchd_jobs_deferred",
            "Jobs set aside because their endpoint could not take them (no attempt spent), by "
            "reason: saturated, unanswered, paused, open, probing",
            ["reason"],
            registry=r,
        )
        self.circuits_open = Gauge(
            "switchd_endpoint_circuit_open",
            "Endpoints whose circuit breaker is open or half-open",
            registry=r,
        )
        self.endpoint_limit = Gauge(
            "switchd_endpoint_limit",
            "In-flight limit of the endpoints with the lowest limits (at most 10 of them)",
            ["origin"],
            registry=r,
        )
        self.handoffs = Counter(
            "switchd_consumer_handoffs",
            "Consumers that handed their place to a fresh one, a delivery having lasted 0.5 s",
            registry=r,
        )
        self.set_aside = Gauge(
            "switchd_endpoint_jobs_set_aside",
            "Jobs held in memory for busy or sick endpoints",
            registry=r,
        )
        self.log_dropped = Counter(
            "switchd_event_log_dropped",
            "Delivery-log rows dropped because the log buffer was full (database unwritable)",
            registry=r,
        )

    def child(self, metric: Counter, label: str) -> Counter:
        """`metric.labels(label)`, remembered: labels() validates and locks on every call.
        Only for bounded label values (outcomes, topic labels)."""
        key = (metric, label)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(label)
        return found

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
