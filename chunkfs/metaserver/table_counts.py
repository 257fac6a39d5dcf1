"""Counts of what the metadata tables hold (files, directories, bytes, chunks, replicas per
server), kept in LMDB beside the tables and changed in the same transactions as they are.

`chunkfs status`, `/metrics`, the status page and `statfs` read these instead of scanning the
inode and chunk tables, so each answer costs O(servers) whatever the file count. Being rows of
the `counters` table they are committed atomically with the change they count, survive a
restart, are replicated to standbys with every other key and are in every backup. A database
written before they existed has none: `ensure` counts once, at start (`rebuild` callers scan).

Who changes what: `Namespace.put`/`_free` (files, directories, file bytes) and `ChunkTable`'s
record writes (chunks, chunk bytes, replicas per server). Each reads the row it replaces, so a
count is right whatever path changed the row.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from chunkfs.metaserver.db import MetaDB, Txn

log = logging.getLogger(__name__)

I64 = struct.Struct(">q")
PREFIX = b"count."
PRESENT = PREFIX + b"present"  # written once the counts are complete (by `ensure`, or a new database)
FILES = PREFIX + b"files"  # inodes that are not directories
DIRECTORIES = PREFIX + b"directories"
FILE_BYTES = PREFIX + b"file_bytes"  # sum of the sizes of regular files
CHUNKS = PREFIX + b"chunks"  # chunk records (one per file and chunk index)
CHUNK_BYTES = PREFIX + b"chunk_bytes"  # sum of the chunk records' lengths
# sum of the lengths of distinct chunk versions (each counted once, by the record the version
# index names): what is stored, against CHUNK_BYTES, what the files refer to (snapshots, dedup)
STORED_BYTES = PREFIX + b"stored_bytes"
REPLICAS = PREFIX + b"replicas."  # + server id: chunk records listing that server


@dataclass
class TableCounts:
    files: int = 0
    directories: int = 0
    file_bytes: int = 0
    chunks: int = 0
    chunk_bytes: int = 0
    stored_bytes: int = 0
    replicas: dict[str, int] = field(default_factory=dict)  # server id -> records listing it


class Counts:
    """Reads and moves the counts; every method works in the transaction it is given."""

    def __init__(self, db: MetaDB) -> None:
        self.db = db

    def add(self, txn: Txn, key: bytes, delta: int) -> None:
        if delta:
            raw = txn.get(key, db=self.db.counters)
            txn.put(key, I64.pack((I64.unpack(raw)[0] if raw else 0) + delta), db=self.db.counters)

    def replicas_moved(self, txn: Txn, before: list[str], after: list[str]) -> None:
        for server in set(before) ^ set(after):
            self.add(txn, REPLICAS + server.encode(), 1 if server in after else -1)

    def read(self, txn: Txn) -> TableCounts:
        """The counts as of `txn`: a handful of gets and one cursor over the servers' rows."""
        def get(key: bytes) -> int:
            raw = txn.get(key, db=self.db.counters)
            return I64.unpack(raw)[0] if raw else 0

        counts = TableCounts(get(FILES), get(DIRECTORIES), get(FILE_BYTES), get(CHUNKS), get(CHUNK_BYTES),
                             get(STORED_BYTES))
        cursor = txn.cursor(db=self.db.counters)
        if cursor.set_range(REPLICAS):
            for key, raw in cursor:
                if not key.startswith(REPLICAS):
                    break
                if value := I64.unpack(raw)[0]:
                    counts.replicas[key[len(REPLICAS):].decode()] = value
        return counts

    def present(self, txn: Txn) -> bool:
        return txn.get(PRESENT, db=self.db.counters) is not None

    def ensure(self, txn: Txn, rebuild: Callable[[Txn], TableCounts]) -> bool:
        """Give a database without counts (written by an older metaserver) its counts, from one
        full scan (`rebuild`); returns whether it had to. Run once at start, before serving."""
        if self.present(txn):
            return False
        log.warning("the database has no table counts (written by an older chunkfs): counting once")
        self.write(txn, rebuild(txn))
        return True

    def write(self, txn: Txn, counts: TableCounts) -> None:
        """Replace every count by `counts` and mark them complete."""
        cursor = txn.cursor(db=self.db.counters)
        while cursor.set_range(PREFIX) and cursor.key().startswith(PREFIX):
            cursor.delete()
        for key, value in ((FILES, counts.files), (DIRECTORIES, counts.directories),
                           (FILE_BYTES, counts.file_bytes), (CHUNKS, counts.chunks),
                           (CHUNK_BYTES, counts.chunk_bytes), (STORED_BYTES, counts.stored_bytes),
                           *((REPLICAS + s.encode(), n) for s, n in counts.replicas.items())):
            txn.put(key, I64.pack(value), db=self.db.counters)
        txn.put(PRESENT, b"", db=self.db.counters)
