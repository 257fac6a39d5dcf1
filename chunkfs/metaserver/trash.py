"""The trash: a regular file that loses its last name (unlinked, or replaced by a rename) is kept
with its chunks for its retention time, listed and restorable by `chunkfs trash`, then freed.

Retention is set per directory and inherited by what is made in it, as the goal is
(`chunkfs trash-time PATH 1d [-r]`, `Inode.trash_s`; -1 follows the metaserver's
`trash_time_s`, 24 h by default; 0 turns the trash off). A file in the trash keeps its inode row
(with no link: it counts in no quota and in no listing) and its chunk records, so gc, fsck of the
disks and the deleter leave its chunk versions alone; its `trash` row says where it was and
when it goes. Files only: directories, symlinks and special files are freed at once, as
MooseFS does. A file rewritten in place (O_TRUNC, a write) is not kept.

Promises:
- Moving a file to the trash, restoring it and freeing it are each one LMDB transaction with the
  change of the namespace they belong to: a crash never loses a file in between.
- A restore puts the file back under its old name, or `--to` another (EEXIST if that name is
  taken, ENOENT if its old directory is gone), charged to the quotas there (EDQUOT).
- Expired files are freed by `TrashCollector` in pages, in the background.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from msgspec import Struct

from chunkfs.errors import FsError
from chunkfs.metaserver.db import GroupCommitter, MetaDB, Txn, read_u64, u64
from chunkfs.protocol import records as r
from chunkfs.protocol.limits import check_name

if TYPE_CHECKING:  # namespace.py imports this module
    from chunkfs.metaserver.namespace import Inode, Namespace

log = logging.getLogger(__name__)

DEFAULT_TRASH_S = 86400
PURGE_PAGE = 1000  # files freed per transaction
PURGE_INTERVAL_S = 30.0  # a full scan of the trash at least this often
TICK_S = 0.5


class TrashEntry(Struct, array_like=True):
    deleted_ns: int
    expires_ns: int
    parent: int  # the directory it was removed from
    name: bytes


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(TrashEntry)


class Trash:
    def __init__(self, namespace: Namespace, default_trash_s: int = DEFAULT_TRASH_S) -> None:
        self.namespace = namespace
        self.db = namespace.db
        self.default_trash_s = default_trash_s
        self.on_kept: Callable[[int], None] = lambda expires_ns: None  # the collector's

    def retention_s(self, inode: Inode) -> int:
        return inode.trash_s if inode.trash_s >= 0 else self.default_trash_s

    def keep(self, txn: Txn, ino: int, inode: Inode, parent: int, name: bytes, now_ns: int) -> bool:
        """A regular file lost its last name (`name` in `parent`): keep it in the trash if its
        retention says so (True; the caller writes its row, linkless)."""
        retention = self.retention_s(inode)
        if retention <= 0 or not stat.S_ISREG(inode.mode):
            return False
        entry = TrashEntry(now_ns, now_ns + retention * 10**9, parent, name)
        txn.put(u64(ino), _enc.encode(entry), db=self.db.trash)
        self.on_kept(entry.expires_ns)
        return True

    def holds(self, txn: Txn, ino: int) -> bool:
        return txn.get(u64(ino), db=self.db.trash) is not None

    def count(self, txn: Txn) -> int:
        return txn.stat(self.db.trash)["entries"]

    def where(self, txn: Txn, ino: int) -> int:
        """The directory file `ino` was removed from (ENOENT: not in the trash)."""
        return self._entry(txn, ino).parent

    def _entry(self, txn: Txn, ino: int) -> TrashEntry:
        raw = txn.get(u64(ino), db=self.db.trash)
        if raw is None:
            raise FsError(errno.ENOENT, f"no file {ino} in the trash")
        return _dec.decode(raw)

    # ---- listing ------------------------------------------------------------------------------
    def listing(self, txn: Txn, req: r.TrashListReq) -> list[r.TrashItem]:
        """Files in the trash from id `req.after` on (id order: the inode number), at most
        `req.limit`, with the path they had (its directory's path as it is now)."""
        out: list[r.TrashItem] = []
        cursor = txn.cursor(db=self.db.trash)
        if not cursor.set_range(u64(req.after + 1)):
            return out
        dir_paths: dict[int, bytes] = {}
        for key, raw in cursor:
            if len(out) >= req.limit:
                break
            ino, entry = read_u64(key), _dec.decode(raw)
            if req.under and not self.namespace.inside(txn, req.under, entry.parent):
                continue
            if entry.parent not in dir_paths:
                try:
                    dir_paths[entry.parent] = self.namespace.path_of_dir(txn, entry.parent)
                except FsError:  # its directory is gone too
                    dir_paths[entry.parent] = f"<removed directory {entry.parent}>".encode()
            inode = self.namespace.get(txn, ino)
            out.append(r.TrashItem(id=ino, path=dir_paths[entry.parent].rstrip(b"/") + b"/" + entry.name,
                                   size=inode.size, deleted_ns=entry.deleted_ns, expires_ns=entry.expires_ns))
        return out

    # ---- restore and purge --------------------------------------------------------------------
    def restore(self, txn: Txn, req: r.TrashRestoreReq) -> r.TrashRestored:
        entry = self._entry(txn, req.id)
        parent, name = req.parent or entry.parent, req.name or entry.name
        check_name(name)
        try:
            directory = self.namespace.get(txn, parent)
        except FsError:
            raise FsError(errno.ENOENT, f"the directory {req.id} was removed from is gone: restore it --to "
                                        "another place") from None
        if not stat.S_ISDIR(directory.mode):
            raise FsError(errno.ENOTDIR, f"inode {parent} is not a directory")
        if self.namespace.child(txn, parent, name) is not None:
            raise FsError(errno.EEXIST, f"{name!r} exists: restore it --to another name")
        attr = self.namespace.relink(txn, req.id, parent, name)
        txn.delete(u64(req.id), db=self.db.trash)
        txn.delete(u64(req.id), db=self.db.orphans)  # it has a name again, whoever has it open
        return r.TrashRestored(parent=parent, name=name, attr=attr)

    def purge(self, txn: Txn, req: r.TrashPurgeReq) -> int:
        """`chunkfs trash purge`: free the files named (ENOENT for one not in the trash), or with
        `req.everything` the first PURGE_PAGE of the trash; returns how many (call again until 0)."""
        if req.ids:
            for ino in req.ids:
                self._entry(txn, ino)
                self._free(txn, ino)
            return len(req.ids)
        if not req.everything:
            return 0
        ids = [read_u64(key) for key in itertools.islice(txn.cursor(db=self.db.trash).iternext(values=False), PURGE_PAGE)]
        for ino in ids:
            self._free(txn, ino)
        return len(ids)

    def expired(self, txn: Txn, now_ns: int, limit: int = PURGE_PAGE) -> tuple[list[int], int | None]:
        """Ids of files whose retention ran out by `now_ns`, and the earliest time one of the
        others runs out (None: no other); a read, one scan of the trash."""
        out: list[int] = []
        following: int | None = None
        for key, raw in txn.cursor(db=self.db.trash):
            expires_ns = _dec.decode(raw).expires_ns
            if expires_ns > now_ns:
                following = expires_ns if following is None else min(following, expires_ns)
            elif len(out) < limit:
                out.append(read_u64(key))
        return out, following

    def free_expired(self, txn: Txn, ids: list[int], now_ns: int) -> int:
        """Free those of `ids` still in the trash and expired (one may be restored meanwhile)."""
        freed = 0
        for ino in ids:
            raw = txn.get(u64(ino), db=self.db.trash)
            if raw is not None and _dec.decode(raw).expires_ns <= now_ns:
                self._free(txn, ino)
                freed += 1
        return freed

    def _free(self, txn: Txn, ino: int) -> None:
        txn.delete(u64(ino), db=self.db.trash)
        if txn.get(u64(ino), db=self.db.orphans) is None:  # else its last close frees it
            self.namespace.free(txn, ino)


class TrashCollector:
    """Frees the files whose retention ran out, a page per transaction: every PURGE_INTERVAL_S,
    or sooner when a file's time runs out sooner (a short retention is kept to within a second)."""

    def __init__(self, db: MetaDB, committer: GroupCommitter, trash: Trash, on_freed: Callable[[], None],
                 interval_s: float = PURGE_INTERVAL_S) -> None:
        self.db, self.committer, self.trash = db, committer, trash
        self.on_freed = on_freed  # wakes the deleter
        self.interval_s = interval_s
        self.freed = 0
        self.next_expiry_ns: int | None = None  # the earliest a file in the trash runs out, as last seen
        trash.on_kept = self.kept_until

    async def run(self) -> None:
        next_pass_ns = 0
        while True:
            await asyncio.sleep(TICK_S)
            now_ns = time.time_ns()
            if now_ns < min(next_pass_ns, self.next_expiry_ns or next_pass_ns):
                continue
            next_pass_ns = now_ns + int(self.interval_s * 1e9)
            try:
                await self.pass_once()
            except Exception:
                log.exception("freeing expired files of the trash failed; retrying later")

    def kept_until(self, expires_ns: int) -> None:
        """A file was put in the trash until `expires_ns` (called in the transaction that put
        it, from any thread): the next pass comes by then."""
        following = self.next_expiry_ns
        self.next_expiry_ns = expires_ns if following is None else min(following, expires_ns)

    async def pass_once(self) -> int:
        """Free every expired file: found in read transactions off the event loop, freed a
        page per write transaction."""
        freed = 0
        while True:
            now_ns = time.time_ns()
            ids, self.next_expiry_ns = await asyncio.to_thread(self._expired, now_ns)
            if not ids:
                break
            freed += await self.committer.run(self.trash.free_expired, ids, now_ns)
            if len(ids) < PURGE_PAGE:
                break
        if freed:
            self.freed += freed
            log.info("freed %d files whose time in the trash ran out", freed)
            self.on_freed()
        return freed

    def _expired(self, now_ns: int) -> tuple[list[int], int | None]:
        with self.db.read() as txn:
            return self.trash.expired(txn, now_ns)
