"""The pyfuse3 Operations of chunkfs: each FUSE call mapped to metadata calls or to an open
file's reads and writes. This is the one edge where errors become errnos: `FsError` keeps its
errno, an unreachable server becomes EIO, anything else is logged and becomes EIO, so no
exception ever ends the mount.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from chunkfs import INLINE_MAX_BYTES, MAX_NAME_BYTES, posix_acl
from chunkfs.errors import FsError, TransportError
from chunkfs.client.chunk_cache import ChunkCache
from chunkfs.client.chunk_io import ChunkIO
from chunkfs.client.leases import Leases
from chunkfs.client.open_file import OpenFile
from chunkfs.client.metadata_cache import CachingMetaClient
from chunkfs.protocol import records as r

# st_blksize: cp, stdio and Python size their buffers by it; 1 MiB writes cost a third less CPU
# per GB in the mount than the 128 KiB ones a 64 KiB blksize gets
PREFERRED_IO_BYTES = 1 << 20

log = logging.getLogger(__name__)

READDIR_PAGE = 1000

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
            if exc.errno not in (errno.ENOENT, errno.EEXIST, errno.ENODATA, errno.ENOTEMPTY):
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
    unlinked: bool = False  # removed while open here: the last releasedir frees it


class ChunkfsOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = True  # the kernel enforces POSIX ACLs kept in system.posix_acl_* xattrs

    def __init__(self, meta: CachingMetaClient, io: ChunkIO, cache: ChunkCache, *,
                 entry_timeout_s: float, attr_timeout_s: float,
                 open_file_options: dict[str, Any] | None = None, leases: Leases | None = None) -> None:
        """`open_file_options`: keyword arguments of every OpenFile (write-back bound, prefetch).
        `leases`: the directories this mount holds (None: every create asks the metaserver)."""
        super().__init__()
        self.meta, self.io, self.cache, self.leases = meta, io, cache, leases
        self.open_file_options = open_file_options or {}
        self.entry_timeout_s, self.attr_timeout_s = entry_timeout_s, attr_timeout_s
        self.nursery: trio.Nursery | None = None  # set by main before serving
        self.open_files: dict[int, OpenFile] = {}
        self.handles: dict[int, OpenFile] = {}
        self.dirs: dict[int, DirListing] = {}
        self.seen_versions: dict[int, tuple[int, int]] = {}  # ino -> (mtime, size) last opened
        # inodes whose last attributes said "no xattrs": getxattr answers ENODATA without a call
        # (the kernel asks for security.capability on every write, ls -l for ACLs on every entry)
        self.without_xattrs: set[int] = set()
        self._next_fh = 1

    # ---- helpers --------------------------------------------------------------------------
    def entry(self, attr: r.Attr) -> pyfuse3.EntryAttributes:
        open_file = self.open_files.get(attr.ino)
        if open_file is not None:
            attr = open_file.local_attr(attr)
        if attr.has_xattrs:
            self.without_xattrs.discard(attr.ino)
        else:
            self.without_xattrs.add(attr.ino)
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

    async def _open_file(self, ino: int, layout: r.FileLayout | None = None) -> tuple[int, OpenFile]:
        """A handle on the one OpenFile of `ino`. The kernel sends RELEASE without waiting for it,
        so the last release of a previous open may finish while the layout is fetched: the
        OpenFile is looked up only after that, and a layout fetched while its final commit was
        in flight is fetched again."""
        while layout is None:
            before = self.open_files.get(ino)
            fetched = await self.meta.open_file(ino)
            if before is None or self.open_files.get(ino) is before:
                layout = fetched
        open_file = self.open_files.get(ino)
        if open_file is None:
            assert self.nursery is not None
            open_file = OpenFile(ino, layout, self.meta, self.io, self.cache, self.nursery,
                                 **self.open_file_options)
            self.open_files[ino] = open_file
        elif not open_file.has_local_changes:
            open_file.refresh(layout)
        open_file.open_count += 1
        fh = self._new_fh()
        self.handles[fh] = open_file
        return fh, open_file

    # ---- namespace ------------------------------------------------------------------------
    @fuse_errors
    async def lookup(self, parent_inode, name, ctx):
        if name == b".":
            return self.entry(await self.meta.getattr(parent_inode))
        if name == b"..":
            return self.entry(await self.meta.parent(parent_inode))
        leased = self.leases.lease(parent_inode) if self.leases is not None else None
        if leased is not None:  # every name in it is known here
            if name in leased.pending:
                return self.entry(leased.pending[name].attr)
            if name not in leased.names:
                raise FsError(errno.ENOENT, f"{name!r} not found")
        return self.entry(await self.meta.lookup(parent_inode, name))

    @fuse_errors
    async def getattr(self, inode, ctx):
        if self.leases is not None and inode in self.leases.pending_files:
            return self.entry(self.leases.pending_files[inode].attr)
        return self.entry(await self.meta.getattr(inode))

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
        open_file = self.open_files.get(inode)
        if open_file is not None and open_file.created_here and not fields.update_size:
            return self.entry(open_file.defer_attrs(req))
        if fields.update_size:
            if open_file is not None:
                await open_file.truncate(attr.st_size, req.mtime_ns)
            else:
                req.size = attr.st_size
        if open_file is not None and req.mtime_ns is not None:
            open_file.mtime_ns = req.mtime_ns
        if open_file is not None and not fields.update_size:
            self._upload_early(open_file)
        return self.entry(await self.meta.setattr(req))

    def _upload_early(self, open_file: OpenFile) -> None:
        """A writer that sets times, mode or xattrs of an open file is usually done writing it
        (cp -a, tar): what it buffered starts uploading now, beside these calls, so its close
        only commits. A later write buffers again, as after any upload. A small file is
        left alone: its close commits it inline."""
        if open_file.dirty and open_file.size > INLINE_MAX_BYTES and self.nursery is not None:
            self.nursery.start_soon(self._write_back, open_file)

    async def _write_back(self, open_file: OpenFile) -> None:
        try:
            await open_file.write_back()
        except (FsError, TransportError) as exc:  # what is still buffered is uploaded at close
            log.debug("early upload of inode %d: %s", open_file.ino, exc)
        except Exception:  # a background task: never let it end the mount
            log.exception("early upload of inode %d failed", open_file.ino)

    async def _create(self, parent: int, name: bytes, mode: int, ctx, rdev: int = 0,
                      target: bytes | None = None) -> r.Attr:
        """With ACLs on, the umask is the metaserver's to apply: a directory's default ACL
        replaces it."""
        if len(name) > MAX_NAME_BYTES:
            raise FsError(errno.ENAMETOOLONG, "name too long")
        return await self.meta.create(r.CreateReq(parent=parent, name=name, mode=mode, uid=ctx.uid,
                                                  gid=ctx.gid, rdev=rdev, target=target, umask=ctx.umask,
                                                  lease=self.leases is not None and stat.S_ISDIR(mode)))

    async def _create_here(self, parent: int, name: bytes, mode: int, ctx) -> tuple[r.Attr, r.CreateReq] | None:
        """A regular file made in a directory leased to this mount, without a call: its attributes
        as the metaserver will make them, and the create to send with its first commit. None
        where that cannot be known here (no lease, a default ACL or other xattrs on the
        directory, no goal) and the metaserver must be asked."""
        if self.leases is None or self.leases.lease(parent) is None or len(name) > MAX_NAME_BYTES:
            return None
        directory = await self.meta.getattr(parent)
        lease = self.leases.lease(parent)  # after the await: it may have been recalled meanwhile
        if directory.has_xattrs or not directory.goal or lease is None:
            return None
        if name in lease.names:
            raise FsError(errno.EEXIST, f"{name!r} exists")
        req = r.CreateReq(parent=parent, name=name, mode=mode, uid=ctx.uid, gid=ctx.gid, umask=ctx.umask,
                          ino=await self.leases.inode_number())
        if self.leases.lease(parent) is None:  # recalled meanwhile (no await from here to created_here)
            return None
        now = time.time_ns()
        attr = r.Attr(ino=req.ino, mode=mode & ~(ctx.umask & 0o777), uid=ctx.uid,
                      gid=directory.gid if directory.mode & stat.S_ISGID else ctx.gid, size=0,
                      atime_ns=now, mtime_ns=now, ctime_ns=now, nlink=1, goal=directory.goal)
        return attr, req

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self.entry(await self._create(parent_inode, name, stat.S_IFDIR | (mode & 0o7777), ctx))

    @fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self.entry(await self._create(parent_inode, name, mode, ctx, rdev=rdev))

    @fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        return self.entry(await self._create(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target=target))

    @fuse_errors
    async def readlink(self, inode, ctx):
        return await self.meta.readlink(inode)

    @fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self.entry(await self.meta.link(inode, new_parent_inode, new_name))

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        open_here = self._open_inodes()
        ino = await self.meta.remove(parent_inode, name, is_dir=False, open_here=open_here)
        if ino in open_here:
            await self._unlinked_while_open(ino)

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        open_here = self._open_inodes()
        ino = await self.meta.remove(parent_inode, name, is_dir=True, open_here=open_here)
        if ino in open_here:
            await self._unlinked_while_open(ino)

    @fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        open_here = self._open_inodes()
        moved = await self.meta.rename(r.RenameReq(parent_inode_old, name_old, parent_inode_new, name_new, flags,
                                                   self.meta.client_id if open_here else "", open_here))
        if len(moved) == 2 and not flags & r.RENAME_EXCHANGE and moved[1] in open_here:
            await self._unlinked_while_open(moved[1])

    def _open_inodes(self) -> list[int]:
        """Files and directories open here: the metaserver keeps one that loses its last name."""
        return [*self.open_files, *{listing.ino for listing in self.dirs.values()}]

    async def _unlinked_while_open(self, ino: int) -> None:
        """The metaserver kept `ino` for this client (it was open here when its last name went,
        or it has other names and this is only a hint); the last close frees it, and if that
        close already happened meanwhile, it is freed now."""
        open_file = self.open_files.get(ino)
        listings = [listing for listing in self.dirs.values() if listing.ino == ino]
        if open_file is not None:
            open_file.unlinked = True
        for listing in listings:
            listing.unlinked = True
        if open_file is None and not listings:
            await self.meta.release_orphan(ino)

    # ---- directories ----------------------------------------------------------------------
    @fuse_errors
    async def opendir(self, inode, ctx):
        fh = self._new_fh()
        self.dirs[fh] = DirListing(inode)
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
                page = await self.meta.readdir(listing.ino, after, READDIR_PAGE)
                listing.entries.extend(page)
                listing.complete = len(page) < READDIR_PAGE
            if position >= len(listing.entries):
                return
            item = listing.entries[position]
            if not pyfuse3.readdir_reply(token, item.name, self.entry(item.attr), position + 1):
                return
            position += 1

    @fuse_errors
    async def releasedir(self, fh):
        listing = self.dirs.pop(fh, None)
        if listing is not None and listing.unlinked and all(d.ino != listing.ino for d in self.dirs.values()):
            await self.meta.release_orphan(listing.ino)

    @fuse_errors
    async def fsyncdir(self, fh, datasync):
        """Everything is durable when acknowledged, but files created here under a lease."""
        if self.leases is not None:
            await self.leases.send_pending(self.dirs[fh].ino)

    # ---- files ----------------------------------------------------------------------------
    def _file_info(self, fh: int, attr: r.Attr) -> pyfuse3.FileInfo:
        """keep_cache only when the file is as this client last saw it (close-to-open)."""
        version = (attr.mtime_ns, attr.size)
        keep = self.seen_versions.get(attr.ino) == version
        self.seen_versions[attr.ino] = version
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @fuse_errors
    async def open(self, inode, flags, ctx):
        fh, open_file = await self._open_file(inode)
        if flags & os.O_TRUNC:
            await self._truncate_at_open(open_file, ctx)
        return self._file_info(fh, open_file.attr)

    async def _truncate_at_open(self, open_file: OpenFile, ctx) -> None:
        """With atomic O_TRUNC the kernel sends no setattr, so what its truncate would do is
        ours: cut the file, and drop setuid (and setgid of a group-executable file) when the
        opener is not root, as a local filesystem does."""
        if open_file.size:
            await open_file.truncate(0, None)
        if ctx.uid == 0:
            return
        mode = (await self.meta.getattr(open_file.ino)).mode
        kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if mode & kill:
            await self.meta.setattr(r.SetattrReq(ino=open_file.ino, mode=mode & ~kill))

    @fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        mode = stat.S_IFREG | (mode & 0o7777)
        here = await self._create_here(parent_inode, name, mode, ctx)
        attr = here[0] if here is not None else await self._create(parent_inode, name, mode, ctx)
        fh, open_file = await self._open_file(attr.ino, r.FileLayout(attr, [], {}))
        open_file.created_here = True
        if here is not None and self.leases is not None:
            open_file.pending_create, open_file.modified = here[1], True
            open_file.create_sent = self.leases.create_sent
            self.leases.created_here(parent_inode, name, open_file)
            self.meta.created_here(parent_inode, attr)
        return self._file_info(fh, attr), self.entry(attr)

    @fuse_errors
    async def read(self, fh, off, size):
        return await self._handle(fh).read(off, size)

    @fuse_errors
    async def write(self, fh, off, buf):
        return await self._handle(fh).write(off, buf)

    async def _flush(self, fh: int) -> None:
        attr = await self._handle(fh).flush()
        if attr is not None:
            self.seen_versions[attr.ino] = (attr.mtime_ns, attr.size)

    @fuse_errors
    async def flush(self, fh):
        await self._flush(fh)

    @fuse_errors
    async def fsync(self, fh, datasync):
        await self._flush(fh)

    @fuse_errors
    async def release(self, fh):
        open_file = self.handles.pop(fh, None)
        if open_file is None:
            return
        open_file.open_count -= 1
        if open_file.open_count == 0:
            try:
                await open_file.flush()
            finally:
                if open_file.open_count == 0:
                    self.open_files.pop(open_file.ino, None)
                    open_file.drop_buffers()
                    if open_file.unlinked:
                        await self.meta.release_orphan(open_file.ino)

    # ---- xattrs and the rest ---------------------------------------------------------------
    @fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        if self._acl_as_mode(inode, name, value):
            return
        if inode in self.open_files:
            self._upload_early(self.open_files[inode])
        await self.meta.setxattr(inode, name, value)
        self.without_xattrs.discard(inode)
        if inode in self.open_files:
            self.open_files[inode].attr.has_xattrs = True

    def _acl_as_mode(self, inode: int, name: bytes, value: bytes) -> bool:
        """An access ACL that says no more than a mode, set on a file this client created and
        has open (cp -a and tar copy ACLs so), is a mode change: kept for its commit, like a
        chmod (see OpenFile.defer_attrs). True if it was taken so."""
        open_file = self.open_files.get(inode)
        if name != posix_acl.ACCESS or open_file is None or not open_file.created_here \
                or inode not in self.without_xattrs:
            return False
        entries = posix_acl.parse(value)
        if not posix_acl.is_minimal(entries):
            return False
        mode = open_file.local_attr(open_file.attr).mode
        open_file.defer_attrs(r.SetattrReq(ino=inode, mode=(mode & ~0o777) | posix_acl.permission_bits(entries)))
        return True

    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        if inode in self.without_xattrs:
            raise FsError(errno.ENODATA, "no extended attributes")
        return await self.meta.getxattr(inode, name)

    @fuse_errors
    async def listxattr(self, inode, ctx):
        return await self.meta.listxattr(inode)

    @fuse_errors
    async def removexattr(self, inode, name, ctx):
        if inode in self.without_xattrs:  # as getxattr: cp -a removes an ACL equal to the mode
            raise FsError(errno.ENODATA, "no extended attributes")
        await self.meta.removexattr(inode, name)

    @fuse_errors
    async def statfs(self, ctx):
        s = await self.meta.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = 4096
        out.f_blocks = s.total_bytes // 4096
        out.f_bfree = out.f_bavail = s.free_bytes // 4096
        out.f_files = s.files + 1_000_000_000
        out.f_ffree = out.f_favail = 1_000_000_000
        out.f_namemax = MAX_NAME_BYTES
        return out

    def forget_cached(self, inode: int) -> None:
        """Drop what this client remembers of `inode` (another client changed it)."""
        self.without_xattrs.discard(inode)
        self.seen_versions.pop(inode, None)

    def known_inodes(self) -> list[int]:
        return list(self.seen_versions) + list(self.open_files)

    async def forget(self, inode_list):
        for inode, _nlookup in inode_list:
            self.forget_cached(inode)
