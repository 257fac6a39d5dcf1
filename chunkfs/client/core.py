"""`Client`: what a chunkfs client does, by inode, for every door (the FUSE mount, the Python API).

It owns the open files of this client (one `OpenFile` per inode, shared by every handle on
it) and the directories open here, and it makes the calls that need more than the metadata
façade: creates (in a leased directory, without a call), opens (close-to-open), removes and
renames of files open here (the metaserver keeps them until their last close here), truncates,
attribute changes of files being written. Doors translate their requests into these calls and
the `FsError`s they raise into their own errors; permission checks are the door's (the kernel
makes them for the mount).

Durability (the README's model): `flush(durable=True)` (fsync) and `sync_directory` (fsyncdir)
are durability points: they return once everything they cover is durable on the metaserver. A
close (`flush()`) publishes the file to other clients (close-to-open) but, with write-behind on,
does not wait for the metaserver's disk where the change could be answered here (a small file
made in a directory leased here); `ClientOptions.sync_close` makes every close a durability
point. Changes answered here reach the metaserver's disk within the write-behind bound. Every
other call that changes something is durable when it returns.
"""

from __future__ import annotations

import errno
import logging
import stat
import time
from dataclasses import dataclass
from typing import Protocol

import trio

from chunkfs import CHUNK_SIZE, INLINE_MAX_BYTES, MAX_NAME_BYTES, posix_acl
from chunkfs.client.chunk_cache import ChunkCache
from chunkfs.client.chunk_io import ChunkIO
from chunkfs.client.content_finder import ContentFinder
from chunkfs.client.disk_cache import DiskChunkCache
from chunkfs.client.locks import FileLocks
from chunkfs.client.metadata import Metadata
from chunkfs.client.metadata_cache import MetadataCache
from chunkfs.client.open_file import OpenFile
from chunkfs.client.prefetch import MAX_WINDOW
from chunkfs.client.write_back import WriteBack
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol import records as r
from chunkfs.protocol.chunk_client import ChunkClient
from chunkfs.protocol.limits import check_name
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.meta_client import ROOT_INO, MetaClient

log = logging.getLogger(__name__)

# st_blksize: cp, stdio and Python size their buffers by it; 1 MiB writes cost a third less CPU
# per GB in the mount than the 128 KiB ones a 64 KiB blksize gets
PREFERRED_IO_BYTES = 1 << 20
STATVFS_BLOCK = 4096
FREE_INODES = 1_000_000_000  # inodes are not a limited resource: as many free as said here


class Caller(Protocol):
    """Who makes a call: the owner of what it creates (pyfuse3's RequestContext is one)."""

    @property
    def uid(self) -> int: ...

    @property
    def gid(self) -> int: ...

    @property
    def umask(self) -> int: ...


@dataclass
class ClientOptions:
    """How the client core behaves (the mount's options of the same names)."""

    prefetch_chunks: int = MAX_WINDOW  # 0: no prefetch
    max_uploads_per_file: int = 4
    sync_close: bool = False  # every close waits until the file is durable, as an fsync


class Client:
    def __init__(self, meta: Metadata, io: ChunkIO, cache: ChunkCache, write_back: WriteBack,
                 options: ClientOptions | None = None) -> None:
        self.meta, self.io, self.cache, self.write_back = meta, io, cache, write_back
        self.options = options or ClientOptions()
        self.nursery: trio.Nursery | None = None  # set by `run` (uploads, prefetches, recalls)
        self.open_files: dict[int, OpenFile] = {}
        self.open_dirs: dict[int, int] = {}  # directory inode -> how many times open here
        self.unlinked_dirs: set[int] = set()  # removed while open here: the last release frees it
        self.locks = FileLocks(meta.server)

    async def run(self, *background: BackgroundTask, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until cancelled: the client's background work (uploads, prefetches, the
        write-back bound, lease recalls) and `background` tasks run in its nursery."""
        async with trio.open_nursery() as nursery:
            self.nursery = self.meta.nursery = nursery
            nursery.start_soon(self.write_back.run)
            nursery.start_soon(self.locks.keep, self.meta.feed_changed, self._locks_lost)
            if self.meta.write_behind is not None:
                nursery.start_soon(self.meta.write_behind.run)
            for task in background:
                nursery.start_soon(task)
            task_status.started()
            await trio.sleep_forever()

    def attr_here(self, attr: r.Attr) -> r.Attr:
        """`attr` as this client sees it (with the uncommitted changes of a file open here)."""
        open_file = self.open_files.get(attr.ino)
        return open_file.local_attr(attr) if open_file is not None else attr

    # ---- names ------------------------------------------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> r.Attr:
        if name == b".":
            return self.attr_here(await self.meta.getattr(parent))
        if name == b"..":
            return await self.meta.parent(parent)
        leased = self.meta.leases.lease(parent) if self.meta.leases is not None else None
        if leased is not None:  # every name in it is known here
            check_name(name)  # what the metaserver would answer first (ENAMETOOLONG, EINVAL)
            if name in leased.pending:
                return self.attr_here(leased.pending[name].attr)
            if name not in leased.names:
                raise FsError(errno.ENOENT, f"{name!r} not found")
        return self.attr_here(await self.meta.lookup(parent, name))

    async def getattr(self, ino: int) -> r.Attr:
        pending = self.meta.pending_attr(ino)
        return self.attr_here(pending if pending is not None else await self.meta.getattr(ino))

    async def setattr(self, req: r.SetattrReq, size: int | None = None) -> r.Attr:
        """Change what `req` names, and the size if `size` is given."""
        open_file = self.open_files.get(req.ino)
        if open_file is not None and open_file.created_here and size is None:
            return open_file.defer_attrs(req)
        if size is not None:
            if open_file is not None:
                await open_file.truncate(size, req.mtime_ns)
            else:
                req.size = size
        if open_file is not None and req.mtime_ns is not None:
            open_file.mtime_ns = req.mtime_ns
        if open_file is not None and size is None:
            self.upload_early(open_file)
        attr = await self.meta.setattr(req)
        if open_file is not None and size is None:
            open_file.attributes_sent(attr)
        return self.attr_here(attr)

    def upload_early(self, open_file: OpenFile) -> None:
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
        except Exception:  # a background task: never let it end the client
            log.exception("early upload of inode %d failed", open_file.ino)

    async def concat(self, ino: int, sources: list[int]) -> r.Attr:
        """Append the chunks of files `sources` to file `ino` without copying them (see
        `records.ConcatReq` for what must hold); the sources are left empty. EBUSY for a file
        open here: its buffers and cached layout would be of the file before."""
        busy = [i for i in (ino, *sources) if i in self.open_files]
        if busy:
            raise FsError(errno.EBUSY, f"inode {busy[0]} is open")
        return await self.meta.concat(r.ConcatReq(ino=ino, sources=sources, mtime_ns=time.time_ns()))

    async def make(self, parent: int, name: bytes, mode: int, caller: Caller, rdev: int = 0,
                   target: bytes | None = None) -> r.Attr:
        """A new directory, node or symlink (`mode` says which). With ACLs on, the umask is the
        metaserver's to apply: a directory's default ACL replaces it."""
        if len(name) > MAX_NAME_BYTES:
            raise FsError(errno.ENAMETOOLONG, "name too long")
        return await self.meta.create(r.CreateReq(parent=parent, name=name, mode=mode, uid=caller.uid,
                                                  gid=caller.gid, rdev=rdev, target=target, umask=caller.umask,
                                                  lease=self.meta.leases is not None and stat.S_ISDIR(mode)))

    async def store_small_file(self, parent: int, name: bytes, staged_name: bytes, content: bytes,
                               xattrs: dict[bytes, bytes], caller: Caller, mtime_ns: int, flags: int = 0
                               ) -> r.Attr | None:
        """A regular file of at most INLINE_MAX_BYTES made whole as `name` in directory `parent`,
        with its content and user.* `xattrs`, in one metaserver call and transaction (created as
        `staged_name`, committed inline, renamed onto `name`: `Metadata.commit_under_name`),
        stamped `mtime_ns`. None, and nothing done, where no inode number is at hand (a client
        without directory leases reserves none): write it through an open file instead."""
        if len(content) > INLINE_MAX_BYTES:
            raise FsError(errno.EFBIG, "too big to be stored inline")
        leases = self.meta.leases
        if leases is None:
            return None
        ino = await leases.inode_number()
        create = r.CreateReq(parent=parent, name=staged_name, mode=stat.S_IFREG | 0o666, uid=caller.uid,
                             gid=caller.gid, umask=caller.umask, ino=ino)
        return await self.meta.commit_under_name(
            r.CommitReq(ino, len(content), mtime_ns, [], inline=content, create=create, xattrs=list(xattrs.items())),
            name, flags)

    async def readlink(self, ino: int) -> bytes:
        return await self.meta.readlink(ino)

    async def link(self, ino: int, parent: int, name: bytes) -> r.Attr:
        attr = await self.meta.link(ino, parent, name)
        open_file = self.open_files.get(ino)
        if open_file is not None:
            open_file.link_count_changed(attr.nlink)
        return self.attr_here(attr)

    async def remove(self, parent: int, name: bytes, is_dir: bool) -> None:
        open_here = self._open_inodes()
        ino = await self.meta.remove(parent, name, is_dir=is_dir, open_here=open_here)
        if ino in open_here:
            await self._unlinked_while_open(ino)

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int = 0) -> None:
        open_here = self._open_inodes()
        moved = await self.meta.rename(r.RenameReq(old_parent, old_name, new_parent, new_name, flags,
                                                   self.meta.client_id if open_here else "", open_here))
        if len(moved) == 2 and not flags & r.RENAME_EXCHANGE and moved[1] in open_here:
            await self._unlinked_while_open(moved[1])

    def _open_inodes(self) -> list[int]:
        """Files and directories open here: the metaserver keeps one that loses its last name."""
        return [*self.open_files, *self.open_dirs]

    async def _unlinked_while_open(self, ino: int) -> None:
        """The metaserver kept `ino` for this client (it was open here when its last name went,
        or it has other names and this is only a hint); the last close frees it, and if that
        close already happened meanwhile, it is freed now."""
        open_file = self.open_files.get(ino)
        if open_file is not None:
            open_file.unlinked = True
            open_file.link_count_changed(max(0, open_file.attr.nlink - 1))
        if ino in self.open_dirs:
            self.unlinked_dirs.add(ino)
        if open_file is None and ino not in self.open_dirs:
            await self.meta.release_orphan(ino)

    # ---- directories ----------------------------------------------------------------------------------
    def open_directory(self, ino: int) -> None:
        self.open_dirs[ino] = self.open_dirs.get(ino, 0) + 1

    async def release_directory(self, ino: int) -> None:
        count = self.open_dirs.get(ino, 0) - 1
        if count > 0:
            self.open_dirs[ino] = count
            return
        self.open_dirs.pop(ino, None)
        if ino in self.unlinked_dirs:
            self.unlinked_dirs.discard(ino)
            await self.meta.release_orphan(ino)

    async def readdir(self, ino: int, after: bytes | None, limit: int, xattr: bytes | None = None
                      ) -> list[r.DirEntry]:
        """A page of the directory; with `xattr`, each entry's value of it too (one call)."""
        entries = await self.meta.readdir(ino, after, limit, xattr)
        for entry in entries:
            entry.attr = self.attr_here(entry.attr)
        return entries

    async def sync_directory(self, ino: int) -> None:
        """fsyncdir: a durability point for everything this mount answered itself (and the
        creates pending in directory `ino`); raises a write-back error of a change in it."""
        await self.meta.send_pending(ino)
        await self.meta.sync(ino)

    async def flush(self, open_file: OpenFile, durable: bool = False) -> r.Attr | None:
        """A close (`durable=False`: published, durable within the write-behind bound unless
        `sync_close`) or an fsync (`durable`) of `open_file`; raises the write-back error of an
        earlier change of the file. Returns the attributes committed (None: nothing was)."""
        durable = durable or self.options.sync_close
        attr = await open_file.flush(behind=not durable)
        if durable:
            await self.meta.sync(open_file.ino)
        else:
            self.meta.take_error(open_file.ino)
        return attr

    # ---- files ------------------------------------------------------------------------------------------
    async def open(self, ino: int, caller: Caller, truncate: bool = False,
                   layout: r.FileLayout | None = None, writing: bool = False) -> OpenFile:
        """The one OpenFile of `ino`, counted open once more (each open needs a `release`).
        The committed state comes from the metaserver at each open (close-to-open). The last
        release of a previous open may finish while the layout is fetched (the kernel sends
        RELEASE without waiting for it): the OpenFile is looked up only after that, and a layout
        fetched while its final commit was in flight is fetched again. `writing` a file of a
        read-only snapshot is EROFS here, at the open, as on a read-only filesystem (the
        metaserver would refuse its commit anyway)."""
        while layout is None:
            before = self.open_files.get(ino)
            fetched = await self.meta.open_file(ino)
            if before is None or self.open_files.get(ino) is before:
                layout = fetched
        if (writing or truncate) and layout.attr.read_only:
            raise FsError(errno.EROFS, f"inode {ino} is in a read-only snapshot")
        open_file = self.open_files.get(ino)
        if open_file is None:
            assert self.nursery is not None, "the client is not running"
            open_file = OpenFile(ino, layout, self.meta, self.io, self.cache, self.nursery,
                                 write_back=self.write_back, prefetch_chunks=self.options.prefetch_chunks,
                                 max_uploads=self.options.max_uploads_per_file)
            self.open_files[ino] = open_file
        elif not open_file.has_local_changes:
            open_file.refresh(layout)
        open_file.open_count += 1
        if truncate:
            try:
                await self._truncate_at_open(open_file, caller)
            except BaseException:
                await self.release(open_file)
                raise
        return open_file

    async def _truncate_at_open(self, open_file: OpenFile, caller: Caller) -> None:
        """O_TRUNC: cut the file, and drop setuid (and setgid of a group-executable file) when
        the opener is not root, as a local filesystem does."""
        if open_file.size:
            await open_file.truncate(0, None)
        if caller.uid == 0:
            return
        mode = (await self.meta.getattr(open_file.ino)).mode
        kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if mode & kill:
            await self.meta.setattr(r.SetattrReq(ino=open_file.ino, mode=mode & ~kill))

    async def create(self, parent: int, name: bytes, mode: int, caller: Caller) -> OpenFile:
        """A new regular file, open (release it like any open). In a directory leased here it
        is made without a call; its create goes with its first commit."""
        mode = stat.S_IFREG | (mode & 0o7777)
        here = await self._create_here(parent, name, mode, caller)
        attr = here[0] if here is not None else await self.make(parent, name, mode, caller)
        open_file = await self.open(attr.ino, caller, layout=r.FileLayout(attr, [], {}))
        open_file.created_here = True
        if here is not None:
            open_file.modified = True  # the first commit carries the create
            self.meta.created_here(here[1], attr)
        return open_file

    async def _create_here(self, parent: int, name: bytes, mode: int, caller: Caller
                           ) -> tuple[r.Attr, r.CreateReq] | None:
        """A regular file made in a directory leased to this client, without a call: its
        attributes as the metaserver will make them, and the create to send with its first
        commit. None where that cannot be known here (no lease, a default ACL or other xattrs
        on the directory, no goal) and the metaserver must be asked."""
        leases = self.meta.leases
        if leases is None or leases.lease(parent) is None or len(name) > MAX_NAME_BYTES:
            return None
        directory = await self.meta.getattr(parent)
        leased = leases.lease(parent)
        if directory.has_xattrs or not directory.goal or leased is None:
            return None
        if name in leased.names:
            raise FsError(errno.EEXIST, f"{name!r} exists")
        req = r.CreateReq(parent=parent, name=name, mode=mode, uid=caller.uid, gid=caller.gid, umask=caller.umask,
                          ino=await leases.inode_number())
        if leases.lease(parent) is None:  # recalled meanwhile (no await from here to created_here)
            return None
        now = time.time_ns()
        attr = r.Attr(ino=req.ino, mode=mode & ~(caller.umask & 0o777), uid=caller.uid,
                      gid=directory.gid if directory.mode & stat.S_ISGID else caller.gid, size=0,
                      atime_ns=now, mtime_ns=now, ctime_ns=now, nlink=1, goal=directory.goal,
                      no_dedup=directory.no_dedup)
        return attr, req

    async def release(self, open_file: OpenFile) -> None:
        """One open of `open_file` ends; the last one commits it (durably) and forgets it."""
        open_file.open_count -= 1
        if open_file.open_count > 0:
            return
        try:
            await open_file.flush()
        finally:
            if open_file.open_count == 0 and self.open_files.get(open_file.ino) is open_file:
                del self.open_files[open_file.ino]
                open_file.drop_buffers()
                if open_file.unlinked:
                    await self.meta.release_orphan(open_file.ino)

    # ---- locks (locks.py) ---------------------------------------------------------------------------------
    async def lock(self, open_file: OpenFile, req: r.LockReq) -> bool:
        """Take or drop a lock on an open file, as NFS does for consistency: before a lock is
        dropped, what was written here is committed (the next holder reads it); once one is
        taken, this client reads the file as the metaserver has it then, and has applied the
        changes other clients made before (a file they removed is gone here too). True if the file
        changed since this client cached it (the door drops its own caches of it)."""
        await self.meta.send_pending(req.ino)  # made here in a leased directory: it must exist there first
        if req.type == r.F_UNLCK:
            if not open_file.locks_lost:  # what was written after the lock was lost is not committed
                await open_file.flush()
            await self.locks.lock(req)
            return False
        granted = await self.locks.lock(req)
        if not open_file.has_local_changes:  # what was written while the lock was lost stays uncommitted
            open_file.locks_lost = False
        await self.meta.caught_up(granted.feed_seq, granted.feed_epoch)
        attr = granted.attr
        if attr is None or open_file.has_local_changes or (attr.mtime_ns, attr.size) == (
                open_file.attr.mtime_ns, open_file.attr.size):
            return False
        self.meta.cache.forget_inode(open_file.ino)
        open_file.refresh(await self.meta.open_file(open_file.ino))
        return True

    def _locks_lost(self, inodes: set[int]) -> None:
        """Locks held here on `inodes` were lost (see FileLocks.keep): their files fail with EIO
        from now on, so no program goes on as if it still held them."""
        for ino in inodes:
            open_file = self.open_files.get(ino)
            if open_file is not None:
                open_file.locks_lost = True

    async def test_lock(self, req: r.LockReq) -> r.LockInfo:
        await self.meta.send_pending(req.ino)
        return await self.locks.test(req)

    # ---- xattrs and the rest ------------------------------------------------------------------------------
    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> bool:
        """False if it was not stored as an xattr but taken as a mode (`_acl_as_mode`)."""
        open_file = self.open_files.get(ino)
        if open_file is not None and self._acl_as_mode(open_file, name, value):
            return False
        if open_file is not None:
            self.upload_early(open_file)
        await self.meta.setxattr(ino, name, value, flags)
        if open_file is not None:
            open_file.attr.has_xattrs = True
        return True

    def _acl_as_mode(self, open_file: OpenFile, name: bytes, value: bytes) -> bool:
        """An access ACL that says no more than a mode, set on a file this client created and
        has open (cp -a and tar copy ACLs so), is a mode change: kept for its commit, like a
        chmod (see OpenFile.defer_attrs). True if it was taken so."""
        if name != posix_acl.ACCESS or not open_file.created_here or open_file.attr.has_xattrs:
            return False
        entries = posix_acl.parse(value)
        if not posix_acl.is_minimal(entries):
            return False
        mode = open_file.local_attr(open_file.attr).mode
        open_file.defer_attrs(r.SetattrReq(ino=open_file.ino, mode=(mode & ~0o777) | posix_acl.permission_bits(entries)))
        return True

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return await self.meta.getxattr(ino, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self.meta.listxattr(ino)

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self.meta.removexattr(ino, name)

    async def statfs(self) -> r.Statfs:
        return await self.meta.statfs()

    async def set_goal(self, ino: int, goal: int, recursive: bool = False) -> r.Attr:
        return await self.meta.set_goal(ino, goal, recursive)

    async def set_trash_time(self, ino: int, seconds: int, recursive: bool = False) -> r.Attr:
        return await self.meta.set_trash_time(ino, seconds, recursive)

    async def close(self) -> None:
        """The end of the client: every file still open here is committed (errors logged), and
        the leases are given back so other clients need not wait for them to run out."""
        for open_file in list(self.open_files.values()):
            open_file.open_count = 1
            try:
                await self.release(open_file)
            except (FsError, TransportError) as exc:
                log.error("inode %d: its last changes were not committed: %s", open_file.ino, exc)
        with trio.move_on_after(5):
            await self.meta.give_back_all()


class BackgroundTask(Protocol):
    async def __call__(self) -> None: ...


def statvfs_numbers(s: r.Statfs) -> tuple[int, int, int, int, int, int, int, int, int, int]:
    """The cluster's space as statvfs(3) gives it, in os.statvfs_result's order: f_bsize,
    f_frsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree, f_favail, f_flag, f_namemax."""
    return (STATVFS_BLOCK, STATVFS_BLOCK, s.total_bytes // STATVFS_BLOCK, s.free_bytes // STATVFS_BLOCK,
            s.free_bytes // STATVFS_BLOCK, s.files + FREE_INODES, FREE_INODES, FREE_INODES, 0, MAX_NAME_BYTES)


def prefetch_chunks(prefetch: bool, cache: ChunkCache) -> int:
    """The widest prefetch window: MAX_WINDOW chunks, but no more than the memory cache keeps
    for chunks not used yet (less one for the chunk being read), so what is fetched ahead is
    still there when the reader gets to it."""
    if not prefetch:
        return 0
    return max(1, min(MAX_WINDOW, cache.probation_bytes // CHUNK_SIZE - 1))


def build_client(http: SignedHttp, metaserver: str, *, client_id: str, root_ino: int = ROOT_INO,
                 entry_timeout_s: float = 60.0, attr_timeout_s: float = 60.0, cache_mem_bytes: int = 256 << 20,
                 disk: DiskChunkCache | None = None, max_dirty_bytes: int = 256 << 20, dir_leases: bool = True,
                 prefetch: bool = True, write_behind_s: float = 0.0, sync_close: bool = False,
                 dedup: bool = True) -> Client:
    """A client core talking to `metaserver` through `http` (run it with `Client.run`).
    `write_behind_s`: the bound on changes answered here (0: none are, every change waits).
    `dedup`: chunks whose content the cluster holds are not uploaded (see chunk_io.py)."""
    meta = Metadata(MetaClient(http, metaserver, client_id, root_ino=root_ino),
                    MetadataCache(entry_timeout_s, attr_timeout_s), leases=dir_leases, write_behind_s=write_behind_s)
    write_back = WriteBack(max_dirty_bytes)
    io = ChunkIO(meta, ChunkClient(http), dedup=dedup, finder=ContentFinder(meta, write_back))
    cache = ChunkCache(io, cache_mem_bytes, disk)
    return Client(meta, io, cache, write_back,
                  ClientOptions(prefetch_chunks(prefetch, cache), sync_close=sync_close))
