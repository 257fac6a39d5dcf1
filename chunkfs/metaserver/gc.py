"""`chunkfs gc`: a garbage-collection pass on demand.

Chunkservers report what they hold only when they register; a chunk version left behind later
(an upload whose client died before committing, a copy whose deletion was lost) would stay until
the server restarts. A pass asks every live chunkserver for its chunk files older than
`min_age_s` and, in one write transaction, queues for deletion those no file references and no
writer holds a live reservation for (`ChunkTable.unreferenced`, as at registration; reservations
that ran out or whose client has gone are ended first, `VersionReservations.prune`, and so are
dedup pins that ran out, `ChunkTable.end_pins`); the
`Deleter` then removes them. Because the check and the queueing share a transaction, a version a
commit made part of a file is never queued, and one queued is never referenced after: nothing
referenced is ever removed. A dry run only counts.
"""

from __future__ import annotations

import asyncio
import logging
import time

from chunkfs.errors import FsError, TransportError
from chunkfs.metaserver.chunk_table import ChunkTable
from chunkfs.metaserver.db import GroupCommitter, Txn
from chunkfs.metaserver.deleter import Deleter
from chunkfs.metaserver.registry import Registry
from chunkfs.protocol import records as r
from chunkfs.protocol.chunk_client import ChunkClient

log = logging.getLogger(__name__)

INVENTORY_RETRY_S = 2.0

Holdings = dict[str, list[r.ChunkFile]]  # server id -> the old chunk files it holds


class GarbageCollector:
    def __init__(self, committer: GroupCommitter, chunks: ChunkTable, registry: Registry,
                 client: ChunkClient, deleter: Deleter, orphan_grace_s: float) -> None:
        self.committer, self.chunks, self.registry = committer, chunks, registry
        self.client, self.deleter, self.orphan_grace_s = client, deleter, orphan_grace_s

    async def run(self, req: r.GcReq) -> r.GcReport:
        alive = self.registry.alive_ids()
        servers = sorted(self.registry.servers.values(), key=lambda s: s.address)
        report = {s.id: r.GcServer(id=s.id, address=s.address) for s in servers}
        asked = [s for s in servers if s.id in alive]
        for s in servers:
            if s.id not in alive:
                report[s.id].error = "down"
        answers = await asyncio.gather(*(self._inventory(s.address, req.min_age_s) for s in asked))
        holdings: Holdings = {}
        for server, answer in zip(asked, answers, strict=True):
            if isinstance(answer, str):
                report[server.id].error = answer
            else:
                in_range = set(self.chunks.in_range([(f.chunk_id, f.version) for f in answer], server.address))
                holdings[server.id] = [f for f in answer if (f.chunk_id, f.version) in in_range]
        # a dry run goes through the writer thread too: `_find` ends the reservations that ran
        # out (their versions count as garbage), which only that thread may do
        garbage = await self.committer.run(self._find, holdings, not req.dry_run)
        for server_id, files in garbage.items():
            report[server_id].versions = len(files)
            report[server_id].bytes = sum(f.size_bytes for f in files)
        versions = sum(s.versions for s in report.values())
        size = sum(s.bytes for s in report.values())
        if versions and not req.dry_run:
            log.info("gc: %d unreferenced chunk versions (%d bytes) queued for deletion", versions, size)
            self.deleter.wake.set()
        return r.GcReport(dry_run=req.dry_run, versions=versions, bytes=size, servers=list(report.values()))

    async def _inventory(self, address: str, min_age_s: float) -> list[r.ChunkFile] | str:
        try:
            return await self.client.inventory(address, min_age_s, retry_s=INVENTORY_RETRY_S)
        except (FsError, TransportError, ValueError) as exc:  # ValueError: an address that is none
            log.warning("gc: cannot list the chunks of %s: %s", address, exc)
            return str(exc)

    def _find(self, txn: Txn, holdings: Holdings, queue: bool) -> Holdings:
        self.chunks.owners.prune(txn)  # an upload whose reservation ended is garbage now
        self.chunks.end_pins(txn, time.time())  # and a version kept for a dedup answer whose time ran out
        garbage = self._unreferenced(txn, holdings)
        for server_id, files in garbage.items() if queue else ():
            for f in files:
                self.chunks.queue_deletion(txn, f.chunk_id, f.version, [server_id])
        return garbage

    def _unreferenced(self, txn: Txn, holdings: Holdings) -> Holdings:
        held = list({(f.chunk_id, f.version) for files in holdings.values() for f in files})
        unreferenced = set(self.chunks.unreferenced(txn, held))
        return {sid: [f for f in files if (f.chunk_id, f.version) in unreferenced]
                for sid, files in holdings.items()}
