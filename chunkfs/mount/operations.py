"""The pyfuse3 Operations of chunkfs: each FUSE call mapped to the client core (`chunkfs.client`).

This module only translates: inode numbers and file handles to the core's open files and
directory listings, the core's attributes to the kernel's, the kernel's page cache (keep_cache,
for close-to-open). It is the one edge where errors become errnos: `FsError` keeps its errno,
an unreachable server becomes EIO, anything else is logged and becomes EIO, so no exception
ever ends the mount.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from chunkfs.client.core import PREFERRED_IO_BYTES, Client, statvfs_numbers
from chunkfs.client.open_file import OpenFile
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol import records as r
from chunkfs.protocol.limits import check_name, unrepresentable

log = logging.getLogger(__name__)

READDIR_PAGE = 1000
FLOCK_TYPES = {fcntl.LOCK_SH: r.F_RDLCK, fcntl.LOCK_EX: r.F_WRLCK, fcntl.LOCK_UN: r.F_UNLCK}

P = ParamSpec("P")
R = TypeVar("R")


def fuse_errors(handler: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:
            if exc.errno not in (errno.ENOENT, errno.EEXIST, errno.ENODATA, errno.ENOTEMPTY, errno.EAGAIN):
                log.info("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except TransportError as exc:
            log.error("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s failed", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass
class DirListing:
    ino: int
    entries: list[r.DirEntry] = field(default_factory=list)
    complete: bool = False


class ChunkfsOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = True  # the kernel enforces POSIX ACLs kept in system.posix_acl_* xattrs
    enable_locks = True  # flock and fcntl locks come here and are kept by the metaserver (pyfuse3 patched)

    def __init__(self, client: Client, *, entry_timeout_s: float, attr_timeout_s: float) -> None:
        super().__init__()
        self.client = client
        self.entry_timeout_s, self.attr_timeout_s = entry_timeout_s, attr_timeout_s
        self.handles: dict[int, OpenFile] = {}
        self.posix_owners: dict[int, set[int]] = {}  # file handle -> owners of POSIX locks taken through it
        self.dirs: dict[int, DirListing] = {}
        self.seen_versions: dict[int, tuple[int, int]] = {}  # ino -> (mtime, size) last opened
        # ino -> (mtime, size) of the attributes last given to the kernel, which it keeps for
        # attr_timeout_s and ends reads at the size of (an open that finds another version
        # makes it ask again)
        self.kernel_versions: dict[int, tuple[int, int]] = {}
        # inodes whose last attributes said "no xattrs": getxattr answers ENODATA without a call
        # (the kernel asks for security.capability on every write, ls -l for ACLs on every entry)
        self.without_xattrs: set[int] = set()
        self._next_fh = 1

    # ---- helpers --------------------------------------------------------------------------
    def entry(self, attr: r.Attr) -> pyfuse3.EntryAttributes:
        """The kernel's view of `attr`; EIO for attributes it cannot take (see `unrepresentable`)."""
        problem = unrepresentable(attr)
        if problem is not None:
            raise FsError(errno.EIO, f"inode {attr.ino}: {problem}")
        if attr.has_xattrs:
            self.without_xattrs.discard(attr.ino)
        else:
            self.without_xattrs.add(attr.ino)
        self.kernel_versions[attr.ino] = (attr.mtime_ns, attr.size)
        e = pyfuse3.EntryAttributes()
        e.st_ino = attr.ino
        e.generation = 0
        e.entry_timeout = self.entry_timeout_s
        e.attr_timeout = self.attr_timeout_s
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = PREFERRED_IO_BYTES
        e.st_blocks = attr.blocks
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        return e

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _handle(self, fh: int) -> OpenFile:
        try:
            return self.handles[fh]
        except KeyError:
            raise FsError(errno.EBADF, f"unknown file handle {fh}") from None

    def _file_info(self, open_file: OpenFile, attr: r.Attr) -> pyfuse3.FileInfo:
        """A new handle; keep_cache only when the file is as this mount last saw it
        (close-to-open)."""
        fh = self._new_fh()
        self.handles[fh] = open_file
        version = (attr.mtime_ns, attr.size)
        keep = self.seen_versions.get(attr.ino) == version
        self.seen_versions[attr.ino] = version
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    # ---- namespace ------------------------------------------------------------------------
    @fuse_errors
    async def lookup(self, parent_inode, name, ctx):
        return self.entry(await self.client.lookup(parent_inode, name))

    @fuse_errors
    async def getattr(self, inode, ctx):
        return self.entry(await self.client.getattr(inode))

    @fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        req = r.SetattrReq(ino=inode)
        if fields.update_mode:
            req.mode = attr.st_mode
        if fields.update_uid:
            req.uid = attr.st_uid
        if fields.update_gid:
            req.gid = attr.st_gid
        if fields.update_atime:
            req.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            req.mtime_ns = attr.st_mtime_ns
        return self.entry(await self.client.setattr(req, attr.st_size if fields.update_size else None))

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self.entry(await self.client.make(parent_inode, name, stat.S_IFDIR | (mode & 0o7777), ctx))

    @fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self.entry(await self.client.make(parent_inode, name, mode, ctx, rdev=rdev))

    @fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        return self.entry(await self.client.make(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target=target))

    @fuse_errors
    async def readlink(self, inode, ctx):
        return await self.client.readlink(inode)

    @fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self.entry(await self.client.link(inode, new_parent_inode, new_name))

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        await self.client.remove(parent_inode, name, is_dir=False)

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        await self.client.remove(parent_inode, name, is_dir=True)

    @fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.client.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    # ---- directories ----------------------------------------------------------------------
    @fuse_errors
    async def opendir(self, inode, ctx):
        fh = self._new_fh()
        self.dirs[fh] = DirListing(inode)
        self.client.open_directory(inode)
        return fh

    @fuse_errors
    async def readdir(self, fh, start_id, token):
        listing = self.dirs[fh]
        if start_id == 0:
            # the first read, or a rewind (rewinddir): POSIX wants the directory as it is now
            listing.entries, listing.complete = [], False
        position = start_id
        for _ in range(1_000_000):
            while position >= len(listing.entries) and not listing.complete:
                after = listing.entries[-1].name if listing.entries else None
                page = await self.client.readdir(listing.ino, after, READDIR_PAGE)
                listing.entries.extend(page)
                listing.complete = len(page) < READDIR_PAGE
            if position >= len(listing.entries):
                return
            item = listing.entries[position]
            try:
                check_name(item.name)  # one stored before names were checked (a NUL in it)
                attributes = self.entry(item.attr)
            except FsError as exc:  # that entry is left out; the listing goes on
                log.error("readdir of inode %d: %r left out: %s", listing.ino, item.name, exc)
                position += 1
                continue
            if not pyfuse3.readdir_reply(token, item.name, attributes, position + 1):
                return
            position += 1

    @fuse_errors
    async def releasedir(self, fh):
        listing = self.dirs.pop(fh, None)
        if listing is not None:
            await self.client.release_directory(listing.ino)

    @fuse_errors
    async def fsyncdir(self, fh, datasync):
        await self.client.sync_directory(self.dirs[fh].ino)

    # ---- files ----------------------------------------------------------------------------
    @fuse_errors
    async def open(self, inode, flags, ctx):
        open_file = await self.client.open(inode, ctx, truncate=bool(flags & os.O_TRUNC),
                                           writing=flags & os.O_ACCMODE != os.O_RDONLY)
        info = self._file_info(open_file, open_file.attr)
        told = self.kernel_versions.get(inode)
        if not info.keep_cache and told is not None and told != (open_file.attr.mtime_ns, open_file.attr.size):
            # The kernel holds attributes of another version (from a stat, a lookup answered from
            # cache, or an earlier open), maybe changed elsewhere and not pushed yet: it must ask
            # for the size again, or it ends reads at the old one (whether or not this mount
            # opened the file before: after the kernel forgot the inode, its lookup is answered
            # from the metadata cache). Only the attributes (no page locks), from a worker
            # thread, so this cannot deadlock.
            self.kernel_versions.pop(inode, None)
            await trio.to_thread.run_sync(functools.partial(pyfuse3.invalidate_inode, inode, attr_only=True))
        return info

    @fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        open_file = await self.client.create(parent_inode, name, mode, ctx)
        attr = open_file.local_attr(open_file.attr)
        return self._file_info(open_file, open_file.attr), self.entry(attr)

    @fuse_errors
    async def read(self, fh, off, size):
        return await self._handle(fh).read(off, size)

    @fuse_errors
    async def write(self, fh, off, buf):
        return await self._handle(fh).write(off, buf)

    async def _flush(self, fh: int, durable: bool) -> None:
        attr = await self.client.flush(self._handle(fh), durable)
        if attr is not None:
            self.seen_versions[attr.ino] = (attr.mtime_ns, attr.size)

    @fuse_errors
    async def flush(self, fh, lock_owner=0):
        """A close: what was written is committed, then the POSIX locks of the closing process
        on the file go (the kernel leaves that to the filesystem when it keeps the locks)."""
        try:
            await self._flush(fh, durable=False)
        finally:
            if lock_owner:
                await self.client.locks.drop_posix(self._handle(fh).ino, lock_owner)

    @fuse_errors
    async def fsync(self, fh, datasync):
        await self._flush(fh, durable=True)

    @fuse_errors
    async def release(self, fh, flock_owner=0):
        open_file = self.handles.pop(fh, None)
        if open_file is not None:
            try:
                await self.client.release(open_file)
            finally:
                if flock_owner:  # the last close of an open file that took flock locks
                    await self.client.locks.drop_flock(open_file.ino, flock_owner)
                # POSIX locks taken through this open file and still held are OFD locks (owned by
                # the open file, not a process; a process's went at its close): they end here
                for owner in self.posix_owners.pop(fh, ()):
                    await self.client.locks.drop_posix(open_file.ino, owner)

    # ---- locks: every client's, kept by the metaserver --------------------------------------
    @fuse_errors
    async def getlk(self, inode, fh, owner, lock_type, start, end, pid):
        found = await self.client.test_lock(r.LockReq(ino=inode, owner=owner, type=lock_type, start=start,
                                                      end=end, pid=pid))
        return found.type, found.start, found.end, found.pid

    @fuse_errors
    async def setlk(self, inode, fh, owner, lock_type, start, end, pid, sleep):
        await self._lock(fh, r.LockReq(ino=inode, owner=owner, type=lock_type, start=start, end=end, pid=pid,
                                       wait=sleep))
        if lock_type != r.F_UNLCK:
            self.posix_owners.setdefault(fh, set()).add(owner)

    @fuse_errors
    async def flock(self, inode, fh, owner, op, pid=0):
        lock_type = FLOCK_TYPES.get(op & ~fcntl.LOCK_NB)
        if lock_type is None:
            raise FsError(errno.EINVAL, f"flock operation {op}")
        await self._lock(fh, r.LockReq(ino=inode, owner=owner, type=lock_type, flock=True, pid=pid,
                                       wait=not op & fcntl.LOCK_NB))

    async def _lock(self, fh: int, req: r.LockReq) -> None:
        if await self.client.lock(self._handle(fh), req):
            # another client changed the file: the kernel drops its pages and attributes of it
            # (from a worker thread, so this cannot deadlock with a read being served)
            self.forget_cached(req.ino)
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, req.ino)

    # ---- xattrs and the rest ---------------------------------------------------------------
    @fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        if await self.client.setxattr(inode, name, value):
            self.without_xattrs.discard(inode)

    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        if inode in self.without_xattrs:  # the kernel's question on every write: answered as cheaply as can be
            raise pyfuse3.FUSEError(errno.ENODATA)
        return await self.client.getxattr(inode, name)

    @fuse_errors
    async def listxattr(self, inode, ctx):
        return await self.client.listxattr(inode)

    @fuse_errors
    async def removexattr(self, inode, name, ctx):
        if inode in self.without_xattrs:  # as getxattr: cp -a removes an ACL equal to the mode
            raise FsError(errno.ENODATA, "no extended attributes")
        await self.client.removexattr(inode, name)

    @fuse_errors
    async def statfs(self, ctx):
        numbers = statvfs_numbers(await self.client.statfs())
        out = pyfuse3.StatvfsData()
        (out.f_bsize, out.f_frsize, out.f_blocks, out.f_bfree, out.f_bavail, out.f_files, out.f_ffree,
         out.f_favail, _flag, out.f_namemax) = numbers
        return out

    def forget_cached(self, inode: int) -> None:
        """Drop what this mount remembers of `inode` (another client changed it)."""
        self.without_xattrs.discard(inode)
        self.seen_versions.pop(inode, None)
        self.kernel_versions.pop(inode, None)

    def known_inodes(self) -> list[int]:
        """The inodes the kernel may hold pages or attributes of."""
        return list(self.kernel_versions.keys() | self.seen_versions.keys() | self.client.open_files.keys())

    async def forget(self, inode_list):
        for inode, _nlookup in inode_list:
            self.forget_cached(inode)
