"""The chunk table: which chunk versions make up each file, where their replicas are, and
which dropped versions still have to be removed from chunkservers.

Writes are copy-on-write: every upload of a chunk gets a new version (and lands in a new file on
each chunkserver), and the commit that makes it part of the file queues the version it replaces
for deletion, unless another record still holds it (a snapshot shares its source's chunk
versions: see `write_record`); between clients the last commit wins. A reader therefore never sees a half-written chunk, and a chunkserver that missed
a write can never serve a stale version: the version is part of every chunk request.
"""

from __future__ import annotations

import errno
import logging
import stat
from collections.abc import Callable

import msgspec
from msgspec import Struct

from chunkfs import CHUNK_SIZE, INLINE_MAX_BYTES
from chunkfs.errors import FsError
from chunkfs.content_hash import proof_check
from chunkfs.metaserver.db import U64x2, MetaDB, Txn, read_u64, u64
from chunkfs.metaserver.dedup import ContentIndex, Entry
from chunkfs.metaserver import table_counts
from chunkfs.metaserver.namespace import Inode, Namespace
from chunkfs.metaserver.table_counts import TableCounts
from chunkfs.metaserver.reservations import VersionReservations
from chunkfs.protocol import records as r
from chunkfs.protocol import limits
from chunkfs.metaserver.change_clock import now_ns
from chunkfs.protocol.limits import MAX_ID, in_id_range

log = logging.getLogger(__name__)

ID_RESERVE = 10_000
VERSION_INDEX_MARK = b"index.versions"  # in `counters` once the version index is complete
MAX_SKIP = 2**40  # how far past its counter a chunkserver's ids may move an IdAllocator


class ChunkRecord(Struct, array_like=True):
    chunk_id: int
    version: int
    length: int
    checksum: str
    replicas: list[str]


_enc = msgspec.msgpack.Encoder()
_chunk_dec = msgspec.msgpack.Decoder(ChunkRecord)
_servers_dec = msgspec.msgpack.Decoder(list[str])


def chunk_key(ino: int, index: int) -> bytes:
    return U64x2.pack(ino, index)


class IdAllocator:
    """Chunk ids and versions, unique forever: reserved in blocks so most allocations need no
    write; a restart skips whatever was reserved and unused. Values stay in 1..MAX_ID: nothing
    a chunkserver reports can push the counter past it (ids out of range are left out by
    `ChunkTable.in_range`, ids far past the counter by `skip_past`), and a counter that was
    pushed past it before (by a chunk stored under id 2^64-1) is brought back to just above what
    the tables hold, at start."""

    def __init__(self, db: MetaDB, name: bytes) -> None:
        self.db, self.name = db, name
        self.next = self.limit = 0
        self._far_value_logged = False

    def repair(self, txn: Txn, highest_in_use: Callable[[], int]) -> None:
        raw = txn.get(self.name, db=self.db.counters)
        if raw is None or read_u64(raw) <= MAX_ID - ID_RESERVE:
            return
        value = highest_in_use() + 1
        log.warning("the %s counter was at %d, past the largest id %d; set back to %d (one more than "
                    "the largest in use)", self.name.decode(), read_u64(raw), MAX_ID, value)
        txn.put(self.name, u64(value), db=self.db.counters)

    def take(self, txn: Txn) -> int:
        return self.take_block(txn, 1)

    def take_block(self, txn: Txn, count: int) -> int:
        """The first of `count` consecutive fresh values."""
        if self.next + count > self.limit:
            if max(self.next, self.limit) + count > MAX_ID:
                raise FsError(errno.ENOSPC, f"every {self.name.decode()} up to {MAX_ID} was used")
            raw = txn.get(self.name, db=self.db.counters)
            start = max(read_u64(raw) if raw else 1, self.next)
            self.next, self.limit = start, start + max(ID_RESERVE, count)
            txn.put(self.name, u64(self.limit), db=self.db.counters)
        value = self.next
        self.next += count
        return value

    def handed_out(self, txn: Txn, value: int) -> bool:
        """Whether `value` may have been handed out (it is below the stored counter)."""
        raw = txn.get(self.name, db=self.db.counters)
        return 1 <= value < max(read_u64(raw) if raw else 1, self.next)

    def skip_past(self, txn: Txn, held: list[int]) -> None:
        """Never hand out any of `held` or anything below them (a chunkserver holds them). A
        value more than MAX_SKIP past what was handed out is not one chunkfs made (a chunk stored
        under an id picked by hand): it is ignored, logged once, so it cannot use the ids up."""
        raw = txn.get(self.name, db=self.db.counters)
        stored = read_u64(raw) if raw else 1
        ceiling = min(MAX_ID, max(stored, self.next) + MAX_SKIP)
        plausible = [v for v in held if 1 <= v <= ceiling]
        if len(plausible) < len(held) and not self._far_value_logged:
            self._far_value_logged = True
            log.warning("a chunkserver holds a %s far past any handed out (%d): the counter is not moved "
                        "past it (a chunk stored by hand?)", self.name.decode(), max(held))
        if not plausible:
            return
        value = max(plausible)
        if value < self.next:
            return
        if value < self.limit:  # inside the block this process reserved
            self.next = value + 1
            return
        if raw is not None and value < stored:
            return
        self.next = self.limit = value + 1
        txn.put(self.name, u64(value + 1), db=self.db.counters)


class ChunkTable:
    def __init__(self, db: MetaDB, namespace: Namespace, reservation_s: float = 3600.0) -> None:
        """`reservation_s`: how long a client may take to commit the versions it reserved."""
        self.db = db
        self.namespace = namespace
        self.chunk_ids = IdAllocator(db, b"next_chunk_id")
        self.versions = IdAllocator(db, b"next_version")
        self.owners = VersionReservations(db, reservation_s)
        self.contents = ContentIndex(db, reservation_s)
        namespace.on_inode_freed = self.drop_file
        self.holding_back: Callable[[], bool] = lambda: False  # nothing is garbage while true (quarantine.py)
        self._out_of_range_from: set[str] = set()  # servers whose out-of-range chunks were logged

    def repair_counters(self, txn: Txn) -> None:
        """At start: a counter left past MAX_ID by an earlier version is set back (see IdAllocator)."""
        self.chunk_ids.repair(txn, lambda: self._highest(txn, 0))
        self.versions.repair(txn, lambda: self._highest(txn, 1))

    def _highest(self, txn: Txn, field: int) -> int:
        """The largest chunk id (field 0) or version (1) any record or queued deletion holds."""
        highest = 0
        for _key, raw in txn.cursor(db=self.db.chunks):
            rec = _chunk_dec.decode(raw)
            highest = max(highest, (rec.chunk_id, rec.version)[field])
        for key in txn.cursor(db=self.db.deletions).iternext(values=False):
            highest = max(highest, U64x2.unpack(key)[field])
        return min(highest, MAX_ID - ID_RESERVE)

    def in_range(self, held: list[tuple[int, int]], server: str) -> list[tuple[int, int]]:
        """The chunk versions of a server's list whose id and version chunkfs could have handed
        out; the others (stored before ids were checked) are left out of everything the list
        is used for (id counters, garbage, replica checks), and logged once per server."""
        kept = [(cid, ver) for cid, ver in held if in_id_range(cid) and in_id_range(ver)]
        if len(kept) < len(held) and server not in self._out_of_range_from:
            self._out_of_range_from.add(server)
            log.warning("server %s holds %d chunk versions with an id or version outside 1..%d: ignored",
                        server, len(held) - len(kept), MAX_ID)
        return kept

    # ---- reading ----------------------------------------------------------------------------
    def records(self, txn: Txn, ino: int) -> list[tuple[int, ChunkRecord]]:
        prefix = u64(ino)
        cursor = txn.cursor(db=self.db.chunks)
        out = []
        if cursor.set_range(prefix):
            for key, raw in cursor:
                if not key.startswith(prefix):
                    break
                out.append((U64x2.unpack(key)[1], _chunk_dec.decode(raw)))
        return out

    def refs(self, txn: Txn, ino: int) -> list[r.ChunkRef]:
        return [
            r.ChunkRef(index=index, chunk_id=rec.chunk_id, version=rec.version, length=rec.length,
                       checksum=rec.checksum, replicas=rec.replicas)
            for index, rec in self.records(txn, ino)
        ]

    def inline_data(self, txn: Txn, ino: int) -> bytes | None:
        """The bytes of a file stored inline (see INLINE_MAX_BYTES), or None: it has chunks."""
        return txn.get(u64(ino), db=self.db.inline)

    def referenced(self, txn: Txn, chunk_id: int, version: int) -> bool:
        """Whether a file's chunk record holds this version: one look-up in the version index."""
        return txn.get(U64x2.pack(chunk_id, version), db=self.db.versions) is not None

    def inodes_of_version(self, txn: Txn, chunk_id: int, version: int) -> list[int]:
        """The files whose chunk records hold this version (several: a snapshot shares it; none:
        no file does)."""
        shared = self.holders(txn, chunk_id, version)
        if shared:
            return [U64x2.unpack(bytes(key))[0] for key in shared]
        key = txn.get(U64x2.pack(chunk_id, version), db=self.db.versions)
        return [] if key is None else [U64x2.unpack(bytes(key))[0]]

    def ensure_version_index(self, txn: Txn) -> bool:
        """Give a database written before the version index existed its index, from one scan of
        the chunk table; returns whether it had to. Run once at start, before serving."""
        if txn.get(VERSION_INDEX_MARK, db=self.db.counters) is not None:
            return False
        for key, raw in txn.cursor(db=self.db.chunks):
            rec = _chunk_dec.decode(raw)
            txn.put(U64x2.pack(rec.chunk_id, rec.version), key, db=self.db.versions)
        txn.put(VERSION_INDEX_MARK, b"", db=self.db.counters)
        return True

    def ensure_stored_bytes(self, txn: Txn) -> bool:
        """Give table counts written before the stored-bytes count existed that count, from one
        scan (after `ensure_version_index`); returns whether it had to. Run once at start."""
        if txn.get(table_counts.STORED_BYTES, db=self.db.counters) is not None:
            return False
        counts = TableCounts()
        self.recount(txn, counts)
        txn.put(table_counts.STORED_BYTES, table_counts.I64.pack(counts.stored_bytes), db=self.db.counters)
        return True

    def recount_all(self, txn: Txn) -> TableCounts:
        """Every table count from full scans of the inode and chunk tables."""
        counts = TableCounts()
        self.namespace.recount(txn, counts)
        self.recount(txn, counts)
        return counts

    def recount(self, txn: Txn, counts: TableCounts) -> None:
        """Chunks, chunk bytes and replicas per server into `counts`, from a full scan of the
        chunk table (see `Namespace.recount`)."""
        for key, raw in txn.cursor(db=self.db.chunks):
            rec = _chunk_dec.decode(raw)
            counts.chunks += 1
            counts.chunk_bytes += rec.length
            if txn.get(U64x2.pack(rec.chunk_id, rec.version), db=self.db.versions) == key:
                counts.stored_bytes += rec.length
            for server in rec.replicas:
                counts.replicas[server] = counts.replicas.get(server, 0) + 1

    # ---- writing ----------------------------------------------------------------------------
    def write_record(self, txn: Txn, key: bytes, record: ChunkRecord | None) -> None:
        """Put (or with None delete) the record at `key`, moving the table counts and the
        version index (`versions`: which record holds a chunk version) with the change. Every
        change to the chunk table goes through here."""
        counts = self.namespace.counts
        if record is None:
            raw = txn.pop(key, db=self.db.chunks)
        else:
            raw = txn.get(key, db=self.db.chunks)
            txn.put(key, _enc.encode(record), db=self.db.chunks)
        before = _chunk_dec.decode(raw) if raw is not None else None
        old_version = (before.chunk_id, before.version) if before else None
        new_version = (record.chunk_id, record.version) if record else None
        if old_version != new_version:
            if before is not None:
                self._unhold(txn, (before.chunk_id, before.version), key, before.length)
            if record is not None:
                self._hold(txn, (record.chunk_id, record.version), key, record.length)
        elif record is not None and before is not None:
            if before.length != record.length \
                    and txn.get(U64x2.pack(before.chunk_id, before.version), db=self.db.versions) == key:
                counts.add(txn, table_counts.STORED_BYTES, record.length - before.length)
            if before.replicas != record.replicas:
                self._share_replicas(txn, key, record)
        if (before is None) != (record is None):
            counts.add(txn, table_counts.CHUNKS, 1 if before is None else -1)
        counts.add(txn, table_counts.CHUNK_BYTES, (record.length if record else 0) - (before.length if before else 0))
        counts.replicas_moved(txn, before.replicas if before else [], record.replicas if record else [])

    # ---- versions several records hold --------------------------------------------------------
    # The version index names one record per version; a version more records hold (a snapshot's
    # copies) also has a `holders` row per record, so the last one to let it go is known and
    # every holder's replica list stays the same (re-replication, trims and drains edit one).

    def _hold(self, txn: Txn, version: tuple[int, int], key: bytes, length: int) -> None:
        index_key = U64x2.pack(*version)
        primary = txn.get(index_key, db=self.db.versions)
        if primary is None or primary == key:
            if primary is None:
                self.namespace.counts.add(txn, table_counts.STORED_BYTES, length)
            txn.put(index_key, key, db=self.db.versions)
            return
        txn.put(index_key + primary, b"", db=self.db.holders)
        txn.put(index_key + key, b"", db=self.db.holders)

    def any_shared(self, txn: Txn) -> bool:
        """Whether any version is held by several records (one stat of the holders table)."""
        return txn.stat(self.db.holders)["entries"] > 0

    def shared_goal(self, txn: Txn, chunk_id: int, version: int, goal: int) -> int:
        """The replicas a version is kept at: `goal` (its file's), or for a version several files
        hold (a snapshot's), the highest of their goals, since every holder's record lists the
        same replicas and a trim for one would take copies another's goal needs."""
        for key in self.holders(txn, chunk_id, version):
            raw = txn.get(u64(U64x2.unpack(bytes(key))[0]), db=self.db.inodes)
            if raw is not None:
                goal = max(goal, self.namespace.decode(raw).goal or self.namespace.default_goal)
        return goal

    def sharing(self, txn: Txn, ino: int) -> list[tuple[int, int]]:
        """(index, how many chunk records hold its version) for each chunk of file `ino`: above
        1, the chunk is shared with other files (or other chunks of this one) by dedup or a snapshot."""
        return [(index, max(1, len(self.holders(txn, rec.chunk_id, rec.version))))
                for index, rec in self.records(txn, ino)]

    def holders(self, txn: Txn, chunk_id: int, version: int) -> list[bytes]:
        """The record keys holding a version several records hold (empty: one or none does)."""
        prefix = U64x2.pack(chunk_id, version)
        cursor = txn.cursor(db=self.db.holders)
        out = []
        if cursor.set_range(prefix):
            for row in cursor.iternext(values=False):
                if not row.startswith(prefix):
                    break
                out.append(row[16:])
        return out

    def _unhold(self, txn: Txn, version: tuple[int, int], key: bytes, length: int) -> None:
        """Record `key` (of `length` bytes) holds `version` no more."""
        counts = self.namespace.counts
        index_key = U64x2.pack(*version)
        if not txn.delete(index_key + key, db=self.db.holders):  # the only holder
            if txn.pop(index_key, db=self.db.versions) == key:
                counts.add(txn, table_counts.STORED_BYTES, -length)
            self.contents.forget(txn, *version)
            return
        others = self.holders(txn, *version)
        if len(others) == 1:
            txn.delete(index_key + others[0], db=self.db.holders)
        if others and txn.get(index_key, db=self.db.versions) == key:
            txn.put(index_key, others[0], db=self.db.versions)
            raw = txn.get(others[0], db=self.db.chunks)
            counts.add(txn, table_counts.STORED_BYTES, (_chunk_dec.decode(raw).length if raw else 0) - length)

    def _share_replicas(self, txn: Txn, key: bytes, record: ChunkRecord) -> None:
        for other in self.holders(txn, record.chunk_id, record.version):
            raw = txn.get(other, db=self.db.chunks)
            rec = _chunk_dec.decode(raw) if other != key and raw is not None else None
            if rec is not None and (rec.chunk_id, rec.version) == (record.chunk_id, record.version) \
                    and rec.replicas != record.replicas:
                rec.replicas = list(record.replicas)
                self.write_record(txn, other, rec)

    def release(self, txn: Txn, chunk_id: int, version: int, servers: list[str]) -> None:
        """A record let go of this version: queue it for deletion unless another still holds it
        or a writer was handed it to commit (dedup.py: pinned)."""
        if not self.referenced(txn, chunk_id, version) \
                and not self.contents.keep_for_pins(txn, chunk_id, version, servers):
            self.queue_deletion(txn, chunk_id, version, servers)

    def end_pins(self, txn: Txn, now: float) -> int:
        """End the dedup pins whose time is up; a version they alone kept is queued for deletion.
        How many ended."""
        ended = self.contents.ended_pins(txn, now)
        for key, pin in ended:
            version = self.contents.unpin(txn, key)
            if version is not None and not self.referenced(txn, *version) and not self.contents.pinned(txn, *version):
                self.queue_deletion(txn, *version, pin.replicas)
        return len(ended)

    def find_content(self, txn: Txn, req: r.DedupReq, scope: str) -> r.DedupHit | None:
        """The version of `scope` holding the content `req` names, pinned for it (dedup.py)."""
        return self.contents.find(txn, req, scope, lambda cid, ver: self._replicas_of(txn, cid, ver))

    def find_contents(self, txn: Txn, reqs: list[r.DedupReq], scope: str) -> list[r.DedupHit | None]:
        """`find_content` for each of `reqs`, in order, in one transaction (one call's pins)."""
        return [self.find_content(txn, req, scope) for req in reqs]

    def _replicas_of(self, txn: Txn, chunk_id: int, version: int) -> list[str]:
        key = txn.get(U64x2.pack(chunk_id, version), db=self.db.versions)
        raw = txn.get(key, db=self.db.chunks) if key is not None else None
        return _chunk_dec.decode(raw).replicas if raw is not None else []

    def copy_records(self, txn: Txn, src: int, dst: int) -> None:
        """File `dst` gets `src`'s content: the same chunk versions (shared) or inline bytes."""
        inline = txn.get(u64(src), db=self.db.inline)
        if inline is not None:
            txn.put(u64(dst), inline, db=self.db.inline)
        for index, rec in self.records(txn, src):
            self.write_record(txn, chunk_key(dst, index), rec)

    def sharing_problems(self, txn: Txn) -> list[str]:
        """What is wrong in the version index and the holders rows, from a scan of the chunk
        table (`chunkfs fsck`): every version a record holds is indexed, and a version more
        records hold has exactly their rows."""
        held: dict[tuple[int, int], list[bytes]] = {}
        for key, raw in txn.cursor(db=self.db.chunks):
            rec = _chunk_dec.decode(raw)
            held.setdefault((rec.chunk_id, rec.version), []).append(bytes(key))
        problems = []
        for version, keys in held.items():
            primary = txn.get(U64x2.pack(*version), db=self.db.versions)
            if primary not in keys:
                problems.append(f"chunk {version[0]} v{version[1]}: the version index names no record holding it")
            rows = sorted(self.holders(txn, *version))
            if (sorted(keys) if len(keys) > 1 else []) != rows:
                problems.append(f"chunk {version[0]} v{version[1]}: held by {len(keys)} records, "
                                f"{len(rows)} holder rows")
        for row in txn.cursor(db=self.db.holders).iternext(values=False):
            if U64x2.unpack(row[:16]) not in held:
                problems.append(f"chunk {U64x2.unpack(row[:16])}: holder rows for a version no record holds")
        return problems + self.contents.problems(txn, lambda cid, ver: (cid, ver) in held)

    def reserve(self, txn: Txn, client: str, count: int) -> tuple[int, int]:
        """`count` fresh versions and chunk ids for `client`: (first version, first chunk id)."""
        first_version = self.versions.take_block(txn, count)
        first_chunk_id = self.chunk_ids.take_block(txn, count)
        self.owners.grant(txn, client, first_version, count)
        return first_version, first_chunk_id

    def commit(self, txn: Txn, req: r.CommitReq, client: str, scope: str = "") -> r.Attr:
        """Make uploaded chunk versions part of the file and set its size and mtime (creating
        the file first when the commit carries its create, and setting the xattrs it carries last).

        Every version named must be `client`'s (see reservations.py): one it reserved and has
        not used for another file, or the version the file already has at that index (a retried
        commit), or for a `shared` ref one a dedup call handed to `scope` (the committer's
        credential) and still pinned for it (dedup.py). A chunk id must be one chunkfs handed
        out. Anything else is refused with EPERM and, as every failed mutation, changes nothing.
        The content names the refs carry are indexed for `scope`."""
        if req.create is not None:
            if req.create.ino != req.ino or not stat.S_ISREG(req.create.mode):
                raise FsError(errno.EINVAL, "a commit creates only its own regular file")
            self.namespace.create(txn, req.create)
        try:
            inode = self.namespace.get(txn, req.ino)
        except FsError:
            for ref in req.chunks:
                if not ref.shared:
                    self.release(txn, ref.chunk_id, ref.version, ref.replicas)
            raise FsError(errno.ESTALE, f"inode {req.ino} was removed while being written") from None
        if not stat.S_ISREG(inode.mode):
            raise FsError(errno.EINVAL, f"inode {req.ino} is not a regular file")
        if req.attrs is not None and (req.attrs.size is not None or req.attrs.ino != req.ino):
            raise FsError(errno.EINVAL, "attributes committed with a file change its size or another file")
        if req.inline is not None:
            self._commit_inline(txn, req, req.inline, inode)
        for ref in req.discard:
            if ref.shared:  # handed by a dedup call: others' to delete, not this writer's
                continue
            self._check_chunk_id(txn, ref.chunk_id)
            if self.owners.claim(txn, client, ref.version, req.ino):
                self.queue_deletion(txn, ref.chunk_id, ref.version, ref.replicas)
        for ref in req.chunks:
            if ref.length > CHUNK_SIZE or ref.length < 0 or not ref.replicas:
                raise FsError(errno.EINVAL, f"bad chunk {ref.index}: length {ref.length}")
            key = chunk_key(req.ino, ref.index)
            raw = txn.get(key, db=self.db.chunks)
            current = _chunk_dec.decode(raw) if raw else None
            if current is not None and (current.chunk_id, current.version) == (ref.chunk_id, ref.version) \
                    and (not ref.shared or current.length == ref.length):
                if ref.shared:  # what it holds already (a retry, or content rewritten the same)
                    self.contents.use(txn, ref, scope)
                continue
            # (the same version longer: a shared one written whole again over its truncated record)
            record, content = self._committed_record(txn, ref, client, req.ino, scope)
            if ref.index == 0:  # a chunk 0 replaces the inline bytes of a file that grew
                inode.stored_bytes -= len(txn.pop(u64(req.ino), db=self.db.inline) or b"")
            self.write_record(txn, key, record)
            if content is not None and scope:
                self.contents.index(txn, content, ref.content, scope)
            if current is not None:
                inode.stored_bytes -= current.length
                self.release(txn, current.chunk_id, current.version, current.replicas)
            self.cancel_deletion(txn, ref.chunk_id, ref.version, record.replicas)
            inode.stored_bytes += ref.length
        if req.size != inode.size:
            inode.stored_bytes = self.truncate(txn, req.ino, req.size)
        inode.size = req.size
        inode.mtime_ns = req.mtime_ns
        inode.ctime_ns = now_ns()
        self.namespace.put(txn, req.ino, inode)
        attr = self.namespace.setattr(txn, req.attrs, self.truncate) if req.attrs is not None else None
        for name, value in req.xattrs:
            self.namespace.setxattr(txn, r.XattrReq(req.ino, name, value))
        if req.xattrs:  # the inode as they left it (has_xattrs, ctime)
            return self.namespace.getattr(txn, req.ino)
        return attr if attr is not None else self.namespace.attr(req.ino, inode)

    def concat(self, txn: Txn, req: r.ConcatReq) -> r.Attr:
        """Append the chunks of `req.sources` to file `req.ino` by moving their records (see
        ConcatReq): no chunkserver is asked anything and no version is queued for deletion;
        the sources end empty (size 0, no chunks). Refused with EINVAL, changing nothing, when a
        boundary is not on a chunk boundary, a source is inline, or a file is named twice."""
        if len(set(req.sources)) != len(req.sources) or req.ino in req.sources:
            raise FsError(errno.EINVAL, "concat names a file twice")
        target = self._regular(txn, req.ino)
        if target.size % CHUNK_SIZE or (self.inline_data(txn, req.ino) is not None and target.size):
            raise FsError(errno.EINVAL, f"file {req.ino} does not end on a chunk boundary ({target.size} bytes)")
        txn.delete(u64(req.ino), db=self.db.inline)  # an empty file's (empty) inline bytes
        size = target.size
        for position, source_ino in enumerate(req.sources):
            source = self._regular(txn, source_ino)
            if source.size and self.inline_data(txn, source_ino) is not None:
                raise FsError(errno.EINVAL, f"file {source_ino} is kept inline: its bytes are in no chunk")
            if position < len(req.sources) - 1 and source.size % CHUNK_SIZE:
                raise FsError(errno.EINVAL, f"file {source_ino} does not end on a chunk boundary")
            first_index = size // CHUNK_SIZE
            moved = 0
            for index, rec in self.records(txn, source_ino):
                if index * CHUNK_SIZE >= source.size:
                    continue  # past the end (never there after a truncate; kept out all the same)
                key = chunk_key(req.ino, first_index + index)
                stale = txn.get(key, db=self.db.chunks)  # none past a file's end; if one were, it goes
                # the target holds the version before the source lets it go: it is never unheld (its
                # dedup index entry stays)
                self.write_record(txn, key, rec)
                self.write_record(txn, chunk_key(source_ino, index), None)
                if stale is not None:
                    old = _chunk_dec.decode(stale)
                    target.stored_bytes -= old.length
                    self.release(txn, old.chunk_id, old.version, old.replicas)
                moved += rec.length
            txn.delete(u64(source_ino), db=self.db.inline)
            target.stored_bytes += moved
            size += source.size
            source.size = source.stored_bytes = 0
            source.mtime_ns = source.ctime_ns = now_ns()
            self.namespace.put(txn, source_ino, source)
        limits.check_size(size)
        target.size = size
        target.mtime_ns = req.mtime_ns
        target.ctime_ns = now_ns()
        self.namespace.put(txn, req.ino, target)
        return self.namespace.attr(req.ino, target)

    def _committed_record(self, txn: Txn, ref: r.ChunkRef, client: str, ino: int, scope: str
                          ) -> tuple[ChunkRecord, Entry | None]:
        """The record a commit's `ref` becomes, and its content's index entry (None: no content
        named); EPERM for a version the committer may not commit (see `commit`)."""
        self._check_chunk_id(txn, ref.chunk_id)
        if not ref.shared:
            if not self.owners.claim(txn, client, ref.version, ino):
                raise FsError(errno.EPERM, f"chunk version {ref.version} was committed before and replaced")
            record = ChunkRecord(ref.chunk_id, ref.version, ref.length, ref.checksum, list(ref.replicas))
            length = ref.length
        else:
            pin = self.contents.attach(txn, ref, scope)
            replicas = self._replicas_of(txn, ref.chunk_id, ref.version) or pin.replicas
            record = ChunkRecord(ref.chunk_id, ref.version, ref.length, pin.checksum, list(replicas))
            length = pin.length
        if not ref.content or not ref.proof:
            return record, None
        return record, Entry(ref.chunk_id, ref.version, length, record.checksum, proof_check(ref.proof))

    def _regular(self, txn: Txn, ino: int) -> Inode:
        inode = self.namespace.get(txn, ino)
        if not stat.S_ISREG(inode.mode):
            raise FsError(errno.EINVAL, f"inode {ino} is not a regular file")
        return inode

    def _check_chunk_id(self, txn: Txn, chunk_id: int) -> None:
        if not self.chunk_ids.handed_out(txn, chunk_id):
            raise FsError(errno.EPERM, f"chunk id {chunk_id} was never handed out")

    def _commit_inline(self, txn: Txn, req: r.CommitReq, inline: bytes, inode: Inode) -> None:
        """The file's content becomes `inline` (`req.inline`): its chunks go (queued for deletion)."""
        if not len(inline) <= req.size <= INLINE_MAX_BYTES:
            raise FsError(errno.EINVAL, f"inline content of {len(inline)} bytes for a file of {req.size}; "
                                        f"at most {INLINE_MAX_BYTES} bytes are kept inline")
        if req.chunks:
            raise FsError(errno.EINVAL, "a commit carries either chunks or inline content")
        self.drop_file(txn, req.ino)
        txn.put(u64(req.ino), inline, db=self.db.inline)
        inode.stored_bytes = len(inline)
        inode.size = req.size  # truncate() below then has nothing left to cut

    def truncate(self, txn: Txn, ino: int, size: int) -> int:
        """Drop chunks past `size` and shorten the last one (and the inline bytes, which stand
        for chunk 0); return the bytes still stored."""
        stored = 0
        inline = txn.get(u64(ino), db=self.db.inline)
        if inline is not None:
            if len(inline) > size:
                inline = inline[:size]
                txn.put(u64(ino), inline, db=self.db.inline)
            stored += len(inline)
        for index, rec in self.records(txn, ino):
            start = index * CHUNK_SIZE
            if start >= size:
                self.write_record(txn, chunk_key(ino, index), None)
                self.release(txn, rec.chunk_id, rec.version, rec.replicas)
                continue
            if start + rec.length > size:
                rec.length = size - start
                self.write_record(txn, chunk_key(ino, index), rec)
            stored += rec.length
        return stored

    def drop_file(self, txn: Txn, ino: int) -> None:
        txn.delete(u64(ino), db=self.db.inline)
        for index, rec in self.records(txn, ino):
            self.write_record(txn, chunk_key(ino, index), None)
            self.release(txn, rec.chunk_id, rec.version, rec.replicas)

    # ---- deletions --------------------------------------------------------------------------
    def queue_deletion(self, txn: Txn, chunk_id: int, version: int, servers: list[str]) -> None:
        if not servers:
            return
        key = U64x2.pack(chunk_id, version)
        raw = txn.get(key, db=self.db.deletions)
        pending = set(_servers_dec.decode(raw)) if raw else set()
        txn.put(key, _enc.encode(sorted(pending | set(servers))), db=self.db.deletions)

    def cancel_deletion(self, txn: Txn, chunk_id: int, version: int, servers: list[str]) -> None:
        """A version committed after it was queued as garbage (an upload older than the orphan
        grace, `chunkfs gc`) is kept on the servers its record lists."""
        key = U64x2.pack(chunk_id, version)
        raw = txn.get(key, db=self.db.deletions)
        if raw is None:
            return
        left = [s for s in _servers_dec.decode(raw) if s not in servers]
        if left:
            txn.put(key, _enc.encode(left), db=self.db.deletions)
        else:
            txn.delete(key, db=self.db.deletions)

    def pending_deletions(self, txn: Txn, limit: int) -> list[tuple[int, int, list[str]]]:
        out = []
        for key, raw in txn.cursor(db=self.db.deletions):
            chunk_id, version = U64x2.unpack(key)
            out.append((chunk_id, version, _servers_dec.decode(raw)))
            if len(out) >= limit:
                break
        return out

    def count_deletions(self, txn: Txn) -> int:
        return txn.stat(self.db.deletions)["entries"]

    def deletion_done(self, txn: Txn, chunk_id: int, version: int, server: str) -> bool:
        """Whether that was the version's last server to delete it on."""
        key = U64x2.pack(chunk_id, version)
        raw = txn.get(key, db=self.db.deletions)
        if raw is None:
            return False
        left = [s for s in _servers_dec.decode(raw) if s != server]
        if left:
            txn.put(key, _enc.encode(left), db=self.db.deletions)
            return False
        txn.delete(key, db=self.db.deletions)
        return True

    def unreferenced(self, txn: Txn, held: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Of the chunk versions a server holds, those no file references and no writer may
        still commit (no live reservation holds them): they are garbage on that server."""
        if self.holding_back():
            return []
        reserved = self.owners.ranges(txn)
        return [(cid, ver) for cid, ver in held if not self.referenced(txn, cid, ver)
                and not self.owners.holds(reserved, ver) and not self.contents.pinned(txn, cid, ver)]
