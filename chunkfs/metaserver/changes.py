"""The change feed: what each mutation changed, for mounts to drop what their kernels cached.

Mounts let the kernel cache names and attributes for a long time (see the mount's timeouts)
because this feed tells them, within a long-poll round trip (and WAKE_GAP_S, 10 ms, when
changes come in a stream), which inodes and directory entries another client changed. The feed
is in memory: a mount that falls behind the buffer, or a metaserver restart, is answered `reset`
and the mount drops everything it can. Each change
is kept as its encoded JSON (with its number and origin, to pick what a client is sent): about
half the memory of the records, and nothing the garbage collector has to walk.

Seqs count from 1 at every start, so a seq alone cannot tell a restart: a mount that comes back
after the new metaserver published as many changes as it had seen would miss every change up
to its seq. So each feed has an `epoch`, a random id drawn at its start and sent with every
reply; a mount that asks with another epoch is answered `reset`, and a mount that gets another
epoch than it had resets itself. It is random, not a counter kept in LMDB, because the database
travels: a standby promoted, or a metaserver restored from a backup, starts from a copy of the
old counter, and the old metaserver may have counted on meanwhile.

A client whose credential has an export of a subtree is told only of what it could see there
(`since`'s `view`: `ExportGuard.visible_changes`): its changes are decoded, cut and encoded again
for it; a change it may see nothing of does not end its wait.

One bad entry can never stop the feed: origins are client ids checked at the edge (and blanked
here if one is not a token), and a change that cannot be encoded is logged and kept as a gap
(its mount then misses one invalidation, as if the change had fallen off the log) instead of
failing every poll that reaches it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable

import msgspec

from chunkfs.protocol import records as r
from chunkfs.protocol.limits import is_token

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(r.Change).decode

# What of the changes a client may be told (all of them: no view)
ChangeView = Callable[[list[r.Change]], list[r.Change]]


class EncodedChangeBatch(msgspec.Struct):
    """`records.ChangeBatch` as sent: its changes already encoded (the same JSON on the wire)."""

    seq: int
    changes: list[msgspec.Raw]
    reset: bool = False
    recalls: list[int] = []
    epoch: str = ""
    locks_lost: bool = False


# A client is answered with changes at most once per WAKE_GAP_S: the first change after a quiet
# spell goes out at once, those that follow within the gap together at its end. A client
# creating files one after another (~1.4 ms each through the Python API) woke every other
# client's poll for each one, and each answer cost the metaserver and that client a round trip:
# with a mount following the feed, the API's creates ran at 575/s against 710-833/s without it
# (1,000 creates, load 2-3 from the runs themselves). Lease recalls and shutdown are answered at once.
WAKE_GAP_S = 0.01
FORGET_CLIENT_S = 3600.0  # a client silent this long is forgotten (its sessions ended long before)


class ChangeFeed:
    """Bounded: `capacity` changes, and the clients heard from within FORGET_CLIENT_S."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.epoch = secrets.token_hex(8)  # this feed's seqs mean something only with it
        self.seq = 0
        self.capacity = capacity
        self._log: deque[tuple[int, str, bytes]] = deque(maxlen=capacity)  # (seq, origin, encoded Change)
        # each open long poll's wake-up -> its client id: a change wakes the polls of the other
        # clients only (a create woke its own mount's poll in here, for nothing, ~5% of its CPU)
        self._waiting: dict[asyncio.Future[None], str] = {}
        self._clients: dict[str, float] = {}  # client id -> when it last asked for changes
        self._polling: dict[str, int] = {}  # client id -> its long polls open now
        self._reports: dict[str, r.ClientReport] = {}  # client id -> what it said of itself last
        self._forget_at = time.monotonic() + FORGET_CLIENT_S
        self.closing = False  # the metaserver is stopping: long polls answer at once
        self._answered_at: dict[str, float] = {}  # client id -> (loop time) when it was last sent changes
        self._holding: set[asyncio.Future[None]] = set()  # polls holding changes back for WAKE_GAP_S

    def close(self) -> None:
        """At shutdown: end every long poll now, so the graceful stop does not wait out its
        time-out for them (a restart is that much shorter for every client)."""
        self.closing = True
        self.wake()

    def seen(self, client_id: str) -> None:
        if client_id:
            now = self._clients[client_id] = time.monotonic()
            if now > self._forget_at:
                self.clients_following(FORGET_CLIENT_S)
                self._forget_at = now + FORGET_CLIENT_S

    def memory(self) -> tuple[int, int]:
        """(changes kept, clients tracked)."""
        return len(self._log), len(self._clients)

    def polling(self, client_id: str, delta: int) -> None:
        if client_id:
            self._polling[client_id] = self._polling.get(client_id, 0) + delta
            if self._polling[client_id] <= 0:
                del self._polling[client_id]

    def last_seen(self, client_id: str) -> float | None:
        """When the client last followed the feed (now while one of its long polls is open):
        a mount's session lives as long as it follows the feed."""
        if client_id in self._polling:
            return time.monotonic()
        return self._clients.get(client_id)

    def report(self, client_id: str, report: r.ClientReport) -> None:
        if client_id:
            self._reports[client_id] = report
            if len(self._reports) > 10_000:
                self.clients()  # drops the reports of mounts gone

    def clients(self, within_s: float = 30.0) -> list[r.ClientStatus]:
        """The mounts following the feed that reported on themselves, with their last report."""
        now = time.monotonic()
        out = []
        for cid, report in list(self._reports.items()):
            seen = self.last_seen(cid)
            if seen is None or now - seen > within_s:
                del self._reports[cid]
                continue
            out.append(r.ClientStatus(id=cid, host=report.host, mountpoint=report.mountpoint,
                                      last_seen_s=round(now - seen, 1), cache=report.cache))
        return out

    def clients_following(self, within_s: float = 60.0) -> int:
        """Mounts that asked for changes lately: each one keeps a long poll open."""
        now = time.monotonic()
        for cid, t in list(self._clients.items()):
            if now - t > within_s:
                del self._clients[cid]
                self._answered_at.pop(cid, None)
        return len(self._clients)

    def publish(self, origin: str, inodes: list[int], entries: list[tuple[int, bytes]]) -> None:
        self.seq += 1
        origin = origin if is_token(origin) else ""
        try:
            encoded = _encode(r.Change(self.seq, origin, inodes, entries))
        except (msgspec.EncodeError, UnicodeEncodeError, OverflowError, TypeError) as exc:
            log.error("change %d cannot be sent (%s); left out of the feed", self.seq, exc)
            encoded = b""  # a gap: the log's numbers stay consecutive
        self._log.append((self.seq, origin, encoded))
        for waiter, client_id in self._waiting.items():
            if not origin or client_id != origin:
                _wake_up(waiter)

    def last_change_not_by(self, client_id: str, scan: int = 1000) -> int:
        """The seq of the newest change another client than `client_id` made, looking at most
        `scan` changes back (past them: the seq just before the oldest one looked at)."""
        for seq, origin, _encoded in itertools.islice(reversed(self._log), scan):
            if origin != client_id:
                return seq
        return max(0, self.seq - scan)

    @staticmethod
    def encode_batch(batch: EncodedChangeBatch) -> bytes:
        """The reply's JSON (its changes were encoded as they were published)."""
        return msgspec.json.encode(batch)

    def wake(self) -> None:
        """End every open long poll's wait (new changes, or a lease recall to hand out)."""
        for waiter in [*self._waiting, *self._holding]:
            _wake_up(waiter)

    def _after(self, seq: int) -> list[tuple[int, str, bytes]]:
        """The changes after `seq`, in order. The log holds consecutive seqs ending at
        `self.seq`, so this costs what it returns, not the length of the log (a scan of the
        whole log on every wake-up made each mutation cost milliseconds under load)."""
        return list(itertools.islice(reversed(self._log), self.seq - seq))[::-1]

    async def since(self, seq: int, wait_s: float, client_id: str = "",
                    recalls: Callable[[], list[int]] = list, epoch: str = "",
                    view: ChangeView | None = None) -> EncodedChangeBatch:
        """Changes after `seq` of `epoch` (empty: the asker knows none yet), waiting up to
        `wait_s` for the first one; `reset` at once if the asker's seq is of another epoch or
        no longer in the log. Changes made by `client_id` itself are left out and do not end
        the wait: a mount's own changes need no invalidation, and waking it for each one cost
        it a round trip per create. `recalls` says which of its leases the client is asked to
        give back; any end the wait. `view`: what of the changes the asker may be told (the
        others are left out as its own are)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        for _ in range(1_000_000):
            if (epoch and epoch != self.epoch) or seq > self.seq or (self._log and seq < self._log[0][0] - 1):
                return EncodedChangeBatch(self.seq, [], reset=True, recalls=recalls(), epoch=self.epoch)
            encoded_changes = [encoded for _seq, origin, encoded in self._after(seq)
                               if encoded and (not client_id or origin != client_id)]
            if view is not None and encoded_changes:
                encoded_changes = [_encode(change) for change in view([_decode(e) for e in encoded_changes])]
            changes = [msgspec.Raw(encoded) for encoded in encoded_changes]
            wanted = recalls()
            hold_until = self._answered_at.get(client_id, 0.0) + WAKE_GAP_S if client_id else 0.0
            if changes and not wanted and not self.closing and loop.time() < hold_until < deadline:
                await self._hold(loop, hold_until)  # sent changes moments ago: let more join these
                continue  # (from the same seq: what came meanwhile joins them)
            seq = self.seq
            remaining = deadline - loop.time()
            if changes or wanted or remaining <= 0 or self.closing:
                break
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiting[waiter] = client_id
            timer = loop.call_at(deadline, _wake_up, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                del self._waiting[waiter]
        if changes and client_id:
            self._answered_at[client_id] = loop.time()
        return EncodedChangeBatch(seq, changes, reset=False, recalls=wanted, epoch=self.epoch)

    async def _hold(self, loop: asyncio.AbstractEventLoop, until: float) -> None:
        """Wait until `until` (loop time), or less if a recall or the shutdown wakes every poll."""
        waiter: asyncio.Future[None] = loop.create_future()
        self._holding.add(waiter)
        timer = loop.call_at(until, _wake_up, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._holding.discard(waiter)


def _wake_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def affected(op: str, req, result) -> tuple[list[int], list[tuple[int, bytes]]]:
    """The inodes whose attributes, and the entries whose targets, a mutation changed."""
    if op in ("reserve_inodes", "trash_purge"):
        return [], []
    if op == "snapshot":
        return [req.parent], [(req.parent, req.name)]
    if op == "trash_restore":
        return [result.parent, result.attr.ino], [(result.parent, result.name)]
    if op == "create":
        return [req.parent], [(req.parent, req.name)]
    if op == "commit" and req.create is not None:
        return [req.ino, req.create.parent], [(req.create.parent, req.create.name)]
    if op == "concat":
        return [req.ino, *req.sources], []
    if op == "link":
        return [req.ino, req.parent], [(req.parent, req.name)]
    if op == "remove":
        return [req.parent, result.ino], [(req.parent, req.name)]
    if op == "rename":
        return [req.old_parent, req.new_parent, *result.moved], [(req.old_parent, req.old_name),
                                                          (req.new_parent, req.new_name)]
    return [req.ino], []
