"""`chunkfs-metaserver --follow HOST:PORT`: a standby keeping a copy of a metaserver's database
up to date, so losing the metaserver's disk loses nothing acknowledged.

It takes a full copy (`/v1/backup`), then long-polls the write sets of every batch committed
after it (`/v1/replication`) and applies each poll's batches in one durable LMDB transaction that
also records the last batch applied; only then does it poll again, which tells the metaserver it
has them (a synchronous standby is what the metaserver waits for before answering its clients).
A standby restarted goes on from the batch its database records; one that fell too far behind,
or whose metaserver started a new history (restored, promoted), takes a new copy.

It serves only `/health` (role, batches applied, how far behind). To promote it, stop it and
start `chunkfs-metaserver` without `--follow` on its data directory (at the old metaserver's
address, or point the clients at it): its database is a copy, so it starts as after a restore
(see `backup.py`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import threading
from pathlib import Path

import lmdb
from aiohttp import web

from chunkfs import service, tls as tls_files
from chunkfs.errors import PRIMARY_HEADER, FsError, TransportError
from chunkfs.httpserver import error_response, json_response, make_app, serve
from chunkfs.metaserver.backup import COPY_MARK
from chunkfs.metaserver.db import DEFAULT_MAP_SIZE_BYTES, MetaDB, read_u64, u64
from chunkfs.metaserver.replication_log import HISTORY_KEY, SEQ_KEY, table_names
from chunkfs.protocol import records as r
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.replication_client import ReplicationClient, save_copy

log = logging.getLogger(__name__)

POLL_WAIT_S = 20.0
RETRY_PAUSE_S = 1.0


class NeedsCopy(Exception):
    pass


class Standby:
    def __init__(self, primary: str, data_dir: Path, secret: bytes, name: str, synchronous: bool,
                 map_size_bytes: int = DEFAULT_MAP_SIZE_BYTES, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: the client context the primary is reached with, in a cluster with TLS."""
        self.primary, self.data_dir, self.secret = primary, data_dir, secret
        self.tls = tls
        self.map_size_bytes = map_size_bytes
        self.name, self.synchronous = name, synchronous
        self.db: MetaDB | None = None
        self._db_lock = threading.Lock()  # the database is opened, written and closed under it
        self.history = ""
        self.seq = 0
        self.primary_seq = 0
        self.copies = 0
        self.reachable = False
        self.note = ""  # said with every 503 (with failover: that etcd does not answer)
        self.stopped = False

    # ---- the database (blocking: called in a thread) ---------------------------------------------
    def _open(self) -> None:
        with self._db_lock:
            if self.stopped:  # a copy that finished after the standby stopped: the next role opens it
                raise NeedsCopy("the standby has stopped")
            self.db = MetaDB(self.data_dir, self.map_size_bytes)
            self.tables = {name: handle for handle, name in table_names(self.db).items()}
            with self.db.read() as txn:
                history = txn.get(HISTORY_KEY, db=self.db.counters)
                seq = txn.get(SEQ_KEY, db=self.db.counters)
            self.history = history.decode() if history else ""
            self.seq = read_u64(seq) if seq else 0

    def stop(self) -> None:
        """Close the database for good (a thread still applying or copying finds it so)."""
        with self._db_lock:
            self.stopped = True
        self.close()

    def close(self) -> None:
        with self._db_lock:
            if self.db is not None:
                self.db.close()
                self.db = None

    def _copy(self) -> None:
        self.close()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        info = save_copy(self.primary, self.secret, self.data_dir / "data.mdb", decompress=True, standby=self.name,
                         tls=self.tls)
        (self.data_dir / "lock.mdb").unlink(missing_ok=True)
        self.copies += 1
        self._open()
        log.info("took a copy of %s's database (%d bytes, %d sent), at batch %d", self.primary, info.database_bytes,
                 info.size_bytes, self.seq)

    def _apply(self, batches: list[r.ReplicationBatch]) -> None:
        """All of `batches` in one durable transaction, with the number of the last."""
        with self._db_lock:
            if self.db is None:
                raise NeedsCopy("the database is closed")
            expected = self.seq + 1
            with self.db.env.begin(write=True) as txn:
                for batch in batches:
                    if batch.seq != expected:
                        raise NeedsCopy(f"batch {batch.seq} came where {expected} was due")
                    for table, key, value in batch.ops:
                        if table == "counters" and key == COPY_MARK:
                            continue  # a backup's mark, there and gone on the primary; this copy keeps its own
                        handle = self.tables.get(table)
                        if handle is None:
                            raise NeedsCopy(f"table {table!r} is unknown here: is this standby's chunkfs older?")
                        if value is None:
                            txn.delete(key, db=handle)
                        else:
                            txn.put(key, value, db=handle)
                    expected += 1
                txn.put(SEQ_KEY, u64(expected - 1), db=self.db.counters)
            self.seq = expected - 1

    # ---- following ---------------------------------------------------------------------------------
    async def follow(self) -> None:
        http = SignedHttp(self.secret, timeout_s=POLL_WAIT_S + 10, retry_s=1.0, tls=self.tls)
        client = ReplicationClient(http, self.primary)
        await asyncio.to_thread(self._open)
        needs_copy = not self.history
        try:
            while True:
                try:
                    if needs_copy:
                        await asyncio.to_thread(self._copy)
                        needs_copy = False
                    feed = await client.feed(self.name, self.history, self.seq, self.synchronous, POLL_WAIT_S)
                    self._reached(True)
                    self.primary_seq = feed.primary_seq
                    if feed.batches:
                        await asyncio.to_thread(self._apply, feed.batches)
                except NeedsCopy as exc:
                    log.warning("taking a new copy: %s", exc)
                    needs_copy = True
                except FsError as exc:
                    if exc.errno == errno.ESTALE:
                        log.warning("taking a new copy: %s", exc.message)
                        needs_copy = True
                    else:
                        log.error("%s refused: %s", self.primary, exc)
                        await asyncio.sleep(RETRY_PAUSE_S)
                except (TransportError, OSError, lmdb.Error) as exc:
                    self._reached(False, exc)
                    await asyncio.sleep(RETRY_PAUSE_S)
        finally:
            await http.aclose()

    def _reached(self, ok: bool, exc: BaseException | None = None) -> None:
        if ok and not self.reachable:
            log.info("following %s from batch %d (%s)", self.primary, self.seq,
                     "synchronous" if self.synchronous else "asynchronous")
        elif not ok and self.reachable:
            log.warning("lost %s at batch %d: %s; retrying", self.primary, self.seq, exc)
        elif not ok:
            log.debug("%s unreachable: %s", self.primary, exc)
        self.reachable = ok

    def health(self) -> dict:
        return {"ok": True, "role": "standby", "following": self.primary, "reachable": self.reachable,
                "synchronous": self.synchronous, "applied_seq": self.seq, "primary_seq": self.primary_seq,
                "copies_taken": self.copies}


STANDBY = web.AppKey("standby", Standby)


async def health(request: web.Request) -> web.Response:
    return json_response(request.app[STANDBY].health())


async def not_primary(request: web.Request) -> web.Response:
    """Every API call: 503 naming the primary, which chunkfs clients retry there."""
    standby = request.app[STANDBY]
    note = f" ({standby.note})" if standby.note else ""
    return error_response(503, "EAGAIN", f"this metaserver is a standby of {standby.primary}{note}",
                          headers={PRIMARY_HEADER: standby.primary})


def build_app(standby: Standby, secret: bytes) -> web.Application:
    app = make_app(secret)
    app[STANDBY] = standby
    app.router.add_get("/health", health)
    app.router.add_route("*", "/v1/{call:.*}", not_primary)

    async def background(app: web.Application):
        task = asyncio.create_task(standby.follow())
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(standby.stop)

    app.cleanup_ctx.append(background)
    return app


def run(primary: str, data_dir: Path, secret: bytes, host: str, port: int, synchronous: bool,
        map_size_bytes: int = DEFAULT_MAP_SIZE_BYTES, tls_dir: Path | None = None) -> None:
    """`tls_dir`: a cluster with TLS (chunkfs certs init): the primary is reached, and /health
    served, with the metaserver's certificate."""
    files = tls_files.tls_files(tls_dir, "metaserver")
    standby = Standby(primary, data_dir, secret, f"{socket.gethostname()}:{port}", synchronous, map_size_bytes,
                      files.client_context() if files else None)
    log.info("standby of %s serving /health on %s:%d, data in %s", primary, host, port, data_dir)
    app = build_app(standby, secret)
    service.attach(app, status=f"standby of {primary}")
    serve(app, host, port, files.server_context() if files else None)
