"""The chunkfs client: the one client core, and the Python API on it.

The core (no FUSE in it; the mount in `chunkfs/mount/` is one door on it, this API another):
- `core.py`: `Client`, what a client does by inode for every door: names, the open files (one
  per inode), creates in leased directories, removes of files open here, the end of a client;
- `metadata.py`: `Metadata`, the metadata façade: the metaserver client with the metadata cache
  (`metadata_cache.py`), directory leases and pending creates (`leases.py`) and the change feed;
- `locks.py`: the flock and POSIX locks of this client, kept by the metaserver (the core makes a
  lock a consistency point: unlock commits first, a granted lock refreshes the file);
- `open_file.py`: one inode open on this client, its `writer.py` (buffering, parallel uploads,
  inline small files, the commit, under the `write_back.py` bound) and its `reader.py` (reads,
  `prefetch.py`);
- `chunk_cache.py` (memory) over `disk_cache.py` (local disk), both evicting by `cache_policy.py`;
  `chunk_io.py`: chunk transfers with replica fail-over and checksum checks.

The Python API (`paths.py` checks paths, `permissions.py` makes the checks a mount's kernel
makes, `os_errors.py` is its errno edge; `filesystem.py` is the async face, `async_file.py` its
files; `blocking.py` the synchronous face):

    import chunkfs.client
    with chunkfs.client.connect("127.0.0.1:9520", secret_file=".chunkfs/secret") as fs:
        with fs.open("/data/out.csv", "wb") as f:
            f.write(b"a,b\\n1,2\\n")

    async with chunkfs.client.open_filesystem("127.0.0.1:9520", secret_file=...) as afs:
        async with await afs.open("/data/out.csv") as f:
            print(await f.read())

Why trio and not anyio: the core is trio (the mount needs it: pyfuse3 runs on trio), and the
synchronous face drives it from one background thread it owns (a trio token; no asyncio).
anyio would let asyncio programs await the API directly, at a cost on the hot path, measured
with `bench/api_loop_cost.py` (CPU time per operation, on the shared 2-core test machine at a
load of ~9, so noisy; two runs):
- a lock taken around a checkpoint (what a write goes through): trio 14-20 us, anyio on trio
  16-22 us (+1.5-2 us, about +10%), anyio on asyncio 22 us;
- a 4 KiB read of a cached file through the async API: 9-12 us (no checkpoint, no lock), so an
  anyio layer would be a tenth or more of a small write and buys nothing for reads;
- one call through the synchronous face (the thread hand-off): 170-190 us, which dwarfs either.
So the core stays on trio alone; asyncio programs use the synchronous face from a worker
thread (`asyncio.to_thread`), and big reads and writes (a chunk a call) make the hand-off cheap.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from chunkfs.client.async_file import AsyncFile
from chunkfs.client.blocking import File, Filesystem, TrioThread
from chunkfs.client.filesystem import AsyncFilesystem, ConnectOptions, DirEntry
from chunkfs.client.permissions import Identity

__all__ = [
    "AsyncFile",
    "AsyncFilesystem",
    "DirEntry",
    "File",
    "Filesystem",
    "Identity",
    "connect",
    "open_filesystem",
]


def _options(uid: int | None, gid: int | None, groups: list[int] | tuple[int, ...] | None,
             options: dict[str, Any]) -> ConnectOptions:
    config = ConnectOptions(**options)
    if uid is not None or gid is not None or groups is not None:
        own = config.identity
        config.identity = Identity(own.uid if uid is None else uid, own.gid if gid is None else gid,
                                   tuple(own.groups if groups is None else groups), own.umask)
    return config


@asynccontextmanager
async def open_filesystem(address: str, secret_file: str | Path = "/etc/chunkfs/secret", *,
                          uid: int | None = None, gid: int | None = None,
                          groups: list[int] | tuple[int, ...] | None = None,
                          **options: Any) -> AsyncIterator[AsyncFilesystem]:
    """The cluster whose metaserver is at `address` ("HOST:PORT"; "HOST:PORT:/SUBDIR" shows
    directory SUBDIR as the root, as a mount of a subdirectory does), on trio, for this block.
    `options`: goal, retry_s, cache_mem_mb, prefetch, max_dirty_mb, dir_leases, subdir (as the mount's).
    `uid`, `gid`, `groups`: who the calls are made as (default: this process's user)."""
    from chunkfs.client.filesystem import connected

    async with connected(address, Path(secret_file), _options(uid, gid, groups, options)) as afs:
        yield afs


def connect(address: str, secret_file: str | Path = "/etc/chunkfs/secret", *,
            uid: int | None = None, gid: int | None = None, groups: list[int] | tuple[int, ...] | None = None,
            **options: Any) -> Filesystem:
    """A `Filesystem` for blocking code (also a context manager; `close()` when done). Same
    arguments as `open_filesystem`. Raises PermissionError for a missing or refused secret,
    OSError(EIO) if the cluster does not answer within `retry_s`."""
    thread = TrioThread(lambda: open_filesystem(address, secret_file, uid=uid, gid=gid, groups=groups, **options))
    filesystem = Filesystem(thread, thread.start())
    weakref.finalize(filesystem, thread.finish)  # at exit too: what is still open is committed
    return filesystem
