#!/usr/bin/env python3
"""`passthrough.py SOURCE MOUNTPOINT`: mount SOURCE again at MOUNTPOINT through a plain pyfuse3
filesystem that does each operation on SOURCE, in the foreground until unmounted or sent
SIGTERM/SIGINT.

It is the yardstick for what FUSE and pyfuse3 cost by themselves: `bench/run_local.sh` mounts a
passthrough of a tmpfs directory and sets chunkfs beside it. Configured as pyfuse3's own
passthrough example is (writeback cache on, entry and attribute time-outs 0, the kernel's
default read-ahead), and as plain: every handler calls `os` directly, nothing is cached here.
Enough of POSIX for `chunkfs bench` (files, directories, rename, symlinks, chmod/utime); no
hard links, xattrs or locks.

`--discard-writes`: writes are answered and their bytes thrown away, with the kernel's writeback
cache off as on a chunkfs mount: what a `dd` onto the mount costs FUSE and pyfuse3 alone, the
floor of a copy that uploads nothing (README, dedup section).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat

import pyfuse3
import trio


def _os_errors(method):
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
    wrapper.__name__ = method.__name__
    return wrapper


class Passthrough(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, source: str, discard_writes: bool = False) -> None:
        super().__init__()
        self.discard_writes = discard_writes
        if discard_writes:
            self.enable_writeback_cache = False
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self.root_ino = os.lstat(source).st_ino

    def _path(self, inode: int) -> str:
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        st = os.lstat(path)
        ino = pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino
        if ino != pyfuse3.ROOT_INODE:
            self.paths[ino] = path
        entry = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                     "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blksize", "st_blocks"):
            setattr(entry, name, getattr(st, name))
        entry.st_ino = ino
        entry.entry_timeout = entry.attr_timeout = 0
        return entry

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    @_os_errors
    async def lookup(self, parent_inode, name, ctx=None):
        return self._entry(self._child(parent_inode, name))

    @_os_errors
    async def getattr(self, inode, ctx=None):
        return self._entry(self._path(inode))

    @_os_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self._path(inode)
        if fields.update_size:
            os.truncate(path, attr.st_size)
        if fields.update_mode:
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.chown(path, attr.st_uid if fields.update_uid else -1,
                     attr.st_gid if fields.update_gid else -1, follow_symlinks=False)
        if fields.update_atime or fields.update_mtime:
            old = os.lstat(path)
            os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else old.st_atime_ns,
                               attr.st_mtime_ns if fields.update_mtime else old.st_mtime_ns),
                     follow_symlinks=False)
        return self._entry(path)

    @_os_errors
    async def readlink(self, inode, ctx):
        return os.fsencode(os.readlink(self._path(inode)))

    @_os_errors
    async def symlink(self, parent_inode, name, target, ctx):
        path = self._child(parent_inode, name)
        os.symlink(os.fsdecode(target), path)
        return self._entry(path)

    async def opendir(self, inode, ctx):
        return inode

    @_os_errors
    async def readdir(self, inode, start_id, token):
        path = self._path(inode)
        entries = sorted((e.inode(), e.name) for e in os.scandir(path))
        for ino, name in entries:
            if ino <= start_id:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._entry(os.path.join(path, name)), ino):
                break

    @_os_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._child(parent_inode, name)
        os.mkdir(path, mode & ~ctx.umask)
        return self._entry(path)

    @_os_errors
    async def rmdir(self, parent_inode, name, ctx):
        os.rmdir(self._child(parent_inode, name))

    @_os_errors
    async def unlink(self, parent_inode, name, ctx):
        os.unlink(self._child(parent_inode, name))

    @_os_errors
    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old, new = self._child(parent_old, name_old), self._child(parent_new, name_new)
        os.rename(old, new)
        self._entry(new)

    @_os_errors
    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=os.open(self._path(inode), flags & ~os.O_CREAT))

    @_os_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._child(parent_inode, name)
        fd = os.open(path, flags | os.O_CREAT, mode & ~ctx.umask)
        return pyfuse3.FileInfo(fh=fd), self._entry(path)

    @_os_errors
    async def read(self, fh, off, size):
        return os.pread(fh, size, off)

    @_os_errors
    async def write(self, fh, off, buf):
        if self.discard_writes:
            return len(buf)
        return os.pwrite(fh, buf, off)

    @_os_errors
    async def fsync(self, fh, datasync):
        os.fsync(fh)

    async def flush(self, fh):
        pass

    @_os_errors
    async def release(self, fh):
        os.close(fh)

    @_os_errors
    async def statfs(self, ctx):
        st = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                     "f_favail", "f_namemax"):
            setattr(out, name, getattr(st, name))
        return out


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _sig in signals:
            pyfuse3.terminate()
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("--discard-writes", action="store_true",
                        help="answer writes and keep nothing, writeback cache off (FUSE's own cost of a write)")
    args = parser.parse_args()
    options = set(pyfuse3.default_options) | {"fsname=passthrough", "subtype=passthrough"}
    pyfuse3.init(Passthrough(os.path.abspath(args.source), args.discard_writes), args.mountpoint, options)
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
