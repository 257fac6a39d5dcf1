"""The gateway's Prometheus metrics (served at the REST port's /metrics, without a key):
requests, errors and latency per door and operation, bytes in and out, upload sessions open."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from chunkfs.metrics import LATENCY_BUCKETS_S, new_registry


SESSIONS_COUNT_S = 15.0


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or new_registry()
        self.requests = Counter("chunkfs_gateway_requests", "Requests answered, by door and operation",
                                ["door", "operation"], registry=self.registry)
        self.errors = Counter("chunkfs_gateway_errors", "Requests answered with an error, by door, operation and code",
                              ["door", "operation", "code"], registry=self.registry)
        self.latency = Histogram("chunkfs_gateway_request_seconds", "Time to the response's start, by operation",
                                 ["door", "operation"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.bytes_in_total = Counter("chunkfs_gateway_received_bytes", "Body bytes received", registry=self.registry)
        self.bytes_out_total = Counter("chunkfs_gateway_sent_bytes", "Body bytes sent", registry=self.registry)
        self.upload_sessions = Gauge("chunkfs_gateway_upload_sessions",
                                     "Upload sessions open (S3 multipart, tus, resumable puts), counted every "
                                     f"{SESSIONS_COUNT_S:g} s", registry=self.registry)
        self.received_bytes = self.sent_bytes = 0  # the same, for /api/v1/stats

    @contextmanager
    def timed(self, door: str, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.requests.labels(door, operation).inc()
            self.latency.labels(door, operation).observe(time.perf_counter() - started)

    def error(self, door: str, operation: str, code: str) -> None:
        self.errors.labels(door, operation, code).inc()

    def bytes_out(self, count: int) -> None:
        self.bytes_out_total.inc(count)
        self.sent_bytes += count

    async def counted_in(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for piece in body:
            self.bytes_in_total.inc(len(piece))
            self.received_bytes += len(piece)
            yield piece
