"""The metaserver's LMDB environment: tables, key encodings, and group commit.

Every mutation runs as its own (nested) write transaction, one commit at a time: in the writer
thread, or for a lone small one on the event loop (see `GroupCommitter`). Mutations that arrive
while a commit is being flushed are batched into the next outer transaction, whose single
durable commit (fsync) covers them all; each caller is answered only after that commit, so an
acknowledged change is never lost on a crash, and a failed mutation rolls back alone.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import queue
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import lmdb

from chunkfs.errors import FsError, NotPrimary

if TYPE_CHECKING:  # replication_log imports this module
    from chunkfs.metaserver.replication_log import ReplicationLog

log = logging.getLogger(__name__)

U64 = struct.Struct(">Q")
U64x2 = struct.Struct(">QQ")
MAX_BATCH = 512
# a group of mutations `run_together` commits like one small mutation (on the event loop when idle)
SMALL_GROUP = 4
DEFAULT_MAP_SIZE_BYTES = 1 << 40  # address space only: the file grows as pages are used
FULL_WARNING_RATIO = 0.9  # warn once the map is this full


def u64(n: int) -> bytes:
    return U64.pack(n)


def read_u64(b: bytes) -> int:
    return U64.unpack(b)[0]


# A transaction on the metaserver's database. All are opened with buffers=False (lmdb's default),
# so what they read is bytes; lmdb's stubs say bytes | memoryview unless the type says which.
Txn: TypeAlias = "lmdb.Transaction[bytes]"
# The handle of one table (lmdb's class for it has a private name).
Table: TypeAlias = "lmdb._Database"


class TxnGate:
    """Counts the transactions open in this process, so the map can be resized when there are
    none (LMDB's rule for mdb_env_set_mapsize). Entering costs one uncontended lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    def enter(self) -> None:
        with self._lock:
            self.open += 1

    def leave(self) -> None:
        with self._lock:
            self.open -= 1

    def when_idle(self, fn: Callable[[], None], timeout_s: float) -> bool:
        """Run `fn` at a moment no transaction is open (new ones wait for it); False if no such
        moment came within `timeout_s`. Blocking: polls, never holds others back while waiting."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if self.open == 0:
                    fn()
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)


class ReadTxn:
    """`with db.read() as txn`: a read transaction, counted by the gate while open."""

    __slots__ = ("db", "txn")

    def __init__(self, db: MetaDB) -> None:
        self.db = db

    def __enter__(self) -> Txn:
        self.db.gate.enter()
        try:
            self.txn = self.db.env.begin(buffers=False)
        except BaseException:
            self.db.gate.leave()
            raise
        return self.txn

    def __exit__(self, *exc: object) -> None:
        try:
            self.txn.abort()
        finally:
            self.db.gate.leave()


class MetaDB:
    """Opens the environment and names its tables; owns nothing else.

    The map size (`map_size_bytes`) is the most the database can grow to; reserving it costs
    address space only, so the default is large. It can be raised while serving (`grow_map`)."""

    def __init__(self, path: Path, map_size_bytes: int = DEFAULT_MAP_SIZE_BYTES) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), max_dbs=32, map_size=map_size_bytes, sync=True, metasync=True)
        self.gate = TxnGate()
        self.full_warned = False
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
        self.versions = self.env.open_db(b"versions")  # (chunk id, version) -> its chunk record's key
        self.reservations = self.env.open_db(b"reservations")  # chunk versions each client may commit: reservations.py
        self.users = self.env.open_db(b"users")  # name -> user record (accounts.py)
        self.sessions = self.env.open_db(b"sessions")  # id -> login session (accounts.py)
        self.shares = self.env.open_db(b"shares")  # id -> share link (accounts.py)
        self.quotas = self.env.open_db(b"quotas")  # directory -> its limits and usage: quotas.py
        self.trash = self.env.open_db(b"trash")  # removed file kept -> where it was, until when: trash.py
        # (chunk id, version, record key) -> b"": every record holding a version more than one
        # record holds (a snapshot's files share their source's chunks): chunk_table.py
        self.holders = self.env.open_db(b"holders")
        self.dedup = self.env.open_db(b"dedup")  # content name -> the chunk version holding it; pins: dedup.py

    def read(self) -> ReadTxn:
        return ReadTxn(self)

    def grow_map(self, size_bytes: int, timeout_s: float = 60.0) -> bool:
        """Raise the map size to `size_bytes` while serving (never lowers it). Blocking: waits
        for a moment with no transaction open; False if none came within `timeout_s`."""
        if size_bytes <= self.map_size_bytes():
            return True
        if not self.gate.when_idle(lambda: self.env.set_mapsize(size_bytes), timeout_s):
            return False
        self.full_warned = False
        log.warning("the database's map size is now %d GiB", size_bytes >> 30)
        return True

    def check_fill(self) -> None:
        """Log once when the map is nearly full (the metric shows it all along)."""
        used, size = self.used_bytes(), self.map_size_bytes()
        if used > FULL_WARNING_RATIO * size and not self.full_warned:
            self.full_warned = True
            log.error("the metadata database uses %d of its %d GiB map (%.0f%%): raise map_size_gib in the "
                      "metaserver's config and reload it (systemctl reload, or kill -HUP) before changes fail "
                      "with ENOSPC", used >> 30, size >> 30, 100 * used / size)

    def map_size_bytes(self) -> int:
        return self.env.info()["map_size"]

    def used_bytes(self) -> int:
        """Bytes of the map in use (pages up to the highest ever written; freed pages are reused)."""
        return (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]

    def close(self) -> None:
        self.env.close()


class GroupCommitter:
    """Commits mutations durably, batching those that arrive together.

    Two ways in: `run` hands the mutation to the writer thread (any size; the event loop goes on
    serving while the commit is flushed), `run_small` is for a filesystem call's few keys and
    commits on the event loop itself when nothing else is being committed, saving the two
    thread hand-offs (a wake-up each way plus the GIL) a lone mutation would otherwise pay.
    `run_together` takes the same way for a group of at most SMALL_GROUP mutations (the
    gateway's small PUT is a batch of two: its commit and its rename)."""

    def __init__(self, db: MetaDB, write_log: ReplicationLog | None = None) -> None:
        """`write_log` records each batch's write set for
        standbys and may hold the batch's answers until a synchronous standby has it."""
        self.db = db
        self.write_log = write_log
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_thread = 0  # mutations handed to the writer thread and not committed yet
        self._small: list[list] = []  # `run_small` groups waiting for this turn of the event loop to end
        self._thread = threading.Thread(target=self._work, name="lmdb-writer", daemon=True)
        self._thread.start()
        self.commits = 0
        self.mutations = 0
        self.commits_on_loop = 0
        self._full_logged = -1e9
        # with etcd (election.py): whether this metaserver may acknowledge now; checked after each
        # commit, before its callers are answered (a fenced primary answers NotPrimary instead)
        self.may_acknowledge: Callable[[], bool] | None = None

    def everywhere(self, seq: int) -> bool:
        """Whether what batch `seq` (and those before it) changed may be acted on outside the
        database, e.g. chunk versions it dropped deleted from chunkservers: it is on every standby
        that could take over, and this metaserver still holds its leader key. A batch a
        failover loses must leave nothing behind that the new primary's database still names."""
        if self.may_acknowledge is not None and not self.may_acknowledge():
            return False
        return self.write_log is None or self.write_log.confirmed(seq)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(txn, *args)` in its own transaction in the writer thread; return once it is
        durable."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._to_thread([(fn, args, future, loop)])
        return await future

    async def run_small(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Like `run`, for a mutation that touches a few keys (it may run on the event loop).

        It waits for the end of the current turn of the loop, so the mutations of requests that
        arrived together still share one commit. A lone one, with the writer thread idle and no
        synchronous standby to wait for, is committed right there: the loop is blocked for the
        commit (as long as the caller waits anyway), the promise is the same (answered once
        durable, rolled back alone on failure), and nothing committed later overtakes it."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._add_small([(fn, args, future, loop)], loop)
        return await future

    def _add_small(self, group: list, loop: asyncio.AbstractEventLoop) -> None:
        if not self._small:
            loop.call_soon(self._commit_small)
        self._small.append(group)

    async def run_together(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]
                           ) -> list[tuple[Any, BaseException | None]]:
        """Run each `fn(txn, *args)` of `calls` in order, each in its own nested transaction (one
        failing rolls back alone), all in one outer transaction with one durable commit; return
        once that is durable, with each call's (result, None) or (None, its exception). A client's
        write-behind batch comes this way: however many changes it holds, one flush."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in calls]
        if not calls:
            return []
        group = [(fn, args, future, loop) for (fn, args), future in zip(calls, futures, strict=True)]
        if len(group) <= SMALL_GROUP:
            self._add_small(group, loop)
        else:
            self._to_thread(group)
        outcomes: list[tuple[Any, BaseException | None]] = []
        for future in futures:
            try:
                outcomes.append((await future, None))
            except Exception as exc:  # that call's own failure: the others stand
                outcomes.append((None, exc))
        return outcomes

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _to_thread(self, batch: list) -> None:
        with self._lock:
            self._in_thread += len(batch)
        self._queue.put(batch)

    def _commit_small(self) -> None:
        groups, self._small = self._small, []
        batch = [call for group in groups for call in group]
        if len(groups) == 1 and self._in_thread == 0 and not self._may_wait_for_standby():
            self.commits_on_loop += 1
            try:
                self._commit(batch, _resolve)
            except BaseException as exc:  # not the mutation's failure (that is its answer): the commit's
                log.exception("commit on the event loop failed")
                for _fn, _args, future, _loop in batch:
                    if not future.done():
                        future.set_exception(exc)
        else:
            self._to_thread(batch)

    def _may_wait_for_standby(self) -> bool:
        """A synchronous standby's acknowledgement comes in through the event loop: a commit that
        waits for one must not block the loop."""
        return self.write_log is not None and any(f.synchronous for f in self.write_log.followers.values())

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = list(first)
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    items = self._queue.get_nowait()
                except queue.Empty:
                    break
                if items is None:
                    stop = True
                    break
                batch += items
            try:
                self._commit(batch, _resolve_from_thread)
            finally:
                with self._lock:
                    self._in_thread -= len(batch)
            if stop:
                return

    def _commit(self, batch: list, deliver: Callable[..., None]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], asyncio.AbstractEventLoop, Any, BaseException | None]] = []
        recording = self.write_log is not None and self.write_log.recording
        written: list = []  # the batch's write set, for standbys
        seq = 0
        self.db.gate.enter()
        try:
            with self.db.env.begin(write=True) as txn:
                for fn, args, future, loop in batch:
                    child = self.db.env.begin(write=True, parent=txn)
                    ops: list = []
                    try:
                        result = fn(self.write_log.recording_txn(child, ops) if recording else child,  # type: ignore[union-attr]
                                    *args)
                    except BaseException as exc:  # the caller gets it; the batch goes on
                        child.abort()
                        outcomes.append((future, loop, None, self._full(exc)))
                    else:
                        child.commit()
                        written += ops
                        outcomes.append((future, loop, result, None))
                # numbered even when not recorded (but for a batch of failures only): a standby
                # that comes back after such a batch is told to take a new copy
                if self.write_log is not None and (written or (not recording and any(o[3] is None for o in outcomes))):
                    seq = self.write_log.stamp(txn)
            self.commits += 1
            self.mutations += len(batch)
        except lmdb.Error as exc:
            if not isinstance(exc, lmdb.MapFullError):
                log.error("LMDB commit of %d mutations failed: %s", len(batch), exc)
            outcomes = [(future, loop, None, self._full(exc)) for _fn, _args, future, loop in batch]
            seq = 0
        finally:
            self.db.gate.leave()
        if self.commits % 1000 == 1:
            self.db.check_fill()
        try:
            if seq and self.write_log is not None:
                self.write_log.committed(seq, written if recording else None)
            if self.may_acknowledge is not None and not self.may_acknowledge():
                raise NotPrimary("this metaserver lost its leader key: the change is not acknowledged here")
        except NotPrimary as exc:  # durable here, not acknowledged: the client retries on the new primary
            outcomes = [(future, loop, None, exc) for future, loop, _result, _error in outcomes]
        for future, loop, result, error in outcomes:
            deliver(future, loop, result, error)


    def _full(self, exc: BaseException) -> BaseException:
        """A full map is the clients' ENOSPC, logged once a minute at most."""
        if not isinstance(exc, lmdb.MapFullError):
            return exc
        now = time.monotonic()
        if now - self._full_logged > 60:
            self._full_logged = now
            log.error("the metadata database is full (map size %d GiB): changes fail with ENOSPC until "
                      "map_size_gib is raised in the metaserver's config and reloaded", self.db.map_size_bytes() >> 30)
        return FsError(errno.ENOSPC, "the metadata database is full")


def _resolve_from_thread(future: asyncio.Future, loop: asyncio.AbstractEventLoop, result: Any,
                         exc: BaseException | None) -> None:
    loop.call_soon_threadsafe(_resolve, future, loop, result, exc)


def _resolve(future: asyncio.Future, loop: asyncio.AbstractEventLoop, result: Any,
             exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
