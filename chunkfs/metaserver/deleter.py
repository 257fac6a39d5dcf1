"""Removes dropped chunk versions from their chunkservers, in the background.

The queue lives in LMDB (see `ChunkTable.queue_deletion`), so a deletion that fails because a
server is down is retried on the next pass and survives metaserver restarts: never forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from chunkfs.errors import FsError, TransportError
from chunkfs.metaserver.chunk_table import ChunkTable
from chunkfs.metaserver.db import GroupCommitter, MetaDB
from chunkfs.metaserver.registry import Registry
from chunkfs.metaserver.replication_log import ReplicationLog
from chunkfs.protocol.chunk_client import ChunkClient

log = logging.getLogger(__name__)

BATCH = 256
WAKE_COALESCE_S = 0.1
CONFIRM_POLLS, CONFIRM_POLL_S = 50, 0.1  # at most 5 s for the standbys to confirm a pass's batches
PER_SERVER = 4
"""DELETEs in flight to one chunkserver at a time. A pass over 256 versions used to send all
768 at once: the metaserver's connection pool (64) timed most of them out, each failure was
retried and logged on every pass, and the storm took the event loop from clients' commits
(4 KiB creates fell from ~225/s to ~12/s while a 1 GiB file's chunks were being deleted)."""


class Deleter:
    def __init__(self, db: MetaDB, committer: GroupCommitter, chunks: ChunkTable, registry: Registry,
                 client: ChunkClient, interval_s: float) -> None:
        self.db, self.committer, self.chunks = db, committer, chunks
        self.registry, self.client, self.interval_s = registry, client, interval_s
        self.deleted = 0  # replicas deleted since start
        self.versions_deleted = 0  # versions deleted from every server that held them
        self.wake = asyncio.Event()
        self.backlog = False  # the last pass found a full batch and deleted some of it

    async def run(self) -> None:
        while True:
            try:
                await self.pass_once()
            except Exception:
                log.exception("deletion pass failed; retrying later")
            else:
                if self.backlog:  # a full batch went through: go on (one server's share at a time)
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval_s)
                # woken by a mutation: the others arriving meanwhile share the pass (an rm -rf
                # woke it once per unlink, 3% of the metaserver's CPU for passes finding nothing)
                await asyncio.sleep(WAKE_COALESCE_S)
            self.wake.clear()

    async def pass_once(self) -> int:
        with self.db.read() as txn:
            pending = self.chunks.pending_deletions(txn, BATCH)
            seq = ReplicationLog.snapshot_seq(txn, self.db)
        if pending and not await self._everywhere(seq):
            self.backlog = False
            return 0
        alive = {s.id: s.address for s in self.registry.alive()}
        jobs = [(cid, ver, sid) for cid, ver, servers in pending for sid in servers if sid in alive]
        in_flight = {address: asyncio.Semaphore(PER_SERVER) for address in alive.values()}

        async def delete(address: str, chunk_id: int, version: int) -> bool:
            async with in_flight[address]:
                return await self._delete(address, chunk_id, version)

        results = await asyncio.gather(*(delete(alive[sid], cid, ver) for cid, ver, sid in jobs))
        done = [job for job, ok in zip(jobs, results, strict=True) if ok]
        if done:
            self.versions_deleted += await self.committer.run(self._mark_done, done)
        self.deleted += len(done)
        self.backlog = len(pending) == BATCH and bool(done)
        return len(done)

    async def _everywhere(self, seq: int) -> bool:
        """Wait (a little) until the batches that queued these deletions are on the standbys
        that could take over (`GroupCommitter.everywhere`); a synchronous standby confirms within
        a round trip, so this costs a deletion pass nothing but the wait for it."""
        for _ in range(CONFIRM_POLLS):
            if self.committer.everywhere(seq):
                return True
            await asyncio.sleep(CONFIRM_POLL_S)
        return False

    def _mark_done(self, txn, done) -> int:
        """Returns how many versions are now gone from every server."""
        return sum(self.chunks.deletion_done(txn, cid, ver, sid) for cid, ver, sid in done)

    async def _delete(self, address: str, chunk_id: int, version: int) -> bool:
        try:
            await self.client.delete(address, chunk_id, version, retry_s=1.0)
            return True
        except (FsError, TransportError) as exc:
            log.info("could not delete chunk %d v%d on %s yet: %s", chunk_id, version, address, exc)
            return False
