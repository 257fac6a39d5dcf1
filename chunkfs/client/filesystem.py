"""`AsyncFilesystem`: the chunkfs Python API on trio, by path, on the client core.

Every method takes cluster paths (see `paths`), acts as the caller's identity (uid, gid and
groups; the calling process's by default) with the permission checks a mount applies, and fails
with the `OSError` (and errno) the mount would give. A file opened here is the same open file a
mount has: durable at `close()` and `flush()`, close-to-open with every other client.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

from chunkfs.client.async_file import AsyncFile
from chunkfs.client.paths import PathLike

Progress = Callable[[int], None]  # told each time more bytes were moved: the number of new bytes


@dataclass(frozen=True)
class Identity:
    """Who the caller is, for permission checks and the owner of what it creates."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    umask: int = 0o022

    @classmethod
    def of_this_process(cls) -> "Identity":
        umask = os.umask(0)
        os.umask(umask)
        return cls(os.geteuid(), os.getegid(), tuple(os.getgroups()), umask)


@dataclass
class ConnectOptions:
    """What `connect`/`open_filesystem` take beside the address; the same meaning as the mount's
    options of the same names (see MountConfig)."""

    goal: int | None = None  # replicas of the files this client creates (None: the directory's)
    retry_s: float = 15.0
    cache_mem_mb: int = 256
    prefetch: bool = True
    max_dirty_mb: int = 256
    dir_leases: bool = True
    identity: Identity = field(default_factory=Identity.of_this_process)


class DirEntry:
    """One entry of `scandir`, like `os.DirEntry`: its attributes came with the listing."""

    def __init__(self, name: str, path: str, stat_result: os.stat_result) -> None:
        self.name, self.path, self._stat = name, path, stat_result

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        import stat
        return stat.S_ISDIR(self._stat.st_mode)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        import stat
        return stat.S_ISREG(self._stat.st_mode)

    def is_symlink(self) -> bool:
        import stat
        return stat.S_ISLNK(self._stat.st_mode)

    def inode(self) -> int:
        return self._stat.st_ino

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return self._stat

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class AsyncFilesystem:
    """A connection to one cluster. Made by `open_filesystem`; usable in that block only."""

    def canonical(self, path: PathLike) -> str:
        """`path` as "/a/b" (OSError EINVAL/ENAMETOOLONG for a bad one); no call is made."""
        raise NotImplementedError

    async def open(self, path: PathLike, mode: str = "rb") -> AsyncFile:
        """`mode`: "rb", "wb", "ab", "r+b", "xb", "w+b" (binary only)."""
        raise NotImplementedError

    async def stat(self, path: PathLike) -> os.stat_result:
        raise NotImplementedError

    async def lstat(self, path: PathLike) -> os.stat_result:
        raise NotImplementedError

    async def scandir(self, path: PathLike) -> list[DirEntry]:
        raise NotImplementedError

    async def listdir(self, path: PathLike) -> list[str]:
        raise NotImplementedError

    async def walk(self, top: PathLike) -> AsyncIterator[tuple[str, list[str], list[str]]]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def exists(self, path: PathLike) -> bool:
        raise NotImplementedError

    async def mkdir(self, path: PathLike, mode: int = 0o777) -> None:
        raise NotImplementedError

    async def makedirs(self, path: PathLike, mode: int = 0o777, exist_ok: bool = False) -> None:
        raise NotImplementedError

    async def remove(self, path: PathLike) -> None:
        raise NotImplementedError

    async def rmdir(self, path: PathLike) -> None:
        raise NotImplementedError

    async def rename(self, src: PathLike, dst: PathLike) -> None:
        raise NotImplementedError

    async def symlink(self, target: PathLike, linkpath: PathLike) -> None:
        raise NotImplementedError

    async def readlink(self, path: PathLike) -> str:
        raise NotImplementedError

    async def chmod(self, path: PathLike, mode: int) -> None:
        raise NotImplementedError

    async def chown(self, path: PathLike, uid: int, gid: int) -> None:
        raise NotImplementedError

    async def utime(self, path: PathLike, times: tuple[float, float] | None = None, *,
                    ns: tuple[int, int] | None = None) -> None:
        raise NotImplementedError

    async def truncate(self, path: PathLike, size: int) -> None:
        raise NotImplementedError

    async def getxattr(self, path: PathLike, name: str | bytes) -> bytes:
        raise NotImplementedError

    async def setxattr(self, path: PathLike, name: str | bytes, value: bytes, flags: int = 0) -> None:
        raise NotImplementedError

    async def listxattr(self, path: PathLike) -> list[str]:
        raise NotImplementedError

    async def removexattr(self, path: PathLike, name: str | bytes) -> None:
        raise NotImplementedError

    async def set_goal(self, path: PathLike, goal: int, recursive: bool = False) -> None:
        raise NotImplementedError

    async def statvfs(self) -> os.statvfs_result:
        raise NotImplementedError

    async def put_file(self, local_path: str | Path, remote_path: PathLike, progress: Progress | None = None, *,
                       exclusive: bool = False) -> None:
        """Upload a local file whole, through the writer (parallel chunk uploads). It is written
        under a temporary name beside the target and renamed into place at the end, so a half
        written upload is never visible under the target name; on any error, KeyboardInterrupt
        or cancellation the temporary file is removed (its chunks are collected). `exclusive`:
        fail with FileExistsError if the target exists. A local file that changes while it is
        read fails the upload (OSError EAGAIN... see docs) rather than store a torn copy."""
        raise NotImplementedError

    async def get_file(self, remote_path: PathLike, local_path: str | Path, progress: Progress | None = None) -> None:
        """Download a file whole (prefetch on), to a temporary name beside `local_path` renamed at the end."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> "AsyncFilesystem":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@asynccontextmanager
async def connected(address: str, secret_file: Path, options: ConnectOptions) -> AsyncIterator[AsyncFilesystem]:
    """An AsyncFilesystem on a client core of its own, for this block."""
    raise NotImplementedError
    yield AsyncFilesystem()
