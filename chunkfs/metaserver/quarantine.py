"""After a restore, chunk versions the database does not know are kept, not deleted.

A metaserver started on a copy (a restored backup, a promoted standby; see `backup.py`) does not
know what was written after the copy was taken, yet the chunkservers may hold it: the chunks of
files written since. Normally a version a chunkserver reports at registration that no file
references is garbage and is deleted at once; for `keep_s` after a restore such versions are
instead listed in the `quarantine` table (version -> servers holding it) and left on disk, so
nothing is lost before an operator has looked (`chunkfs status` counts them). When the time is
up they are queued for deletion like any other garbage.

Independently of restores, every registration moves the id counters past the highest chunk id
and version the server holds, so a new chunk can never take the name of one already on disk.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from chunkfs.metaserver.backup import RESTORED_AT
from chunkfs.metaserver.chunk_table import ChunkTable
from chunkfs.metaserver.db import U64x2, GroupCommitter, MetaDB, Txn, read_u64

log = logging.getLogger(__name__)

_servers = msgspec.msgpack.Decoder(list[str])
_enc = msgspec.msgpack.Encoder()


class Quarantine:
    def __init__(self, db: MetaDB, committer: GroupCommitter, chunks: ChunkTable, keep_s: float) -> None:
        self.db, self.committer, self.chunks, self.keep_s = db, committer, chunks, keep_s
        with db.read() as txn:
            raw = txn.get(RESTORED_AT, db=db.counters)
        self.until = read_u64(raw) / 1e9 + keep_s if raw else None  # Unix time the quarantine ends
        chunks.holding_back = self.active  # `chunkfs gc` and registrations delete nothing meanwhile

    def active(self) -> bool:
        return self.until is not None and time.time() < self.until

    def screen(self, txn: Txn, server_id: str, held: list[tuple[int, int]],
               recent: list[tuple[int, int]]) -> None:
        """At a server's registration: move the id counters past what it holds (`held` and the
        `recent` files it does not offer for deletion yet) and, while a restore's quarantine
        lasts, list the versions of `held` that no file references."""
        self.chunks.chunk_ids.skip_past(txn, [cid for cid, _ver in [*held, *recent]])
        self.chunks.versions.skip_past(txn, [ver for _cid, ver in [*held, *recent]])
        if not held or not self.active():
            return
        for chunk_id, version in held:
            if self.chunks.referenced(txn, chunk_id, version):
                continue
            key = U64x2.pack(chunk_id, version)
            raw = txn.get(key, db=self.db.quarantine)
            servers = set(_servers.decode(raw)) if raw else set()
            if server_id not in servers:
                txn.put(key, _enc.encode(sorted(servers | {server_id})), db=self.db.quarantine)

    def count(self, txn: Txn) -> int:
        return txn.stat(self.db.quarantine)["entries"]

    async def run(self) -> None:
        """Wait out the quarantine, then queue what it kept for deletion."""
        if self.until is None:
            return
        while self.active():  # noqa: ASYNC110 (waits for a wall-clock time, not for an event)
            await asyncio.sleep(min(60.0, max(0.1, self.until - time.time())))
        try:
            released = await self.committer.run(self._release)
        except Exception:
            log.exception("could not end the quarantine; it ends at the next start")
            return
        self.until = None
        log.warning("quarantine after the restore is over: %d chunk versions no file references are "
                    "queued for deletion", released)

    def _release(self, txn: Txn) -> int:
        released = 0
        cursor = txn.cursor(db=self.db.quarantine)
        while cursor.first():
            chunk_id, version = U64x2.unpack(cursor.key())
            servers = _servers.decode(cursor.value())
            cursor.delete()
            if not self.chunks.referenced(txn, chunk_id, version):
                self.chunks.queue_deletion(txn, chunk_id, version, servers)
                released += 1
        txn.delete(RESTORED_AT, db=self.db.counters)
        return released
