"""Replies to mutations, kept for a while by (client, request id): a retried mutation is
answered, not run twice.

A client retries a call whose reply it never got (a dropped connection, a metaserver killed
after its commit and started again). Without this a retried create would find its own file and
fail with EEXIST, a retried unlink ENOENT, a retried rename ENOENT. The reply is stored in the
mutation's own transaction, so it is exactly as durable as what it answers, and survives a
restart of the metaserver. Keys start with the minute they were written in, so old ones are
pruned by one cursor walk from the start of the table.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import lmdb
import msgspec

from chunkfs.metaserver.db import GroupCommitter, MetaDB

BUCKET_S = 60
KEEP_S = 900  # longer than any client's retry_s is sensibly set to
PRUNE_BATCH = 10_000
PRUNE_EVERY_S = 60


def _key(bucket: int, client: str, request_id: str) -> bytes:
    return bucket.to_bytes(8, "big") + client.encode() + b"\0" + request_id.encode()


class ReplyLog:
    def __init__(self, db: MetaDB, committer: GroupCommitter | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.committer = committer
        self.clock = clock

    async def run(self) -> None:
        """Prune old replies in the background, for the life of the metaserver."""
        assert self.committer is not None
        while True:
            await asyncio.sleep(PRUNE_EVERY_S)
            while await self.committer.run(self.prune) == PRUNE_BATCH:
                pass

    def once(self, mutate: Callable[[Any, Any], Any], client: str, request_id: str
             ) -> Callable[[Any, Any], tuple[bytes, Any]]:
        """`mutate(txn, req)` made idempotent per (client, request id): the returned function
        gives (encoded reply, result), where result is None when the reply was stored before
        (the mutation already ran and was acknowledged, or its acknowledgement was lost)."""

        def run(txn: lmdb.Transaction, req: Any) -> tuple[bytes, Any]:
            now = int(self.clock() // BUCKET_S)
            for bucket in range(now, now - KEEP_S // BUCKET_S - 1, -1):
                stored = txn.get(_key(bucket, client, request_id), db=self.db.replies)
                if stored is not None:
                    return bytes(stored), None
            result = mutate(txn, req)
            body = msgspec.json.encode(result)
            txn.put(_key(now, client, request_id), body, db=self.db.replies)
            return body, result

        return run

    def prune(self, txn: lmdb.Transaction) -> int:
        """Drop replies older than KEEP_S (at most PRUNE_BATCH per call); returns how many."""
        cutoff = (int(self.clock() // BUCKET_S) - KEEP_S // BUCKET_S - 1).to_bytes(8, "big")
        old = []
        with txn.cursor(db=self.db.replies) as cursor:
            for key in cursor.iternext(keys=True, values=False):
                if key[:8] >= cutoff or len(old) >= PRUNE_BATCH:
                    break
                old.append(bytes(key))
        for key in old:
            txn.delete(key, db=self.db.replies)
        return len(old)
