"""Prometheus /metrics: request latency per route and status, and the engine's own counters.

One registry per app (several apps may live in one process: tests, workers). Engine figures are
read at scrape time from the engine itself (windows encoded, encoder seconds, batch sizes, queue,
L1/L2 cache hits and misses, Redis errors), so the hot path pays nothing for them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.responses import Response

from dinotiles.core.engine import ClusterEngine

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class EngineCollector:
    """The engine's counters as Prometheus metrics, read when scraped."""

    def __init__(self, engine: ClusterEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        e = self.engine
        yield CounterMetricFamily("dinotiles_windows_encoded", "inference windows encoded", value=e.windows_encoded)
        yield CounterMetricFamily("dinotiles_encoder_seconds", "seconds spent in the encoder", value=e.encoder.seconds)
        batches = CounterMetricFamily("dinotiles_encoder_batches", "encoder runs by batch size", labels=["size"])
        for size, count in sorted(e.batch_sizes.items()):
            batches.add_metric([str(size)], count)
        yield batches
        yield GaugeMetricFamily(
            "dinotiles_queue_windows",
            "windows admitted to the inference queue (being read or encoded)",
            value=e.queue.reserved,
        )
        yield GaugeMetricFamily(
            "dinotiles_queue_ready", "windows read and waiting for the encoder", value=e.queue.waiting
        )
        yield GaugeMetricFamily("dinotiles_queue_limit", "DINOTILES_MAX_QUEUE", value=e.queue.max_queue)
        yield CounterMetricFamily(
            "dinotiles_queue_rejected", "requests refused with 503 (queue full)", value=e.queue.rejected
        )
        cache = CounterMetricFamily("dinotiles_cache_lookups", "window cache lookups", labels=["level", "result"])
        cache.add_metric(["l1", "hit"], e.cache.hits)
        cache.add_metric(["l1", "miss"], e.cache.misses)
        if e.shared is not None:
            cache.add_metric(["l2", "hit"], e.shared.hits)
            cache.add_metric(["l2", "miss"], e.shared.misses)
        yield cache
        yield GaugeMetricFamily("dinotiles_cache_bytes", "bytes of window IDs held in memory", value=e.cache.size)
        if e.shared is not None:
            yield CounterMetricFamily(
                "dinotiles_redis_errors", "failed Redis calls (served without it)", value=e.shared.errors
            )
            yield GaugeMetricFamily("dinotiles_redis_up", "1 while Redis is used", value=int(e.shared.available))


class Metrics:
    """ASGI layer timing every request by route template, method and status; serves /metrics."""

    def __init__(self, app: Any, engine: ClusterEngine) -> None:
        self.app = app
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine))  # type: ignore[arg-type]
        self.latency = Histogram(
            "dinotiles_request_seconds",
            "request latency by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
            buckets=BUCKETS,
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/metrics":
            body = generate_latest(self.registry)
            await Response(body, media_type=CONTENT_TYPE_LATEST)(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            prefix = scope.get("root_path", "")
            self.latency.labels(prefix + template, scope["method"], str(status[0])).observe(time.perf_counter() - start)
