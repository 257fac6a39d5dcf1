"""Frees the unlinked files a mount had open when that mount went away.

A file unlinked (or replaced by a rename) while its client has it open stays, nameless, until
that client's last close (`Namespace.release_orphan`). A client that crashes never closes it:
once the client has not followed the change feed for `session_timeout_s` (a live mount polls
it at least every 20 s), its orphans are freed and their chunks queued for deletion. After a
metaserver restart every client is given `session_timeout_s` from the start to come back.
"""

from __future__ import annotations

import asyncio
import logging
import time

from chunkfs.metaserver.changes import ChangeFeed
from chunkfs.metaserver.db import GroupCommitter, MetaDB
from chunkfs.metaserver.namespace import Namespace

log = logging.getLogger(__name__)

PAGE = 10_000


class OrphanCollector:
    def __init__(self, db: MetaDB, committer: GroupCommitter, namespace: Namespace, changes: ChangeFeed,
                 session_timeout_s: float, on_freed) -> None:
        self.db, self.committer, self.namespace, self.changes = db, committer, namespace, changes
        self.session_timeout_s = session_timeout_s
        self.on_freed = on_freed  # wakes the deleter
        self.started = time.monotonic()
        self.collected = 0
        self._next = 0  # the inode the next pass starts at

    async def run(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, min(10.0, self.session_timeout_s / 4)))
            try:
                await self.pass_once()
            except Exception:
                log.exception("orphan collection failed; retrying later")

    def expired(self, client_id: str, now: float) -> bool:
        seen = max(self.started, self.changes.last_seen(client_id) or 0.0)
        return now - seen > self.session_timeout_s

    async def pass_once(self) -> int:
        """One page of the orphans table (PAGE rows, on the event loop), where the last pass
        stopped: a pass costs the same however many files are open unlinked."""
        with self.db.read() as txn:
            orphans = self.namespace.orphans(txn, self._next, PAGE)
        self._next = orphans[-1][0] + 1 if len(orphans) == PAGE else 0
        now = time.monotonic()
        gone = [(ino, client) for ino, client in orphans if self.expired(client, now)]
        if not gone:
            return 0
        await self.committer.run(self._free, [ino for ino, _client in gone])
        for client in sorted({client for _ino, client in gone}):
            log.info("client %s went away: freed the unlinked files it had open", client)
        self.collected += len(gone)
        self.on_freed()
        return len(gone)

    def _free(self, txn, inos: list[int]) -> None:
        for ino in inos:
            self.namespace.release_orphan(txn, ino)
