"""Inodes, directory entries, attributes and xattrs, kept in LMDB.

Every method takes the transaction it works in: reads take a read transaction, mutations the
write transaction given by the group committer. Errors are `FsError` with the errno POSIX names.
Directories keep their parent's inode so a rename can refuse to move a directory into itself.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable, Iterator

import msgspec
from msgspec import Struct

from chunkfs import ROOT_INODE
from chunkfs.errors import FsError
from chunkfs import posix_acl
from chunkfs.metaserver.db import MetaDB, Txn, read_u64, u64
from chunkfs.metaserver.quotas import DirectoryQuotas
from chunkfs.metaserver.trash import Trash
from chunkfs.metaserver import table_counts
from chunkfs.metaserver.table_counts import Counts, TableCounts
from chunkfs.protocol import records as r
from chunkfs.metaserver.change_clock import now_ns
from chunkfs.protocol.limits import check_name, check_xattr

XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")


class Inode(Struct, array_like=True):
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    rdev: int = 0
    goal: int = 0
    parent: int = 0  # a directory's parent; a file's quota anchor (quotas.py), 0: none
    target: bytes = b""  # symlinks only
    stored_bytes: int = 0  # sum of chunk lengths, for st_blocks
    xattr_count: int = 0  # lets clients answer "no such attribute" without asking
    trash_s: int = -1  # how long a file stays in the trash once removed (trash.py); -1: the default
    read_only: bool = False  # in a read-only snapshot: no change but its settings (`Namespace.put`)
    no_dedup: bool = False  # its writers upload every chunk, without asking whether it is stored (dedup.py)


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Inode)


class Namespace:
    def __init__(self, db: MetaDB, default_goal: int, default_trash_s: int = 0) -> None:
        """`default_trash_s`: how long removed files are kept where no directory says (0: not)."""
        self.db = db
        self.default_goal = default_goal
        self.on_inode_freed = lambda txn, ino: None  # set by the chunk table
        self.counts = Counts(db)
        self.quotas = DirectoryQuotas(self)
        self.trash = Trash(self, default_trash_s)

    # ---- records ----------------------------------------------------------------------------
    def init_root(self, txn: Txn) -> None:
        if txn.get(u64(ROOT_INODE), db=self.db.inodes) is None:
            now = now_ns()
            root = Inode(stat.S_IFDIR | 0o755, 0, 0, 0, now, now, now, 2, goal=self.default_goal,
                         parent=ROOT_INODE)
            if txn.stat(self.db.inodes)["entries"] == 0:  # a new database: counted from its first row
                self.counts.write(txn, TableCounts())
            self.put(txn, ROOT_INODE, root)
            txn.put(b"next_ino", u64(ROOT_INODE + 1), db=self.db.counters)

    def get(self, txn: Txn, ino: int) -> Inode:
        raw = txn.get(u64(ino), db=self.db.inodes)
        if raw is None:
            raise FsError(errno.ENOENT, f"no inode {ino}")
        return _dec.decode(raw)

    def exists(self, txn: Txn, ino: int) -> bool:
        return txn.get(u64(ino), db=self.db.inodes) is not None

    @staticmethod
    def decode(raw: bytes) -> Inode:
        return _dec.decode(raw)

    def put(self, txn: Txn, ino: int, inode: Inode) -> None:
        """Write the inode's row (new or replacing one) and move the table counts and the quotas
        above it by the change (EDQUOT: past a quota's hard limit, nothing written). A read-only
        inode changes only in its settings (goal, trash time, the mark itself): anything else,
        its content, attributes, xattrs, names or entries, is EROFS, whichever call tried."""
        key = u64(ino)
        raw = txn.get(key, db=self.db.inodes)
        before = None if raw is None else _dec.decode(raw)
        if before is not None and before.read_only and not _settings_only(before, inode):
            raise FsError(errno.EROFS, f"inode {ino} is in a read-only snapshot")
        self.quotas.changed(txn, ino, before, inode)
        txn.put(key, _enc.encode(inode), db=self.db.inodes)
        self._count(txn, before, inode)

    def _count(self, txn: Txn, before: Inode | None, after: Inode | None) -> None:
        for inode, sign in ((before, -1), (after, 1)):
            if inode is not None and (before is None or after is None):
                self.counts.add(txn, table_counts.DIRECTORIES if stat.S_ISDIR(inode.mode) else table_counts.FILES, sign)
        size = lambda inode: inode.size if inode is not None and stat.S_ISREG(inode.mode) else 0  # noqa: E731
        self.counts.add(txn, table_counts.FILE_BYTES, size(after) - size(before))

    def attr(self, ino: int, inode: Inode) -> r.Attr:
        return r.Attr(
            ino=ino, mode=inode.mode, uid=inode.uid, gid=inode.gid, size=inode.size,
            atime_ns=inode.atime_ns, mtime_ns=inode.mtime_ns, ctime_ns=inode.ctime_ns,
            nlink=inode.nlink, rdev=inode.rdev, goal=inode.goal, has_xattrs=inode.xattr_count > 0,
            read_only=inode.read_only, no_dedup=inode.no_dedup,
            blocks=(inode.stored_bytes + 511) // 512 if stat.S_ISREG(inode.mode) else
            (len(inode.target) + 511) // 512,
        )

    def getattr(self, txn: Txn, ino: int) -> r.Attr:
        return self.attr(ino, self.get(txn, ino))

    def _ino_counter(self, txn: Txn) -> int:
        """The lowest inode number not handed out yet (the counter is written with the root)."""
        raw = txn.get(b"next_ino", db=self.db.counters)
        if raw is None:
            raise FsError(errno.EIO, "the database has no inode counter")
        return read_u64(raw)

    def _next_ino(self, txn: Txn) -> int:
        ino = self._ino_counter(txn)
        txn.put(b"next_ino", u64(ino + 1), db=self.db.counters)
        return ino

    # ---- directory entries ------------------------------------------------------------------
    def reserve_inodes(self, txn: Txn, count: int) -> int:
        """`count` inode numbers for a client to create files with (CreateReq.ino); the first."""
        first = self._ino_counter(txn)
        txn.put(b"next_ino", u64(first + count), db=self.db.counters)
        return first

    def _reserved_ino(self, txn: Txn, ino: int) -> int:
        if ino >= self._ino_counter(txn) or \
                txn.get(u64(ino), db=self.db.inodes) is not None:
            raise FsError(errno.EINVAL, f"inode {ino} was not reserved or is in use")
        return ino

    def child(self, txn: Txn, parent: int, name: bytes) -> int | None:
        raw = txn.get(u64(parent) + name, db=self.db.dentries)
        return None if raw is None else read_u64(raw)

    def lookup(self, txn: Txn, parent: int, name: bytes) -> r.Attr:
        check_name(name)
        self._dir(txn, parent)
        ino = self.child(txn, parent, name)
        if ino is None:
            raise FsError(errno.ENOENT, f"{name!r} not found")
        return self.getattr(txn, ino)

    def parent(self, txn: Txn, ino: int) -> r.Attr:
        return self.getattr(txn, self._dir(txn, ino).parent)

    def resolve(self, txn: Txn, path: bytes) -> r.Attr:
        ino = ROOT_INODE
        for part in [p for p in path.split(b"/") if p and p != b"."]:
            ino = self.lookup(txn, ino, part).ino
        return self.getattr(txn, ino)

    def entries(self, txn: Txn, parent: int, after: bytes | None) -> Iterator[tuple[bytes, int]]:
        prefix = u64(parent)
        cursor = txn.cursor(db=self.db.dentries)
        start = prefix + (after or b"")
        if not cursor.set_range(start):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                return
            name = key[8:]
            if after is not None and name == after:
                continue
            yield name, read_u64(value)

    def readdir(self, txn: Txn, ino: int, after: bytes | None, limit: int, xattr: bytes | None = None
                ) -> list[r.DirEntry]:
        """Entries after `after`, with their attributes; with `xattr`, also their value of it and
        their access ACL (what a caller's permission to read that xattr depends on)."""
        self._dir(txn, ino)
        out = []
        for name, child in self.entries(txn, ino, after):
            attr = self.getattr(txn, child)
            if xattr is None:
                out.append(r.DirEntry(name, attr))
            elif not attr.has_xattrs:
                out.append(r.DirEntry(name, attr, None, None))
            else:
                key = u64(child)
                out.append(r.DirEntry(name, attr, txn.get(key + xattr, db=self.db.xattrs),
                                      txn.get(key + posix_acl.ACCESS, db=self.db.xattrs)))
            if len(out) >= limit:
                break
        return out

    def dir_names(self, txn: Txn, ino: int) -> list[bytes]:
        """The names on the path from the root to directory `ino` (directories know their
        parent; the name is found in the parent's entries)."""
        names: list[bytes] = []
        while ino != ROOT_INODE and len(names) < 4096:
            parent = self.get(txn, ino).parent
            name = next((n for n, child in self.entries(txn, parent, None) if child == ino), None)
            if name is None:
                break
            names.append(name)
            ino = parent
        return names[::-1]

    def path_of_dir(self, txn: Txn, ino: int) -> bytes:
        return b"/" + b"/".join(self.dir_names(txn, ino))

    def is_empty(self, txn: Txn, ino: int) -> bool:
        return next(self.entries(txn, ino, None), None) is None

    def _dir(self, txn: Txn, ino: int) -> Inode:
        inode = self.get(txn, ino)
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR, f"inode {ino} is not a directory")
        return inode

    def _touch_dir(self, txn: Txn, ino: int, inode: Inode, now: int, nlink_delta: int = 0) -> None:
        inode.mtime_ns = inode.ctime_ns = now
        inode.nlink += nlink_delta
        self.put(txn, ino, inode)

    # ---- mutations --------------------------------------------------------------------------
    def create(self, txn: Txn, req: r.CreateReq) -> r.Attr:
        check_name(req.name)
        parent = self._dir(txn, req.parent)
        if self.child(txn, req.parent, req.name) is not None:
            raise FsError(errno.EEXIST, f"{req.name!r} exists")
        now = now_ns()
        is_dir = stat.S_ISDIR(req.mode)
        if req.target is not None and not stat.S_ISLNK(req.mode):
            raise FsError(errno.EINVAL, "only symlinks have a target")
        if stat.S_IFMT(req.mode) == 0:
            raise FsError(errno.EINVAL, "mode has no file type")
        mode, acl_xattrs = self._inherit_acl(txn, req.parent, parent, req.mode, req.umask)
        gid = req.gid
        if parent.mode & stat.S_ISGID:
            # BSD group semantics, as Linux filesystems do: the entry takes the directory's group,
            # and a subdirectory passes the bit on (the kernel already strips it from files
            # created by non-members)
            gid = parent.gid
            if is_dir:
                mode |= stat.S_ISGID
        ino = self._reserved_ino(txn, req.ino) if req.ino else self._next_ino(txn)
        inode = Inode(
            mode=mode, uid=req.uid, gid=gid,
            size=len(req.target) if req.target is not None else 0,
            atime_ns=now, mtime_ns=now, ctime_ns=now, nlink=2 if is_dir else 1,
            rdev=req.rdev, goal=parent.goal or self.default_goal,
            parent=req.parent, target=req.target or b"", xattr_count=len(acl_xattrs), trash_s=parent.trash_s,
            no_dedup=parent.no_dedup,
        )
        self.put(txn, ino, inode)
        for name, value in acl_xattrs:
            txn.put(u64(ino) + name, value, db=self.db.xattrs)
        txn.put(u64(req.parent) + req.name, u64(ino), db=self.db.dentries)
        self._touch_dir(txn, req.parent, parent, now, 1 if is_dir else 0)
        return self.attr(ino, inode)

    def link(self, txn: Txn, req: r.LinkReq) -> r.Attr:
        check_name(req.name)
        inode = self.get(txn, req.ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EPERM, "hard links to directories are not allowed")
        if inode.nlink == 0:
            raise FsError(errno.ENOENT, f"inode {req.ino} was removed")
        parent = self._dir(txn, req.parent)
        if self.child(txn, req.parent, req.name) is not None:
            raise FsError(errno.EEXIST, f"{req.name!r} exists")
        now = now_ns()
        inode.nlink += 1
        inode.ctime_ns = now
        self.put(txn, req.ino, inode)
        txn.put(u64(req.parent) + req.name, u64(req.ino), db=self.db.dentries)
        self._touch_dir(txn, req.parent, parent, now)
        return self.attr(req.ino, inode)

    def remove(self, txn: Txn, req: r.RemoveReq) -> r.Removed:
        """Remove an entry; returns the inode it named and the directory's new attributes."""
        check_name(req.name)
        parent = self._dir(txn, req.parent)
        ino = self.child(txn, req.parent, req.name)
        if ino is None:
            raise FsError(errno.ENOENT, f"{req.name!r} not found")
        inode = self.get(txn, ino)
        is_dir = stat.S_ISDIR(inode.mode)
        if req.is_dir and not is_dir:
            raise FsError(errno.ENOTDIR, f"{req.name!r} is not a directory")
        if not req.is_dir and is_dir:
            raise FsError(errno.EISDIR, f"{req.name!r} is a directory")
        if is_dir and not self.is_empty(txn, ino):
            raise FsError(errno.ENOTEMPTY, f"directory {req.name!r} is not empty")
        now = now_ns()
        txn.delete(u64(req.parent) + req.name, db=self.db.dentries)
        self._touch_dir(txn, req.parent, parent, now, -1 if is_dir else 0)
        self._drop_link(txn, ino, inode, now, req.parent, req.name, req.open_by if ino in req.open_here else "")
        return r.Removed(ino, self.attr(req.parent, parent))

    def _drop_link(self, txn: Txn, ino: int, inode: Inode, now: int, directory: int, name: bytes,
                   open_by: str = "") -> None:
        """One name less (`name` in `directory`); the inode goes with its last name unless
        client `open_by` has it open: then it stays, with no name, until that client closes it
        (`release_orphan`) or its session ends, as an unlinked open file does on a local
        filesystem. A regular file may go to the trash instead (trash.py), open or not. A file
        losing the name its quotas are charged through is charged nowhere. A read-only inode
        keeps its names (EROFS)."""
        _check_writable(inode, name)
        if stat.S_ISDIR(inode.mode):
            inode.nlink = 0
        else:
            inode.nlink -= 1
            if inode.parent == directory:
                inode.parent = 0
        open_here = bool(open_by) and (stat.S_ISREG(inode.mode) or stat.S_ISDIR(inode.mode))
        trashed = inode.nlink == 0 and self.trash.keep(txn, ino, inode, directory, name, now)
        if trashed or inode.nlink > 0 or open_here:
            inode.ctime_ns = now
            self.put(txn, ino, inode)
            if inode.nlink == 0 and open_here:
                txn.put(u64(ino), open_by.encode(), db=self.db.orphans)
            return
        self.free(txn, ino)

    def insert(self, txn: Txn, parent: int, name: bytes, inode: Inode, xattrs_of: int = 0) -> int:
        """A new inode `inode` under the new name `name` in directory `parent` (the caller
        checked both), with the xattrs of inode `xattrs_of` copied; returns its number. For
        snapshots: the new inode is charged to the quotas there (EDQUOT)."""
        ino = self._next_ino(txn)
        self.put(txn, ino, inode)
        if xattrs_of:
            prefix = u64(xattrs_of)
            cursor = txn.cursor(db=self.db.xattrs)
            copied = []
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    copied.append((u64(ino) + key[8:], value))
            for key, value in copied:
                txn.put(key, value, db=self.db.xattrs)
        txn.put(u64(parent) + name, u64(ino), db=self.db.dentries)
        self._touch_dir(txn, parent, self.get(txn, parent), inode.ctime_ns, 1 if stat.S_ISDIR(inode.mode) else 0)
        return ino

    def add_name(self, txn: Txn, ino: int, parent: int, name: bytes) -> None:
        """One more name for file `ino` (a hard link a snapshot copies)."""
        inode = self.get(txn, ino)
        inode.nlink += 1
        self.put(txn, ino, inode)
        txn.put(u64(parent) + name, u64(ino), db=self.db.dentries)
        self._touch_dir(txn, parent, self.get(txn, parent), inode.ctime_ns)

    def relink(self, txn: Txn, ino: int, parent: int, name: bytes) -> r.Attr:
        """Give a file kept with no name (in the trash) the name `name` in directory `parent`
        (the caller checked both), charged to the quotas there."""
        inode = self.get(txn, ino)
        if inode.nlink != 0 or not stat.S_ISREG(inode.mode):
            raise FsError(errno.EINVAL, f"inode {ino} is not a file without a name")
        now = now_ns()
        inode.nlink, inode.parent, inode.ctime_ns = 1, parent, now
        self.put(txn, ino, inode)
        txn.put(u64(parent) + name, u64(ino), db=self.db.dentries)
        self._touch_dir(txn, parent, self.get(txn, parent), now)
        return self.attr(ino, inode)

    def release_orphan(self, txn: Txn, ino: int) -> bool:
        """The last close of an unlinked file: free it. False if `ino` is not an orphan."""
        if not txn.delete(u64(ino), db=self.db.orphans):
            return False
        if self.get(txn, ino).nlink == 0 and not self.trash.holds(txn, ino):
            self.free(txn, ino)
        return True

    def orphans(self, txn: Txn, after: int = 0, limit: int = 10_000) -> list[tuple[int, str]]:
        """(inode, client id) of unlinked files still open on some client, from inode `after` on,
        at most `limit` of them (in inode order)."""
        out: list[tuple[int, str]] = []
        cursor = txn.cursor(db=self.db.orphans)
        if cursor.set_range(u64(after)):
            for key, value in cursor:
                if len(out) >= limit:
                    break
                out.append((read_u64(key), value.decode()))
        return out

    def free(self, txn: Txn, ino: int) -> None:
        raw = txn.pop(u64(ino), db=self.db.inodes)
        if raw is not None:
            before = _dec.decode(raw)
            self.quotas.changed(txn, ino, before, None)
            self._count(txn, before, None)
        self.quotas.forget(txn, ino)
        txn.delete(u64(ino), db=self.db.trash)
        txn.delete(u64(ino), db=self.db.leases)
        cursor = txn.cursor(db=self.db.xattrs)
        prefix = u64(ino)
        while cursor.set_range(prefix) and cursor.key().startswith(prefix):
            cursor.delete()
        self.on_inode_freed(txn, ino)

    def _is_ancestor(self, txn: Txn, ancestor: int, ino: int) -> bool:
        """True if `ancestor` is `ino` or one of its parents (directories only)."""
        for _ in range(4096):
            if ino == ancestor:
                return True
            if ino == ROOT_INODE:
                return False
            ino = self.get(txn, ino).parent
        raise FsError(errno.ELOOP, "directory tree too deep")

    def inside(self, txn: Txn, ancestor: int, directory: int) -> bool:
        """Whether `directory` is `ancestor` or below it; False if it is gone."""
        try:
            return self._is_ancestor(txn, ancestor, directory)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise

    def rename(self, txn: Txn, req: r.RenameReq) -> r.Renamed:
        """Move an entry; returns the inodes moved or replaced and the directories' new attributes."""
        moved = self._rename(txn, req)
        parents = dict.fromkeys((req.old_parent, req.new_parent))
        return r.Renamed(moved, [self.attr(ino, self.get(txn, ino)) for ino in parents])

    def _rename(self, txn: Txn, req: r.RenameReq) -> list[int]:
        check_name(req.old_name)
        check_name(req.new_name)
        if req.flags & ~(r.RENAME_NOREPLACE | r.RENAME_EXCHANGE) or req.flags == r.RENAME_NOREPLACE | r.RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, f"unsupported rename flags {req.flags}")
        self._dir(txn, req.old_parent)
        self._dir(txn, req.new_parent)
        src = self.child(txn, req.old_parent, req.old_name)
        if src is None:
            raise FsError(errno.ENOENT, f"{req.old_name!r} not found")
        dst = self.child(txn, req.new_parent, req.new_name)
        src_inode = self.get(txn, src)
        _check_writable(src_inode, req.old_name)  # the root of a read-only snapshot too: it keeps its name
        src_is_dir = stat.S_ISDIR(src_inode.mode)
        if req.flags & r.RENAME_EXCHANGE:
            if dst is None:
                raise FsError(errno.ENOENT, f"{req.new_name!r} not found")
            self._exchange(txn, req, src, dst)
            return [src, dst]
        if dst is not None and req.flags & r.RENAME_NOREPLACE:
            raise FsError(errno.EEXIST, f"{req.new_name!r} exists")
        if src_is_dir and self._is_ancestor(txn, src, req.new_parent):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")
        if dst == src:
            return [src]
        now = now_ns()
        if dst is not None:
            dst_inode = self.get(txn, dst)
            dst_is_dir = stat.S_ISDIR(dst_inode.mode)
            if src_is_dir and not dst_is_dir:
                raise FsError(errno.ENOTDIR, f"{req.new_name!r} is not a directory")
            if dst_is_dir and not src_is_dir:
                raise FsError(errno.EISDIR, f"{req.new_name!r} is a directory")
            if dst_is_dir and not self.is_empty(txn, dst):
                raise FsError(errno.ENOTEMPTY, f"directory {req.new_name!r} is not empty")
            if dst_is_dir:
                new_parent = self.get(txn, req.new_parent)
                self._touch_dir(txn, req.new_parent, new_parent, now, -1)
            self._drop_link(txn, dst, dst_inode, now, req.new_parent, req.new_name,
                            req.open_by if dst in req.open_here else "")
        txn.delete(u64(req.old_parent) + req.old_name, db=self.db.dentries)
        txn.put(u64(req.new_parent) + req.new_name, u64(src), db=self.db.dentries)
        moved_dir = src_is_dir and req.old_parent != req.new_parent
        old_parent = self.get(txn, req.old_parent)
        self._touch_dir(txn, req.old_parent, old_parent, now, -1 if moved_dir else 0)
        new_parent = self.get(txn, req.new_parent)
        self._touch_dir(txn, req.new_parent, new_parent, now, 1 if moved_dir else 0)
        src_inode = self.get(txn, src)
        src_inode.ctime_ns = now
        if src_is_dir or src_inode.parent == req.old_parent:
            src_inode.parent = req.new_parent
        self.put(txn, src, src_inode)
        return [src] if dst is None else [src, dst]

    def _exchange(self, txn: Txn, req: r.RenameReq, src: int, dst: int) -> None:
        src_inode, dst_inode = self.get(txn, src), self.get(txn, dst)
        _check_writable(src_inode, req.old_name)
        _check_writable(dst_inode, req.new_name)
        src_is_dir, dst_is_dir = stat.S_ISDIR(src_inode.mode), stat.S_ISDIR(dst_inode.mode)
        if src_is_dir and self._is_ancestor(txn, src, req.new_parent):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")
        if dst_is_dir and self._is_ancestor(txn, dst, req.old_parent):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")
        now = now_ns()
        txn.put(u64(req.old_parent) + req.old_name, u64(dst), db=self.db.dentries)
        txn.put(u64(req.new_parent) + req.new_name, u64(src), db=self.db.dentries)
        if req.old_parent != req.new_parent and src_is_dir != dst_is_dir:
            delta = 1 if dst_is_dir else -1
            old_parent = self.get(txn, req.old_parent)
            self._touch_dir(txn, req.old_parent, old_parent, now, delta)
            new_parent = self.get(txn, req.new_parent)
            self._touch_dir(txn, req.new_parent, new_parent, now, -delta)
        else:
            for parent in {req.old_parent, req.new_parent}:
                self._touch_dir(txn, parent, self.get(txn, parent), now)
        for ino, was_in, now_in in ((src, req.old_parent, req.new_parent), (dst, req.new_parent, req.old_parent)):
            inode = self.get(txn, ino)
            inode.ctime_ns = now
            if stat.S_ISDIR(inode.mode) or inode.parent == was_in:
                inode.parent = now_in
            self.put(txn, ino, inode)

    def setattr(self, txn: Txn, req: r.SetattrReq, truncate) -> r.Attr:
        inode = self.get(txn, req.ino)
        now = now_ns()
        if req.mode is not None:
            inode.mode = stat.S_IFMT(inode.mode) | (req.mode & 0o7777)
            self._acl_follows_mode(txn, req.ino, inode)
        if req.uid is not None:
            inode.uid = req.uid
        if req.gid is not None:
            inode.gid = req.gid
        if req.size is not None:
            if stat.S_ISDIR(inode.mode):
                raise FsError(errno.EISDIR, "cannot truncate a directory")
            if not stat.S_ISREG(inode.mode):
                raise FsError(errno.EINVAL, "only regular files can be truncated")
            if req.size != inode.size:
                inode.stored_bytes = truncate(txn, req.ino, req.size)
                inode.size = req.size
            inode.mtime_ns = now
        if req.atime_ns is not None:
            inode.atime_ns = req.atime_ns
        if req.mtime_ns is not None:
            inode.mtime_ns = req.mtime_ns
        inode.ctime_ns = now
        self.put(txn, req.ino, inode)
        return self.attr(req.ino, inode)

    def readlink(self, txn: Txn, ino: int) -> bytes:
        inode = self.get(txn, ino)
        if not stat.S_ISLNK(inode.mode):
            raise FsError(errno.EINVAL, "not a symlink")
        return inode.target

    def set_goal(self, txn: Txn, req: r.GoalReq) -> r.Attr:
        if not 1 <= req.goal <= 16:
            raise FsError(errno.EINVAL, f"goal must be between 1 and 16, not {req.goal}")
        return self._set_in_tree(txn, req.ino, req.recursive, lambda inode: setattr(inode, "goal", req.goal))

    def set_read_only(self, txn: Txn, req: r.ReadOnlyReq) -> r.Attr:
        """Mark a tree read-only, or (`chunkfs snapshot-remove`, an admin's) writable again."""
        return self._set_in_tree(txn, req.ino, req.recursive, lambda inode: setattr(inode, "read_only", req.read_only))

    def set_trash_time(self, txn: Txn, req: r.TrashTimeReq) -> r.Attr:
        """How long files removed from `req.ino` (and what is made in it) stay in the trash."""
        return self._set_in_tree(txn, req.ino, req.recursive, lambda inode: setattr(inode, "trash_s", req.seconds))

    def set_dedup(self, txn: Txn, req: r.DedupSettingReq) -> r.Attr:
        """Whether writers of `req.ino` (and of what is made in it) look for stored content (dedup.py)."""
        return self._set_in_tree(txn, req.ino, req.recursive, lambda inode: setattr(inode, "no_dedup", not req.enabled))

    def _set_in_tree(self, txn: Txn, ino: int, recursive: bool, change: Callable[[Inode], object]) -> r.Attr:
        """`change` inode `ino`, and with `recursive` everything below it (inherited settings)."""
        todo = [ino]
        for _ in range(10_000_000):
            if not todo:
                break
            at = todo.pop()
            inode = self.get(txn, at)
            change(inode)
            inode.ctime_ns = now_ns()
            self.put(txn, at, inode)
            if recursive and stat.S_ISDIR(inode.mode):
                todo.extend(child for _name, child in self.entries(txn, at, None))
        return self.getattr(txn, ino)

    # ---- xattrs -----------------------------------------------------------------------------
    def getxattr(self, txn: Txn, ino: int, name: bytes) -> bytes:
        self.get(txn, ino)
        value = txn.get(u64(ino) + name, db=self.db.xattrs)
        if value is None:
            raise FsError(errno.ENODATA, f"no attribute {name!r}")
        return value

    def listxattr(self, txn: Txn, ino: int) -> list[bytes]:
        self.get(txn, ino)
        prefix = u64(ino)
        cursor = txn.cursor(db=self.db.xattrs)
        names = []
        if cursor.set_range(prefix):
            for key in cursor.iternext(values=False):
                if not key.startswith(prefix):
                    break
                names.append(key[8:])
        return names

    def setxattr(self, txn: Txn, req: r.XattrReq) -> None:
        check_xattr(req.name, req.value)
        if req.name.startswith(b"system.") and req.name not in posix_acl.NAMES:
            raise FsError(errno.EOPNOTSUPP, f"{req.name!r}: system attributes other than POSIX ACLs are not supported")
        if not req.name.startswith(XATTR_NAMESPACES) and req.name not in posix_acl.NAMES:
            # Linux filesystems know only these namespaces; the kernel leaves the check to FUSE
            raise FsError(errno.EOPNOTSUPP, f"{req.name!r}: not in the user, trusted or security namespace")
        if req.value is None:
            raise FsError(errno.EINVAL, "setxattr without a value")
        inode = self.get(txn, req.ino)
        key = u64(req.ino) + req.name
        exists = txn.get(key, db=self.db.xattrs) is not None
        if req.flags & XATTR_CREATE and exists:
            raise FsError(errno.EEXIST, f"attribute {req.name!r} exists")
        if req.flags & XATTR_REPLACE and not exists:
            raise FsError(errno.ENODATA, f"no attribute {req.name!r}")
        value: bytes | None = req.value
        if req.name in posix_acl.NAMES:
            value = self._acl_to_store(inode, req.name, req.value)
        if value is None:  # an access ACL the mode says all of: nothing to keep, as on ext4
            if exists:
                txn.delete(key, db=self.db.xattrs)
                inode.xattr_count = max(0, inode.xattr_count - 1)
        else:
            txn.put(key, value, db=self.db.xattrs)
            inode.xattr_count += 0 if exists else 1
        inode.ctime_ns = now_ns()
        self.put(txn, req.ino, inode)

    @staticmethod
    def _acl_to_store(inode: Inode, name: bytes, value: bytes) -> bytes | None:
        """A new access ACL sets the mode's permission bits (the kernel leaves that to us)."""
        posix_acl.check_target(name, inode.mode)
        entries = posix_acl.parse(value)
        if name == posix_acl.DEFAULT:
            return posix_acl.encode(entries)
        inode.mode = (inode.mode & ~0o777) | posix_acl.permission_bits(entries)
        return None if posix_acl.is_minimal(entries) else posix_acl.encode(entries)

    def _acl_follows_mode(self, txn: Txn, ino: int, inode: Inode) -> None:
        """chmod rewrites the access ACL's owner, mask (or group) and other entries."""
        if not inode.xattr_count:
            return
        key = u64(ino) + posix_acl.ACCESS
        raw = txn.get(key, db=self.db.xattrs)
        if raw is not None:
            txn.put(key, posix_acl.encode(posix_acl.with_mode(posix_acl.parse(raw), inode.mode)), db=self.db.xattrs)

    def _inherit_acl(self, txn: Txn, parent_ino: int, parent: Inode, mode: int,
                     umask: int) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The mode of a new entry and the ACL xattrs it starts with: its directory's default
        ACL if it has one (then the umask plays no part), else just the umask."""
        if stat.S_ISLNK(mode):
            return mode, []
        raw = txn.get(u64(parent_ino) + posix_acl.DEFAULT, db=self.db.xattrs) if parent.xattr_count else None
        if raw is None:
            return mode & ~(umask & 0o777), []
        access, mode = posix_acl.inherit(posix_acl.parse(raw), mode)
        xattrs = [] if posix_acl.is_minimal(access) else [(posix_acl.ACCESS, posix_acl.encode(access))]
        if stat.S_ISDIR(mode):
            xattrs.append((posix_acl.DEFAULT, raw))
        return mode, xattrs

    def removexattr(self, txn: Txn, req: r.XattrReq) -> None:
        inode = self.get(txn, req.ino)
        if not txn.delete(u64(req.ino) + req.name, db=self.db.xattrs):
            raise FsError(errno.ENODATA, f"no attribute {req.name!r}")
        inode.xattr_count = max(0, inode.xattr_count - 1)
        inode.ctime_ns = now_ns()
        self.put(txn, req.ino, inode)

    # ---- counts -----------------------------------------------------------------------------
    def recount(self, txn: Txn, counts: TableCounts) -> None:
        """Files, directories and file bytes into `counts`, from a full scan of the inode table:
        for a database without counts (`Counts.ensure`) and for checking them, never serving."""
        for _key, raw in txn.cursor(db=self.db.inodes):
            inode = _dec.decode(raw)
            if stat.S_ISDIR(inode.mode):
                counts.directories += 1
            else:
                counts.files += 1
                counts.file_bytes += inode.size if stat.S_ISREG(inode.mode) else 0


def _check_writable(inode: Inode, name: bytes) -> None:
    """EROFS for an inode of a read-only snapshot losing or changing its name (a change its own
    row may not show: a rename in the same directory, the last name of a file going)."""
    if inode.read_only:
        raise FsError(errno.EROFS, f"{name!r} is in a read-only snapshot")


def _settings_only(before: Inode, after: Inode) -> bool:
    """Whether `after` differs from `before` in its settings and change time only."""
    return msgspec.structs.replace(after, goal=before.goal, trash_s=before.trash_s, ctime_ns=before.ctime_ns,
                                   read_only=before.read_only, no_dedup=before.no_dedup) == before
