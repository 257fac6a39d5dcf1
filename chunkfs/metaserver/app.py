"""The metaserver's HTTP routes. Handlers are thin: decode the request record, run the
operation (reads in a read transaction, mutations through the group committer), encode."""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from dataclasses import dataclass, field

from aiohttp import web

from chunkfs import metrics
from chunkfs.errors import FsError
from chunkfs.httpserver import json_response, make_app, read_body
from chunkfs.metaserver.changes import ChangeFeed, affected
from chunkfs.metaserver.status_page import render as render_status_page
from chunkfs.metaserver.chunk_table import ChunkTable
from chunkfs.metaserver.db import GroupCommitter, MetaDB
from chunkfs.metaserver.deleter import Deleter
from chunkfs.metaserver.namespace import Namespace
from chunkfs.metaserver.registry import Registry
from chunkfs.metaserver.replicator import Replicator
from chunkfs.protocol import records as r
from chunkfs.protocol.chunk_client import ChunkClient
from chunkfs.protocol.meta_client import CLIENT_HEADER
from chunkfs.protocol.http import SignedHttp

log = logging.getLogger(__name__)


@dataclass
class Metaserver:
    """Everything one running metaserver owns; lives on the aiohttp app."""

    db: MetaDB
    committer: GroupCommitter
    namespace: Namespace
    chunks: ChunkTable
    registry: Registry
    deleter: Deleter
    orphan_grace_s: float
    replicator: Replicator
    changes: ChangeFeed = field(default_factory=ChangeFeed)
    started: float = field(default_factory=time.monotonic)


STATE = web.AppKey("metaserver", Metaserver)

READS = {
    "lookup": (r.LookupReq, lambda m, t, q: m.namespace.lookup(t, q.parent, q.name)),
    "getattr": (r.InodeReq, lambda m, t, q: m.namespace.getattr(t, q.ino)),
    "readdir": (r.ReaddirReq, lambda m, t, q: m.namespace.readdir(t, q.ino, q.after, min(q.limit, 10000))),
    "parent": (r.InodeReq, lambda m, t, q: m.namespace.parent(t, q.ino)),
    "readlink": (r.InodeReq, lambda m, t, q: m.namespace.readlink(t, q.ino)),
    "resolve": (r.PathReq, lambda m, t, q: m.namespace.resolve(t, q.path)),
    "getxattr": (r.XattrReq, lambda m, t, q: m.namespace.getxattr(t, q.ino, q.name)),
    "listxattr": (r.InodeReq, lambda m, t, q: m.namespace.listxattr(t, q.ino)),
    "open": (r.InodeReq, lambda m, t, q: r.FileLayout(
        m.namespace.getattr(t, q.ino), m.chunks.refs(t, q.ino), m.registry.address_map())),
    "statfs": (r.InodeReq, lambda m, t, q: statfs(m, t)),
}

MUTATIONS = {
    "create": (r.CreateReq, lambda m: m.namespace.create),
    "link": (r.LinkReq, lambda m: m.namespace.link),
    "remove": (r.RemoveReq, lambda m: m.namespace.remove),
    "rename": (r.RenameReq, lambda m: m.namespace.rename),
    "setattr": (r.SetattrReq, lambda m: lambda txn, q: m.namespace.setattr(txn, q, m.chunks.truncate)),
    "setxattr": (r.XattrReq, lambda m: m.namespace.setxattr),
    "removexattr": (r.XattrReq, lambda m: m.namespace.removexattr),
    "commit": (r.CommitReq, lambda m: m.chunks.commit),
    "goal": (r.GoalReq, lambda m: m.namespace.set_goal),
}


def statfs(m: Metaserver, txn) -> r.Statfs:
    total, free = m.registry.totals()
    return r.Statfs(total_bytes=total, free_bytes=free, files=txn.stat(m.db.inodes)["entries"],
                    chunks=txn.stat(m.db.chunks)["entries"])


async def fs_operation(request: web.Request) -> web.Response:
    m = request.app[STATE]
    op = request.match_info["op"]
    if op in READS:
        record_type, run = READS[op]
        req = await read_body(request, record_type)
        with m.db.read() as txn:
            return json_response(run(m, txn, req))
    if op in MUTATIONS:
        record_type, bind = MUTATIONS[op]
        req = await read_body(request, record_type)
        result = await m.committer.run(bind(m), req)
        if op in ("remove", "rename", "commit", "setattr"):
            m.deleter.wake.set()
        m.changes.publish(request.headers.get(CLIENT_HEADER, ""), *affected(op, req, result))
        return json_response(result)
    if op == "reserve":
        return json_response(await reserve(m, await read_body(request, r.ReserveReq)))
    raise FsError(errno.ENOSYS, f"unknown operation {op!r}")


RESERVATION_VALID_S = 5.0


async def reserve(m: Metaserver, req: r.ReserveReq) -> r.Reservation:
    servers = m.registry.writable()
    if not servers:
        raise FsError(errno.ENOSPC, "no chunkserver with free space is alive")
    count = max(1, min(req.count, 4096))
    first_version, first_chunk_id = await m.committer.run(m.chunks.reserve, count)
    return r.Reservation(first_version, first_chunk_id, count,
                         [r.ServerChoice(s.id, s.address, s.free_bytes) for s in servers], RESERVATION_VALID_S)


async def server_hello(request: web.Request) -> web.Response:
    """Registration (with the chunk list, at a chunkserver's start) and heartbeats (without)."""
    m = request.app[STATE]
    hello = await read_body(request, r.ServerHello)
    if m.registry.needs_saving(hello):
        await m.committer.run(m.registry.save, hello)
    m.registry.heartbeat(hello)
    delete: list[tuple[int, int]] = []
    if hello.chunks is not None:
        delete = await m.committer.run(
            lambda txn: m.chunks.unreferenced(txn, hello.chunks, m.orphan_grace_s))
        if delete:
            log.info("server %s holds %d unreferenced chunk versions; told to delete them",
                     hello.address, len(delete))
        if hello.recent_chunks is not None:
            await m.replicator.reconcile(hello.id, [*hello.chunks, *hello.recent_chunks])
    return json_response(r.HelloReply(delete))


async def corrupt_report(request: web.Request) -> web.Response:
    """A chunkserver found copies failing their checksums: rebuild them elsewhere."""
    report = await read_body(request, r.CorruptReport)
    return json_response(r.CorruptReply(await request.app[STATE].replicator.corrupt(report)))


async def drain(request: web.Request) -> web.Response:
    return json_response(await request.app[STATE].replicator.drain(await read_body(request, r.DrainReq)))


def cluster_status(m: Metaserver) -> r.ClusterStatus:
    """What `chunkfs status` and the /metrics gauges show (full scans of the inode and chunk tables)."""
    alive = m.registry.alive_ids()
    total, free = m.registry.totals()
    with m.db.read() as txn:
        files, dirs = m.namespace.count(txn)
        chunks, under = m.chunks.count(txn, alive)
        pending = m.chunks.count_deletions(txn)
        per_server = m.replicator.edits.count_by_server(txn)
    return r.ClusterStatus(
        servers=m.registry.status(per_server), files=files, directories=dirs, chunks=chunks,
        chunks_under_goal=under, pending_deletions=pending, total_bytes=total, free_bytes=free,
        default_goal=m.namespace.default_goal, repairs_running=m.replicator.running,
        chunks_replicated=m.replicator.replicated, corrupt_found=m.replicator.corrupt_found,
    )


async def status(request: web.Request) -> web.Response:
    return json_response(cluster_status(request.app[STATE]))


async def status_page(request: web.Request) -> web.Response:
    m = request.app[STATE]
    html = render_status_page(cluster_status(m), request.host, m.changes.clients_following())
    return web.Response(text=html, content_type="text/html")


async def changes(request: web.Request) -> web.Response:
    """Long poll: the changes after `since`, waiting up to `wait_s` (at most 30) for one."""
    request.app[STATE].changes.seen(request.headers.get(CLIENT_HEADER, ""))
    try:
        since = int(request.query.get("since", "0"))
        wait_s = min(30.0, max(0.0, float(request.query.get("wait_s", "0"))))
    except ValueError:
        raise FsError(errno.EINVAL, "since and wait_s must be numbers") from None
    return json_response(await request.app[STATE].changes.since(since, wait_s))


async def health(request: web.Request) -> web.Response:
    return json_response({"ok": True, "role": "metaserver"})


def build_app(m: Metaserver, secret: bytes, http: SignedHttp) -> web.Application:
    app = make_app(secret, client_max_size=64 * 1024 * 1024)
    app[STATE] = m
    app.router.add_post("/v1/fs/{op}", fs_operation)
    app.router.add_post("/v1/servers/hello", server_hello)
    app.router.add_post("/v1/servers/corrupt", corrupt_report)
    app.router.add_post("/v1/servers/drain", drain)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/changes", changes)
    app.router.add_get("/", status_page)
    app.router.add_get("/health", health)
    registry = metrics.new_registry()
    registry.register(metrics.ClusterCollector(lambda: cluster_status(m)))
    metrics.install_http(app, registry, operations={*READS, *MUTATIONS, "reserve"})  # every op fs_operation knows

    async def background(app: web.Application):
        tasks = [asyncio.create_task(m.deleter.run()), asyncio.create_task(m.replicator.run())]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await http.aclose()
        m.committer.stop()
        m.db.close()

    app.cleanup_ctx.append(background)
    return app
