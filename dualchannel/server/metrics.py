"""Prometheus metrics, one registry per app so several relays can share a process."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["RelayMetrics"]

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RelayMetrics:
    """Every metric the relay exports, registered on a private :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dualchannel_relay_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "dualchannel_relay_ingest_seconds",
            "Time from receiving an ingest request to answering it (includes the commit).",
            buckets=_FAST,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "dualchannel_relay_commit_seconds",
            "Time one group-commit transaction takes.",
            buckets=_FAST,
            registry=r,
        )
        self.commit_batch = Histogram(
            "dualchannel_relay_commit_batch_envelopes",
            "Envelopes written per group-commit transaction.",
            buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=r,
        )
        self.subscribers = Gauge(
            "dualchannel_relay_subscribers",
            "Open SSE streams.",
            registry=r,
        )
        self.fanout_seconds = Histogram(
            "dualchannel_relay_fanout_seconds",
            "Time from commit to handing a live message to an SSE stream.",
            buckets=_FAST,
            registry=r,
        )
        self.rate_limited = Counter(
            "dualchannel_relay_rate_limited",
            "Ingest requests refused with 429.",
            registry=r,
        )
        self.duplicates = Counter(
            "dualchannel_relay_duplicates",
            "Envelopes received again and not stored twice.",
            registry=r,
        )
        self.stored = Counter(
            "dualchannel_relay_stored",
            "Envelopes newly stored.",
            registry=r,
        )
        self.overflows = Counter(
            "dualchannel_relay_subscriber_overflows",
            "SSE streams closed because the subscriber fell too far behind.",
            registry=r,
        )

        self._request_counters: dict[tuple[str, str], Any] = {}

    def count_request(self, route: str, status: int) -> None:
        """Count one answered request; the labelled child is looked up once per pair."""
        key = (route, str(status))
        child = self._request_counters.get(key)
        if child is None:
            child = self._request_counters[key] = self.requests.labels(*key)
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
