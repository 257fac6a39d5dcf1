"""Re-replication: keeps every chunk at its file's goal of healthy replicas, in the background.

A replica is healthy while its server is alive (heard from within `heartbeat_timeout_s`) and not
being drained. Each pass scans the chunk table:

- a chunk with fewer healthy replicas than its goal is copied, most endangered first (fewest
  healthy replicas), from a live server holding it to one that does not; the target fetches it
  itself (`POST /v1/chunks/{id}/{version}/copy`) and checks it against the record's checksum.
  The copy is recorded once it is fsynced there, and only if the record still holds that version;
- a chunk with at least its goal of healthy replicas loses the others (dead, draining or extra
  ones, extra ones from the fullest servers first). They are queued for deletion, so a dead
  server's copies are removed when it comes back and a drained server ends up empty.

Copies start at most `per_s` a second and at most `in_flight` at a time. A replica on a dead
server stays in its record until the chunk is back at goal without it: while it is the only
copy, the server's return is what brings the chunk back.

Chunkservers' reports land here too: corrupt copies (from scrub or a failed read) and, at
registration, recorded copies the server does not have. Both are taken out of their records, so
the next pass rebuilds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import itertools
import logging
import random
import time
from dataclasses import dataclass

import msgspec

from chunkfs.errors import FsError, TransportError
from chunkfs.metaserver.chunk_table import ChunkRecord, ChunkTable
from chunkfs.metaserver.db import U64x2, GroupCommitter, MetaDB, Txn
from chunkfs.metaserver.deleter import Deleter
from chunkfs.metaserver.registry import Registry, ServerState
from chunkfs.metaserver.replicas import ReplicaEdits, Version
from chunkfs.protocol import records as r
from chunkfs.chunk_tokens import CHUNKSERVERS_HOLDER, READ, TokenIssuer
from chunkfs.protocol.chunk_client import ChunkClient

log = logging.getLogger(__name__)

PASS_S = 10.0  # a pass starts at most this many seconds' worth of copies, then rescans
IDLE_PAUSE_S = 2.0  # between passes that changed nothing (longer if scans are slow)
MAX_TRIMS_PER_PASS = 10_000
COPY_RETRY_S = 1.0
MAX_CORRUPT_REPORTS = 100_000  # the oldest are forgotten beyond this
STALE_SCAN_PAGE = 10_000  # chunk records a read transaction looks at when a registration finds stale ones

_record_dec = msgspec.msgpack.Decoder(ChunkRecord)


@dataclass
class ServerSets:
    """What one pass knows of the servers, taken at its start."""

    healthy: set[str]  # alive and not draining: their replicas count towards goals
    alive: set[str]  # can be copied from
    writable: set[str]  # can be copied to
    free: dict[str, int]  # free bytes of the alive ones


@dataclass
class Shortfall:
    """A chunk with fewer healthy replicas than its goal."""

    key: bytes
    record: ChunkRecord
    goal: int
    healthy: int
    busy: set[str]  # servers a deletion of this version is still queued for: not targets yet
    alive: int = 0  # replicas on live servers (draining ones too), as `chunks_under_goal` counts them


@dataclass
class Trim:
    key: bytes
    chunk_id: int
    version: int
    keep: list[str]


@dataclass
class Copy:
    chunk: Shortfall
    source: ServerState
    target: ServerState


class Replicator:
    def __init__(self, db: MetaDB, committer: GroupCommitter, chunks: ChunkTable, registry: Registry,
                 client: ChunkClient, deleter: Deleter, per_s: float, in_flight: int,
                 tokens: TokenIssuer | None = None) -> None:
        """`tokens`: issues the read token a copy's target fetches its source with."""
        self.db, self.committer, self.chunks = db, committer, chunks
        self.tokens = tokens
        self.registry, self.client, self.deleter = registry, client, deleter
        self.per_s = per_s
        self.edits = ReplicaEdits(chunks)
        self.wake = asyncio.Event()
        self.running = 0  # copies in flight
        self.replicated = 0  # copies recorded since start
        self.corrupt_found = 0  # corrupt copies reported since start
        # (chunk_id, version) -> servers that reported their copy corrupt, since start (for fsck)
        self.corrupt_reports: dict[Version, set[str]] = {}
        self.copies_pending = 0  # copies the last pass found needed and possible, less those it made
        # Chunks with fewer live replicas than their goal, counted by each pass's scan (in a
        # thread, off the event loop) and lowered as copies are recorded: which servers are alive
        # changes with no transaction (a heartbeat that stops coming), so no count kept in LMDB
        # can follow it; the scan the replicator makes anyway can. -1 until the first scan.
        self.chunks_under_goal = -1
        self.under_goal_counted_at = 0.0  # time.monotonic() of that scan
        self._slots = asyncio.Semaphore(in_flight)
        self._next_start = 0.0
        self._scan_s = 0.0

    async def run(self) -> None:
        # Until every live server has had time to send a heartbeat, all look dead.
        await asyncio.sleep(self.registry.heartbeat_timeout_s)
        while True:
            changed = False
            try:
                changed = await self.pass_once()
            except Exception:
                log.exception("re-replication pass failed; retrying later")
            if not changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), max(IDLE_PAUSE_S, 20 * self._scan_s))
            self.wake.clear()

    async def pass_once(self) -> bool:
        """Scan, trim, copy; returns whether any record changed."""
        alive = {s.id: s for s in self.registry.alive()}
        servers = ServerSets(healthy=set(alive) - self.registry.draining, alive=set(alive),
                             writable={s.id for s in self.registry.writable()},
                             free={sid: s.free_bytes for sid, s in alive.items()})
        budget = max(1, int(self.per_s * PASS_S))
        started = time.monotonic()
        short, trims, under, missing, below_goal = await asyncio.to_thread(self._scan, servers, budget)
        self._scan_s = time.monotonic() - started
        self.chunks_under_goal, self.under_goal_counted_at = below_goal, started
        trimmed = await self._trim(trims)
        copies = self._plan(short, alive)[:budget]
        copied = await self._copy_all(copies)
        self.copies_pending = max(0, missing - copied)
        if copies:
            log.info("%d chunks under goal can be repaired now; made %d of %d copies", under, copied, len(copies))
        return trimmed + copied > 0

    # ---- scanning -------------------------------------------------------------------------------
    def _scan(self, servers: ServerSets, limit: int) -> tuple[list[Shortfall], list[Trim], int, int, int]:
        """The `limit` most endangered chunks under goal that can be repaired now (some live
        server holds them, another could take a copy), the trims due, how many chunks could be
        repaired in all, how many copies that takes and how many chunks have fewer live replicas
        than their goal. Memory stays bounded however many there are (records come in inode
        order, so only the current file's goal is kept)."""
        worst: list = []  # heap whose top is the least endangered kept so far
        trims: list[Trim] = []
        under = missing = below_goal = 0
        goal_of: tuple[int, int | None] = (0, None)
        order = itertools.count()
        with self.db.read() as txn:
            shared = self.chunks.any_shared(txn)  # no look-up per record while nothing is shared
            for key, raw in txn.cursor(db=self.db.chunks):
                ino = U64x2.unpack(key)[0]
                if ino != goal_of[0]:
                    goal_of = (ino, self._goal(txn, ino))
                goal = goal_of[1]
                if goal is None:
                    continue
                rec = _record_dec.decode(raw)
                if shared:
                    goal = self.chunks.shared_goal(txn, rec.chunk_id, rec.version, goal)
                alive = sum(1 for s in rec.replicas if s in servers.alive)
                below_goal += alive < goal
                healthy = [s for s in rec.replicas if s in servers.healthy]
                if len(healthy) < goal:
                    if not servers.alive.intersection(rec.replicas):
                        continue  # every copy is on a dead server: only its return helps
                    busy = self.edits.pending_deletion(txn, rec.chunk_id, rec.version)
                    if servers.writable <= set(rec.replicas) | busy:
                        continue  # no server could take a copy now
                    under += 1
                    missing += goal - len(healthy)
                    heapq.heappush(worst, (-len(healthy), goal - len(healthy), next(order),
                                           Shortfall(key, rec, goal, len(healthy), busy, alive)))
                    if len(worst) > limit:
                        heapq.heappop(worst)
                elif len(rec.replicas) > goal and len(trims) < MAX_TRIMS_PER_PASS:
                    keep = sorted(healthy, key=lambda s: -servers.free.get(s, 0))[:goal]
                    trims.append(Trim(key, rec.chunk_id, rec.version, keep))
        short = [item[-1] for item in sorted(worst, key=lambda item: (-item[0], -item[1], item[2]))]
        return short, trims, under, missing, below_goal

    def _goal(self, txn: Txn, ino: int) -> int | None:
        try:
            return self.chunks.namespace.get(txn, ino).goal or self.chunks.namespace.default_goal
        except FsError:
            return None  # removed while we scan

    # ---- trimming -------------------------------------------------------------------------------
    async def _trim(self, trims: list[Trim]) -> int:
        if not trims:
            return 0
        dropped = await self.committer.run(self._apply_trims, trims)
        if dropped:
            log.info("dropped %d replicas of %d chunks at goal (over goal, dead or draining)",
                     dropped, len(trims))
            self.deleter.wake.set()
        return dropped

    def _apply_trims(self, txn: Txn, trims: list[Trim]) -> int:
        return sum(len(self.edits.trim(txn, t.key, t.chunk_id, t.version, t.keep)) for t in trims)

    # ---- copying --------------------------------------------------------------------------------
    def _plan(self, short: list[Shortfall], alive: dict[str, ServerState]) -> list[Copy]:
        copies: list[Copy] = []
        for chunk in short:
            sources = [alive[sid] for sid in chunk.record.replicas if sid in alive]
            targets = self.registry.place(chunk.goal - chunk.healthy, set(chunk.record.replicas) | chunk.busy)
            copies.extend(Copy(chunk, random.choice(sources), target) for target in targets)
        return copies

    async def _copy_all(self, copies: list[Copy]) -> int:
        tasks = []
        async with asyncio.TaskGroup() as group:
            for copy in copies:
                await self._slots.acquire()
                await self._pace()
                tasks.append(group.create_task(self._copy(copy)))
        return sum(task.result() for task in tasks)

    async def _pace(self) -> None:
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + 1.0 / self.per_s
        if start > now:
            await asyncio.sleep(start - now)

    async def _copy(self, copy: Copy) -> bool:
        """Make one copy and record it; never raises (a failed copy is retried by a later pass)."""
        rec = copy.chunk.record
        self.running += 1
        try:
            token = "" if self.tokens is None else self.tokens.issue(READ, rec.chunk_id, rec.version,
                                                                    holder=CHUNKSERVERS_HOLDER)
            await self.client.copy(copy.target.address, rec.chunk_id, rec.version, copy.source.address,
                                   rec.checksum, retry_s=COPY_RETRY_S, source_token=token)
            added = await self.committer.run(self.edits.add, copy.chunk.key, rec.chunk_id, rec.version,
                                             copy.target.id)
        except (FsError, TransportError) as exc:
            log.warning("copy of chunk %d v%d from %s to %s failed: %s", rec.chunk_id, rec.version,
                        copy.source.address, copy.target.address, exc)
            return False
        except Exception:
            log.exception("copy of chunk %d v%d to %s failed", rec.chunk_id, rec.version, copy.target.address)
            return False
        finally:
            self.running -= 1
            self._slots.release()
        if added:
            self.replicated += 1
            self._corrupt_copy_replaced(rec.chunk_id, rec.version, copy.target.id)
            copy.chunk.alive += 1
            if copy.chunk.alive == copy.chunk.goal and self.chunks_under_goal > 0:
                self.chunks_under_goal -= 1
        else:
            self.deleter.wake.set()  # the version went away meanwhile: the copy is garbage
        return added

    def _corrupt_copy_replaced(self, chunk_id: int, version: int, server_id: str) -> None:
        """A good copy now stands where a corrupt one was reported: fsck no longer counts it."""
        reported = self.corrupt_reports.get((chunk_id, version))
        if reported is not None:
            reported.discard(server_id)
            if not reported:
                del self.corrupt_reports[(chunk_id, version)]

    # ---- what chunkservers and admins report -------------------------------------------------------
    async def corrupt(self, report: r.CorruptReport) -> int:
        """Take corrupt copies out of their records (the next pass rebuilds them) and queue them
        for deletion; returns how many records changed."""
        corrupt = [(cid, ver) for cid, ver in report.chunks]
        self.corrupt_found += len(corrupt)
        for version in corrupt:
            self.corrupt_reports.setdefault(version, set()).add(report.server_id)
        while len(self.corrupt_reports) > MAX_CORRUPT_REPORTS:
            del self.corrupt_reports[next(iter(self.corrupt_reports))]
        with self.db.read() as txn:  # a look-up in the version index each
            found = {version: bytes(key) for version in corrupt
                     if (key := txn.get(U64x2.pack(*version), db=self.db.versions)) is not None}
        result = await self.committer.run(self.edits.drop_corrupt, report.server_id, corrupt, found)
        address = self._address(report.server_id)
        log.warning("%s reports %d corrupt chunk versions: %d dropped from their records, %d unreferenced",
                    address, len(corrupt), len(result.dropped), len(result.unreferenced))
        for chunk_id, version in result.kept:
            log.error("chunk %d v%d: its only replica, on %s, is corrupt; kept for salvage",
                      chunk_id, version, address)
        self.deleter.wake.set()
        self.wake.set()
        return len(result.dropped)

    async def reconcile(self, server_id: str, held: list[Version]) -> int:
        """At a server's registration: records that list it for versions it does not hold lose
        it (a replaced disk is refilled by re-replication); returns how many.

        A version written to the server after it listed its disk and committed before this runs
        loses that replica too; re-replication makes it up, and the stray copy is removed at a
        later registration once no file references its version."""
        missing = await asyncio.to_thread(self._stale, server_id, set(held))
        if not missing:
            return 0
        result = await self.committer.run(self.edits.drop_server, server_id, missing, False)
        log.warning("%s does not hold %d chunk versions recorded on it; dropped %d from their records "
                    "(%d kept: their only replica)", self._address(server_id), len(missing),
                    len(result.dropped), len(result.kept))
        self.wake.set()
        return len(result.dropped)

    async def drain(self, req: r.DrainReq) -> r.ServerStatus:
        """Mark a server draining (or not): it gets no new chunks and every pass moves its
        chunks elsewhere, then drops it from their records."""
        server = self.registry.find(req.server)
        if server is None:
            raise FsError(errno.ENOENT, f"no chunkserver {req.server!r} is known")
        await self.committer.run(self.registry.save_draining, server.id, req.draining)
        self.registry.set_draining(server.id, req.draining)
        log.info("%s %s", server.address, "is being drained" if req.draining else "is no longer drained")
        self.wake.set()
        with self.db.read() as txn:
            counts = self.chunks.namespace.counts.read(txn).replicas
        return next(s for s in self.registry.status(counts) if s.id == server.id)

    def _stale(self, server_id: str, held: set[Version]) -> dict[Version, bytes]:
        """The records that list `server_id` for a version not in `held` (blocking). If as many
        of `held` are listed on it as the table's count of records listing it (one snapshot),
        there are none: O(held) look-ups. Else the chunk table is scanned for them, a page at a
        time (short read transactions)."""
        with self.db.read() as txn:
            listed = self.edits.listing(txn, server_id, held)
            recorded = self.chunks.namespace.counts.read(txn).replicas.get(server_id, 0)
        if listed == recorded:
            return {}
        stale: dict[Version, bytes] = {}
        after: bytes | None = None
        while True:
            with self.db.read() as txn:
                page, after = self.edits.find_page(
                    txn, lambda rec: server_id in rec.replicas and (rec.chunk_id, rec.version) not in held,
                    after, STALE_SCAN_PAGE)
            stale.update(page)
            if after is None:
                return stale

    def _address(self, server_id: str) -> str:
        server = self.registry.servers.get(server_id)
        return server.address if server else server_id
