"""Replies to mutations, kept for a while by (credential, client, request id): a retried mutation
is answered, not run twice.

A client retries a call whose reply it never got (a dropped connection, a metaserver killed
after its commit and started again). Without this a retried create would find its own file and
fail with EEXIST, a retried unlink ENOENT, a retried rename ENOENT. The reply is stored in the
mutation's own transaction, so it is exactly as durable as what it answers, and survives a
restart of the metaserver. Keys start with the minute they were written in, so old ones are
pruned by one cursor walk from the start of the table (and a batch of mutations writes near one
end of it).

Looking a reply up means a probe per minute kept (16). A client's first attempt at a call
(`X-Chunkfs-Attempt: 1`) cannot have one yet, so its mutation skips the probes; every later
attempt, and a call that does not say, is looked up.

A reply is kept under the key id of the credential that signed the mutation too, and only a
request signed by that credential is answered it: a client id and a request id travel in the
clear without TLS, and another credential's client sending them (a create inside its own export,
say) would otherwise be answered a reply made for its owner (a file's attributes, outside that
export).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from chunkfs.metaserver.db import GroupCommitter, MetaDB, Txn

BUCKET_S = 60
KEEP_S = 900  # longer than any client's retry_s is sensibly set to
PRUNE_BATCH = 10_000
PRUNE_EVERY_S = 60
REPLAYED = object()  # `once`'s result for a mutation answered before: it is not run (or published) again


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

    def once(self, mutate: Callable[[Any, Any], Any], client: str, request_id: str, first_attempt: bool = False,
             signer: str = "") -> Callable[[Any, Any], tuple[bytes, Any]]:
        """`mutate(txn, req)` made idempotent per (client, request id): the returned function
        gives (encoded reply, result), where result is REPLAYED when the reply was stored before
        (the mutation already ran and was acknowledged, or its acknowledgement was lost). Not
        None: a mutation that answers None (setxattr) ran all the same, and is published.
        `first_attempt`: the client says it never sent this request before (nothing to look up).
        `signer`: the key id of the credential that signed it ("" for the cluster secret)."""
        suffix = signer.encode() + b"\0" + client.encode() + b"\0" + request_id.encode()

        def run(txn: Txn, req: Any) -> tuple[bytes, Any]:
            now = int(self.clock() // BUCKET_S)
            if not first_attempt:
                get, table = txn.get, self.db.replies
                for bucket in range(now, now - KEEP_S // BUCKET_S - 1, -1):
                    stored = get(bucket.to_bytes(8, "big") + suffix, db=table)
                    if stored is not None:
                        return bytes(stored), REPLAYED
            result = mutate(txn, req)
            body = msgspec.json.encode(result)
            txn.put(now.to_bytes(8, "big") + suffix, body, db=self.db.replies)
            return body, result

        return run

    def prune(self, txn: Txn) -> int:
        """Drop replies older than KEEP_S (at most PRUNE_BATCH per call); returns how many."""
        cutoff = (int(self.clock() // BUCKET_S) - KEEP_S // BUCKET_S - 1).to_bytes(8, "big")
        old: list[bytes] = []
        with txn.cursor(db=self.db.replies) as cursor:
            for key in cursor.iternext(keys=True, values=False):
                if key[:8] >= cutoff or len(old) >= PRUNE_BATCH:
                    break
                old.append(bytes(key))
        for key in old:
            txn.delete(key, db=self.db.replies)
        return len(old)
