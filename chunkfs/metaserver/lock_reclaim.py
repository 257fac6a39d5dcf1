"""File locks across a metaserver restart, and across a client's cut session: reclaim, as NFSv4
and CephFS do it.

The lock table (`locks.py`) lives in memory; every client keeps a record of the locks it holds
(`chunkfs/client/locks.py`). After a restart (a new feed epoch) each client gives its locks back
(`reclaim`) and holds them again. Promises:
- **A holder keeps its lock, nobody else gets it meanwhile.** For `grace_s` after the start, a
  new lock (or F_GETLK) waits; reclaims are granted. The grace ends early once every client
  that held locks before the restart has reclaimed: those clients are recorded in LMDB (once per
  client, before its first lock is granted), so a start after which nobody held locks has no
  grace at all. A reclaim after the grace, or one that conflicts with a lock reclaimed first, is
  refused: that lock is lost.
- **A client whose session ended lost its locks, and is told so.** The locks of a client that
  stopped following the change feed for `client_timeout_s` are dropped (others may take them);
  when it is back, its feed polls say so until it checks (a reclaim with the epoch it already
  had), which answers that they are lost: the client fails the next use of those files instead
  of going on unprotected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Set

import msgspec

from chunkfs.metaserver.db import GroupCommitter, MetaDB, Txn
from chunkfs.metaserver.locks import LockTable
from chunkfs.protocol import records as r

log = logging.getLogger(__name__)

HOLDERS_KEY = b"lock_holders"  # in the counters table: the clients that may hold locks (a JSON list)
MAX_DROPPED = 10_000  # clients remembered as having lost their locks, until told


class LockReclaim:
    def __init__(self, db: MetaDB, committer: GroupCommitter, table: LockTable, epoch: str, grace_s: float) -> None:
        self.db, self.committer, self.table, self.epoch = db, committer, table, epoch
        with db.read() as txn:
            stored = txn.get(HOLDERS_KEY, db=db.counters)
        self.recorded: set[str] = set(msgspec.json.decode(bytes(stored), type=list[str])) if stored else set()
        self.awaited = set(self.recorded)  # held locks before the restart and have not reclaimed yet
        self.grace_until = time.monotonic() + grace_s if self.awaited else 0.0
        self._grace_over = asyncio.Event()
        if not self.awaited:
            self._grace_over.set()
        self._dropped: OrderedDict[str, None] = OrderedDict()  # lost their locks at their session's end
        self._storing = asyncio.Lock()  # one change of the stored list at a time
        if self.awaited:
            log.info("%d clients held locks before this start: new locks wait up to %.0f s for them to reclaim",
                     len(self.awaited), grace_s)

    def in_grace(self) -> bool:
        return not self._grace_over.is_set()

    async def grace_over(self) -> None:
        """Return when new locks may be granted (at once but in the grace period)."""
        if self.in_grace():
            remaining = self.grace_until - time.monotonic()
            if remaining > 0:
                try:
                    await asyncio.wait_for(self._grace_over.wait(), remaining)
                    return
                except TimeoutError:
                    pass
            self._end_grace()

    def _end_grace(self) -> None:
        if self.in_grace():
            if self.awaited:
                log.warning("lock grace period over; %d clients did not reclaim their locks", len(self.awaited))
            self.awaited.clear()
            self._grace_over.set()

    async def record(self, client: str) -> None:
        """Before `client`'s first lock is granted: it is recorded (durably) as one to wait for
        after a restart. `recorded` names only clients whose record is durable."""
        if client in self.recorded:
            return
        async with self._storing:
            if client not in self.recorded:
                await self.committer.run_small(self._store, sorted(self.recorded | {client}))
                self.recorded.add(client)

    def _store(self, txn: Txn, clients: list[str]) -> None:
        txn.put(HOLDERS_KEY, msgspec.json.encode(clients), db=self.db.counters)

    def lost_locks(self, client: str) -> bool:
        """Whether `client`'s locks were dropped at the end of its session and it has not
        checked them since (its feed polls say so, until it does)."""
        return client in self._dropped

    def grants(self, req: r.LockReclaimReq) -> bool:
        """Whether `reclaim` would grant `req`'s locks (a give-back in the grace period), not
        just check them or answer that they are lost."""
        return req.epoch != self.epoch and self.in_grace()

    async def reclaim(self, client: str, req: r.LockReclaimReq, refused: Set[int] = frozenset()
                      ) -> r.LockReclaimReply:
        """`req.locks`: what `client` holds as of feed epoch `req.epoch`. In this epoch, a check:
        all are lost if they were dropped at the end of its session. From an earlier one, they
        are granted again in the grace period (but for conflicts, and those at the indexes
        `refused`: the client's export does not allow them) and lost after it."""
        everything = list(range(len(req.locks)))
        if req.epoch == self.epoch:
            lost = everything if client in self._dropped else []
            self._dropped.pop(client, None)
        elif self.in_grace():
            if req.locks:
                await self.record(client)
            if refused:
                log.warning("client %s may not reclaim %d of its locks (outside its export, or a write lock of a "
                            "read-only one)", client, len(refused))
            lost = [i for i, lock in enumerate(req.locks) if i in refused or not self.table.reclaim(client, lock)]
            self.awaited.discard(client)
            if not self.awaited:
                self._end_grace()
        else:
            lost = everything
        if lost:
            log.warning("client %s lost %d of its %d file locks", client, len(lost), len(req.locks))
        return r.LockReclaimReply(lost=lost, epoch=self.epoch)

    async def run(self, session_over: Callable[[str], bool], interval_s: float) -> None:
        """Every `interval_s`: drop the locks of clients whose session ended (remembering they
        lost them), forget waits nobody asks for any more, and stop recording clients gone."""
        while True:
            await asyncio.sleep(interval_s)
            if self.in_grace() and time.monotonic() >= self.grace_until:
                self._end_grace()
            self.table.drop_stale_waiters(time.monotonic())
            for client in sorted(self.table.clients()):
                if session_over(client):
                    dropped = self.table.drop_client(client)
                    log.warning("client %s went away: dropped its %d locks", client, dropped)
                    if dropped:
                        self._dropped[client] = None
                        while len(self._dropped) > MAX_DROPPED:
                            self._dropped.popitem(last=False)
            gone = {client for client in self.recorded if session_over(client)} - self.table.clients()
            if gone and not self.in_grace():
                async with self._storing:
                    await self.committer.run_small(self._store, sorted(self.recorded - gone))
                    self.recorded -= gone
