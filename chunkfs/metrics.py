"""Prometheus metrics of the three daemons, served at `/metrics` without the cluster secret.

Each daemon has a registry of its own (never the library's process-global one). The aiohttp
servers count every request and time it per route and operation (`install_http`); what a scrape
shows of the daemon's state (servers up, chunks under goal, bytes stored, cache use) is read at
scrape time by a collector from the objects that already keep it, so the data path keeps no
second copy. The mount has no HTTP server of its own: `serve_standalone` runs prometheus_client's
small one in a thread (the only thread the mount has besides `trio.to_thread`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, PlatformCollector,
                               ProcessCollector, disable_created_metrics, generate_latest, start_http_server)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chunkfs.config import parse_address
from chunkfs.protocol import records as r

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
log = logging.getLogger(__name__)


def new_registry() -> CollectorRegistry:
    """A daemon's registry, with the process (CPU, memory, open files) and Python metrics."""
    disable_created_metrics()  # the `_created` twin of every counter only adds noise to scrapes
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


# ---- aiohttp servers ---------------------------------------------------------------------------

class HttpMetrics:
    """Requests by route (`/v1/fs/{op}`), operation (the `{op}`, else the HTTP method) and status,
    and their latency."""

    def __init__(self, registry: CollectorRegistry, operations: Iterable[str] = ()) -> None:
        self.operations = frozenset(operations)
        self.requests = Counter("chunkfs_http_requests", "HTTP requests answered, by route, operation and status",
                                ["route", "op", "status"], registry=registry)
        self.latency = Histogram("chunkfs_http_request_duration_seconds", "Time to answer an HTTP request",
                                 ["route", "op"], buckets=LATENCY_BUCKETS_S, registry=registry)

    def labels(self, request: web.Request) -> tuple[str, str]:
        resource = getattr(request.match_info.route, "resource", None)
        route = resource.canonical if resource is not None else "unmatched"
        op = request.match_info.get("op")
        if op is None:
            return route, request.method
        return route, op if op in self.operations else "unknown"  # bounded: a label per known op

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            route, op = self.labels(request)
            self.requests.labels(route, op, str(status)).inc()
            self.latency.labels(route, op).observe(time.perf_counter() - start)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[REGISTRY]), headers={"Content-Type": CONTENT_TYPE_LATEST})


def install_http(app: web.Application, registry: CollectorRegistry, operations: Iterable[str] = ()) -> None:
    """Count and time every request of `app` (outermost middleware, so refused and failed
    requests count too) and serve `registry` at GET /metrics (public: see `httpserver.PUBLIC_PATHS`)."""
    app[REGISTRY] = registry
    app.middlewares.insert(0, HttpMetrics(registry, operations).middleware)
    app.router.add_get("/metrics", metrics_handler)


# ---- metaserver --------------------------------------------------------------------------------

class ClusterCollector(Collector):
    """The cluster as `chunkfs status` shows it, computed at each scrape (a full scan of the
    chunk table: scrape every 15 s or slower on large clusters)."""

    def __init__(self, status: Callable[[], r.ClusterStatus]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        s = self.status()
        up = sum(1 for server in s.servers if server.alive)
        servers = GaugeMetricFamily("chunkfs_cluster_chunkservers", "Chunkservers the metaserver knows, by state",
                                    labels=["state"])
        servers.add_metric(["up"], up)
        servers.add_metric(["down"], len(s.servers) - up)
        yield servers
        alive = GaugeMetricFamily("chunkfs_cluster_chunkserver_up", "1 while a chunkserver's heartbeats arrive",
                                  labels=["id", "address"])
        for server in s.servers:
            alive.add_metric([server.id, server.address], 1 if server.alive else 0)
        yield alive
        for name, doc, value in (
            ("files", "Files (all inodes but directories)", s.files),
            ("directories", "Directories", s.directories),
            ("chunks", "Chunks of all files", s.chunks),
            ("chunks_under_goal", "Chunks with fewer live replicas than their goal", s.chunks_under_goal),
            ("pending_deletions", "Chunk versions waiting to be deleted on chunkservers", s.pending_deletions),
            ("capacity_bytes", "Capacity of the live chunkservers", s.total_bytes),
            ("free_bytes", "Free space of the live chunkservers", s.free_bytes),
            ("default_goal", "Replicas kept of a chunk unless its directory says otherwise", s.default_goal),
        ):
            yield GaugeMetricFamily(f"chunkfs_cluster_{name}", doc, value=value)


# ---- chunkserver -------------------------------------------------------------------------------

class ChunkserverMetrics:
    """What a chunkserver's handlers count; its store's state is read at scrape time."""

    def __init__(self, registry: CollectorRegistry, store: Any) -> None:
        self.read_bytes = Counter("chunkfs_chunkserver_read_bytes", "Chunk bytes served to readers",
                                  registry=registry)
        self.written_bytes = Counter("chunkfs_chunkserver_written_bytes", "Chunk bytes stored",
                                     registry=registry)
        self.checksum_failures = Counter(
            "chunkfs_chunkserver_checksum_failures",
            "Checksum mismatches: where=disk for a stored block that reads back wrong, "
            "where=upload for data damaged on its way here", ["where"], registry=registry)
        for where in ("disk", "upload"):
            self.checksum_failures.labels(where)
        registry.register(_StoreCollector(store))


class _StoreCollector(Collector):
    def __init__(self, store: Any) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        capacity, used = self.store.capacity()
        yield GaugeMetricFamily("chunkfs_chunkserver_chunks", "Chunk versions stored", value=self.store.chunk_count)
        yield GaugeMetricFamily("chunkfs_chunkserver_used_bytes", "Bytes the stored chunks take", value=used)
        yield GaugeMetricFamily("chunkfs_chunkserver_capacity_bytes",
                                "Bytes the chunks take plus what the disk still has free", value=capacity)


# ---- mount -------------------------------------------------------------------------------------

class MountCollector(Collector):
    """Reads the counters the chunk I/O and the chunk cache keep (`bytes_read`, `bytes_written`,
    `hits`, `misses`, `size_bytes`, `max_bytes`); plain ints, safe to read from the server thread."""

    def __init__(self, io: Any, cache: Any) -> None:
        self.io = io
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("chunkfs_mount_read_bytes", "Chunk bytes fetched from chunkservers",
                                  value=self.io.bytes_read)
        yield CounterMetricFamily("chunkfs_mount_written_bytes",
                                  "Chunk bytes uploaded to chunkservers (each replica counts)",
                                  value=self.io.bytes_written)
        yield CounterMetricFamily("chunkfs_mount_cache_hits", "Chunk reads answered from memory",
                                  value=self.cache.hits)
        yield CounterMetricFamily("chunkfs_mount_cache_misses", "Chunk reads that went to a chunkserver",
                                  value=self.cache.misses)
        yield GaugeMetricFamily("chunkfs_mount_cache_size_bytes", "Bytes of chunks held in memory",
                                value=self.cache.size_bytes)
        yield GaugeMetricFamily("chunkfs_mount_cache_capacity_bytes", "Most bytes of chunks held in memory",
                                value=self.cache.max_bytes)


def serve_standalone(listen: str, registry: CollectorRegistry) -> Callable[[], None]:
    """Serve `registry` on HOST:PORT `listen` from a thread; returns what stops it. Raises
    OSError when the address cannot be bound."""
    host, port = parse_address(listen)
    server, thread = start_http_server(port, host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def start_mount_metrics(listen: str, io: Any, cache: Any) -> Callable[[], None]:
    """The mount's metrics server on `listen` ("" for none); returns what stops it. A mount whose
    metrics address is taken goes on without metrics rather than fail."""
    if not listen:
        return lambda: None
    registry = new_registry()
    registry.register(MountCollector(io, cache))
    try:
        return serve_standalone(listen, registry)
    except OSError as exc:
        log.error("cannot serve metrics on %s (%s); the mount goes on without them", listen, exc.strerror or exc)
        return lambda: None
