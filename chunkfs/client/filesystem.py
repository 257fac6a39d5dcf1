"""`AsyncFilesystem`: the chunkfs Python API on trio, by path, on the client core.

Every method takes cluster paths (`paths.py`), acts as the caller's identity (uid, gid and
groups; the calling process's by default) with the permission checks a mount's kernel applies
(`permissions.py`), and fails with the `OSError` (and errno) the mount would give
(`os_errors.py`). A file opened here is the same open file a mount has: durable at `close()`
and `flush()`, close-to-open with every other client.

Symlinks are followed inside the cluster: an absolute target is taken from the cluster's root.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import time
import uuid
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import AsyncIterator, Sequence

import msgspec
import trio

from chunkfs import auth, posix_acl, tls
from chunkfs.client.async_file import MODES, AsyncFile, normal_mode
from chunkfs.client.core import PREFERRED_IO_BYTES, Client, build_client, statvfs_numbers
from chunkfs.client.os_errors import os_error, raises_os_errors
from chunkfs.client.paths import PathLike, join, split_path
from chunkfs.client.transfers import Progress, download, upload
from chunkfs.client.upload_sessions import RESUMABLE_FROM_BYTES, resumable_upload
from chunkfs.client.permissions import (READ, SEARCH, WRITE, Identity, check_access, check_chown, check_owner,
                                        check_sticky, check_xattr, mode_for_chmod)
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol import records as r
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.meta_client import ROOT_INO, MetaClient

log = logging.getLogger(__name__)

MAX_SYMLINKS = 40  # as Linux: more on one path is ELOOP
READDIR_PAGE = 1000  # entries a scandir asks the metaserver for at once


def identity_of_this_process() -> Identity:
    umask = os.umask(0)
    os.umask(umask)
    return Identity(os.geteuid(), os.getegid(), tuple(os.getgroups()), umask)


@dataclass
class ConnectOptions:
    """What `connect`/`open_filesystem` take beside the address; the same meaning as the mount's
    options of the same names (see MountConfig)."""

    goal: int | None = None  # replicas of the files and directories made here (None: their directory's)
    retry_s: float = 15.0
    cache_mem_mb: int = 256
    prefetch: bool = True
    max_dirty_mb: int = 256
    dir_leases: bool = True
    dedup: bool = True  # chunks the cluster already holds are not uploaded (chunk_io.py)
    identity: Identity = field(default_factory=identity_of_this_process)
    tls_dir: str = ""  # connect with TLS, with the certificate `tls_name` there (chunkfs.tls)
    tls_name: str = "client"
    report_as: str = ""  # what this client calls itself in the metaserver's client list (default: python-api pid N)
    subdir: str = "/"  # the cluster's directory shown as this client's root (as the mount's `subdir`)


def stat_result(attr: r.Attr) -> os.stat_result:
    """`attr` as os.stat gives it on a mount (st_dev is 0: there is no device)."""
    return os.stat_result(
        (attr.mode, attr.ino, 0, attr.nlink, attr.uid, attr.gid, attr.size,
         attr.atime_ns // 10**9, attr.mtime_ns // 10**9, attr.ctime_ns // 10**9),
        {"st_atime": attr.atime_ns / 1e9, "st_mtime": attr.mtime_ns / 1e9, "st_ctime": attr.ctime_ns / 1e9,
         "st_atime_ns": attr.atime_ns, "st_mtime_ns": attr.mtime_ns, "st_ctime_ns": attr.ctime_ns,
         "st_blksize": PREFERRED_IO_BYTES, "st_blocks": attr.blocks, "st_rdev": attr.rdev})


class DirEntry:
    """One entry of `scandir`, like `os.DirEntry`: its attributes came with the listing
    (`follow_symlinks` is not followed: a symlink's entry describes the link)."""

    def __init__(self, name: str, path: str, attr: r.Attr, xattr: bytes | None = None) -> None:
        self.name, self.path, self._attr = name, path, attr
        self.xattr = xattr  # the value of the xattr scandir was asked for (with_xattr), if any

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return stat.S_ISDIR(self._attr.mode)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return stat.S_ISREG(self._attr.mode)

    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self._attr.mode)

    def inode(self) -> int:
        return self._attr.ino

    @property
    def attr(self) -> r.Attr:
        """The attributes as they came with the listing (what `stat()` is made of; a caller that
        reads a few fields of thousands of entries reads them here, without building a stat_result)."""
        return self._attr

    @property
    def has_xattrs(self) -> bool:
        """Whether it has extended attributes (a listing can skip asking for them)."""
        return self._attr.has_xattrs

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return stat_result(self._attr)

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class AsyncFilesystem:
    """A connection to one cluster, made by `open_filesystem` and usable in its block."""

    def __init__(self, client: Client, options: ConnectOptions) -> None:
        self.client = client
        self.options = options
        self.identity = options.identity
        self._files: weakref.WeakSet[AsyncFile] = weakref.WeakSet()
        self.closed = False

    # ---- paths -------------------------------------------------------------------------------------
    def canonical(self, path: PathLike) -> str:
        """`path` as "/a/b" (OSError EINVAL/ENAMETOOLONG for a bad one); no call is made."""
        try:
            return join(split_path(path))
        except FsError as exc:
            raise os_error(exc, path) from None

    async def _check(self, attr: r.Attr, want: int, what: str = "") -> None:
        await check_access(attr, self.identity, want, self._access_acl, what)

    async def _access_acl(self, ino: int) -> bytes | None:
        try:
            return await self.client.getxattr(ino, posix_acl.ACCESS)
        except FsError as exc:
            if exc.errno == errno.ENODATA:
                return None
            raise

    async def _walk(self, names: list[bytes], follow: bool) -> r.Attr:
        """The inode `names` lead to from the root, each directory searched as the caller;
        symlinks followed on the way (and at the end if `follow`)."""
        if self.closed:
            raise ValueError("the chunkfs filesystem is closed")
        todo = list(reversed(names))
        dirs = [await self.client.getattr(ROOT_INO)]
        links = 0
        while todo:
            name = todo.pop()
            if name in (b"", b"."):
                continue
            if name == b"..":
                if len(dirs) > 1:
                    dirs.pop()
                continue
            current = dirs[-1]
            if not stat.S_ISDIR(current.mode):
                raise FsError(errno.ENOTDIR, "not a directory")
            await self._check(current, SEARCH)
            attr = await self.client.lookup(current.ino, name)
            if stat.S_ISLNK(attr.mode) and (todo or follow):
                links += 1
                if links > MAX_SYMLINKS:
                    raise FsError(errno.ELOOP, "too many levels of symbolic links")
                target = await self.client.readlink(attr.ino)
                if target.startswith(b"/"):
                    del dirs[1:]
                todo.extend(reversed(target.split(b"/")))
                continue
            dirs.append(attr)
        return dirs[-1]

    async def _resolve(self, path: PathLike, follow: bool = True) -> r.Attr:
        return await self._walk(split_path(path), follow)

    async def parent_of(self, path: PathLike, root_errno: int) -> tuple[r.Attr, bytes]:
        """The directory holding the last name of `path`, and that name (`root_errno` for the
        root, which has none)."""
        names = split_path(path)
        if not names:
            raise FsError(root_errno, "the root has no name in a directory")
        directory = await self._walk(names[:-1], follow=True)
        if not stat.S_ISDIR(directory.mode):
            raise FsError(errno.ENOTDIR, "not a directory")
        return directory, names[-1]

    async def may_change_entries(self, directory: r.Attr) -> None:
        """A name is made or removed in `directory`: write and search permission."""
        await self._check(directory, WRITE | SEARCH)

    async def entry_in(self, directory: r.Attr, name: bytes) -> r.Attr | None:
        try:
            return await self.client.lookup(directory.ino, name)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    async def _apply_goal(self, ino: int) -> r.Attr | None:
        if self.options.goal is None:
            return None
        return await self.client.set_goal(ino, self.options.goal)

    # ---- files -------------------------------------------------------------------------------------
    @raises_os_errors
    async def open(self, path: PathLike, mode: str = "rb") -> AsyncFile:
        """`mode`: "rb", "wb", "ab", "r+b", "xb", "w+b" (also "x+b", "a+b"; binary only)."""
        mode = normal_mode(mode)
        readable, writable, create, truncate, exclusive, _append = MODES[mode]
        directory, name = await self.parent_of(path, errno.EISDIR)
        await self._check(directory, SEARCH)
        attr = await self.entry_in(directory, name)
        if attr is not None and stat.S_ISLNK(attr.mode):
            attr = await self._resolve(path, follow=True)
        if attr is None:
            if not create:
                raise FsError(errno.ENOENT, "no such file")
            await self.may_change_entries(directory)
            open_file = await self.client.create(directory.ino, name, 0o666, self.identity)
            goal = self.options.goal
            if goal is not None and goal != open_file.attr.goal:
                open_file.attr.goal = (await self.client.set_goal(open_file.ino, goal)).goal
        else:
            if exclusive:
                raise FsError(errno.EEXIST, "file exists")
            if stat.S_ISDIR(attr.mode):
                raise FsError(errno.EISDIR, "is a directory")
            await self._check(attr, (READ if readable else 0) | (WRITE if writable else 0))
            open_file = await self.client.open(attr.ino, self.identity, truncate=truncate, writing=writable)
        afile = AsyncFile(self.client, open_file, self.canonical(path), mode)
        self._files.add(afile)
        return afile

    # ---- attributes ----------------------------------------------------------------------------------
    @raises_os_errors
    async def stat(self, path: PathLike) -> os.stat_result:
        return stat_result(await self._resolve(path, follow=True))

    @raises_os_errors
    async def lstat(self, path: PathLike) -> os.stat_result:
        return stat_result(await self._resolve(path, follow=False))

    async def exists(self, path: PathLike) -> bool:
        """False for a path that does not lead anywhere (as os.path.exists); an unreachable
        cluster still raises."""
        try:
            await self.stat(path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EINVAL, errno.ENAMETOOLONG,
                             errno.EACCES):
                return False
            raise
        return True

    @raises_os_errors
    async def chmod(self, path: PathLike, mode: int) -> None:
        attr = await self._resolve(path)
        check_owner(attr, self.identity, "chmod")
        await self.client.setattr(r.SetattrReq(ino=attr.ino, mode=mode_for_chmod(attr, self.identity, mode)))

    @raises_os_errors
    async def chown(self, path: PathLike, uid: int, gid: int) -> None:
        attr = await self._resolve(path)
        check_chown(attr, self.identity, uid, gid)
        req = r.SetattrReq(ino=attr.ino, uid=None if uid == -1 else uid, gid=None if gid == -1 else gid)
        if not self.identity.is_root and stat.S_ISREG(attr.mode) and attr.mode & (stat.S_ISUID | stat.S_ISGID):
            req.mode = attr.mode & ~(stat.S_ISUID | (stat.S_ISGID if attr.mode & stat.S_IXGRP else 0)) & 0o7777
        await self.client.setattr(req)

    @raises_os_errors
    async def utime(self, path: PathLike, times: tuple[float, float] | None = None, *,
                    ns: tuple[int, int] | None = None) -> None:
        """As os.utime: (atime, mtime) in seconds or `ns`, or now if neither is given."""
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        attr = await self._resolve(path)
        if times is None and ns is None:
            if self.identity.uid != attr.uid:
                await self._check(attr, WRITE, "utime")
            atime_ns = mtime_ns = time.time_ns()
        else:
            check_owner(attr, self.identity, "utime")
            if ns is not None:
                atime_ns, mtime_ns = ns
            else:
                assert times is not None
                atime_ns, mtime_ns = int(times[0] * 1e9), int(times[1] * 1e9)
        await self.client.setattr(r.SetattrReq(ino=attr.ino, atime_ns=atime_ns, mtime_ns=mtime_ns))

    @raises_os_errors
    async def truncate(self, path: PathLike, size: int) -> None:
        if size < 0:
            raise FsError(errno.EINVAL, "negative size")
        attr = await self._resolve(path)
        if stat.S_ISDIR(attr.mode):
            raise FsError(errno.EISDIR, "is a directory")
        await self._check(attr, WRITE)
        await self.client.setattr(r.SetattrReq(ino=attr.ino), size=size)

    @raises_os_errors
    async def set_goal(self, path: PathLike, goal: int, recursive: bool = False) -> None:
        """Keep `goal` copies of the file's chunks (of every file under a directory if `recursive`)."""
        attr = await self._resolve(path)
        check_owner(attr, self.identity, "set goal")
        await self.client.set_goal(attr.ino, goal, recursive)

    @raises_os_errors
    async def set_trash_time(self, path: PathLike, seconds: int, recursive: bool = False) -> None:
        """Files removed from this directory (with `recursive`, from every one under it) stay in
        the trash `seconds` (0: freed at once); what is made in it inherits the time."""
        attr = await self._resolve(path)
        check_owner(attr, self.identity, "set the trash time")
        await self.client.set_trash_time(attr.ino, seconds, recursive)

    @raises_os_errors
    async def statvfs(self) -> os.statvfs_result:
        return os.statvfs_result(statvfs_numbers(await self.client.statfs()))

    # ---- xattrs ------------------------------------------------------------------------------------
    async def _xattr_target(self, path: PathLike, name: str | bytes, writing: bool) -> tuple[r.Attr, bytes]:
        key = os.fsencode(name)
        attr = await self._resolve(path)
        want = check_xattr(attr, self.identity, key, writing)
        if want:
            await self._check(attr, want)
        return attr, key

    @raises_os_errors
    async def getxattr(self, path: PathLike, name: str | bytes) -> bytes:
        attr, key = await self._xattr_target(path, name, writing=False)
        return await self.client.getxattr(attr.ino, key)

    @raises_os_errors
    async def setxattr(self, path: PathLike, name: str | bytes, value: bytes, flags: int = 0) -> None:
        """`flags`: os.XATTR_CREATE or os.XATTR_REPLACE, as os.setxattr."""
        attr, key = await self._xattr_target(path, name, writing=True)
        await self.client.setxattr(attr.ino, key, bytes(value), flags)

    @raises_os_errors
    async def listxattr(self, path: PathLike) -> list[str]:
        attr = await self._resolve(path)
        return [os.fsdecode(n) for n in await self.client.listxattr(attr.ino)]

    @raises_os_errors
    async def removexattr(self, path: PathLike, name: str | bytes) -> None:
        attr, key = await self._xattr_target(path, name, writing=True)
        await self.client.removexattr(attr.ino, key)

    # ---- directories ----------------------------------------------------------------------------------
    @raises_os_errors
    async def scandir(self, path: PathLike = "/", with_xattr: str | None = None) -> list[DirEntry]:
        """Every entry of a directory (not . and ..), with its attributes; `with_xattr`: and
        each entry's value of that xattr (`DirEntry.xattr`, None where unset or where the caller
        could not read it with getxattr), in the same calls."""
        attr = await self._resolve(path)
        if not stat.S_ISDIR(attr.mode):
            raise FsError(errno.ENOTDIR, "not a directory")
        await self._check(attr, READ)
        base = self.canonical(path).rstrip("/")
        entries: list[DirEntry] = []
        after: bytes | None = None
        xattr = os.fsencode(with_xattr) if with_xattr is not None else None
        self.client.open_directory(attr.ino)
        try:
            while True:
                page = await self.client.readdir(attr.ino, after, READDIR_PAGE, xattr)
                for e in page:
                    if e.name in (b".", b".."):
                        continue
                    value = e.xattr if xattr is not None and await self._may_read_xattr(e, xattr) else None
                    entries.append(DirEntry(os.fsdecode(e.name), f"{base}/{os.fsdecode(e.name)}", e.attr, value))
                if len(page) < READDIR_PAGE:
                    return entries
                after = page[-1].name
        finally:
            await self.client.release_directory(attr.ino)

    async def _may_read_xattr(self, entry: r.DirEntry, name: bytes) -> bool:
        """Whether getxattr of `name` on the listed `entry` would be allowed to this caller (by
        the access ACL that came with it: no call per entry; asked for where it did not come)."""
        attr = entry.attr
        if not attr.has_xattrs:
            return False
        acl = entry.acl

        async def listed_acl(ino: int) -> bytes | None:
            return await self._access_acl(ino) if isinstance(acl, msgspec.UnsetType) else acl

        try:
            want = check_xattr(attr, self.identity, name, writing=False)
            if want:
                await check_access(attr, self.identity, want, listed_acl)
        except FsError:
            return False
        return True

    async def listdir(self, path: PathLike = "/") -> list[str]:
        return [entry.name for entry in await self.scandir(path)]

    async def walk(self, top: PathLike = "/") -> AsyncIterator[tuple[str, list[str], list[str]]]:
        """As os.walk, top-down; directories that cannot be listed are skipped."""
        pending = [self.canonical(top)]
        while pending:
            directory = pending.pop()
            try:
                entries = await self.scandir(directory)
            except OSError:
                continue
            dirs = [e.name for e in entries if e.is_dir()]
            yield directory, dirs, [e.name for e in entries if not e.is_dir()]
            pending.extend(reversed([f"{directory.rstrip('/')}/{d}" for d in dirs]))

    @raises_os_errors
    async def mkdir(self, path: PathLike, mode: int = 0o777) -> None:
        directory, name = await self.parent_of(path, errno.EEXIST)
        await self.may_change_entries(directory)
        attr = await self.client.make(directory.ino, name, stat.S_IFDIR | (mode & 0o7777), self.identity)
        await self._apply_goal(attr.ino)

    @raises_os_errors
    async def makedirs(self, path: PathLike, mode: int = 0o777, exist_ok: bool = False) -> None:
        names = split_path(path)
        for depth in range(1, len(names) + 1):
            partial = join(names[:depth])
            try:
                await self.mkdir(partial, mode)
            except FileExistsError:
                if depth == len(names) and not exist_ok:
                    raise
                if not stat.S_ISDIR((await self._resolve(partial)).mode):
                    raise FsError(errno.ENOTDIR if depth < len(names) else errno.EEXIST, f"{partial} is not a directory") from None
        if not names and not exist_ok:
            raise FsError(errno.EEXIST, "the root exists")

    async def _removable(self, path: PathLike) -> tuple[r.Attr, bytes, r.Attr]:
        directory, name = await self.parent_of(path, errno.EBUSY)
        await self.may_change_entries(directory)
        victim = await self.client.lookup(directory.ino, name)
        check_sticky(directory, victim, self.identity, "remove")
        return directory, name, victim

    @raises_os_errors
    async def remove(self, path: PathLike) -> None:
        directory, name, victim = await self._removable(path)
        if stat.S_ISDIR(victim.mode):
            raise FsError(errno.EISDIR, "is a directory")
        await self.client.remove(directory.ino, name, is_dir=False)

    unlink = remove

    @raises_os_errors
    async def rmdir(self, path: PathLike) -> None:
        directory, name, victim = await self._removable(path)
        if not stat.S_ISDIR(victim.mode):
            raise FsError(errno.ENOTDIR, "not a directory")
        await self.client.remove(directory.ino, name, is_dir=True)

    @raises_os_errors
    async def rename(self, src: PathLike, dst: PathLike) -> None:
        """As os.rename: replaces `dst` if it is a file (or an empty directory, for a directory)."""
        await self._rename(src, dst, 0)

    async def _rename(self, src: PathLike, dst: PathLike, flags: int) -> None:
        old_dir, old_name, moved = await self._removable(src)
        new_dir, new_name = await self.parent_of(dst, errno.EBUSY)
        await self.may_change_entries(new_dir)
        replaced = await self.entry_in(new_dir, new_name)
        if replaced is not None:
            check_sticky(new_dir, replaced, self.identity, "rename over")
        if stat.S_ISDIR(moved.mode) and new_dir.ino != old_dir.ino:
            await self._check(moved, WRITE, "move a directory")  # its ".." changes
        await self.client.rename(old_dir.ino, old_name, new_dir.ino, new_name, flags)

    @raises_os_errors
    async def symlink(self, target: PathLike, linkpath: PathLike) -> None:
        directory, name = await self.parent_of(linkpath, errno.EEXIST)
        await self.may_change_entries(directory)
        await self.client.make(directory.ino, name, stat.S_IFLNK | 0o777, self.identity, target=os.fsencode(target))

    @raises_os_errors
    async def readlink(self, path: PathLike) -> str:
        attr = await self._resolve(path, follow=False)
        if not stat.S_ISLNK(attr.mode):
            raise FsError(errno.EINVAL, "not a symbolic link")
        return os.fsdecode(await self.client.readlink(attr.ino))

    @raises_os_errors
    async def concat(self, path: PathLike, sources: Sequence[PathLike]) -> None:
        """Append the files `sources` to the file `path` without copying their bytes: their
        chunks become its chunks, and they are left empty (the caller removes them). As HDFS's
        concat, only whole chunks move: `path` and every source but the last must be a multiple
        of CHUNK_SIZE long and no source may be kept inline (EINVAL otherwise, nothing changed).
        Write permission is needed on all of them (the sources lose their content)."""
        target = await self._resolve(path)
        await self._check(target, WRITE)
        inodes = []
        for source in sources:
            attr = await self._resolve(source)
            await self._check(attr, WRITE)
            inodes.append(attr.ino)
        await self.client.concat(target.ino, inodes)

    # ---- whole files -----------------------------------------------------------------------------------
    @raises_os_errors
    async def put_file(self, local_path: str | Path, remote_path: PathLike, progress: Progress | None = None, *,
                       exclusive: bool = False) -> None:
        """Upload a local file whole (see `transfers.upload`): never visible half-written under
        `remote_path`, removed on error or Ctrl-C; OSError(EBUSY) if it changes while read. A
        file of RESUMABLE_FROM_BYTES or more goes in parts through an upload session
        (`upload_sessions.resumable_upload`): a put that was killed or cut off, run again,
        stores only what the first run had not."""
        if os.stat(local_path).st_size >= RESUMABLE_FROM_BYTES:  # one stat; the upload reads the file in a thread
            try:
                await resumable_upload(self, Path(local_path), self.canonical(remote_path), progress, exclusive)
                return
            except PermissionError:  # no sessions directory, and this caller may not make it
                pass
        await upload(self, Path(local_path), remote_path, progress, exclusive)

    @raises_os_errors
    async def get_file(self, remote_path: PathLike, local_path: str | Path, progress: Progress | None = None) -> None:
        """Download a file whole (see `transfers.download`), read ahead with prefetch."""
        await download(self, remote_path, Path(local_path), progress)

    # ---- the end ----------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the files still open (durably) and give the directory leases back."""
        if self.closed:
            return
        for afile in list(self._files):
            try:
                await afile.aclose()
            except OSError as exc:
                log.error("closing %s: %s", afile.name, exc)
        self.closed = True
        await self.client.close()

    async def __aenter__(self) -> AsyncFilesystem:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _load_secret(secret_file: Path) -> bytes:
    try:
        return auth.load_secret(secret_file)
    except OSError as exc:
        raise PermissionError(errno.EACCES, f"cannot read the cluster secret: {exc.strerror}", str(secret_file)) from None
    except ValueError as exc:
        raise PermissionError(errno.EACCES, f"not a cluster secret: {exc}", str(secret_file)) from None


@asynccontextmanager
async def connected(address: str, secret_file: Path, options: ConnectOptions) -> AsyncIterator[AsyncFilesystem]:
    """An AsyncFilesystem on a client core of its own, for this block."""
    secret = _load_secret(secret_file)
    try:
        files = tls.tls_files(options.tls_dir, options.tls_name)
    except ValueError as exc:
        raise PermissionError(errno.EACCES, str(exc)) from None
    address, _, subdir = address.partition(":/")
    subdir = "/" + subdir if subdir else options.subdir
    http = SignedHttp(secret, timeout_s=60, retry_s=options.retry_s, trio_native=True,
                      tls=files.client_context() if files else None)
    try:
        try:
            # the root: proves the metaserver answers and takes the secret (and, for a
            # subdirectory, that the credential's export reaches it)
            root_ino = ROOT_INO if subdir == "/" else await MetaClient(http, address).subtree_root(subdir)
            client = build_client(http, address, client_id=uuid.uuid4().hex, root_ino=root_ino,
                                  cache_mem_bytes=options.cache_mem_mb << 20, max_dirty_bytes=options.max_dirty_mb << 20,
                                  dir_leases=options.dir_leases, prefetch=options.prefetch, dedup=options.dedup)
            await client.meta.getattr(ROOT_INO)
        except FsError as exc:
            if exc.errno == errno.EACCES:
                raise PermissionError(errno.EACCES, f"the metaserver at {address}: {exc.message}",
                                      str(secret_file)) from None
            raise OSError(exc.errno, f"{address}: {exc}") from None
        except TransportError as exc:
            raise OSError(errno.EIO, f"cannot reach the metaserver at {address} within {options.retry_s:g} s: "
                                     f"{exc}") from None
        host = socket.gethostname()

        def report() -> r.ClientReport:
            return r.ClientReport(host=host, mountpoint=options.report_as or f"python-api pid {os.getpid()}",
                                  cache=client.cache.stats())

        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            nursery.start_soon(client.meta.follow_changes, None, report)
            afs = AsyncFilesystem(client, options)
            try:
                yield afs
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2 * options.retry_s + 5):
                    await afs.aclose()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await http.aclose()
