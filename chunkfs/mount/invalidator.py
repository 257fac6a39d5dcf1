"""Makes the kernel forget what other clients changed, as the change feed reports it.

This is what lets the mount give the kernel long entry and attribute time-outs: a name or
inode changed elsewhere is dropped from this kernel's caches within a long-poll round trip
(milliseconds), not when a time-out runs out. The metadata façade follows the feed (and its own
cache forgets first, so the kernel cannot fetch the old answer from it again); this is its
listener. The kernel calls run in a worker thread or pyfuse3's invalidation thread, never
inside a request handler, so they cannot deadlock.
"""

from __future__ import annotations

import errno
import logging

import pyfuse3
import trio

from chunkfs.mount.operations import ChunkfsOperations

log = logging.getLogger(__name__)


class KernelInvalidator:
    def __init__(self, ops: ChunkfsOperations) -> None:
        self.ops = ops

    async def entry_changed(self, parent: int, name: bytes) -> None:
        pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)

    async def inode_changed(self, ino: int) -> None:
        self.ops.forget_cached(ino)
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # the kernel does not know it: nothing cached
                log.debug("invalidate inode %d: %s", ino, exc)

    async def feed_reset(self) -> None:
        for ino in self.ops.known_inodes():
            await self.inode_changed(ino)
