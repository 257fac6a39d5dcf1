"""The chunkserver's HTTP routes: PUT, GET and DELETE of one chunk version, and copying one from
a peer (re-replication)."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable

from aiohttp import web

from chunkfs import metrics
from chunkfs.config import ConfigError, parse_address
from chunkfs.errors import FsError, TransportError
from chunkfs.httpserver import (DEFAULT_BODY_TIMEOUT_S, TOKEN_CHECK, BodyLimit, any_host, json_response, make_app,
                                read_body_pieces)
from chunkfs.chunkserver.access import CHUNK_KEYS, ChunkKeys, authorize, token_check
from chunkfs.chunkserver.fencing import FENCE, Fence
from chunkfs.chunkserver.scrubber import CorruptionReporter, corrupt_copies
from chunkfs.chunkserver.store import HEADER_SIZE, ChunkStore, CorruptChunk
from chunkfs.protocol import records as r
from chunkfs.protocol.disk_check import BUCKETS, INVENTORY_PATH, Inventory
from chunkfs.request_checks import path_id, query_float, query_int
from chunkfs.protocol.chunk_client import (BLOCK_SUMS_HEADER, CHECKSUM_HEADER, CHECKSUM_PARAM, CHUNK_CHECKSUM_HEADER,
                                           CLIENT_VERIFIES_PARAM, LENGTH_PARAM, OFFSET_PARAM, TOKEN_PARAM, ChunkClient)
from chunkfs.chunkserver.sendfile import FileRangeResponse
from chunkfs import CHUNK_SIZE

STORE = web.AppKey("store", ChunkStore)
METRICS = web.AppKey("metrics", metrics.ChunkserverMetrics)
PEERS = web.AppKey("peers", ChunkClient)
CORRUPTION = web.AppKey("corruption", CorruptionReporter)


def _chunk_key(request: web.Request) -> tuple[int, int]:
    return path_id(request, "chunk_id"), path_id(request, "version")


async def put_chunk(request: web.Request) -> web.Response:
    chunk_id, version = _chunk_key(request)
    checksum = request.headers.get(CHECKSUM_HEADER)
    if not checksum:
        raise FsError(errno.EINVAL, f"missing {CHECKSUM_HEADER} header")
    pieces = await read_body_pieces(request)  # within the route's BodyLimit and time-out
    length = sum(len(p) for p in pieces)
    counters = request.app[METRICS]
    if "base_version" in request.query:
        base_version = query_int(request, "base_version", 0, low=1)
        offset = query_int(request, "offset", 0, high=CHUNK_SIZE)
        new_checksum = await asyncio.to_thread(request.app[STORE].write_patch, chunk_id, version,
                                               base_version, offset, b"".join(pieces), checksum)
        counters.written_bytes.inc(length)
        return json_response({"ok": True, "checksum": new_checksum})
    try:
        await asyncio.to_thread(request.app[STORE].write, chunk_id, version, pieces, checksum)
    except FsError as exc:
        if exc.errno == errno.EBADMSG:
            counters.checksum_failures.labels("upload").inc()
        raise
    counters.written_bytes.inc(length)
    return json_response({"ok": True})


async def get_chunk(request: web.Request) -> web.StreamResponse:
    """The chunk's data: verified block by block here, or, for a client that verifies the whole
    chunk itself (`?client_verifies=1`), sent from the file with sendfile. A ranged read
    (`?offset=&length=`, in the signed query; the offset at a block) gets only the blocks it
    covers, verified here, with their checksums in BLOCK_SUMS_HEADER and the chunk checksum the
    file's header holds in CHUNK_CHECKSUM_HEADER for the client to check; with `?checksum=` (the
    version's in the chunk table) a file whose header holds another is refused (EBADMSG; not
    reported as corrupt: the client's word must not take a copy out of the cluster)."""
    chunk_id, version = _chunk_key(request)
    counters = request.app[METRICS]
    try:
        if OFFSET_PARAM in request.query:
            offset = query_int(request, OFFSET_PARAM, 0, high=CHUNK_SIZE - 1)
            length = query_int(request, LENGTH_PARAM, CHUNK_SIZE, low=1, high=CHUNK_SIZE)
            expected = request.query.get(CHECKSUM_PARAM, "")
            store = request.app[STORE]
            # cached blocks are read here (a thread hop costs more than the read); others in a thread
            found = store.read_cached_blocks(chunk_id, version, offset, length, expected)
            if found is None:
                found = await asyncio.to_thread(store.read_blocks, chunk_id, version, offset, length, expected)
            counters.read_bytes.inc(len(found.data))
            counters.ranged_reads.inc()
            return web.Response(body=found.data, content_type="application/octet-stream",
                                headers={BLOCK_SUMS_HEADER: found.block_sums.hex(),
                                         CHUNK_CHECKSUM_HEADER: found.chunk_checksum})
        if request.query.get(CLIENT_VERIFIES_PARAM) == "1":
            f, length = await asyncio.to_thread(request.app[STORE].open_data, chunk_id, version)
            counters.read_bytes.inc(length)
            return FileRangeResponse(f, HEADER_SIZE, length)
        data = await asyncio.to_thread(request.app[STORE].read, chunk_id, version)
    except CorruptChunk:
        counters.checksum_failures.labels("disk").inc()
        request.app[CORRUPTION].found(chunk_id, version)
        raise
    counters.read_bytes.inc(len(data))
    return web.Response(body=data, content_type="application/octet-stream")


async def copy_chunk(request: web.Request) -> web.Response:
    """Fetch a chunk version from the peer `?from=HOST:PORT` and store it here, checked against
    `?checksum=` (the metaserver's record of it), with the read token `?token=` the metaserver
    issued to the chunkservers for the copy; answers once it is fsynced."""
    chunk_id, version = _chunk_key(request)
    request.app[FENCE].admit(request)
    source, checksum = request.query.get("from", ""), request.query.get(CHECKSUM_PARAM, "")
    token = request.query.get(TOKEN_PARAM, "")
    try:
        parse_address(source)
    except ConfigError as exc:
        raise FsError(errno.EINVAL, f"copy source: {exc}") from None
    if not checksum:
        raise FsError(errno.EINVAL, f"missing {CHECKSUM_PARAM} parameter")
    try:
        peers = request.app[PEERS].presenting_tokens_as(request.app[CHUNK_KEYS].copier_credential())
        data = await peers.get(source, chunk_id, version, retry_s=1.0, token=token)
    except TransportError as exc:
        raise FsError(errno.EHOSTUNREACH, f"copy source {source}: {exc}") from None
    await asyncio.to_thread(request.app[STORE].write, chunk_id, version, data, checksum)
    request.app[METRICS].written_bytes.inc(len(data))
    return json_response({"ok": True, "bytes": len(data)})


async def delete_chunk(request: web.Request) -> web.Response:
    chunk_id, version = _chunk_key(request)
    request.app[FENCE].admit(request)
    removed = await asyncio.to_thread(request.app[STORE].delete, chunk_id, version)
    if removed:
        request.app[METRICS].deleted_chunks.inc()
    return json_response({"removed": removed})


async def list_chunks(request: web.Request) -> web.Response:
    """The chunk versions held here whose files are at least `?min_age_s=` old, with their sizes
    (for `chunkfs gc`, through the metaserver)."""
    min_age_s = query_float(request, "min_age_s", 0.0, 0.0, 1e9)
    return json_response(await asyncio.to_thread(_old_chunk_files, request.app[STORE], min_age_s))


def _old_chunk_files(store: ChunkStore, min_age_s: float) -> list[r.ChunkFile]:
    old, _recent = store.inventory(min_age_s)
    files = []
    for chunk_id, version in old:
        try:
            files.append(r.ChunkFile(chunk_id, version, store.path(chunk_id, version).stat().st_size))
        except OSError:
            continue  # deleted meanwhile
    return files


async def inventory(request: web.Request) -> web.Response:
    """The chunk versions held in buckets `?first_bucket=` .. + `?buckets=` - 1, split at
    `?min_age_s=`, with those known corrupt; `?verify=1` re-reads each of them first (`chunkfs
    fsck --verify`; slow: every byte of the page is read)."""
    first = query_int(request, "first_bucket", 0, high=BUCKETS - 1)
    count = query_int(request, "buckets", BUCKETS - first, low=1, high=BUCKETS - first)
    min_age_s = query_float(request, "min_age_s", 0.0, 0.0, 1e9)
    store, reporter = request.app[STORE], request.app[CORRUPTION]
    old, recent = await asyncio.to_thread(store.inventory_of_buckets, range(first, first + count), min_age_s)
    if request.query.get("verify") == "1":
        bad = await asyncio.to_thread(corrupt_copies, store, old + recent)
        for key in bad:
            reporter.found(*key)
    corrupt = reporter.known_corrupt(old + recent)  # stats only the few found corrupt
    return json_response(Inventory(old=old, recent=recent, corrupt=corrupt))


async def health(request: web.Request) -> web.Response:
    store = request.app[STORE]
    capacity, used = store.capacity()
    return json_response({"ok": True, "role": "chunkserver", "id": store.server_id,
                          "capacity_bytes": capacity, "used_bytes": used, "dirs": store.dir_usage(),
                          "fencing_epoch": request.app[FENCE].epoch})


CHUNK_ROUTE = "/v1/chunks/{chunk_id}/{version}"
# a chunk PUT's body is the chunk (whole, or the piece of a partial write) and nothing else; the
# store keeps it only if it matches the signed X-Chunkfs-Checksum, which stands for it in the signature
BODY_LIMITS = {f"PUT {CHUNK_ROUTE}": BodyLimit(CHUNK_SIZE, checksummed=True)}


def build_app(store: ChunkStore, keys: ChunkKeys, background, peers: ChunkClient,
              corruption: CorruptionReporter, counters: metrics.ChunkserverMetrics,
              addresses: frozenset[str] = frozenset(), body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
              status_open: Callable[[web.Request], bool] | None = None, fence: Fence | None = None
              ) -> web.Application:
    """`addresses`: the HOST:PORTs clients and peers reach this server by (the one it registers
    with, its listen address); a request signed for another Host is refused (empty: any).
    `keys`: the chunk key, once learnt (who is served: see access.py). `fence`: the newest
    primary metaserver's epoch, as the heartbeats learn it (fencing.py)."""
    own = frozenset(a.lower() for a in addresses)
    app = make_app(keys, own_host=(lambda host: host.lower() in own) if own else any_host,
                   body_limits=BODY_LIMITS, body_timeout_s=body_timeout_s, authorize=authorize,
                   status_open=status_open)
    app[CHUNK_KEYS] = keys
    app[TOKEN_CHECK] = token_check
    app[STORE] = store
    app[PEERS] = peers
    app[CORRUPTION] = corruption
    app[FENCE] = fence or Fence()
    route = CHUNK_ROUTE
    app.router.add_put(route, put_chunk)
    app.router.add_get(route, get_chunk)
    app.router.add_delete(route, delete_chunk)
    app.router.add_post(route + "/copy", copy_chunk)
    app.router.add_get("/v1/chunks", list_chunks)
    app.router.add_get(INVENTORY_PATH, inventory)
    app.router.add_get("/health", health)
    app[METRICS] = counters
    metrics.install_http(app, counters.registry)
    app.cleanup_ctx.append(background)
    return app
