"""Follows the metaserver's change feed and makes the kernel forget what other clients changed.

This is what lets the mount give the kernel long entry and attribute time-outs: a name or
inode changed elsewhere is dropped from this kernel's caches within a long-poll round trip
(milliseconds), not when a time-out runs out. The kernel calls run in a worker thread or
pyfuse3's invalidation thread, never inside a request handler, so they cannot deadlock.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable

import pyfuse3
import trio

from chunkfs.errors import FsError, TransportError
from chunkfs.protocol import records as r
from chunkfs.client.leases import FEED_WAIT_S, Leases
from chunkfs.client.metadata_cache import MetadataCache
from chunkfs.protocol.meta_client import MetaClient

log = logging.getLogger(__name__)

WAIT_S = 20.0


class Invalidator:
    def __init__(self, meta: MetaClient, client_id: str, known_inodes: Callable[[], Iterable[int]],
                 forget_inode: Callable[[int], None],
                 report: Callable[[], r.ClientReport] | None = None,
                 metadata: MetadataCache | None = None, leases: Leases | None = None) -> None:
        """`report` says how this mount is doing; it rides on every poll of the feed.
        `metadata`, the mount's own cache of names and attributes, forgets what the kernel
        forgets, first (so the kernel cannot fetch the old answer from it again)."""
        self.metadata = metadata
        self.leases = leases  # renewed by every answered poll; recalls arrive with the changes
        self.meta = meta
        self.report = report
        self.client_id = client_id
        self.known_inodes = known_inodes
        self.forget_inode = forget_inode
        self.since: int | None = None
        self.applied = 0

    async def run(self) -> None:
        while True:
            wait_s = WAIT_S if self.leases is None else FEED_WAIT_S  # leases are renewed by each poll
            sent_at = trio.current_time()
            try:
                batch = await self.meta.changes(self.since if self.since is not None else 0,
                                                0 if self.since is None else wait_s,
                                                self.report() if self.report is not None else None)
            except (FsError, TransportError) as exc:
                log.warning("change feed unavailable (%s); retrying", exc)
                await trio.sleep(1)
                continue
            if self.leases is not None and not batch.reset:
                self.leases.fed(sent_at)
                if batch.recalls and not self.leases.recall(batch.recalls):
                    await trio.sleep(0.01)  # being given back already: no busy polling meanwhile
            if self.since is not None and batch.reset:
                if self.leases is not None:  # the metaserver restarted: give every lease back
                    self.leases.recall(list(self.leases.held))
                log.warning("change feed was reset; dropping every cached attribute")
                if self.metadata is not None:
                    self.metadata.clear()
                for ino in list(self.known_inodes()):
                    await self._inode(ino)
            elif self.since is not None:
                for change in batch.changes:
                    if change.origin != self.client_id:
                        await self.apply(change)
            self.since = batch.seq

    async def apply(self, change: r.Change) -> None:
        for parent, name in change.entries:
            if self.metadata is not None:
                self.metadata.forget_entry(parent, name)
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
        for ino in change.inodes:
            await self._inode(ino)
        self.applied += 1

    async def _inode(self, ino: int) -> None:
        if self.metadata is not None:
            self.metadata.forget_inode(ino)
        self.forget_inode(ino)
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # the kernel does not know it: nothing cached
                log.debug("invalidate inode %d: %s", ino, exc)
