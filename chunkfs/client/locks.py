"""The file locks of this client (flock and POSIX record locks): asked of the metaserver, which
keeps every client's (`chunkfs/metaserver/locks.py`), so they hold between clients.

An owner is a number this client picks for whoever holds locks: the kernel's lock_owner for the
mount (a process's file table for POSIX locks, an open file for flock), an open file of the API.

Promises:
- A blocking request waits until granted, in long polls of the metaserver (which answers one
  the moment the lock is granted); cancelled (the caller was interrupted: EINTR), its wait is
  withdrawn, and a lock granted in the meantime is given back, so the caller holds nothing new.
- `drop_posix` (a close) asks the metaserver only where this client holds a POSIX lock for that
  owner on that file: a close of a file never locked costs no call.
- This client keeps a record of the locks it holds (as the metaserver does, `lock_ranges.py`).
  After its change feed was cut, or when it answers with a new epoch (a restarted metaserver),
  `keep` gives them back (reclaim, `chunkfs/metaserver/lock_reclaim.py`) or checks that they
  are still held; those lost are reported (`on_lost`), never silently taken for held.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable

import trio

from chunkfs.errors import FsError, TransportError
from chunkfs.lock_ranges import HeldLock, Owner, applied
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import MetaClient

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 10.0
RECLAIM_TRIES = 5  # a reclaim that fails (the metaserver is not quite back) is tried again, a second apart
MINE = ""  # the client of every owner in this client's record: itself


class FileLocks:
    def __init__(self, server: MetaClient) -> None:
        self.server = server
        self._wait_ids = itertools.count(1)
        self.held: dict[int, list[HeldLock]] = {}  # inode -> the locks this client holds on it
        self.epoch = ""  # the feed epoch of the metaserver that granted them

    async def test(self, req: r.LockReq) -> r.LockInfo:
        """F_GETLK: a lock that would block `req`, or one of type F_UNLCK."""
        return await self.server.test_lock(req)

    async def lock(self, req: r.LockReq) -> r.LockReply:
        """Take or drop a lock; with `req.wait`, wait for it. EAGAIN for a conflict without wait, EDEADLK for a POSIX wait that would deadlock."""
        if req.wait:
            req.wait_id = next(self._wait_ids)
        try:
            reply = await self.server.lock(req)
            while not reply.granted:
                reply = await self.server.lock(req)
        except trio.Cancelled:
            if req.wait_id:
                with trio.CancelScope(shield=True):
                    await self._withdraw(req)
            raise
        self._note(req, reply.feed_epoch)
        return reply

    def _note(self, req: r.LockReq, epoch: str) -> None:
        """`req` was granted by the metaserver of feed epoch `epoch`: the record follows it."""
        if epoch and not self.held:
            self.epoch = epoch
        held = applied(self.held.get(req.ino, []), Owner(MINE, req.owner), req)
        if held:
            self.held[req.ino] = held
        else:
            self.held.pop(req.ino, None)

    async def _withdraw(self, req: r.LockReq) -> None:
        """The wait of `req` is over unanswered: withdraw it, and give back the lock if it was
        granted meanwhile."""
        try:
            with trio.fail_after(CANCEL_TIMEOUT_S):
                if not await self.server.cancel_lock(req.wait_id):  # granted meanwhile, or unknown
                    await self.server.lock(r.LockReq(ino=req.ino, owner=req.owner, type=r.F_UNLCK, flock=req.flock,
                                                     start=req.start, end=req.end, pid=req.pid))
        except (FsError, TransportError, trio.TooSlowError) as exc:  # its session's end drops it
            log.warning("inode %d: an interrupted lock wait could not be withdrawn: %s", req.ino, exc)

    async def drop_posix(self, ino: int, owner: int) -> None:
        """Every POSIX lock of `owner` on `ino` goes (a close by its process)."""
        if any(not lock.flock and lock.owner.number == owner for lock in self.held.get(ino, ())):
            await self.lock(r.LockReq(ino=ino, owner=owner, type=r.F_UNLCK))

    async def drop_flock(self, ino: int, owner: int) -> None:
        """The flock lock of `owner` on `ino` goes (the last close of its open file)."""
        await self.lock(r.LockReq(ino=ino, owner=owner, type=r.F_UNLCK, flock=True))

    # ---- after a cut feed or a restart ---------------------------------------------------------------
    async def keep(self, feed_changed: Callable[[str, int], Awaitable[tuple[str, int]]],
                   on_lost: Callable[[set[int]], None]) -> None:
        """For as long as the client runs: each time the change feed is answered again after a
        cut, by a metaserver of another epoch, or saying this client's session was over, the
        locks held here are given back or checked (`reclaim`); `on_lost` is told the inodes of
        those that are not held any more.
        `feed_changed(epoch, cuts)` returns the feed's (epoch, cuts) once they differ."""
        feed: tuple[str, int] = ("", 0)
        while True:
            feed = await feed_changed(*feed)
            if not self.held and not self.epoch:  # never held a lock
                continue
            for attempt in range(RECLAIM_TRIES):
                try:
                    lost = await self.reclaim()
                except (FsError, TransportError) as exc:
                    log.warning("file locks could not be reclaimed (try %d): %s", attempt + 1, exc)
                    await trio.sleep(1)
                    continue
                if lost:
                    on_lost(lost)
                break

    async def reclaim(self) -> set[int]:
        """Give the locks held here to the metaserver (after a restart: it grants them again in
        its grace period) or have it check them (in its epoch: dropped if this client's session
        ended meanwhile). Returns the inodes of locks lost; they leave the record."""
        held = [(ino, lock) for ino, locks in self.held.items() for lock in locks]
        reply = await self.server.reclaim_locks(self.epoch, [lock.as_request(ino) for ino, lock in held])
        lost: set[int] = set()
        for index in reply.lost:
            ino, lock = held[index]
            lost.add(ino)
            locks = self.held.get(ino, [])
            if lock in locks:
                locks.remove(lock)
            if not locks:
                self.held.pop(ino, None)
        self.epoch = reply.epoch
        if lost:
            log.error("file locks on inodes %s were lost (the metaserver restarted or this client's session "
                      "was cut for too long): their files fail with EIO until closed", sorted(lost))
        return lost
