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
        await self._forget([ino])

    async def feed_reset(self) -> None:
        """Everything this mount knows may have changed. One worker thread call for all of
        them: a thread hand-off per inode made the first copy after a metaserver restart wait
        seconds behind a mount that had created a few thousand files (issue 24's restart gap)."""
        await self._forget(self.ops.known_inodes())

    async def _forget(self, inodes: list[int]) -> None:
        for ino in inodes:
            self.ops.forget_cached(ino)
        await trio.to_thread.run_sync(_invalidate_inodes, inodes)


def _invalidate_inodes(inodes: list[int]) -> None:
    for ino in inodes:
        try:
            pyfuse3.invalidate_inode(ino)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # the kernel does not know it: nothing cached
                log.debug("invalidate inode %d: %s", ino, exc)
