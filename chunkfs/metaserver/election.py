"""Which metaserver is the primary, decided through etcd (the recipe Patroni uses).

Keys, under the cluster's prefix (`etcd_prefix`, default `/chunkfs`):
- `leader`: the primary's name and address, put under a lease of `etcd_ttl_s` with a transaction
  that succeeds only if the key does not exist (`create_revision == 0`). Its create_revision is
  the primary's *epoch*. The primary renews the lease every third of its TTL.
- `sync`: the replication history the primary writes and the names of the metaservers holding
  every change acknowledged in it (the primary and its synchronous standbys in sync). Only the
  holder of `leader` may change it (the put is guarded by the leader key's create_revision).

Promises:
- Fencing: the primary acknowledges a change only while `holds()`: its lease was last renewed
  less than `etcd_ttl_s - margin_s` before now, counted from when the renewal was *sent*, so it
  ends before etcd can have let the key go (etcd counts from when it *received* it). A primary
  that cannot renew in time (crashed etcd quorum, cut link, a SIGSTOP) stops answering by itself.
- A standby takes the key only if `sync` names it under the history its database has (or no
  `sync` exists yet: a new cluster, or one that ran without etcd), and only if `sync` did not
  change between that check and the take (the same transaction). So the new primary has every
  acknowledged change.
- Before a primary acknowledges a change without a synchronous standby that fell behind, `sync`
  no longer names that standby (`SyncPublisher.drop`); if that cannot be written, the primary
  fences itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec

from chunkfs.protocol.etcd_client import EtcdClient, EtcdUnavailable, KeyValue

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 5
DEFAULT_MARGIN_S = 1.0  # for clocks running at slightly different rates, and the renewal's flight


class LeaderRecord(msgspec.Struct):
    name: str  # the metaserver's advertised address, which also names it in `sync`
    address: str


class SyncState(msgspec.Struct):
    history: str
    primary: str
    standbys: list[str] = []

    def names(self) -> set[str]:
        return {self.primary, *self.standbys}


class Election:
    """One metaserver's side of the election: its campaign, its lease, its fencing check."""

    def __init__(self, etcd: EtcdClient, prefix: str, name: str, address: str, ttl_s: int = DEFAULT_TTL_S,
                 margin_s: float = DEFAULT_MARGIN_S) -> None:
        self.etcd = etcd
        self.leader_key = f"{prefix.rstrip('/')}/leader".encode()
        self.sync_key = f"{prefix.rstrip('/')}/sync".encode()
        self.name, self.address = name, address
        self.ttl_s, self.margin_s = ttl_s, margin_s
        self.lease = 0
        self.epoch = 0  # create_revision of the leader key this metaserver holds; 0: none
        self.valid_until = 0.0  # time.monotonic() until which it may acknowledge
        self.took_at = 0.0  # time.monotonic() when etcd answered that this one took the key

    def holds(self) -> bool:
        """Whether this metaserver may acknowledge a change now (cheap: called for every batch)."""
        return self.epoch != 0 and time.monotonic() < self.valid_until

    def earlier_trust_ends(self, trust_s: float) -> float:
        """time.monotonic() by which no client trusts an answer of an earlier primary any more,
        when a client trusts an answer `trust_s` past sending its call. Every earlier primary
        answered its last call at the latest when it stopped acknowledging (`holds()` false),
        which was `margin_s` before etcd could let its key go (its lease's end, or `resign`'s
        delete), which was before etcd answered this one's campaign."""
        return self.took_at + trust_s - self.margin_s

    def lose(self, why: str) -> None:
        if self.epoch:
            log.error("no longer the primary (epoch %d): %s; nothing more is acknowledged", self.epoch, why)
        self.epoch = 0
        self.valid_until = 0.0

    # ---- reading ------------------------------------------------------------------------------
    async def leader(self) -> tuple[LeaderRecord, int] | None:
        """The primary's record and epoch, or None when no metaserver holds the key."""
        kv = await self.etcd.get(self.leader_key)
        if kv is None:
            return None
        try:
            return msgspec.json.decode(kv.value, type=LeaderRecord), kv.create_revision
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.error("the leader key %s holds %r, not a leader record", self.leader_key.decode(), kv.value[:100])
            return None

    async def sync_state(self) -> tuple[SyncState | None, int]:
        """The sync record and its mod_revision (0: there is none)."""
        kv = await self.etcd.get(self.sync_key)
        if kv is None:
            return None, 0
        try:
            return msgspec.json.decode(kv.value, type=SyncState), kv.mod_revision
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.error("the sync key holds %r, not a sync record", kv.value[:100])
            return None, kv.mod_revision

    @staticmethod
    def eligible(sync: SyncState | None, name: str, history: str) -> bool:
        """Whether a metaserver whose database is of `history` may become the primary."""
        if sync is None:
            return True  # nothing was ever acknowledged under etcd: the first to take the key starts
        return bool(history) and history == sync.history and name in sync.names()

    # ---- the primary's key --------------------------------------------------------------------
    async def campaign(self, history: str) -> bool:
        """Take the leader key if no one holds it and this metaserver is eligible; True if taken."""
        sync, sync_revision = await self.sync_state()
        if not self.eligible(sync, self.name, history):
            return False
        sent = time.monotonic()
        lease = await self.etcd.grant(self.ttl_s)
        record = msgspec.json.encode(LeaderRecord(self.name, self.address))
        kv: KeyValue | None = await self.etcd.create(self.leader_key, record, lease,
                                                     unchanged=(self.sync_key, sync_revision))
        if kv is None:
            await self._revoke(lease)
            return False
        self.took_at = time.monotonic()
        self.lease, self.epoch = lease, kv.create_revision
        self.valid_until = sent + self.ttl_s - self.margin_s
        log.warning("took the leader key: primary from now on (epoch %d)", self.epoch)
        return True

    async def keep(self, giving_up: asyncio.Task[None]) -> None:
        """Renew the lease until it is lost or `giving_up` ends (then the key is given up at
        once); returns fenced (`holds()` False)."""
        while self.holds():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(giving_up), self.ttl_s / 3)
            if giving_up.done():
                await self.resign()
                return
            sent = time.monotonic()
            try:
                ttl = await self.etcd.keep_alive(self.lease)
                leader = await self.leader()
            except EtcdUnavailable as exc:
                log.warning("renewing the leader lease failed: %s (%.1f s left)", exc,
                            self.valid_until - time.monotonic())
                continue
            if ttl <= 0:
                self.lose("the lease expired in etcd")
            elif leader is None or leader[1] != self.epoch:
                self.lose("the leader key was taken away")
            elif self.epoch:
                self.valid_until = sent + ttl - self.margin_s
        self.lose("the lease could not be renewed in time")

    async def resign(self) -> None:
        """Give the key up now (a clean stop, a switchover): a standby need not wait for the TTL."""
        epoch, lease = self.epoch, self.lease
        self.lose("resigned")
        if epoch:
            await asyncio.sleep(self.margin_s)  # as a lapsed lease: see earlier_trust_ends
            try:
                await self.etcd.delete_if_held(self.leader_key, epoch)
            except EtcdUnavailable as exc:
                log.warning("could not delete the leader key (it lapses with its lease): %s", exc)
        await self._revoke(lease)

    async def _revoke(self, lease: int) -> None:
        if lease:
            with contextlib.suppress(EtcdUnavailable):  # else it lapses by itself
                await self.etcd.revoke(lease)

    async def publish_sync(self, state: SyncState) -> bool:
        """Write `sync` while holding the leader key; False (and fenced) when it cannot be."""
        if not self.holds():
            return False
        try:
            done = await self.etcd.put_if_held(self.leader_key, self.epoch, self.sync_key,
                                               msgspec.json.encode(state))
        except EtcdUnavailable as exc:
            self.lose(f"the sync record could not be written: {exc}")
            return False
        if not done:
            self.lose("the leader key was taken away")
        return done


class SyncPublisher:
    """Keeps `sync` naming the metaservers that hold every acknowledged change: this primary and
    the synchronous standbys in sync (`in_sync()`, read when each write is made). Writes are one
    at a time, so the last one written is of the latest state."""

    def __init__(self, election: Election, history: str, in_sync: Callable[[], list[str]],
                 loop: asyncio.AbstractEventLoop, timeout_s: float = 10.0) -> None:
        self.election, self.history, self.in_sync = election, history, in_sync
        self.loop, self.timeout_s = loop, timeout_s
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    async def publish(self) -> bool:
        async with self._lock:
            state = SyncState(self.history, self.election.name, sorted(self.in_sync()))
            done = await self.election.publish_sync(state)
            if done:
                log.info("sync record: %s and standbys %s hold every acknowledged change", state.primary,
                         state.standbys or "(none)")
            return done

    def joined(self) -> None:
        """A standby came in sync (called on the event loop): name it, in the background."""
        task = self.loop.create_task(self.publish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def dropped(self) -> bool:
        """Standbys fell out of sync (their flags already cleared; called from the writer thread,
        which waits): True once `sync` no longer names them, False if that could not be written
        (the primary is fenced then)."""
        future = asyncio.run_coroutine_threadsafe(self.publish(), self.loop)
        try:
            return future.result(self.timeout_s)
        except Exception as exc:  # the time-out, or the write's own failure
            future.cancel()
            self.election.lose(f"the sync record could not be written: {exc!r}")
            return False
