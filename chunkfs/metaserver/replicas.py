"""Changes to where a chunk version's replicas are, other than a client's commit: a copy added by
re-replication, replicas trimmed once a chunk is at its goal, replicas found corrupt or missing.

Every change is made against the record as it is in the writing transaction and applies only
while that record still holds the same chunk version (a client's commit may have replaced it
meanwhile). Nothing here takes the last replica out of a record: a chunk whose only copy is bad
or gone is left for an operator to see rather than forgotten.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from chunkfs.metaserver.chunk_table import ChunkRecord, ChunkTable
from chunkfs.metaserver.db import U64x2, Txn

log = logging.getLogger(__name__)

Version = tuple[int, int]  # (chunk_id, version)

_record_dec = msgspec.msgpack.Decoder(ChunkRecord)
_servers_dec = msgspec.msgpack.Decoder(list[str])


@dataclass
class Dropped:
    """What taking one server out of some records did."""

    dropped: list[Version]  # taken out of their records
    kept: list[Version]  # left in: that server held the record's only replica
    unreferenced: list[Version]  # no record holds these versions


class ReplicaEdits:
    def __init__(self, chunks: ChunkTable) -> None:
        self.chunks = chunks
        self.db = chunks.db

    # ---- reading (run them in a thread) --------------------------------------------------------
    def find(self, txn: Txn, matches: Callable[[ChunkRecord], bool]) -> dict[Version, bytes]:
        """The chunk versions, with their record keys, of the records `matches` accepts: a full scan."""
        return self.find_page(txn, matches, None, sys.maxsize)[0]

    def find_page(self, txn: Txn, matches: Callable[[ChunkRecord], bool], after: bytes | None,
                  limit: int) -> tuple[dict[Version, bytes], bytes | None]:
        """`find` over the next `limit` records after the key `after` (None: from the start);
        with the last key looked at, None once the table is done. One page, one short transaction."""
        found = {}
        cursor = txn.cursor(db=self.db.chunks)
        positioned = cursor.set_range(after) if after is not None else cursor.first()
        if positioned and after is not None and cursor.key() == after:
            positioned = cursor.next()
        seen, last = 0, None
        while positioned and seen < limit:
            last = cursor.key()
            rec = _record_dec.decode(cursor.value())
            if matches(rec):
                found[(rec.chunk_id, rec.version)] = last
            seen += 1
            positioned = cursor.next()
        return found, last if positioned else None

    def listing(self, txn: Txn, server_id: str, versions: Iterable[Version]) -> int:
        """How many of `versions` (distinct) a record lists on `server_id`: one look-up in the
        version index and one record read each."""
        listed = 0
        for chunk_id, version in versions:
            key = txn.get(U64x2.pack(chunk_id, version), db=self.db.versions)
            raw = txn.get(key, db=self.db.chunks) if key is not None else None
            if raw is None:
                continue
            rec = _record_dec.decode(raw)
            listed += (rec.chunk_id, rec.version) == (chunk_id, version) and server_id in rec.replicas
        return listed

    def pending_deletion(self, txn: Txn, chunk_id: int, version: int) -> set[str]:
        """Servers this chunk version is still queued to be deleted from."""
        raw = txn.get(U64x2.pack(chunk_id, version), db=self.db.deletions)
        return set(_servers_dec.decode(raw)) if raw else set()

    # ---- mutations (through the group committer) ----------------------------------------------
    def _current(self, txn: Txn, key: bytes, chunk_id: int, version: int) -> ChunkRecord | None:
        raw = txn.get(key, db=self.db.chunks)
        rec = _record_dec.decode(raw) if raw else None
        return rec if rec is not None and (rec.chunk_id, rec.version) == (chunk_id, version) else None

    def add(self, txn: Txn, key: bytes, chunk_id: int, version: int, server_id: str) -> bool:
        """Record a copy made on `server_id`. A copy the record no longer wants (the version was
        replaced or the file removed meanwhile, or a deletion of it from that server is still
        queued) is queued for deletion instead; returns whether it was recorded."""
        rec = self._current(txn, key, chunk_id, version)
        if rec is None or server_id in self.pending_deletion(txn, chunk_id, version):
            self.chunks.queue_deletion(txn, chunk_id, version, [server_id])
            return False
        if server_id not in rec.replicas:
            rec.replicas.append(server_id)
            self.chunks.write_record(txn, key, rec)
        return True

    def trim(self, txn: Txn, key: bytes, chunk_id: int, version: int, keep: list[str]) -> list[str]:
        """Keep only the replicas in `keep` (all of which must still be in the record) and queue
        the others for deletion; returns the servers dropped."""
        rec = self._current(txn, key, chunk_id, version)
        if rec is None or not keep or not set(keep) <= set(rec.replicas):
            return []
        drop = [s for s in rec.replicas if s not in keep]
        if drop:
            rec.replicas = [s for s in rec.replicas if s in keep]
            self.chunks.write_record(txn, key, rec)
            self.chunks.queue_deletion(txn, chunk_id, version, drop)
        return drop

    def drop_server(self, txn: Txn, server_id: str, found: dict[Version, bytes],
                    queue_deletion: bool) -> Dropped:
        """Take `server_id` out of the records at `found` (from `find`), queueing
        the deletion of its copy if asked to."""
        result = Dropped([], [], [])
        for (chunk_id, version), key in found.items():
            rec = self._current(txn, key, chunk_id, version)
            if rec is None or server_id not in rec.replicas:
                continue
            if len(rec.replicas) == 1:
                result.kept.append((chunk_id, version))
                continue
            rec.replicas.remove(server_id)
            self.chunks.write_record(txn, key, rec)
            if queue_deletion:
                self.chunks.queue_deletion(txn, chunk_id, version, [server_id])
            result.dropped.append((chunk_id, version))
        return result

    def drop_corrupt(self, txn: Txn, server_id: str, corrupt: list[Version],
                     found: dict[Version, bytes]) -> Dropped:
        """Take the corrupt copies on `server_id` out of their records and queue every one of
        them for deletion, but those that are their record's only replica."""
        result = self.drop_server(txn, server_id, found, queue_deletion=False)
        for chunk_id, version in corrupt:
            if (chunk_id, version) in result.kept:
                continue
            self.chunks.queue_deletion(txn, chunk_id, version, [server_id])
            if (chunk_id, version) not in found:
                result.unreferenced.append((chunk_id, version))
        return result

