"""Inodes, directory entries, attributes and xattrs, kept in LMDB.

Every method takes the transaction it works in: reads take a read transaction, mutations the
write transaction given by the group committer. Errors are `FsError` with the errno POSIX names.
Directories keep their parent's inode so a rename can refuse to move a directory into itself.
"""

from __future__ import annotations

import errno
import stat
import time
from collections.abc import Iterator

import msgspec
from msgspec import Struct

from chunkfs import ROOT_INODE
from chunkfs.errors import FsError
from chunkfs import posix_acl
from chunkfs.metaserver.db import MetaDB, Txn, read_u64, u64
from chunkfs.metaserver import table_counts
from chunkfs.metaserver.table_counts import Counts, TableCounts
from chunkfs.protocol import records as r
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
    parent: int = 0  # directories only
    target: bytes = b""  # symlinks only
    stored_bytes: int = 0  # sum of chunk lengths, for st_blocks
    xattr_count: int = 0  # lets clients answer "no such attribute" without asking


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Inode)


class Namespace:
    def __init__(self, db: MetaDB, default_goal: int) -> None:
        self.db = db
        self.default_goal = default_goal
        self.on_inode_freed = lambda txn, ino: None  # set by the chunk table
        self.counts = Counts(db)

    # ---- records ----------------------------------------------------------------------------
    def init_root(self, txn: Txn) -> None:
        if txn.get(u64(ROOT_INODE), db=self.db.inodes) is None:
            now = time.time_ns()
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

    def put(self, txn: Txn, ino: int, inode: Inode) -> None:
        """Write the inode's row (new or replacing one) and move the table counts by the change."""
        key = u64(ino)
        raw = txn.get(key, db=self.db.inodes)
        txn.put(key, _enc.encode(inode), db=self.db.inodes)
        self._count(txn, None if raw is None else _dec.decode(raw), inode)

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
        """Entries after `after`, with their attributes (and their value of `xattr`, if asked)."""
        self._dir(txn, ino)
        out = []
        for name, child in self.entries(txn, ino, after):
            value = txn.get(u64(child) + xattr, db=self.db.xattrs) if xattr else None
            out.append(r.DirEntry(name, self.getattr(txn, child), value))
            if len(out) >= limit:
                break
        return out

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
        now = time.time_ns()
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
            parent=req.parent if is_dir else 0, target=req.target or b"", xattr_count=len(acl_xattrs),
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
        now = time.time_ns()
        inode.nlink += 1
        inode.ctime_ns = now
        self.put(txn, req.ino, inode)
        txn.put(u64(req.parent) + req.name, u64(req.ino), db=self.db.dentries)
        self._touch_dir(txn, req.parent, parent, now)
        return self.attr(req.ino, inode)

    def remove(self, txn: Txn, req: r.RemoveReq) -> int:
        """Remove an entry; returns the inode it named."""
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
        now = time.time_ns()
        txn.delete(u64(req.parent) + req.name, db=self.db.dentries)
        self._touch_dir(txn, req.parent, parent, now, -1 if is_dir else 0)
        self._drop_link(txn, ino, inode, now, req.open_by if ino in req.open_here else "")
        return ino

    def _drop_link(self, txn: Txn, ino: int, inode: Inode, now: int, open_by: str = "") -> None:
        """One name less; the inode goes with its last name unless client `open_by` has it
        open: then it stays, with no name, until that client closes it (`release_orphan`) or
        its session ends, as an unlinked open file does on a local filesystem."""
        if stat.S_ISDIR(inode.mode):
            inode.nlink = 0
        else:
            inode.nlink -= 1
        if inode.nlink > 0 or (open_by and (stat.S_ISREG(inode.mode) or stat.S_ISDIR(inode.mode))):
            inode.ctime_ns = now
            self.put(txn, ino, inode)
            if inode.nlink == 0:
                txn.put(u64(ino), open_by.encode(), db=self.db.orphans)
            return
        self._free(txn, ino)

    def release_orphan(self, txn: Txn, ino: int) -> bool:
        """The last close of an unlinked file: free it. False if `ino` is not an orphan."""
        if not txn.delete(u64(ino), db=self.db.orphans):
            return False
        if self.get(txn, ino).nlink == 0:
            self._free(txn, ino)
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

    def _free(self, txn: Txn, ino: int) -> None:
        raw = txn.pop(u64(ino), db=self.db.inodes)
        if raw is not None:
            self._count(txn, _dec.decode(raw), None)
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

    def rename(self, txn: Txn, req: r.RenameReq) -> list[int]:
        """Move an entry; returns the inodes moved or replaced."""
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
        now = time.time_ns()
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
            self._drop_link(txn, dst, dst_inode, now, req.open_by if dst in req.open_here else "")
        txn.delete(u64(req.old_parent) + req.old_name, db=self.db.dentries)
        txn.put(u64(req.new_parent) + req.new_name, u64(src), db=self.db.dentries)
        moved_dir = src_is_dir and req.old_parent != req.new_parent
        old_parent = self.get(txn, req.old_parent)
        self._touch_dir(txn, req.old_parent, old_parent, now, -1 if moved_dir else 0)
        new_parent = self.get(txn, req.new_parent)
        self._touch_dir(txn, req.new_parent, new_parent, now, 1 if moved_dir else 0)
        src_inode = self.get(txn, src)
        src_inode.ctime_ns = now
        if src_is_dir:
            src_inode.parent = req.new_parent
        self.put(txn, src, src_inode)
        return [src] if dst is None else [src, dst]

    def _exchange(self, txn: Txn, req: r.RenameReq, src: int, dst: int) -> None:
        src_inode, dst_inode = self.get(txn, src), self.get(txn, dst)
        src_is_dir, dst_is_dir = stat.S_ISDIR(src_inode.mode), stat.S_ISDIR(dst_inode.mode)
        if src_is_dir and self._is_ancestor(txn, src, req.new_parent):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")
        if dst_is_dir and self._is_ancestor(txn, dst, req.old_parent):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")
        now = time.time_ns()
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
        for ino, parent in ((src, req.new_parent), (dst, req.old_parent)):
            inode = self.get(txn, ino)
            inode.ctime_ns = now
            if stat.S_ISDIR(inode.mode):
                inode.parent = parent
            self.put(txn, ino, inode)

    def setattr(self, txn: Txn, req: r.SetattrReq, truncate) -> r.Attr:
        inode = self.get(txn, req.ino)
        now = time.time_ns()
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
        todo = [req.ino]
        for _ in range(10_000_000):
            if not todo:
                break
            ino = todo.pop()
            inode = self.get(txn, ino)
            inode.goal = req.goal
            inode.ctime_ns = time.time_ns()
            self.put(txn, ino, inode)
            if req.recursive and stat.S_ISDIR(inode.mode):
                todo.extend(child for _name, child in self.entries(txn, ino, None))
        return self.getattr(txn, req.ino)

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
        inode.ctime_ns = time.time_ns()
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
        inode.ctime_ns = time.time_ns()
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


