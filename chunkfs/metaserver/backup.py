"""Consistent copies of the metadata database (`chunkfs backup`, a standby's first copy), and what
a metaserver does when it starts on such a copy (a restored backup or a promoted standby).

A copy is LMDB's own compacting copy of one read snapshot, streamed as it is made (`CopyStream`:
LMDB writes it into a pipe, zstd compresses what comes out, the HTTP response sends each piece),
so nothing is staged on the metaserver's disk and its memory holds a piece at a time. The zstd
frame carries a checksum of the whole copy, which the receiver checks, and ends only if the copy
was complete: a copy that fails midway is cut off, never ended cleanly.

The snapshot holds every batch up to the one it ends with (`replication_seq` in it) and nothing
after. Every copy is marked (`COPY_MARK`): the mark is committed, the snapshot opened, the mark
deleted again, so it is in the copy and gone from the database within a commit or two (a
metaserver restarted in between starts as on a copy: safe, only noisy). A metaserver that starts
on a marked database knows the cluster may have moved on since the copy was taken, and before
serving:
- moves its inode, chunk id and version counters far ahead, so nothing it hands out can collide
  with what was handed out after the copy (chunkservers may still hold such chunk versions);
- begins a new replication history (standbys of the old one take a new copy);
- records when it was restored: for `restore_quarantine_s` after that, chunk versions that
  chunkservers hold and the database does not know are kept (see `quarantine.py`), not deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import BinaryIO

import zstandard

from chunkfs.metaserver.db import GroupCommitter, MetaDB, Txn, read_u64, u64
from chunkfs.metaserver.replication_log import HISTORY_KEY, ReplicationLog

log = logging.getLogger(__name__)

COPY_MARK = b"copied_at_ns"  # in `counters` of every copy; removed by the metaserver starting on it
RESTORED_AT = b"restored_at_ns"  # in `counters`: when this database last started as a copy
ID_JUMP = 1 << 40  # chunk ids and versions skipped after a restore
INODE_JUMP = 1 << 32  # inode numbers skipped after a restore
COUNTERS = (b"next_ino", b"next_chunk_id", b"next_version")  # see Namespace and ChunkTable
WORK_PREFIX = ".backup-"  # copies staged by older versions (removed at start)
PIECE_BYTES = 1 << 20
CONTENT_TYPE = "application/zstd"
ZSTD_LEVEL = 3  # ~3x on a namespace at the speed of a disk; level 1 is barely faster here


class CopyStream:
    """The zstd-compressed compact copy of snapshot `txn`, read piece by piece (`read` blocks:
    call it in a thread). Owns `txn` (and its place in the database's transaction gate) and
    ends it at `close`."""

    def __init__(self, db: MetaDB, txn: Txn) -> None:
        self.db, self.txn = db, txn
        self.error: BaseException | None = None
        read_fd, self._write_fd = os.pipe()
        self._pipe: BinaryIO = os.fdopen(read_fd, "rb")
        self._compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).stream_reader(self._pipe)
        self._writer = threading.Thread(target=self._copy, name="lmdb-copy", daemon=True)
        self._writer.start()

    def _copy(self) -> None:
        try:
            self.db.env.copyfd(self._write_fd, compact=True, txn=self.txn)
        except BaseException as exc:  # the reader raises it: the stream must not end cleanly
            self.error = exc
        finally:
            os.close(self._write_fd)

    def read(self) -> bytes:
        """The next compressed piece; b"" once the copy is complete and the frame ended."""
        piece = self._compressed.read(PIECE_BYTES)
        if not piece or self.error is not None:
            self._writer.join()
            if self.error is not None:
                raise RuntimeError(f"the copy of the database failed: {self.error}") from self.error
        return piece

    def close(self) -> None:
        self._pipe.close()  # a writer still copying gets EPIPE and ends
        self._writer.join()
        self.txn.abort()
        self.db.gate.leave()


async def open_copy(db: MetaDB, committer: GroupCommitter) -> CopyStream:
    """A marked copy of the database as of now, to stream (see the module's doc)."""
    await committer.run(lambda txn: txn.put(COPY_MARK, u64(time.time_ns()), db=db.counters))
    db.gate.enter()
    try:
        snapshot = db.env.begin(buffers=False)
    except BaseException:
        db.gate.leave()
        raise
    try:
        await committer.run(lambda txn: txn.delete(COPY_MARK, db=db.counters))
        return CopyStream(db, snapshot)
    except BaseException:
        snapshot.abort()
        db.gate.leave()
        raise


def start_primary(txn: Txn, db: MetaDB, in_sync: bool = False) -> bool:
    """At a metaserver's start, before it serves: give a new database its replication history,
    and make a copy safe to serve (see the module's doc). Returns whether it was a copy.

    `in_sync`: a synchronous standby in sync promoted by the election (election.py): its copy
    holds every acknowledged change, so nothing the chunkservers hold beyond it was ever
    acknowledged and no quarantine is kept; the counters jump and a new history begins all the
    same (the old primary may have handed out ids, and committed a batch, that it never
    acknowledged)."""
    for stale in Path(db.env.path()).glob(WORK_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)  # copies a crash left behind
    if txn.get(HISTORY_KEY, db=db.counters) is None:
        ReplicationLog.new_history(txn, db)
    mark = txn.get(COPY_MARK, db=db.counters)
    if mark is None:
        return False
    copied_at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(read_u64(mark) / 1e9))
    for name in COUNTERS:
        raw = txn.get(name, db=db.counters)
        jump = INODE_JUMP if name == b"next_ino" else ID_JUMP
        txn.put(name, u64((read_u64(raw) if raw else 1) + jump), db=db.counters)
    txn.delete(COPY_MARK, db=db.counters)
    ReplicationLog.new_history(txn, db)
    if in_sync:
        log.warning("a standby in sync becomes the primary: its copy (first taken at %s) holds every "
                    "acknowledged change", copied_at)
        return True
    txn.put(RESTORED_AT, u64(time.time_ns()), db=db.counters)
    log.warning("this database is a copy first taken at %s (a restored backup or a promoted standby): what "
                "changed after its last update is not in it; chunk versions the chunkservers hold that it does "
                "not know are kept in quarantine, not deleted", copied_at)
    return True
