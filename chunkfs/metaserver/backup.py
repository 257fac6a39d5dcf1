"""Consistent copies of the metadata database (`chunkfs backup`, a standby's first copy), and what
a metaserver does when it starts on such a copy (a restored backup or a promoted standby).

A copy is made with LMDB's own copy (compacting), which reads one snapshot: it holds every batch
up to the one it ends with (`replication_seq` in it) and nothing after. Every copy is marked
(`COPY_MARK`); a metaserver that starts on a marked database knows the cluster may have moved on
since the copy was taken, and before serving:
- moves its inode, chunk id and version counters far ahead, so nothing it hands out can collide
  with what was handed out after the copy (chunkservers may still hold such chunk versions);
- begins a new replication history (standbys of the old one take a new copy);
- records when it was restored: for `restore_quarantine_s` after that, chunk versions that
  chunkservers hold and the database does not know are kept (see `quarantine.py`), not deleted.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import lmdb
import xxhash

from chunkfs.metaserver.db import MetaDB, Txn, read_u64, u64
from chunkfs.metaserver.replication_log import HISTORY_KEY, ReplicationLog

log = logging.getLogger(__name__)

COPY_MARK = b"copied_at_ns"  # in `counters` of every copy; removed by the metaserver starting on it
RESTORED_AT = b"restored_at_ns"  # in `counters`: when this database last started as a copy
ID_JUMP = 1 << 40  # chunk ids and versions skipped after a restore
INODE_JUMP = 1 << 32  # inode numbers skipped after a restore
COUNTERS = (b"next_ino", b"next_chunk_id", b"next_version")  # see Namespace and ChunkTable
WORK_PREFIX = ".backup-"
PIECE_BYTES = 1 << 20


def copy_checksum(path: Path) -> str:
    """xxh3-128 of a copy's file, sent with it so a damaged transfer is noticed."""
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while piece := f.read(PIECE_BYTES):
            hasher.update(piece)
    return hasher.hexdigest()


def make_copy(db: MetaDB) -> tuple[Path, str]:
    """A marked, compact copy of the whole database as of one instant, in a new directory under
    the database's own (remove it with `discard_copy`); returns its data file and checksum.
    Blocking: run it in a thread."""
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=db.env.path()))
    try:
        db.env.copy(str(work), compact=True)
        copy = lmdb.open(str(work), max_dbs=16, map_size=db.env.info()["map_size"])
        try:
            counters = copy.open_db(b"counters")
            with copy.begin(write=True) as txn:
                txn.put(COPY_MARK, u64(time.time_ns()), db=counters)
        finally:
            copy.close()
        (work / "lock.mdb").unlink(missing_ok=True)
        data = work / "data.mdb"
        return data, copy_checksum(data)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def discard_copy(data: Path) -> None:
    shutil.rmtree(data.parent, ignore_errors=True)


def start_primary(txn: Txn, db: MetaDB) -> bool:
    """At a metaserver's start, before it serves: give a new database its replication history,
    and make a copy safe to serve (see the module's doc). Returns whether it was a copy."""
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
    txn.put(RESTORED_AT, u64(time.time_ns()), db=db.counters)
    txn.delete(COPY_MARK, db=db.counters)
    ReplicationLog.new_history(txn, db)
    log.warning("this database is a copy first taken at %s (a restored backup or a promoted standby): what "
                "changed after its last update is not in it; chunk versions the chunkservers hold that it does "
                "not know are kept in quarantine, not deleted", copied_at)
    return True
