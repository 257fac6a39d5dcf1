"""Directory leases: the mount that made a directory has it to itself until another client needs it.

While client C holds the lease on directory D, nobody else reads or changes D's entries, so C
knows all of them: it answers a lookup of a missing name in D itself, and creates files in D
without asking (each create travels with the file's first commit, under an inode number C
reserved). That is what makes a `cp -a`, `tar -x` or build into a new directory cost one
metaserver call a file.

Before any request of another client that names D (as its inode, its parent or a side of a
rename) is served, the lease is recalled: C, told on its change feed, sends the creates it holds
for D and gives the lease back, and the request goes on. A holder that does not answer loses the
lease LEASE_S after it last polled its feed (it stops trusting the lease before that, see the
mount's leases.py), so a client gone away delays others by at most that. Leases are kept in LMDB
with the directory's creation, so a metaserver that restarts still recalls them.

Memory: `run` takes back, every LEASE_S, the leases whose holder stopped polling (they were
already worth nothing to it), and a client holding more than MAX_PER_CLIENT is asked to give its
oldest back, so what is held in memory is bounded by the live clients times MAX_PER_CLIENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from chunkfs import LEASE_S
from chunkfs.metaserver.db import GroupCommitter, MetaDB, Txn, read_u64, u64
from chunkfs.protocol import records as r

log = logging.getLogger(__name__)

MAX_PER_CLIENT = 10_000  # beyond this a client's oldest leases are recalled


@dataclass
class Lease:
    client: str
    expires: float  # time.monotonic()
    released: asyncio.Event = field(default_factory=asyncio.Event)
    recalled: bool = False


class DirectoryLeases:
    def __init__(self, db: MetaDB, committer: GroupCommitter, wake_feed: Callable[[], None]) -> None:
        """`wake_feed` ends the open long polls, so a holder hears of a recall at once."""
        self.db, self.committer, self.wake_feed = db, committer, wake_feed
        self._held: dict[int, Lease] = {}
        self._by_client: dict[str, set[int]] = {}
        self.recalls = 0
        self.expired = 0
        # whether a directory made in this one is recalled as soon as it is granted: one under a
        # quota (a create held by its mount would be charged, and refused, only at its commit)
        self.recall_at_once: Callable[[Txn, int], bool] = lambda txn, parent: False
        self._to_recall: set[int] = set()
        with db.read() as txn:  # after a restart: each runs LEASE_S more unless its holder polls
            for key, value in txn.cursor(db=db.leases):
                self._add(read_u64(key), Lease(bytes(value).decode(), time.monotonic() + LEASE_S))

    def __len__(self) -> int:
        """Leases held now."""
        return len(self._held)

    def _add(self, ino: int, lease: Lease) -> None:
        self._held[ino] = lease
        self._by_client.setdefault(lease.client, set()).add(ino)

    def _drop(self, ino: int) -> None:
        lease = self._held.pop(ino, None)
        if lease is None:
            return
        held = self._by_client.get(lease.client)
        if held is not None:
            held.discard(ino)
            if not held:
                del self._by_client[lease.client]
        lease.released.set()

    # ---- granting -------------------------------------------------------------------------------
    def creating(self, create: Callable[[Txn, r.CreateReq], r.Attr], client: str
                 ) -> Callable[[Txn, r.CreateReq], r.Attr]:
        """`create` that also leases a new directory to `client` when asked, in the same
        transaction."""

        def run(txn: Txn, req: r.CreateReq) -> r.Attr:
            attr = create(txn, req)
            if _leased(req, attr, client):
                txn.put(u64(attr.ino), client.encode(), db=self.db.leases)
                if self.recall_at_once(txn, req.parent):
                    self._to_recall.add(attr.ino)
            return attr

        return run

    def granted(self, req: r.CreateReq, attr: r.Attr, client: str) -> None:
        """After the commit of `creating`: the lease is in force."""
        if _leased(req, attr, client):
            self._add(attr.ino, Lease(client, time.monotonic() + LEASE_S))
            if attr.ino in self._to_recall:
                self._to_recall.discard(attr.ino)
                self._ask_back(self._held[attr.ino])
            held = self._by_client[client]
            if len(held) > MAX_PER_CLIENT:
                for ino in sorted(held)[: len(held) - MAX_PER_CLIENT]:  # inode numbers grow: the oldest
                    self._ask_back(self._held[ino])

    def _ask_back(self, lease: Lease) -> None:
        if not lease.recalled:
            lease.recalled = True
            lease.expires = min(lease.expires, time.monotonic() + LEASE_S)
            self.recalls += 1
            self.wake_feed()

    def ask_back_where(self, wanted: Callable[[int], bool]) -> None:
        """Ask back every lease on a directory `wanted` says (it will not wait for them)."""
        for ino, lease in list(self._held.items()):
            if wanted(ino):
                self._ask_back(lease)

    @property
    def held(self) -> int:
        return len(self._held)

    async def run(self) -> None:
        """Take back, every LEASE_S, the leases whose holder has stopped following its feed."""
        while True:
            await asyncio.sleep(LEASE_S)
            now = time.monotonic()
            overdue = [ino for ino, lease in self._held.items() if lease.expires < now]
            if overdue:
                try:
                    await self.committer.run(self._delete_rows, overdue)
                except Exception:
                    log.exception("could not take back %d overdue leases; retrying later", len(overdue))
                    continue
                now = time.monotonic()
                renewed = [(ino, lease.client) for ino in overdue
                           if (lease := self._held.get(ino)) is not None and lease.expires >= now]
                if renewed:  # its holder came back while the rows went: they are its again
                    await self.committer.run(self._put_rows, renewed)
                for ino in overdue:
                    if (lease := self._held.get(ino)) is not None and lease.expires < now:
                        self._drop(ino)
                self.expired += len(overdue) - len(renewed)
                log.info("took back %d leases of clients that stopped following the change feed", len(overdue))

    # ---- the holder -------------------------------------------------------------------------------
    def renew(self, client: str) -> None:
        """The holder polled its feed: its leases not being recalled run LEASE_S from now."""
        expires = time.monotonic() + LEASE_S
        for ino in self._by_client.get(client, ()):
            lease = self._held[ino]
            if not lease.recalled:
                lease.expires = expires

    def recalled_of(self, client: str) -> list[int]:
        """What `client` is asked to give back (asked again on every poll until it does)."""
        return sorted(ino for ino in self._by_client.get(client, ()) if self._held[ino].recalled)

    async def release(self, client: str, inodes: Iterable[int]) -> None:
        mine = [ino for ino in inodes if (lease := self._held.get(ino)) is not None and lease.client == client]
        if mine:
            await self.committer.run(self._delete_rows, mine)
            for ino in mine:
                self._drop(ino)

    def _put_rows(self, txn: Txn, leases: list[tuple[int, str]]) -> None:
        for ino, client in leases:
            txn.put(u64(ino), client.encode(), db=self.db.leases)

    def _delete_rows(self, txn: Txn, inodes: list[int]) -> None:
        for ino in inodes:
            txn.delete(u64(ino), db=self.db.leases)

    # ---- everyone else ---------------------------------------------------------------------------
    def held_by_others(self, client: str, inodes: Iterable[int]) -> list[int]:
        """Those of `inodes` another client than `client` holds the lease on."""
        held = self._held
        return [ino for ino in inodes if (lease := held.get(ino)) is not None and lease.client != client]

    async def clear_for(self, client: str, inodes: Iterable[int]) -> None:
        """Return once no other client than `client` holds a lease on any of `inodes`."""
        for ino in inodes:
            lease = self._held.get(ino)
            if lease is not None and lease.client != client:
                await self._recall(ino, lease)

    async def _recall(self, ino: int, lease: Lease) -> None:
        self._ask_back(lease)
        remaining = lease.expires - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(lease.released.wait()), remaining)
        if self._held.get(ino) is lease:
            log.warning("lease on directory %d: client %s did not give it back within %.0f s; taken back",
                        ino, lease.client, LEASE_S)
            self.expired += 1
            await self.committer.run(self._delete_rows, [ino])
            self._drop(ino)

    def forget_removed(self, ino: int) -> None:
        """A directory removed needs no lease (its row went with it, see Namespace.free)."""
        self._drop(ino)


def _leased(req: r.CreateReq, attr: r.Attr, client: str) -> bool:
    """Whether the create asked for, and gets, a lease on the directory it made."""
    return req.lease and bool(client) and stat.S_ISDIR(attr.mode)
