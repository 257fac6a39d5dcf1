"""The primary's side of standby replication: every committed batch's write set, numbered and
kept for standbys to fetch, and the wait that makes a synchronous standby lose nothing.

Physical replication: each mutation's transaction is wrapped (`RecordingTxn`) so every key it
puts or deletes is recorded as (table, key, value or None); a mutation that fails is rolled back
and its records with it. The group committer stamps each batch that wrote anything with the next
sequence number, kept in the `counters` table inside the same transaction, so a copy of the
database (`/v1/backup`) says exactly which batch it ends with, and a standby continues from there.

Promises:
- A standby that polls `since=S` has durably applied every batch up to S (that poll is its
  acknowledgement); it gets the batches after S in order, or `ESTALE` when they are no longer
  kept here (or the history differs) and it must take a new copy.
- With a synchronous standby in sync, a batch's callers are answered only once that standby
  acknowledged it. A standby that does not within `timeout_s` falls out of sync (logged as an
  error) and changes are acknowledged without it until it has caught up again (logged too).

Memory: write sets are recorded and kept only while a standby follows (it polled, or took its
first copy, within `idle_s`); otherwise every batch is still numbered (so a standby that comes
back after a gap is told to take a new copy) but nothing is kept. Each kept batch is one msgpack
`bytes` object, encoded in the writer thread: `keep_bytes` bounds the real memory held (the
objects' own size), and the garbage collector never walks them (bytes hold no references), so a
full log costs the serving thread no GC pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import secrets
import threading
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import lmdb
import msgspec

from chunkfs.errors import FsError, NotPrimary
from chunkfs.metaserver.db import MetaDB, Table, Txn, read_u64, u64
from chunkfs.protocol import records as r

log = logging.getLogger(__name__)

SEQ_KEY = b"replication_seq"
HISTORY_KEY = b"replication_history"
KEEP_BYTES = 256 * 1024 * 1024  # write sets kept in memory for standbys that fall behind
FEED_BYTES = 16 * 1024 * 1024  # at most this much per answer (one batch more if it is bigger)
IDLE_S = 300.0  # no standby polled (or took a copy) this long: stop recording, free the log
BYTES_OVERHEAD = sys.getsizeof(b"")  # a bytes object's header, counted with its length

Op = tuple[str, bytes, "bytes | None"]


class EncodedFeed(msgspec.Struct):
    """`records.ReplicationFeed` as sent: its batches already encoded (the same bytes on the wire)."""

    history: str
    primary_seq: int
    batches: list[msgspec.Raw]


def table_names(db: MetaDB) -> dict[Table, str]:
    """Every table handle of `db` by the attribute naming it; the same names on every metaserver."""
    return {handle: name for name, handle in vars(db).items() if isinstance(handle, type(db.counters))}


class RecordingCursor:
    def __init__(self, cursor: lmdb.Cursor, table: str, ops: list[Op]) -> None:
        self._cursor, self._table, self._ops = cursor, table, ops

    def put(self, key: bytes, value: bytes, dupdata: bool = True, overwrite: bool = True,
            append: bool = False) -> bool:
        done = self._cursor.put(key, value, dupdata=dupdata, overwrite=overwrite, append=append)
        if done:
            self._ops.append((self._table, bytes(key), bytes(value)))
        return done

    def replace(self, key: bytes, value: bytes):
        old = self._cursor.replace(key, value)
        self._ops.append((self._table, bytes(key), bytes(value)))
        return old

    def delete(self, dupdata: bool = False) -> bool:
        key = self._cursor.key()
        done = self._cursor.delete(dupdata=dupdata)
        if done:
            self._ops.append((self._table, bytes(key), None))
        return done

    def pop(self, key: bytes):
        value = self._cursor.pop(key)
        if value is not None:
            self._ops.append((self._table, bytes(key), None))
        return value

    def putmulti(self, *args, **kwargs):
        raise NotImplementedError("putmulti is not recorded for standbys; use put")

    def __iter__(self):
        return iter(self._cursor)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._cursor.close()

    def __getattr__(self, name: str):
        return getattr(self._cursor, name)


class RecordingTxn:
    """A write transaction that records what it writes; reads pass straight through."""

    def __init__(self, txn: Txn, names: dict[Table, str], ops: list[Op]) -> None:
        self._txn, self._names, self._ops = txn, names, ops

    def _table(self, db) -> str:
        try:
            return self._names[db]
        except KeyError:
            raise ValueError("a write to a table MetaDB does not name cannot be replicated") from None

    def put(self, key: bytes, value: bytes, dupdata: bool = True, overwrite: bool = True,
            append: bool = False, db=None) -> bool:
        done = self._txn.put(key, value, dupdata=dupdata, overwrite=overwrite, append=append, db=db)
        if done:
            self._ops.append((self._table(db), bytes(key), bytes(value)))
        return done

    def replace(self, key: bytes, value: bytes, db=None):
        old = self._txn.replace(key, value, db=db)
        self._ops.append((self._table(db), bytes(key), bytes(value)))
        return old

    def delete(self, key: bytes, value: bytes = b"", db=None) -> bool:
        done = self._txn.delete(key, value, db=db)
        if done:
            self._ops.append((self._table(db), bytes(key), None))
        return done

    def pop(self, key: bytes, db=None):
        value = self._txn.pop(key, db=db)
        if value is not None:
            self._ops.append((self._table(db), bytes(key), None))
        return value

    def drop(self, db, delete: bool = True) -> None:
        raise NotImplementedError("dropping a table is not recorded for standbys; delete its keys")

    def cursor(self, db=None) -> RecordingCursor:
        return RecordingCursor(self._txn.cursor(db=db), self._table(db), self._ops)

    def __getattr__(self, name: str):
        return getattr(self._txn, name)


class SyncRecord(Protocol):
    """Where the names of the standbys in sync are kept for failover (election.SyncPublisher)."""

    def joined(self) -> None: ...

    def dropped(self) -> bool: ...


@dataclass
class Follower:
    name: str
    synchronous: bool
    acked: int = 0
    in_sync: bool = False
    last_poll: float = 0.0
    # out of sync, but etcd's sync record may still name it (so it may still take over) until
    # the record without it is written: what it has not confirmed is not on every standby yet
    leaving: bool = False

    @property
    def may_take_over(self) -> bool:
        return self.synchronous and (self.in_sync or self.leaving)


class ReplicationLog:
    """Numbers and keeps the write sets of committed batches (the writer thread adds, the event
    loop serves them); tracks the standbys following them."""

    def __init__(self, db: MetaDB, timeout_s: float, keep_bytes: int = KEEP_BYTES, idle_s: float = IDLE_S) -> None:
        self.db = db
        self.timeout_s = timeout_s
        self.keep_bytes = keep_bytes
        self.idle_s = idle_s
        self.recording_until = 0.0  # time.monotonic(): write sets are recorded until then
        self.names = table_names(db)
        with db.read() as txn:
            raw_seq = txn.get(SEQ_KEY, db=db.counters)
            raw_history = txn.get(HISTORY_KEY, db=db.counters)
        if raw_history is None:
            raise RuntimeError("the database has no replication history; call new_history() at start")
        self.history = raw_history.decode()
        self.seq = read_u64(raw_seq) if raw_seq else 0
        self._batches: deque[tuple[int, bytes]] = deque()  # (seq, the encoded ReplicationBatch)
        self._kept_bytes = 0
        self._lock = threading.Condition()
        self.followers: dict[str, Follower] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_batch: asyncio.Event | None = None
        self.sync_record: SyncRecord | None = None  # with etcd: told whenever the standbys in sync change

    @staticmethod
    def new_history(txn: Txn, db: MetaDB) -> str:
        """Start a new line of batches (a new database, or one restored from a copy): standbys of
        another line must take a new copy."""
        history = secrets.token_hex(8)
        txn.put(HISTORY_KEY, history.encode(), db=db.counters)
        return history

    def standby_seen(self) -> None:
        """A standby polled or is taking its first copy: record (or go on recording) write sets.
        Called before the copy's snapshot is taken, so every batch after it is kept."""
        with self._lock:
            if not self.recording:
                log.info("a standby follows: keeping write sets (at most %d MiB)", self.keep_bytes >> 20)
            self.recording_until = time.monotonic() + self.idle_s

    @property
    def recording(self) -> bool:
        return time.monotonic() < self.recording_until

    @property
    def kept_bytes(self) -> int:
        return self._kept_bytes

    @property
    def kept_batches(self) -> int:
        return len(self._batches)

    # ---- the writer thread -------------------------------------------------------------------
    def recording_txn(self, txn: Txn, ops: list[Op]) -> RecordingTxn:
        return RecordingTxn(txn, self.names, ops)

    def stamp(self, txn: Txn) -> int:
        """The sequence number of the batch being committed in `txn`, stored with it."""
        seq = self.seq + 1
        txn.put(SEQ_KEY, u64(seq), db=self.db.counters)
        return seq

    def committed(self, seq: int, ops: list[Op] | None) -> None:
        """Called once batch `seq` is durable here, before its callers are answered: keeps its
        write set `ops` for standbys (None: it was not recorded; what is kept ends before it) and
        waits for the synchronous ones in sync (at most `timeout_s`)."""
        encoded = None if ops is None else msgspec.msgpack.encode(r.ReplicationBatch(seq, ops))
        with self._lock:
            self.seq = seq
            if encoded is None:
                self._batches.clear()
                self._kept_bytes = 0
            else:
                self._batches.append((seq, encoded))
                self._kept_bytes += len(encoded) + BYTES_OVERHEAD
                while self._kept_bytes > self.keep_bytes and len(self._batches) > 1:
                    self._kept_bytes -= len(self._batches.popleft()[1]) + BYTES_OVERHEAD
            waiting_for = [f for f in self.followers.values() if f.synchronous and f.in_sync]
        self._wake_pollers()
        if not waiting_for:
            return
        with self._lock:
            confirmed = self._lock.wait_for(lambda: all(f.acked >= seq for f in waiting_for), self.timeout_s)
            late = [] if confirmed else [f for f in waiting_for if f.acked < seq and f.in_sync]
            for f in late:
                f.in_sync = False
                f.leaving = self.sync_record is not None
                log.error("synchronous standby %s did not confirm batch %d within %.1f s: changes are "
                          "acknowledged WITHOUT it until it catches up (a failover now may lose them)",
                          f.name, seq, self.timeout_s)
        # with etcd, the standby may no longer become the primary before anything is acknowledged
        # without it (this thread is the only committer, so nothing is meanwhile), nor acted on
        # outside the database (`confirmed`)
        if late and self.sync_record is not None:
            if not self.sync_record.dropped():
                raise NotPrimary("could not record in etcd that a synchronous standby fell behind")
            with self._lock:
                for f in late:
                    f.leaving = False

    def _wake_pollers(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        if self._new_batch is not None:
            self._new_batch.set()
            self._new_batch = asyncio.Event()

    # ---- the event loop ----------------------------------------------------------------------
    async def feed(self, name: str, history: str, since: int, synchronous: bool, wait_s: float) -> bytes:
        """Record that standby `name` has everything up to `since`; answer what follows (waiting
        up to `wait_s` for a batch if there is none yet), encoded as a `records.ReplicationFeed`."""
        if self._new_batch is None:  # the first poll: from now on a commit wakes the pollers
            self._loop = asyncio.get_running_loop()
            self._new_batch = asyncio.Event()
        if history != self.history:
            raise FsError(errno.ESTALE, f"the standby follows history {history or '(none)'}, this metaserver "
                                        f"{self.history}: take a new copy")
        self.standby_seen()
        self._acknowledge(name, since, synchronous)
        deadline = time.monotonic() + wait_s
        while True:
            batches = self._after(since)
            remaining = deadline - time.monotonic()
            if batches or remaining <= 0:
                return msgspec.msgpack.encode(EncodedFeed(self.history, self.seq, batches))
            event = self._new_batch
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def _acknowledge(self, name: str, since: int, synchronous: bool) -> None:
        with self._lock:
            if since > self.seq:
                raise FsError(errno.ESTALE, f"the standby is at batch {since}, past this metaserver's {self.seq}: "
                                            "take a new copy")
            first_kept = self._batches[0][0] if self._batches else self.seq + 1
            if since + 1 < first_kept:
                raise FsError(errno.ESTALE, f"batches after {since} are no longer kept (oldest {first_kept}): "
                                            "take a new copy")
            follower = self.followers.get(name)
            if follower is None or follower.synchronous != synchronous:
                follower = self.followers[name] = Follower(name, synchronous)
                log.info("standby %s follows from batch %d (%s)", name, since,
                         "synchronous" if synchronous else "asynchronous")
            follower.acked = max(follower.acked, since)
            follower.last_poll = time.monotonic()
            joined = synchronous and not follower.in_sync and since == self.seq
            if joined:
                follower.in_sync = True
                log.warning("synchronous standby %s is in sync: changes are acknowledged once it has them", name)
            self._lock.notify_all()
        if joined and self.sync_record is not None:
            self.sync_record.joined()

    def _after(self, since: int) -> list[msgspec.Raw]:
        out: list[msgspec.Raw] = []
        size = 0
        with self._lock:
            if not self._batches:
                return out
            for _seq, encoded in itertools.islice(self._batches, max(0, since + 1 - self._batches[0][0]), None):
                out.append(msgspec.Raw(encoded))
                size += len(encoded)
                if size >= FEED_BYTES:
                    break
        return out

    @staticmethod
    def snapshot_seq(txn: Txn, db: MetaDB) -> int:
        """The last batch a read transaction's snapshot holds."""
        raw = txn.get(SEQ_KEY, db=db.counters)
        return read_u64(raw) if raw else 0

    def confirmed(self, seq: int) -> bool:
        """Whether every standby that could take over has batch `seq`: the synchronous ones in
        sync, and those that fell out of sync while etcd's sync record may still name them."""
        with self._lock:
            return all(f.acked >= seq for f in self.followers.values() if f.may_take_over)

    def in_sync(self) -> list[str]:
        """The synchronous standbys holding every acknowledged change."""
        with self._lock:
            return [f.name for f in self.followers.values() if f.synchronous and f.in_sync]

    def status(self) -> list[r.StandbyStatus]:
        now = time.monotonic()
        with self._lock:
            return [r.StandbyStatus(f.name, f.synchronous, f.in_sync, f.acked, self.seq - f.acked,
                                    now - f.last_poll) for f in self.followers.values()]
