"""Open leases: a mount that opened a file may open it again, and read it if it is inline, without
a call, for as long as the change feed says nobody else changed it.

A mount asks for one with an open (`OpenReq.lease`); the metaserver notes it as a holder of the
file (in memory only). Before a mutation of another client that changed the file is answered,
the metaserver waits until every other holder has applied that change from its feed: a holder's
long poll asking for the changes after seq S says it has applied every change up to S
(`polled`). A holder that stopped following its feed is waited for at most LEASE_S from its last
poll: by then it stopped trusting what it cached (it trusts its leases only OPEN_TRUST_S past
the send of its last answered poll, see the mount's metadata façade). So close-to-open holds: once
the close of the writer returned, an open anywhere sees the new version.

Leases are not kept across a restart: a new metaserver answers no mutation before OPEN_TRUST_S
after its start, by when every mount has stopped trusting the leases of the process before (and
learns of the new epoch on its feed, which empties its caches). A metaserver that stops cleanly
writes down when the last trust it gave ends (`save_trust_end`, once it answers nothing more),
and the next one waits only until then (`resume`): after a restart longer than OPEN_TRUST_S, not
at all. Without that record (a crash) it waits the whole OPEN_TRUST_S. That wait was most of the
pause a copying mount saw across a restart (2.8 s after the new process answered).
With failover through etcd the election bounds it instead, for every earlier primary at once
(that record speaks only of this process's last run, maybe long before another primary's): the
new primary waits until `Election.earlier_trust_ends`, OPEN_TRUST_S less the lease's margin
after it took the key.

Memory: at most MAX_PER_CLIENT leases a client (beyond, its oldest are dropped; the mount keeps
at most half as many layouts, in the order they were granted, so it never trusts a dropped
one), and the holders of files that changed are dropped with the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from chunkfs import LEASE_S, OPEN_TRUST_S
from chunkfs.durable_files import fsync_directory, replace_durably

log = logging.getLogger(__name__)

MAX_PER_CLIENT = 20_000


@dataclass
class Holder:
    """A client holding open leases: which files, and how far it has followed the feed."""

    inodes: OrderedDict[int, None] = field(default_factory=OrderedDict)  # oldest grant first
    applied_seq: int = 0  # it has applied every change of this epoch up to this one
    polled_at: float = field(default_factory=time.monotonic)
    polled: asyncio.Event = field(default_factory=asyncio.Event)


class OpenLeases:
    def __init__(self) -> None:
        self.hold_until = time.monotonic() + OPEN_TRUST_S  # no mutation answered before (a restart)
        self._holders: dict[str, Holder] = {}
        self._by_inode: dict[int, set[str]] = {}
        self.granted = 0
        self.waits = 0  # mutations that waited for a holder to apply them

    def __len__(self) -> int:
        return sum(len(h.inodes) for h in self._holders.values())

    def grant(self, client: str, ino: int, seq: int) -> bool:
        """`client` opened `ino` while the feed stood at `seq`; True if it holds the lease now."""
        if not client:
            return False
        holder = self._holders.get(client)
        if holder is None:
            holder = self._holders[client] = Holder(applied_seq=seq)
        holder.inodes.pop(ino, None)
        holder.inodes[ino] = None
        self._by_inode.setdefault(ino, set()).add(client)
        while len(holder.inodes) > MAX_PER_CLIENT:
            self._drop(next(iter(holder.inodes)), client)
        self.granted += 1
        if self.granted % 1000 == 0:
            self._prune()
        return True

    def polled(self, client: str, since: int) -> None:
        """`client` asks for the changes after `since` of this feed's epoch: it has applied
        every one up to there."""
        holder = self._holders.get(client)
        if holder is None:
            return
        holder.applied_seq = max(holder.applied_seq, since)
        holder.polled_at = time.monotonic()
        holder.polled.set()
        holder.polled = asyncio.Event()

    async def settle(self, origin: str, inodes: list[int], seq: int) -> None:
        """Return once every client but `origin` holding a lease on one of `inodes` has applied
        change `seq` (or stopped following its feed); their leases on `inodes` end."""
        hold_off = self.hold_until - time.monotonic()
        if hold_off > 0:  # the leases of the process before may still be trusted
            await asyncio.sleep(hold_off)
        waiting: set[str] = set()
        for ino in inodes:
            for client in list(self._by_inode.get(ino, ())):
                if client != origin:
                    self._drop(ino, client)
                    waiting.add(client)
        for client in waiting:
            log.debug("change %d of inodes %s waits for client %s to apply it", seq, inodes, client)
            await self._applied(client, seq)

    def trust_end(self) -> float:
        """Wall-clock time by which every mount stopped trusting a lease this process gave: a
        mount trusts its leases OPEN_TRUST_S past the send of its last answered poll, which is
        no later than this process's receipt of that poll (`polled_at`)."""
        now_mono, now_wall = time.monotonic(), time.time()
        last = max((h.polled_at for h in self._holders.values() if h.inodes), default=None)
        return now_wall if last is None else now_wall - (now_mono - last) + OPEN_TRUST_S

    def save_trust_end(self, record: Path) -> None:
        """At a clean stop, once nothing more is answered: write `trust_end` down for `resume`."""
        tmp = record.with_suffix(".tmp")
        with tmp.open("w") as f:
            f.write(f"{self.trust_end():.3f}\n")
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, record)

    def resume(self, record: Path) -> None:
        """At start: with the record of a clean stop, hold mutations off only until the trust the
        process before gave ends; without one, OPEN_TRUST_S (it may have crashed). The record is
        used once: a crash after this start must not find it."""
        try:
            trust_end = float(record.read_text())
        except (OSError, ValueError):
            return
        record.unlink()
        fsync_directory(record.parent)  # gone for good before any lease of this process is given
        remaining = min(max(0.0, trust_end - time.time()), OPEN_TRUST_S)
        self.hold_until = time.monotonic() + remaining

    async def _applied(self, client: str, seq: int) -> None:
        holder = self._holders.get(client)
        while holder is not None and holder.applied_seq < seq:
            remaining = holder.polled_at + LEASE_S - time.monotonic()
            if remaining <= 0:  # gone: it stopped trusting its leases long ago
                self._forget(client)
                return
            self.waits += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(holder.polled.wait()), remaining)
            holder = self._holders.get(client)

    def _drop(self, ino: int, client: str) -> None:
        holders = self._by_inode.get(ino)
        if holders is not None:
            holders.discard(client)
            if not holders:
                del self._by_inode[ino]
        holder = self._holders.get(client)
        if holder is not None:  # kept while it has none: a change may be waiting for it to apply
            holder.inodes.pop(ino, None)

    def _prune(self) -> None:
        """Forget the clients holding nothing that stopped following their feed."""
        now = time.monotonic()
        for client, holder in list(self._holders.items()):
            if not holder.inodes and holder.polled_at + LEASE_S < now:
                del self._holders[client]

    def _forget(self, client: str) -> None:
        holder = self._holders.pop(client, None)
        if holder is not None:
            for ino in list(holder.inodes):
                self._drop(ino, client)
