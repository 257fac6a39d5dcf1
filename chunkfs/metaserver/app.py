"""The metaserver's HTTP routes. Handlers are thin: decode the request record, run the
operation (reads in a read transaction, mutations through the group committer), encode."""

from __future__ import annotations

import asyncio
import errno
import stat
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
from aiohttp import web

from chunkfs import chunk_tokens, metrics, request_id
from chunkfs.chunk_tokens import TokenIssuer
from chunkfs.credentials import CredentialStore, Export
from chunkfs.metaserver import change_clock
from chunkfs.metaserver.exports import ExportGuard
from chunkfs.metaserver.client_owners import ClientOwners
from chunkfs.errors import RETRY_HERE, FsError, NotPrimary
from chunkfs.request_checks import client_id, query_float, query_int, query_token, request_id_header
from chunkfs.httpserver import (DEFAULT_BODY_TIMEOUT_S, SIGNER, BodyLimit, any_host, host_on_port,
                                json_response, make_app, read_body)
from chunkfs.metaserver import access_policy, accounts, credentials_api, dedup, token_grants
from chunkfs.metaserver.changes import ChangeFeed, affected
from chunkfs.metaserver.status_page import render as render_status_page
from chunkfs.metaserver.chunk_table import ChunkTable
from chunkfs.metaserver.db import GroupCommitter, MetaDB, Txn
from chunkfs.metaserver import fsck
from chunkfs.metaserver.deleter import Deleter
from chunkfs.metaserver.disk_check import DiskCheck
from chunkfs.metaserver.gc import GarbageCollector
from chunkfs.metaserver.leases import DirectoryLeases
from chunkfs.metaserver.open_leases import OpenLeases
from chunkfs.metaserver.locks import LockTable
from chunkfs.metaserver.lock_reclaim import LockReclaim
from chunkfs.metaserver.memory import GC_PAUSES, ProcessMemory, memory_status, read_process_memory
from chunkfs.metaserver.namespace import Namespace
from chunkfs.metaserver.orphans import OrphanCollector
from chunkfs.metaserver import backup
from chunkfs.metaserver.quarantine import Quarantine
from chunkfs.metaserver.registration import Registration
from chunkfs.metaserver.replication_log import ReplicationLog
from chunkfs.metaserver.replies import REPLAYED, ReplyLog
from chunkfs.protocol.replication_client import BACKUP_PATH, REPLICATION_PATH
from chunkfs.metaserver.registry import Registry
from chunkfs.metaserver.replicator import Replicator
from chunkfs.metaserver.snapshots import Snapshots
from chunkfs.metaserver.table_counts import TableCounts
from chunkfs.metaserver.throughput import ThroughputHistory
from chunkfs.metaserver.trash import TrashCollector
from chunkfs.protocol import records as r
from chunkfs.protocol.disk_check import DiskCheckReq
from chunkfs.protocol.meta_client import named_inodes
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
    throughput: ThroughputHistory = field(default_factory=ThroughputHistory)
    started: float = field(default_factory=time.monotonic)
    orphans: OrphanCollector | None = None  # frees files unlinked while open on a client gone away
    replication: ReplicationLog | None = None  # write sets for standbys
    quarantine: Quarantine | None = None  # keeps unknown chunk versions after a restore
    trash: TrashCollector | None = None  # frees the files whose time in the trash ran out
    replies: ReplyLog | None = None  # answers a retried mutation instead of running it twice
    leases: DirectoryLeases = field(init=False)  # directories held by the client that made them
    locks: LockTable = field(default_factory=LockTable)  # flock and POSIX locks of every client
    open_leases: OpenLeases = field(default_factory=OpenLeases)  # files mounts may open again without a call
    lock_grace_s: float = 15.0  # after a start, new locks wait this long for old holders to reclaim theirs
    reclaim: LockReclaim = field(init=False)  # locks given back after a restart or checked after a cut session
    tokens: TokenIssuer | None = None  # chunk tokens for the layouts and reservations it hands out
    credentials: CredentialStore | None = None  # the role keys it accepts (besides the cluster secret)
    exports: ExportGuard = field(init=False)  # what each client credential may reach
    client_owners: ClientOwners = field(default_factory=ClientOwners)  # which credential each client id is
    failover: Callable[[], r.FailoverStatus] | None = None  # with etcd: the election's state (failover.py)
    epoch: int = 0  # with etcd: this primary's fencing epoch, told to chunkservers (chunkserver/fencing.py)

    def __post_init__(self) -> None:
        self.leases = DirectoryLeases(self.db, self.committer, self.changes.wake)
        self.reclaim = LockReclaim(self.db, self.committer, self.locks, self.changes.epoch, self.lock_grace_s)
        self.exports = ExportGuard(self.namespace)
        self.leases.recall_at_once = self.namespace.quotas.covers


STATE = web.AppKey("metaserver", Metaserver)

# op -> (its request record, the read it runs): (metaserver, read transaction, request) -> answer
READS: dict[str, tuple[type[msgspec.Struct], Callable[[Metaserver, Txn, Any], Any]]] = {
    "lookup": (r.LookupReq, lambda m, t, q: m.namespace.lookup(t, q.parent, q.name)),
    "getattr": (r.InodeReq, lambda m, t, q: m.namespace.getattr(t, q.ino)),
    "readdir": (r.ReaddirReq, lambda m, t, q: m.namespace.readdir(t, q.ino, q.after, min(q.limit, 10000), q.xattr)),
    "parent": (r.InodeReq, lambda m, t, q: m.namespace.parent(t, q.ino)),
    "readlink": (r.InodeReq, lambda m, t, q: m.namespace.readlink(t, q.ino)),
    "resolve": (r.PathReq, lambda m, t, q: m.namespace.resolve(t, q.path)),
    "getxattr": (r.XattrReq, lambda m, t, q: m.namespace.getxattr(t, q.ino, q.name)),
    "listxattr": (r.InodeReq, lambda m, t, q: m.namespace.listxattr(t, q.ino)),
    "open": (r.OpenReq, lambda m, t, q: r.FileLayout(  # its tokens are added for the caller (fs_operation)
        m.namespace.getattr(t, q.ino), m.chunks.refs(t, q.ino), m.registry.address_map(),
        m.chunks.inline_data(t, q.ino))),
    "statfs": (r.InodeReq, lambda m, t, q: statfs(m, t, q.ino)),
    "quota_get": (r.InodeReq, lambda m, t, q: m.namespace.quotas.get(t, q.ino)),
    "quota_list": (r.InodeReq, lambda m, t, q: m.namespace.quotas.listing(t, under=q.ino)),
    "trash_list": (r.TrashListReq, lambda m, t, q: m.namespace.trash.listing(t, q)),
    "trash_time_of": (r.InodeReq, lambda m, t, q: m.namespace.get(t, q.ino).trash_s),
    "quota_size_limit": (r.QuotaLimitReq, lambda m, t, q: m.namespace.quotas.size_limit(t, q)),
    "chunk_sharing": (r.InodeReq, lambda m, t, q: m.chunks.sharing(t, q.ino)),
}

# op -> (its request record, the mutation for this metaserver and the calling client):
# (write transaction, request) -> answer
MUTATIONS: dict[str, tuple[type[msgspec.Struct], Callable[[Metaserver, str], Callable[[Txn, Any], Any]]]] = {
    "create": (r.CreateReq, lambda m, client: m.namespace.create),
    "link": (r.LinkReq, lambda m, client: m.namespace.link),
    "remove": (r.RemoveReq, lambda m, client: m.namespace.remove),
    "rename": (r.RenameReq, lambda m, client: m.namespace.rename),
    "setattr": (r.SetattrReq, lambda m, client: lambda txn, q: m.namespace.setattr(txn, q, m.chunks.truncate)),
    "setxattr": (r.XattrReq, lambda m, client: m.namespace.setxattr),
    "removexattr": (r.XattrReq, lambda m, client: m.namespace.removexattr),
    "commit": (r.CommitReq, lambda m, client: lambda txn, q: m.chunks.commit(txn, q, client)),
    "concat": (r.ConcatReq, lambda m, client: m.chunks.concat),
    "goal": (r.GoalReq, lambda m, client: m.namespace.set_goal),
    "release_orphan": (r.InodeReq, lambda m, client: lambda txn, q: m.namespace.release_orphan(txn, q.ino)),
    "reserve_inodes": (r.ReserveReq, lambda m, client: lambda txn, q: m.namespace.reserve_inodes(txn, max(1, min(q.count, 4096)))),
    "quota_set": (r.QuotaSetReq, lambda m, client: m.namespace.quotas.set),
    "quota_remove": (r.InodeReq, lambda m, client: lambda txn, q: m.namespace.quotas.remove(txn, q.ino)),
    "trash_time": (r.TrashTimeReq, lambda m, client: m.namespace.set_trash_time),
    "dedup_setting": (r.DedupSettingReq, lambda m, client: m.namespace.set_dedup),
    "trash_restore": (r.TrashRestoreReq, lambda m, client: m.namespace.trash.restore),
    "trash_purge": (r.TrashPurgeReq, lambda m, client: m.namespace.trash.purge),
    "snapshot": (r.SnapshotReq, lambda m, client: Snapshots(m.namespace, m.chunks).snapshot),
    "read_only": (r.ReadOnlyReq, lambda m, client: m.namespace.set_read_only),
}


EXPORTED_ROLES = frozenset({"client", "gateway"})  # whose credentials carry an export (exports.py)
LOCK_OPERATIONS = frozenset({"lock", "testlock", "cancel_lock", "locks", "reclaim_locks"})
LOCK_POLL_S = 10.0  # a waiting lock request is answered "not yet" after this long (and asked again)


async def lock_operation(m: Metaserver, op: str, client: str, request: web.Request,
                         export: tuple[str, Export] | None = None) -> Any:
    """File locks (locks.py): every one is a client's, so a request without a client id is EINVAL;
    a lock on a file outside the caller's export is EACCES (a POSIX write lock of a read-only
    export EBADF), and a reclaim of one is answered as lost."""
    if op == "locks":
        listing_req = admitted(m, export, op, await read_body(request, r.LocksReq))
        held = m.locks.listing(listing_req.ino)
        if export is None:
            return held
        with m.db.read() as txn:
            return m.exports.visible_locks(txn, *export, client, held)
    if not client:
        raise FsError(errno.EINVAL, "a lock is held by a client: send X-Chunkfs-Client")
    if op == "cancel_lock":
        return m.locks.cancel(client, (await read_body(request, r.LockCancelReq)).wait_id)
    if op == "reclaim_locks":
        reclaim_req = await read_body(request, r.LockReclaimReq)
        return await m.reclaim.reclaim(client, reclaim_req, await refused_reclaims(m, export, reclaim_req))
    req = admitted(m, export, op, await read_body(request, r.LockReq))
    with m.db.read() as txn:
        m.namespace.getattr(txn, req.ino)  # ENOENT for a file that is not there
    if req.type != r.F_UNLCK:
        await m.reclaim.grace_over()  # after a restart, the locks held before are given back first
    if op == "testlock":
        return m.locks.test(client, req)
    if req.type != r.F_UNLCK:
        await m.reclaim.record(client)
    waiter = m.locks.request(client, req)
    if waiter is not None:
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), LOCK_POLL_S)
        except TimeoutError:
            return r.LockReply(granted=False)
        except asyncio.CancelledError:
            if waiter.granted.cancelled():  # withdrawn (cancel_lock) or its client's session ended
                raise FsError(errno.EINTR, "the lock wait was withdrawn") from None
            raise
        m.locks.claimed(client, req.wait_id)
    try:  # as of the grant: the client drops what it cached of older versions
        with m.db.read() as txn:
            attr: r.Attr | None = m.namespace.getattr(txn, req.ino)
    except FsError:  # removed while the lock was waited for: granted all the same (its close drops it)
        attr = None
    return r.LockReply(granted=True, attr=attr, feed_seq=m.changes.last_change_not_by(client),
                       feed_epoch=m.changes.epoch)


async def refused_reclaims(m: Metaserver, export: tuple[str, Export] | None, req: r.LockReclaimReq) -> set[int]:
    """The indexes of the locks in `req` that the caller's export refuses, as it would refuse
    them as new locks (exports.py); looked at only where the reclaim would grant them."""
    if export is None or not m.reclaim.grants(req):
        return set()

    def refused() -> set[int]:  # may walk the export's subtree: off the event loop
        with m.db.read() as txn:
            return m.exports.refused_locks(txn, *export, req.locks)

    return await asyncio.to_thread(refused)


# every op `fs_operation` knows (the metrics label them; the route fuzzer calls each)
FS_OPERATIONS = frozenset({*READS, *MUTATIONS, "batch", "reserve", "dedup", "release_leases", "fsck", "tokens", "token_key",
                           "quota_check", "sharing_check", *LOCK_OPERATIONS})


def caller_export(m: Metaserver, request: web.Request) -> tuple[str, Export] | None:
    """(key id, export) of a client's or gateway's credential that signed the request; None for
    the cluster secret and admins (no export: everything)."""
    signed = request.get(SIGNER)
    if signed is None or m.credentials is None or signed.role not in EXPORTED_ROLES:
        return None
    credential = m.credentials.get(signed.key_id)
    if credential is None:
        return None
    if not credential.export.allows_address(request.remote):
        raise FsError(errno.EACCES, f"this credential's export is not for requests from {request.remote}")
    return signed.key_id, credential.export


def owned_client(m: Metaserver, request: web.Request) -> str:
    """The request's client id (`X-Chunkfs-Client`), if it is its signer's to use
    (client_owners.py), else FsError(EPERM)."""
    client = client_id(request)
    signed = request.get(SIGNER)
    if signed is not None:
        m.client_owners.admit(client, signed.key_id, signed.role)
    return client


def signer_id(request: web.Request) -> str:
    """The key id of the credential that signed `request` ("": the cluster secret, or unsigned)."""
    signed = request.get(SIGNER)
    return signed.key_id if signed is not None else ""


def admitted(m: Metaserver, export: tuple[str, Export] | None, op: str, req: Any) -> Any:
    """`req` as the caller's export lets it through (see exports.py), or FsError."""
    if export is None:
        return req
    with m.db.read() as txn:
        return m.exports.admit(txn, export[0], export[1], op, req)


def statfs(m: Metaserver, txn: Txn, ino: int) -> r.Statfs:
    """The cluster's space, or for a mount of a directory with a quota on bytes, the quota's."""
    total, free = m.registry.totals()
    counts = m.namespace.counts.read(txn)
    cluster = r.Statfs(total_bytes=total, free_bytes=free, files=counts.files + counts.directories,
                       chunks=counts.chunks)
    return m.namespace.quotas.statfs(txn, ino, cluster)


# May touch a whole subtree: committed in the writer thread, never on the event loop.
LARGE_MUTATIONS = frozenset({"goal", "quota_set", "trash_time", "dedup_setting", "trash_purge", "snapshot",
                             "read_only"})
# Their answer shows the caller a file (exports.py).
SHOWING_MUTATIONS = frozenset({"create", "link", "commit", "snapshot"})
# After these, the deleter may have chunk versions to delete.
WAKE_DELETER = frozenset({"remove", "rename", "commit", "setattr", "release_orphan", "trash_purge"})


async def fs_operation(request: web.Request) -> web.Response:
    m = request.app[STATE]
    op = request.match_info["op"]
    export = caller_export(m, request)
    client = owned_client(m, request)
    read = READS.get(op)
    if read is not None:
        record_type, run = read
        req = await read_body(request, record_type)
        req = admitted(m, export, op, req)
        await m.leases.clear_for(client, named_inodes(req))
        with m.db.read() as txn:
            answer = run(m, txn, req)
        leased = m.leases.held_by_others(client, directories_answered(answer))
        if leased:  # attributes of a directory another client holds (it may hold changes there): those first
            await m.leases.clear_for(client, leased)
            with m.db.read() as txn:
                answer = run(m, txn, req)
        if isinstance(answer, r.FileLayout):
            token_grants.with_read_tokens(m.tokens, answer.chunks, token_grants.holder(request))
        if export is not None:
            m.exports.shown(*export, answer)
        if isinstance(req, r.OpenReq) and req.lease:
            answer.leased = m.open_leases.grant(client, req.ino, m.changes.seq)
        return json_response(answer)
    if op in MUTATIONS:
        req = admitted(m, export, op, await read_body(request, MUTATIONS[op][0]))
        await m.leases.clear_for(client, named_inodes(req) | restored_into(m, req))
        rid = request_id_header(request)
        mutate = mutation_of(m, op, client, token_grants.holder(request))
        commit = m.committer.run if op in LARGE_MUTATIONS else m.committer.run_small
        if m.replies is None or not client or not rid:
            result = await commit(mutate, req)
            body = msgspec.json.encode(result)
        else:
            first_attempt = request.headers.get(request_id.ATTEMPT_HEADER) == "1"
            body, result = await commit(m.replies.once(mutate, client, rid, first_attempt, signer_id(request)), req)
            if result is REPLAYED:  # a retry of a mutation already done: answer it again, changes nothing
                return web.Response(body=body, content_type="application/json")
        inodes = mutated(m, op, client, req, result, export)
        if inodes:
            await m.open_leases.settle(client, inodes, m.changes.seq)
        return web.Response(body=body, content_type="application/json")
    if op == "batch":
        return json_response(await apply_batch(m, client, request, export))
    if op == "reserve":
        reserve_req = admitted(m, export, op, await read_body(request, r.ReserveReq))
        return json_response(await reserve(m, client, reserve_req, token_grants.holder(request)))
    if op == "dedup":
        dedup_req = admitted(m, export, op, await read_body(request, r.DedupBatchReq))
        return json_response(await find_contents(m, dedup_req, token_grants.holder(request)))
    if op == "tokens":
        tokens_req = await read_body(request, r.TokensReq)
        with m.db.read() as txn:
            return json_response(token_grants.read_tokens(m.tokens, m.chunks, m.exports, txn, tokens_req, export,
                                                          token_grants.holder(request)))
    if op == "token_key":
        return json_response(token_grants.token_key_for(m.tokens, request))
    if op == "release_leases":
        await m.leases.release(client, (await read_body(request, r.LeaseReq)).inodes)
        return json_response(None)
    if op in LOCK_OPERATIONS:
        return json_response(await lock_operation(m, op, client, request, export))
    if op == "quota_check":  # counts every quota's tree: off the event loop
        return json_response(await asyncio.to_thread(quota_check, m))
    if op == "sharing_check":  # scans the chunk table: off the event loop
        return json_response(await asyncio.to_thread(sharing_check, m))
    if op == "fsck":  # a page can take a while: off the event loop
        page_req = await read_body(request, r.FsckReq)
        return json_response(await asyncio.to_thread(fsck_page, m, m.registry.alive_ids(), page_req))
    raise FsError(errno.ENOSYS, f"unknown operation {op!r}")


def mutation_of(m: Metaserver, op: str, client: str, holder: str) -> Callable[[Txn, Any], Any]:
    """The mutation `op` runs for `client` in its transaction (a create also leases the
    directory it makes, when asked, in the same transaction; a commit indexes and finds
    content for `holder`, the credential that signed it: dedup.py)."""
    if op == "commit":
        return lambda txn, q: m.chunks.commit(txn, q, client, holder)
    bind = MUTATIONS[op][1]
    return m.leases.creating(bind(m, client), client) if op == "create" else bind(m, client)


def mutated(m: Metaserver, op: str, client: str, req: Any, result: Any, export: tuple[str, Export] | None
            ) -> list[int]:
    """What follows a durable mutation: the files it made shown to the caller's export, leases
    granted or gone, the deleter woken, the change published on the feed. Returns the inodes
    whose open leases must settle before the answer."""
    if export is not None and op in SHOWING_MUTATIONS:
        m.exports.shown(*export, result)
    if op == "create":
        m.leases.granted(cast(r.CreateReq, req), result, client)
    elif op == "quota_set":  # creates held by a mount would be charged only when they arrive
        with m.db.read() as txn:
            m.leases.ask_back_where(lambda ino: m.namespace.quotas.covers(txn, ino))
    elif op == "remove":  # a file with a link left elsewhere may have left a subtree
        m.leases.forget_removed(result.ino)
        m.exports.links_changed([result.ino])
    elif op == "rename":  # what it moved (or replaced) may have left a subtree
        m.exports.links_changed(cast(r.Renamed, result).moved)
    if op in WAKE_DELETER:
        m.deleter.wake.set()
    inodes, entries = affected(op, req, result)
    if inodes or entries:
        m.changes.publish(client, inodes, entries)
    return inodes


# What a batch may carry: the changes a mount answers itself and sends behind (write_behind.py)
# and the other small namespace changes; not one that may touch a whole subtree (goal), hands
# something out (reserve_inodes) or moves chunks between files (concat): those come on their own.
BATCHABLE = frozenset({"create", "link", "remove", "rename", "setattr", "setxattr", "removexattr", "commit"})


def decode_batch_op(item: r.BatchOp) -> Any:
    if item.op not in BATCHABLE:
        raise FsError(errno.EINVAL, f"operation {item.op!r} cannot be batched")
    try:
        return msgspec.json.decode(item.req, type=MUTATIONS[item.op][0])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FsError(errno.EINVAL, f"bad {item.op} in a batch: {exc}") from None


def directories_answered(answer: Any) -> list[int]:
    """The directories whose attributes a read answers without naming them (a lookup's or a
    path's target, a listing's entries): held under another client's lease, they may be stale
    until that client sends the changes it answered itself (write-behind)."""
    if isinstance(answer, r.Attr):
        return [answer.ino] if stat.S_ISDIR(answer.mode) else []
    if isinstance(answer, list):
        return [e.attr.ino for e in answer if isinstance(e, r.DirEntry) and stat.S_ISDIR(e.attr.mode)]
    return []


def stamped_with(mutate: Callable[..., Any], at_ns: int) -> Callable[..., Any]:
    """`mutate`, stamping what it changes with the client's time `at_ns` (change_clock.py)."""
    def run(*args: Any) -> Any:
        with change_clock.stamped(at_ns):
            return mutate(*args)
    return run


async def apply_batch(m: Metaserver, client: str, request: web.Request, export: tuple[str, Export] | None
                      ) -> list[r.BatchOutcome]:
    """A client's write-behind batch (BatchReq): each mutation as its own call would run it, in
    order, all in one durable transaction; answered once that is durable. Each one passes the
    checks its own call would (the caller's export: `admit_batch`, then again in the transaction,
    in the state the mutations before it left); one refused is that one's error. A retried batch
    (same request id) is answered from the reply log for the mutations it had already applied.
    Not acknowledged here (NotPrimary, answered 503): the client sends the batch again, to the
    primary."""
    items = (await read_body(request, r.BatchReq)).ops
    reqs = [decode_batch_op(item) for item in items]
    refused = admit_batch(m, export, items, reqs)
    for i, req in enumerate(reqs):
        if i not in refused:
            await m.leases.clear_for(client, named_inodes(req) | restored_into(m, req))
    rid = request_id_header(request)
    first_attempt = request.headers.get(request_id.ATTEMPT_HEADER) == "1"
    made: set[int] = set()  # files the batch's mutations made so far (see checked_in_batch)
    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    for i, (item, req) in enumerate(zip(items, reqs, strict=True)):
        if i in refused:
            continue
        mutate = mutation_of(m, item.op, client, token_grants.holder(request))
        at_ns = change_clock.acceptable(item.at_ns)
        if at_ns:
            mutate = stamped_with(mutate, at_ns)
        if m.replies is not None and client and rid:
            answered = m.replies.once(mutate, client, f"{rid}.{i}", first_attempt, signer_id(request))
        else:
            answered = encoded(mutate)
        calls.append((checked_in_batch(m, export, item.op, answered, made), (req,)))
    results = iter(await m.committer.run_together(calls))
    outcomes: list[r.BatchOutcome] = []
    settle: list[int] = []
    for i, (item, req) in enumerate(zip(items, reqs, strict=True)):
        done, error = (None, refused[i]) if i in refused else next(results)  # done: (body, result)
        if isinstance(error, NotPrimary):  # the whole transaction is unacknowledged here
            raise error
        if error is not None:
            if not isinstance(error, FsError):
                log.error("%s in a batch of client %s failed: %r", item.op, client, error)
                error = FsError(errno.EIO, f"{item.op}: {error}")
            outcomes.append(r.BatchOutcome(error.errno, error.message))
            continue
        body, result = cast(tuple[bytes, Any], done)
        if result is not REPLAYED:  # applied before (a retried batch): answered again, not published again
            settle += mutated(m, item.op, client, req, result, export)
        elif export is not None and item.op in SHOWING_MUTATIONS:  # shown again (the metaserver may have restarted)
            m.exports.shown(*export, msgspec.json.decode(body, type=r.Attr))
        outcomes.append(r.BatchOutcome(reply=msgspec.Raw(body)))
    if settle:
        await m.open_leases.settle(client, sorted(set(settle)), m.changes.seq)
    return outcomes


def admit_batch(m: Metaserver, export: tuple[str, Export] | None, items: list[r.BatchOp], reqs: list[Any]
                ) -> dict[int, FsError]:
    """Check each mutation of a batch against the caller's export before anything happens (no
    lease is recalled for one refused), as its own call would be checked, counting the files the
    creates before it would make as shown; `reqs` become what the export lets through (root
    squashed). Returns the refused ones' errors by index. The transaction checks again
    (`checked_in_batch`): this is the early door, that the exact one."""
    refused: dict[int, FsError] = {}
    if export is None:
        return refused
    made: set[int] = set()
    with m.db.read() as txn:
        for i, (item, req) in enumerate(zip(items, reqs, strict=True)):
            try:
                reqs[i] = m.exports.admit(txn, export[0], export[1], item.op, req, made)
            except FsError as exc:
                refused[i] = exc
                continue
            create = req if isinstance(req, r.CreateReq) else getattr(req, "create", None)
            if isinstance(create, r.CreateReq) and create.ino and not m.namespace.exists(txn, create.ino):
                made.add(create.ino)
    return refused


def checked_in_batch(m: Metaserver, export: tuple[str, Export] | None, op: str,
                     answered: Callable[[Txn, Any], tuple[bytes, Any]], made: set[int]
                     ) -> Callable[[Txn, Any], tuple[bytes, Any]]:
    """`answered` (a mutation giving (encoded reply, result)) run once the caller's export admits
    its request in the batch's transaction, i.e. in the state the mutations before it left, the
    files they made counting as shown (`made`, which this one's file joins)."""
    if export is None:
        return answered
    key_id, granted = export

    def run(txn: Txn, req: Any) -> tuple[bytes, Any]:
        body, result = answered(txn, m.exports.admit(txn, key_id, granted, op, req, made))
        if op in SHOWING_MUTATIONS:
            made.add(result.ino if isinstance(result, r.Attr) else msgspec.json.decode(body, type=r.Attr).ino)
        return body, result

    return run


def encoded(mutate: Callable[[Txn, Any], Any]) -> Callable[[Txn, Any], tuple[bytes, Any]]:
    """`mutate` answering (its encoded reply, its result), as `ReplyLog.once` does."""

    def run(txn: Txn, req: Any) -> tuple[bytes, Any]:
        result = mutate(txn, req)
        return msgspec.json.encode(result), result

    return run


def fsck_page(m: Metaserver, alive: set[str], req: r.FsckReq) -> r.FsckPage:
    with m.db.read() as txn:
        return fsck.check_page(txn, m.namespace, m.chunks, alive, m.replicator.corrupt_reports, req)


def restored_into(m: Metaserver, req: Any) -> set[int]:
    """The directory a trash restore without a place puts its file back in (its lease is
    recalled first, as for any request naming it)."""
    if not isinstance(req, r.TrashRestoreReq) or req.parent:
        return set()
    with m.db.read() as txn:
        return {m.namespace.trash.where(txn, req.id)}


def quota_check(m: Metaserver) -> list[r.QuotaCheck]:
    with m.db.read() as txn:
        return m.namespace.quotas.check(txn)


def sharing_check(m: Metaserver) -> list[str]:
    with m.db.read() as txn:
        return m.chunks.sharing_problems(txn)


async def find_contents(m: Metaserver, req: r.DedupBatchReq, holder: str) -> list[r.DedupHit | None]:
    """For each content `req` names and proves, in order, the stored version holding it for
    `holder`'s commits (dedup.py), with a token to read it, or None. A miss (most chunks of new
    data) is a read; the hits' pins are one write, one durable commit for the whole call (and
    shared with the calls that arrive together: group commit)."""
    with m.db.read() as txn:
        held = [i for i, content in enumerate(req.contents) if m.chunks.contents.match(txn, content, holder) is not None]
    hits: list[r.DedupHit | None] = [None] * len(req.contents)
    if not held:
        return hits
    found = await m.committer.run_small(m.chunks.find_contents, [req.contents[i] for i in held], holder)
    for i, hit in zip(held, found, strict=True):
        if hit is not None and m.tokens is not None:
            hit.token = m.tokens.issue(chunk_tokens.READ, hit.chunk_id, hit.version, holder=holder)
        hits[i] = hit
    return hits


RESERVATION_VALID_S = 5.0


async def reserve(m: Metaserver, client: str, req: r.ReserveReq, holder: str) -> r.Reservation:
    """Versions and chunk ids for `client`'s uploads: only it may commit them (reservations.py),
    with a token for them issued to `holder` (the credential that asked)."""
    if not client:
        raise FsError(errno.EINVAL, "a reservation is made for a client: send X-Chunkfs-Client")
    if m.registry.settling():  # answered 503, which clients retry (for up to their retry_s)
        raise web.HTTPServiceUnavailable(text="chunkservers have not all reported since the metaserver started",
                                         headers=RETRY_HERE)
    servers = m.registry.writable()
    if not servers:
        if not m.registry.alive():
            raise web.HTTPServiceUnavailable(text="no chunkserver is alive", headers=RETRY_HERE)
        raise FsError(errno.ENOSPC, "every chunkserver alive is full")
    count = max(1, min(req.count, 4096))
    first_version, first_chunk_id = await m.committer.run(m.chunks.reserve, client, count)
    token = "" if m.tokens is None else m.tokens.issue(chunk_tokens.READ + chunk_tokens.WRITE, None, first_version,
                                                       first_version + count - 1, holder=holder)
    return r.Reservation(first_version, first_chunk_id, count,
                         [r.ServerChoice(s.id, s.address, s.free_bytes) for s in servers],
                         # a client must not hand out a slot after the block's grace has run out
                         # (its commit would be refused): a short orphan grace shortens the validity
                         min(RESERVATION_VALID_S, m.orphan_grace_s / 4), token)


async def server_hello(request: web.Request) -> web.Response:
    """Registration (with the chunk list, at a chunkserver's start) and heartbeats (without)."""
    m = request.app[STATE]
    hello = await read_body(request, r.ServerHello)
    registration = Registration(m.committer, m.chunks, m.quarantine)
    if hello.chunks is not None:
        hello.chunks = await registration.in_range(hello.chunks, hello.address)
    if hello.recent_chunks is not None:
        hello.recent_chunks = await registration.in_range(hello.recent_chunks, hello.address)
    if m.registry.needs_saving(hello):
        await m.committer.run(m.registry.save, hello)
    m.registry.heartbeat(hello)
    m.throughput.report(hello.id, hello.read_bytes, hello.written_bytes)
    delete: list[tuple[int, int]] = []
    if hello.chunks is not None:
        delete = await registration.garbage(hello.id, hello.chunks, hello.recent_chunks or [])
        if delete and m.replication is not None and not m.committer.everywhere(m.replication.seq):
            delete = []  # not all on the standbys yet: a failover could bring these references back
        if delete:
            log.info("server %s holds %d unreferenced chunk versions; told to delete them",
                     hello.address, len(delete))
        if hello.recent_chunks is not None:
            await m.replicator.reconcile(hello.id, [*hello.chunks, *hello.recent_chunks])
    return json_response(r.HelloReply(delete, *token_grants.chunk_key_for(m.tokens, request), epoch=m.epoch))


async def backup_copy(request: web.Request) -> web.StreamResponse:
    """`chunkfs backup`, a standby's first copy (`?standby=NAME`): the whole database as of one
    instant, zstd-compressed, streamed as LMDB makes it (see backup.py)."""
    m = request.app[STATE]
    if m.replication is not None and request.query.get("standby"):
        m.replication.standby_seen()  # before the snapshot: every batch after it is kept
    stream = await backup.open_copy(m.db, m.committer)
    try:
        response = web.StreamResponse(headers={"Content-Type": backup.CONTENT_TYPE})
        await response.prepare(request)
        while piece := await asyncio.to_thread(stream.read):
            await response.write(piece)
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(stream.close)


async def replication_feed(request: web.Request) -> web.Response:
    """A standby's long poll: it has applied every batch up to `since`; the batches after it."""
    m, q = request.app[STATE], request.query
    since, wait_s = query_int(request, "since", 0), query_float(request, "wait_s", 0.0, 0.0, 30.0)
    if m.replication is None:
        raise FsError(errno.ENOSYS, "this metaserver keeps no replication log")
    feed = await m.replication.feed(q.get("standby", request.remote or "?")[:256], q.get("history", "")[:256], since,
                                    q.get("sync") == "1", wait_s)
    return web.Response(body=feed, content_type="application/msgpack")


async def corrupt_report(request: web.Request) -> web.Response:
    """A chunkserver found copies failing their checksums: rebuild them elsewhere."""
    report = await read_body(request, r.CorruptReport)
    return json_response(r.CorruptReply(await request.app[STATE].replicator.corrupt(report)))


async def gc(request: web.Request) -> web.Response:
    """`chunkfs gc`: find unreferenced chunk versions on the chunkservers now and queue them."""
    m = request.app[STATE]
    collector = GarbageCollector(m.committer, m.chunks, m.registry, m.deleter.client, m.deleter,
                                 m.orphan_grace_s)
    return json_response(await collector.run(await read_body(request, r.GcReq)))


async def disk_check(request: web.Request) -> web.Response:
    """`chunkfs fsck`: one page of the check of the chunkservers' disks against the records."""
    m = request.app[STATE]
    check = DiskCheck(m.db, m.committer, m.chunks, m.registry, m.replicator, m.deleter, m.deleter.client)
    return json_response(await check.run(await read_body(request, DiskCheckReq)))


async def drain(request: web.Request) -> web.Response:
    return json_response(await request.app[STATE].replicator.drain(await read_body(request, r.DrainReq)))


@dataclass(frozen=True)
class StoredCounts:
    """What the cluster status reads from LMDB and /proc: `read_stored_counts` may run in a
    thread, so a status or a scrape does not hold up the event loop with it."""

    counts: TableCounts
    pending_deletions: int
    quarantined: int
    process: ProcessMemory
    quotas_over_soft: list[r.QuotaInfo]
    trash_files: int


def read_stored_counts(m: Metaserver) -> StoredCounts:
    with m.db.read() as txn:
        counts = m.namespace.counts.read(txn)
        pending = m.chunks.count_deletions(txn)
        quarantined = m.quarantine.count(txn) if m.quarantine else 0
        over_soft = m.namespace.quotas.listing(txn, over_soft_only=True)
        trash_files = m.namespace.trash.count(txn)
    return StoredCounts(counts, pending, quarantined, read_process_memory(m.db), over_soft, trash_files)


async def cluster_status_now(m: Metaserver) -> r.ClusterStatus:
    """`cluster_status`, its reads of LMDB and /proc done in a thread (from the event loop)."""
    return cluster_status(m, await asyncio.to_thread(read_stored_counts, m))


def cluster_status(m: Metaserver, stored: StoredCounts | None = None) -> r.ClusterStatus:
    """What `chunkfs status`, the status page and the /metrics gauges show: O(servers + clients),
    never a scan of a table that grows with files (see table_counts.py; chunks under goal come
    from the replicator's last scan). The loop's own state is read here, on the loop; `stored`
    (read now if not given) is what LMDB and /proc hold."""
    stored = stored or read_stored_counts(m)
    counts, pending, quarantined = stored.counts, stored.pending_deletions, stored.quarantined
    total, free = m.registry.totals()
    under, counted_at = m.replicator.chunks_under_goal, m.replicator.under_goal_counted_at
    return r.ClusterStatus(
        servers=m.registry.status(counts.replicas), files=counts.files, directories=counts.directories,
        file_bytes=counts.file_bytes, chunks=counts.chunks, chunk_bytes=counts.chunk_bytes,
        stored_bytes=counts.stored_bytes,
        chunks_under_goal=max(0, under),
        under_goal_counted_s_ago=round(time.monotonic() - counted_at, 1) if under >= 0 else -1.0,
        pending_deletions=pending, total_bytes=total, free_bytes=free,
        default_goal=m.namespace.default_goal, repairs_running=m.replicator.running,
        chunks_replicated=m.replicator.replicated, corrupt_found=m.replicator.corrupt_found,
        repair_copies_pending=m.replicator.copies_pending, versions_deleted=m.deleter.versions_deleted,
        replicas_deleted=m.deleter.deleted, throughput=m.throughput.snapshot(),
        clients=m.changes.clients(),
        standbys=m.replication.status() if m.replication else [],
        quarantined_versions=quarantined,
        memory=memory_status(m, stored.process),
        locks_held=m.locks.count(),
        lock_waits=m.locks.waiting(),
        quotas_over_soft=stored.quotas_over_soft,
        trash_files=stored.trash_files,
        default_trash_s=m.namespace.trash.default_trash_s,
        failover=m.failover() if m.failover is not None else None,
    )


async def status(request: web.Request) -> web.Response:
    """The cluster's status; to a credential with an export, without the other clients (their ids,
    hosts and mountpoints) and the quotas outside its subtree (their paths)."""
    m = request.app[STATE]
    export = caller_export(m, request)
    answer = await cluster_status_now(m)
    if export is None:
        return json_response(answer)
    with m.db.read() as txn:
        quotas = m.exports.visible_quotas(txn, export[1], answer.quotas_over_soft)
    return json_response(msgspec.structs.replace(answer, clients=[], quotas_over_soft=quotas))


async def status_page(request: web.Request) -> web.Response:
    m = request.app[STATE]
    html = render_status_page(await cluster_status_now(m), request.host, m.changes.clients_following())
    return web.Response(text=html, content_type="text/html")


async def changes(request: web.Request) -> web.Response:
    """Long poll: the changes after `since` of `epoch`, waiting up to `wait_s` (at most 30) for one."""
    m = request.app[STATE]
    export = caller_export(m, request)  # its network; its subtree: what of the changes it is told
    feed, client = m.changes, owned_client(m, request)
    since, wait_s = query_int(request, "since", 0), query_float(request, "wait_s", 0.0, 0.0, 30.0)
    epoch = query_token(request, "epoch")
    feed.seen(client)
    if "client" in request.query:
        try:
            feed.report(client, r.json_decode(request.query["client"], type=r.ClientReport))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise FsError(errno.EINVAL, f"client: {exc}") from None
    leases = m.leases
    leases.renew(client)
    if epoch == feed.epoch:
        m.open_leases.polled(client, since)
    feed.polling(client, +1)
    try:
        view = None  # told everything (no export, or one of "/"): nothing decoded for it
        if export is not None and export[1].subtree != "/":
            view = functools.partial(m.exports.visible_changes, m.db, *export)
        batch = await feed.since(since, wait_s, client, lambda: leases.recalled_of(client), epoch, view)
        batch.locks_lost = m.reclaim.lost_locks(client)
        return web.Response(body=feed.encode_batch(batch), content_type="application/json")
    finally:
        feed.polling(client, -1)
        feed.seen(client)


async def health(request: web.Request) -> web.Response:
    m = request.app[STATE]
    if m.failover is None:
        return json_response({"ok": True, "role": "metaserver"})
    election = m.failover()
    return json_response({"ok": True, "role": "primary" if election.lease_left_s > 0 else "fenced",
                          "epoch": election.epoch})


# Ordinary answers to filesystem calls (a lookup of a new name, a getxattr of an unset attribute):
# logged at DEBUG only, as a local filesystem does not log a failed open.
ROUTINE_ERRNOS = frozenset({errno.ENOENT, errno.ENODATA, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR,
                            errno.EISDIR, errno.EOPNOTSUPP, errno.EAGAIN, errno.EDEADLK})


def routine_error(request: web.Request, error: FsError) -> bool:
    return request.path.startswith("/v1/fs/") and error.errno in ROUTINE_ERRNOS


# Request bodies (DEFAULT_BODY, 1 MiB, for every other route): a filesystem call's record is small
# but a commit names every chunk written since the file's last flush (~200 bytes each: 16 MiB is
# ~80,000 chunks, ~320 GiB); a chunkserver's registration lists every chunk version it holds
# (~25 bytes each: 64 MiB is ~2.6 million, 10 TiB of full chunks).
BODY_LIMITS = {"POST /v1/fs/{op}": BodyLimit(16 << 20), "POST /v1/servers/hello": BodyLimit(64 << 20)}


def build_app(m: Metaserver, secret: bytes, http: SignedHttp, port: int | None = None,
              body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
              status_open: Callable[[web.Request], bool] | None = None) -> web.Application:
    """`port`: the one it listens on; a request signed for a Host on another port is refused.
    Signatures are checked with `m.credentials` if it has them (the cluster secret and the role
    keys; each role only on its routes, access_policy.py), else with the cluster secret alone."""
    app = make_app(m.credentials or secret, routine_error=routine_error,
                   own_host=any_host if port is None else host_on_port(port),
                   body_limits=BODY_LIMITS, body_timeout_s=body_timeout_s, authorize=access_policy.refusal,
                   status_open=status_open)
    app[STATE] = m
    app.router.add_post("/v1/fs/{op}", fs_operation)
    app.router.add_post("/v1/servers/hello", server_hello)
    app.router.add_post("/v1/servers/corrupt", corrupt_report)
    app.router.add_post("/v1/servers/drain", drain)
    app.router.add_post("/v1/servers/gc", gc)
    app.router.add_post("/v1/servers/fsck", disk_check)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/changes", changes)
    accounts.add_routes(app, m.db, m.committer)
    app.router.add_get("/", status_page)
    app.router.add_get("/health", health)
    if m.credentials is not None:
        credentials_api.add_routes(app, m.credentials)
    if m.replication is not None:
        app.router.add_get(BACKUP_PATH, backup_copy, allow_head=False)  # a HEAD would stream the body
        app.router.add_get(REPLICATION_PATH, replication_feed)
    registry = metrics.new_registry()
    cluster = metrics.ClusterCollector(lambda: cluster_status_now(m))
    registry.register(cluster)
    GC_PAUSES.install()
    leases = m.leases
    registry.register(metrics.LeaseCollector(lambda: (len(leases), leases.recalls, leases.expired)))
    metrics.install_http(app, registry, operations=FS_OPERATIONS, prepare=cluster.refresh)

    async def background(app: web.Application):
        tasks = [asyncio.create_task(job.run()) for job in (m.deleter, m.replicator, m.throughput)]
        if m.orphans is not None:
            tasks.append(asyncio.create_task(m.orphans.run()))
        if m.quarantine is not None:
            tasks.append(asyncio.create_task(m.quarantine.run()))
        if m.trash is not None:
            tasks.append(asyncio.create_task(m.trash.run()))
        if m.replies is not None:
            tasks.append(asyncio.create_task(m.replies.run()))
        tasks.append(asyncio.create_task(m.leases.run()))
        if m.orphans is not None:  # a client's reservations and locks end with its session, as its orphans do
            session_over = m.orphans.expired
            tasks.append(asyncio.create_task(m.reclaim.run(lambda client: session_over(client, time.monotonic()),
                                                           max(0.5, min(5.0, m.orphans.session_timeout_s / 4)))))
            tasks.append(asyncio.create_task(m.chunks.owners.run(
                m.committer, lambda client: session_over(client, time.monotonic()))))
        tasks.append(asyncio.create_task(dedup.end_pins_forever(m.committer, m.chunks.end_pins)))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await http.aclose()
        m.committer.stop()
        m.db.close()

    app.cleanup_ctx.append(background)

    async def end_long_polls(app: web.Application) -> None:
        m.changes.close()

    app.on_shutdown.append(end_long_polls)
    return app
