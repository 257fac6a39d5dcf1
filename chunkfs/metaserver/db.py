"""The metaserver's LMDB environment: tables, key encodings, and group commit.

Every mutation runs as its own (nested) write transaction in one writer thread. Mutations that
arrive while a commit is being flushed are batched into the next outer transaction, whose single
durable commit (fsync) covers them all; each caller is answered only after that commit, so an
acknowledged change is never lost on a crash, and a failed mutation rolls back alone.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import struct
import threading
from pathlib import Path
from typing import Any, Callable

import lmdb

log = logging.getLogger(__name__)

U64 = struct.Struct(">Q")
U64x2 = struct.Struct(">QQ")
MAX_BATCH = 512


def u64(n: int) -> bytes:
    return U64.pack(n)


def read_u64(b: bytes) -> int:
    return U64.unpack(b)[0]


class MetaDB:
    """Opens the environment and names its tables; owns nothing else."""

    def __init__(self, path: Path, map_size_bytes: int = 1 << 36) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), max_dbs=16, map_size=map_size_bytes, sync=True, metasync=True)
        self.inodes = self.env.open_db(b"inodes")
        self.dentries = self.env.open_db(b"dentries")
        self.xattrs = self.env.open_db(b"xattrs")
        self.chunks = self.env.open_db(b"chunks")
        self.inline = self.env.open_db(b"inline")  # inode -> the bytes of a small file (no chunks then)
        self.deletions = self.env.open_db(b"deletions")
        self.servers = self.env.open_db(b"servers")
        self.counters = self.env.open_db(b"counters")
        self.draining = self.env.open_db(b"draining")  # server id -> b"" while it is being drained
        self.orphans = self.env.open_db(b"orphans")  # inode -> client id: unlinked, still open there
        self.quarantine = self.env.open_db(b"quarantine")  # (chunk id, version) -> servers: kept after a restore
        self.leases = self.env.open_db(b"leases")  # directory -> the client holding it (leases.py)
        self.replies = self.env.open_db(b"replies")  # (minute, client, request id) -> reply: see replies.py

    def read(self) -> lmdb.Transaction:
        return self.env.begin(buffers=False)

    def close(self) -> None:
        self.env.close()


class GroupCommitter:
    def __init__(self, db: MetaDB, write_log: Any = None) -> None:
        """`write_log` (a `replication_log.ReplicationLog`) records each batch's write set for
        standbys and may hold the batch's answers until a synchronous standby has it."""
        self.db = db
        self.write_log = write_log
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="lmdb-writer", daemon=True)
        self._thread.start()
        self.commits = 0
        self.mutations = 0

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(txn, *args)` in its own transaction; return once it is durable."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((fn, args, future, loop))
        return await future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list) -> None:
        outcomes = []
        written: list = []  # the batch's write set, for standbys
        seq = 0
        try:
            with self.db.env.begin(write=True) as txn:
                for fn, args, future, loop in batch:
                    child = self.db.env.begin(write=True, parent=txn)
                    ops: list = []
                    try:
                        result = fn(child if self.write_log is None else self.write_log.recording(child, ops), *args)
                    except BaseException as exc:  # the caller gets it; the batch goes on
                        child.abort()
                        outcomes.append((future, loop, None, exc))
                    else:
                        child.commit()
                        written += ops
                        outcomes.append((future, loop, result, None))
                if written:
                    seq = self.write_log.stamp(txn)
            self.commits += 1
            self.mutations += len(batch)
        except lmdb.Error as exc:
            log.error("LMDB commit of %d mutations failed: %s", len(batch), exc)
            outcomes = [(future, loop, None, exc) for _fn, _args, future, loop in batch]
            seq = 0
        if seq:
            self.write_log.committed(seq, written)
        for future, loop, result, exc in outcomes:
            loop.call_soon_threadsafe(_resolve, future, result, exc)


def _resolve(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
