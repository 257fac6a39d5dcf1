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
import bisect
import errno
import functools
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, PlatformCollector,
                               ProcessCollector, disable_created_metrics, generate_latest, start_http_server)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from prometheus_client.registry import Collector

from chunkfs.config import parse_address
from chunkfs.httpserver import REQUEST_COUNTER
from chunkfs.protocol import records as r

if TYPE_CHECKING:  # the mount's dependency only: the servers never load it
    import pyfuse3

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

class _Latency:
    """A latency histogram in LATENCY_BUCKETS_S, counted on one thread without a lock."""

    __slots__ = ("counts", "total_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)  # per bucket, not cumulative; the last: +Inf
        self.total_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.total_s += seconds

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """(cumulative buckets as prometheus names them, the sum)."""
        total_s, counts = self.total_s, list(self.counts)
        bounds = [*(floatToGoString(b) for b in LATENCY_BUCKETS_S), "+Inf"]
        return list(zip(bounds, itertools.accumulate(counts), strict=True)), total_s


class HttpMetrics(Collector):
    """Requests by route (`/v1/fs/{op}`), operation (the `{op}`, else the HTTP method) and status,
    and their latency: plain numbers kept on the event loop (prometheus_client's locked counter
    and histogram cost three lock round trips a request), read at scrape time."""

    def __init__(self, registry: CollectorRegistry, operations: Iterable[str] = ()) -> None:
        self.operations = frozenset(operations)
        self.requests: dict[tuple[str, str, str], int] = {}  # (route, op, status) -> requests answered
        self.latency: dict[tuple[str, str], _Latency] = {}
        registry.register(self)

    def labels(self, request: web.Request) -> tuple[str, str]:
        resource = getattr(request.match_info.route, "resource", None)
        route = resource.canonical if resource is not None else "unmatched"
        op = request.match_info.get("op")
        if op is None:
            return route, request.method
        return route, op if op in self.operations else "unknown"  # bounded: a label per known op

    def count(self, request: web.Request, status: int, duration_s: float) -> None:
        labels = self.labels(request)
        key = (*labels, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        latency = self.latency.get(labels)
        if latency is None:
            latency = self.latency[labels] = _Latency()
        latency.observe(duration_s)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("chunkfs_http_requests", "HTTP requests answered, by route, operation and status",
                                       labels=["route", "op", "status"])
        for key, count in list(self.requests.items()):
            requests.add_metric(list(key), count)
        yield requests
        latency = HistogramMetricFamily("chunkfs_http_request_duration_seconds", "Time to answer an HTTP request",
                                        labels=["route", "op"])
        for labels, histogram in list(self.latency.items()):
            latency.add_metric(list(labels), *histogram.snapshot())
        yield latency


class Exposition:
    """The text GET /metrics answers, made so that a scrape does not hold up the requests the
    event loop serves meanwhile.

    `prepare` takes what the collectors need of state only the loop may touch (a snapshot; it
    does its slow reads, of files and LMDB, in a thread). Then the registry is rendered on the
    loop one metric family at a time (prometheus_client's own text format, a family each), the
    loop serving what waits between two: a request waits at most one family's rendering (tens of
    us), where a render in a thread took the GIL from the loop again and again. At 10M files,
    with a scrape every 20 ms and the getattrs issued during one counted (bench/scale.py), a
    render in a thread made their p99 1.6x that of quiet windows (1.4x that of getattrs issued
    during GET /health polls at the same pace); paced there, 1.1-1.3x (0.85-1.07x); a family at
    a time on the loop, 0.95x (0.86x) at load 14, where paced in a thread was 1.01x (0.77x) and
    a scrape took 103 ms against 169. Scrapes that come while a render runs share
    it: scrapers in a tight loop keep one render going, not one each."""

    def __init__(self, registry: CollectorRegistry, prepare: Callable[[], Awaitable[None]] | None = None) -> None:
        self.registry, self.prepare = registry, prepare
        self._rendering: asyncio.Future[bytes] | None = None

    async def text(self) -> bytes:
        if self._rendering is None:
            self._rendering = asyncio.ensure_future(self._render())
            self._rendering.add_done_callback(self._rendered)
        return await asyncio.shield(self._rendering)

    async def _render(self) -> bytes:
        if self.prepare is not None:
            await self.prepare()
        families = []
        for metric in self.registry.collect():
            families.append(generate_latest(_OneFamily(metric)))
            await asyncio.sleep(0)  # what waits on the loop goes first
        return b"".join(families)

    def _rendered(self, _future: asyncio.Future[bytes]) -> None:
        self._rendering = None


class _OneFamily:
    """A registry as `generate_latest` reads it (its `collect`) of one metric family."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> list[Metric]:
        return [self.metric]


EXPOSITION = web.AppKey("metrics_exposition", Exposition)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=await request.app[EXPOSITION].text(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def install_http(app: web.Application, registry: CollectorRegistry, operations: Iterable[str] = (),
                 prepare: Callable[[], Awaitable[None]] | None = None) -> None:
    """Count and time every request of `app` (by its chunkfs middleware, so refused and failed
    requests count too: `httpserver.REQUEST_COUNTER`) and serve `registry` at GET /metrics (open or not: see `httpserver.STATUS_OPEN`),
    rendered off the event loop after `prepare` (see `Exposition`)."""
    app[REGISTRY] = registry
    app[EXPOSITION] = Exposition(registry, prepare)
    app[REQUEST_COUNTER] = HttpMetrics(registry, operations).count
    app.router.add_get("/metrics", metrics_handler)


# ---- metaserver --------------------------------------------------------------------------------

class ClusterCollector(Collector):
    """The cluster as `chunkfs status` shows it, read at each scrape from counts kept in LMDB
    (O(servers), whatever the file count)."""

    def __init__(self, status: Callable[[], Awaitable[r.ClusterStatus]]) -> None:
        self.status = status
        self.latest: r.ClusterStatus | None = None

    async def refresh(self) -> None:
        """Take the status now (from the event loop: it reads the loop's state); the next collect
        shows it (see `Exposition`)."""
        self.latest = await self.status()

    def collect(self) -> Iterator[Metric]:
        s, self.latest = self.latest, None
        if s is None:  # a collect without a refresh before it (only a scrape makes one)
            return
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
            ("file_bytes", "Sum of the sizes of all regular files", s.file_bytes),
            ("chunks", "Chunks of all files", s.chunks),
            ("chunk_bytes", "Sum of the lengths of all chunks (one replica each)", s.chunk_bytes),
            ("stored_bytes", "Sum of the lengths of distinct chunk versions (one replica each: dedup and "
                             "snapshots share versions)", s.stored_bytes),
            ("chunks_under_goal", "Chunks with fewer live replicas than their goal", s.chunks_under_goal),
            ("pending_deletions", "Chunk versions waiting to be deleted on chunkservers", s.pending_deletions),
            ("capacity_bytes", "Capacity of the live chunkservers", s.total_bytes),
            ("free_bytes", "Free space of the live chunkservers", s.free_bytes),
            ("default_goal", "Replicas kept of a chunk unless its directory says otherwise", s.default_goal),
            ("locks_held", "flock and fcntl locks held by clients", s.locks_held),
            ("lock_waits", "Lock requests waiting for a conflicting lock to go", s.lock_waits),
        ):
            yield GaugeMetricFamily(f"chunkfs_cluster_{name}", doc, value=value)
        yield from _per_server(s.servers)
        yield from _repair_and_gc(s)
        if s.memory is not None:
            for name, value in msgspec.structs.asdict(s.memory).items():
                yield GaugeMetricFamily(f"chunkfs_metaserver_memory_{name}", MEMORY_HELP, value=value)


MEMORY_HELP = "The metaserver's memory and what holds it (see `chunkfs status --json`, memory)"


def _per_server(servers: list[r.ServerStatus]) -> Iterator[Metric]:
    """What the metaserver knows of each chunkserver (down ones keep their last report)."""
    families = [
        (GaugeMetricFamily("chunkfs_cluster_chunkserver_chunks", "Chunk versions whose records list the server",
                           labels=["id", "address"]), lambda s: s.chunks),
        (GaugeMetricFamily("chunkfs_cluster_chunkserver_capacity_bytes",
                           "A chunkserver's capacity (chunks plus free disk) as last reported", labels=["id", "address"]),
         lambda s: s.capacity_bytes),
        (GaugeMetricFamily("chunkfs_cluster_chunkserver_free_bytes", "A chunkserver's free space as last reported",
                           labels=["id", "address"]), lambda s: max(0, s.capacity_bytes - s.used_bytes)),
    ]
    for family, value in families:
        for server in servers:
            family.add_metric([server.id, server.address], value(server))
        yield family


def _repair_and_gc(s: r.ClusterStatus) -> Iterator[Metric]:
    """Re-replication and garbage collection: what was done since the metaserver started and
    what is left (pending deletions are `chunkfs_cluster_pending_deletions`)."""
    yield CounterMetricFamily("chunkfs_repair_copies_made", "Chunk copies made by re-replication",
                              value=s.chunks_replicated)
    yield GaugeMetricFamily("chunkfs_repair_copies_running", "Chunk copies in flight", value=s.repairs_running)
    yield GaugeMetricFamily("chunkfs_repair_copies_pending",
                            "Copies the last re-replication pass found needed and possible", value=s.repair_copies_pending)
    yield CounterMetricFamily("chunkfs_repair_corrupt_replicas_found", "Corrupt replicas reported by chunkservers",
                              value=s.corrupt_found)
    yield CounterMetricFamily("chunkfs_gc_versions_deleted",
                              "Chunk versions deleted from every chunkserver that held them", value=s.versions_deleted)
    yield CounterMetricFamily("chunkfs_gc_replicas_deleted", "Chunk replicas deleted on chunkservers",
                              value=s.replicas_deleted)


class LeaseCollector(Collector):
    """Directory leases (`chunkfs.metaserver.leases`): held now, and recalled or taken back since
    the metaserver started; they show a lease kept across a restart and who had to wait for it."""

    def __init__(self, leases: Callable[[], tuple[int, int, int]]) -> None:
        self.leases = leases  # -> (held, recalled, taken back)

    def collect(self) -> Iterator[Metric]:
        held, recalled, taken_back = self.leases()
        yield GaugeMetricFamily("chunkfs_leases_held", "Directories leased to a mount now", value=held)
        yield CounterMetricFamily("chunkfs_lease_recalls", "Leases recalled for another client's request",
                                  value=recalled)
        yield CounterMetricFamily("chunkfs_lease_expirations",
                                  "Leases taken back because their holder did not give them back in time",
                                  value=taken_back)


# ---- chunkserver -------------------------------------------------------------------------------

class Tally:
    """A counter kept as a plain int, so more than the scrape can read it (heartbeats report
    the chunkserver's bytes read and written to the metaserver)."""

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class ChunkserverMetrics:
    """What a chunkserver's handlers count; its store's state is read at scrape time."""

    def __init__(self, store: Any) -> None:
        self.registry = new_registry()
        self.read_bytes = Tally()
        self.ranged_reads = Tally()
        self.written_bytes = Tally()
        self.deleted_chunks = Tally()
        self.checksum_failures = Counter(
            "chunkfs_chunkserver_checksum_failures",
            "Checksum mismatches: where=disk for a stored block that reads back wrong, "
            "where=upload for data damaged on its way here", ["where"], registry=self.registry)
        for where in ("disk", "upload"):
            self.checksum_failures.labels(where)
        self.registry.register(_ChunkserverCollector(self, store))


class _ChunkserverCollector(Collector):
    def __init__(self, counters: ChunkserverMetrics, store: Any) -> None:
        self.counters, self.store = counters, store

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        yield CounterMetricFamily("chunkfs_chunkserver_read_bytes", "Chunk bytes served to readers",
                                  value=c.read_bytes.value)
        yield CounterMetricFamily("chunkfs_chunkserver_ranged_reads", "Reads of some blocks of a chunk",
                                  value=c.ranged_reads.value)
        yield CounterMetricFamily("chunkfs_chunkserver_written_bytes", "Chunk bytes stored",
                                  value=c.written_bytes.value)
        yield CounterMetricFamily("chunkfs_chunkserver_deleted_chunks", "Chunk versions deleted here",
                                  value=c.deleted_chunks.value)
        capacity, used = self.store.capacity()
        yield GaugeMetricFamily("chunkfs_chunkserver_chunks", "Chunk versions stored", value=self.store.chunk_count)
        yield GaugeMetricFamily("chunkfs_chunkserver_used_bytes", "Bytes the stored chunks take", value=used)
        yield GaugeMetricFamily("chunkfs_chunkserver_capacity_bytes",
                                "Bytes the chunks take plus what the disks still have free", value=capacity)
        yield GaugeMetricFamily("chunkfs_chunkserver_free_bytes", "Bytes the disks still have free",
                                value=capacity - used)
        dirs = self.store.dir_usage()
        for name, doc, field in (
            ("chunks", "Chunk versions stored in a data directory", "chunks"),
            ("used_bytes", "Bytes the chunks of a data directory take", "used_bytes"),
            ("free_bytes", "Bytes free on the disk of a data directory", "free_bytes"),
            ("capacity_bytes", "Size of the disk of a data directory", "disk_bytes"),
        ):
            family = GaugeMetricFamily(f"chunkfs_chunkserver_dir_{name}", doc, labels=["dir"])
            for usage in dirs:
                family.add_metric([usage.dir], getattr(usage, field))
            yield family


# ---- mount -------------------------------------------------------------------------------------

class MountCollector(Collector):
    """Reads the counters the chunk I/O and the chunk cache keep (`bytes_read`, `bytes_written`,
    `hits`, `misses`, `size_bytes`, `max_bytes`); plain ints, safe to read from the server thread."""

    def __init__(self, io: Any, cache: Any, write_back: Any = None) -> None:
        self.io = io
        self.cache = cache
        self.write_back = write_back

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("chunkfs_mount_read_bytes", "Chunk bytes fetched from chunkservers",
                                  value=self.io.bytes_read)
        yield CounterMetricFamily("chunkfs_mount_written_bytes",
                                  "Chunk bytes uploaded to chunkservers (each replica counts)",
                                  value=self.io.bytes_written)
        yield CounterMetricFamily("chunkfs_mount_deduplicated_bytes",
                                  "Chunk bytes not uploaded: the cluster held their content (dedup, one replica each)",
                                  value=self.io.bytes_deduplicated)
        yield CounterMetricFamily("chunkfs_mount_cache_hits", "Chunk reads answered from memory",
                                  value=self.cache.hits)
        yield CounterMetricFamily("chunkfs_mount_cache_misses", "Chunk reads that went to a chunkserver",
                                  value=self.cache.misses)
        yield GaugeMetricFamily("chunkfs_mount_cache_size_bytes", "Bytes of chunks held in memory",
                                value=self.cache.size_bytes)
        yield GaugeMetricFamily("chunkfs_mount_cache_capacity_bytes", "Most bytes of chunks held in memory",
                                value=self.cache.max_bytes)
        disk = self.cache.disk
        if disk is not None:
            yield CounterMetricFamily("chunkfs_mount_disk_cache_hits",
                                      "Chunk reads answered from the local disk cache", value=disk.hits)
            yield CounterMetricFamily("chunkfs_mount_disk_cache_stores", "Chunks stored in the local disk cache",
                                      value=disk.stores)
            yield CounterMetricFamily("chunkfs_mount_disk_cache_dropped_stores",
                                      "Chunks not stored in the disk cache (writer busy or disk error)",
                                      value=disk.dropped_stores)
            yield GaugeMetricFamily("chunkfs_mount_disk_cache_size_bytes", "Bytes of chunks held on local disk",
                                    value=disk.size_bytes)
            yield GaugeMetricFamily("chunkfs_mount_disk_cache_capacity_bytes", "Most bytes of chunks held on local disk",
                                    value=disk.capacity_bytes)
        if self.write_back is not None:
            yield GaugeMetricFamily("chunkfs_mount_dirty_bytes", "Written bytes held, buffered or uploading",
                                    value=self.write_back.dirty_bytes)
            yield GaugeMetricFamily("chunkfs_mount_dirty_capacity_bytes",
                                    "Most written bytes held before writers wait", value=self.write_back.max_bytes)
            yield CounterMetricFamily("chunkfs_mount_dirty_waits", "Writes that waited for uploads to free room",
                                      value=self.write_back.waits)


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


class FuseMetrics(Collector):
    """FUSE requests by operation and result (`ok` or the errno name), their latency, and the
    bytes applications read and wrote. Counted by wrapping the Operations instance's handlers
    (`instrument`), so the FUSE edge itself stays free of metrics code.

    Kept in plain numbers on the trio thread and read by the metrics server's thread at scrape
    time (as `MountCollector` reads its counters): prometheus_client's counters and histograms
    take a lock on every increment, three a request, which with their label look-ups were ~8% of
    the mount's CPU per small-file create (7 FUSE requests each)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.results: dict[tuple[str, str], int] = {}  # (op, "ok" or errno name) -> requests answered
        self.latency: dict[str, _Latency] = {}
        self.read_bytes = 0
        self.written_bytes = 0
        registry.register(self)

    def instrument(self, operations: Any) -> list[str]:
        """Wrap every FUSE handler `operations` overrides; returns their names."""
        import pyfuse3  # the mount's dependency only: the servers never load it

        names = [name for name, base in vars(pyfuse3.Operations).items()
                 if not name.startswith("_") and inspect.iscoroutinefunction(base)
                 and getattr(type(operations), name) is not base]
        for name in names:
            setattr(operations, name, self._timed(name, getattr(operations, name), pyfuse3.FUSEError))
        return names

    def _timed(self, op: str, handler: Callable[..., Any], fuse_error: type[pyfuse3.FUSEError]) -> Callable[..., Any]:
        results = self.results
        ok = (op, "ok")
        results[ok] = 0
        latency = self.latency[op] = _Latency()
        observe = latency.observe
        counts_bytes = op in ("read", "write")

        @functools.wraps(handler)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = await handler(*args, **kwargs)
            except fuse_error as exc:
                key = (op, errno.errorcode.get(exc.errno, str(exc.errno)))
                results[key] = results.get(key, 0) + 1
                raise
            finally:
                observe(time.perf_counter() - start)
            results[ok] += 1
            if counts_bytes:
                if op == "read":
                    self.read_bytes += len(result)
                else:
                    self.written_bytes += result
            return result

        return timed

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("chunkfs_fuse_requests", "FUSE requests answered, by operation and result",
                                       labels=["op", "result"])
        for (op, result), count in list(self.results.items()):
            requests.add_metric([op, result], count)
        yield requests
        latency = HistogramMetricFamily("chunkfs_fuse_request_duration_seconds", "Time to answer a FUSE request",
                                        labels=["op"])
        for op, histogram in list(self.latency.items()):
            latency.add_metric([op], *histogram.snapshot())
        yield latency
        yield CounterMetricFamily("chunkfs_fuse_read_bytes", "Bytes returned to applications' reads",
                                  value=self.read_bytes)
        yield CounterMetricFamily("chunkfs_fuse_written_bytes", "Bytes applications wrote", value=self.written_bytes)


def start_mount_metrics(listen: str, io: Any, cache: Any, operations: Any, write_back: Any = None) -> Callable[[], None]:
    """The mount's metrics server on `listen` ("" for none: then nothing is counted either);
    returns what stops it. A mount whose metrics address is taken goes on without metrics
    rather than fail."""
    if not listen:
        return lambda: None
    registry = new_registry()
    registry.register(MountCollector(io, cache, write_back))
    FuseMetrics(registry).instrument(operations)
    try:
        return serve_standalone(listen, registry)
    except OSError as exc:
        log.error("cannot serve metrics on %s (%s); the mount goes on without them", listen, exc.strerror or exc)
        return lambda: None
