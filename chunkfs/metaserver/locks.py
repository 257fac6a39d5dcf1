"""File locks held between clients: flock(2) locks and POSIX record locks (fcntl), as Linux keeps
them on a local filesystem, for every client of the cluster.

An owner is a client id with the client's own number for the lock owner (the kernel's
`lock_owner`: a process's file table for POSIX locks, an open file description for flock).
flock and POSIX locks never conflict with each other (as on Linux); within one kind, two locks
of different owners conflict where their byte ranges overlap and one is exclusive.

Promises:
- POSIX and flock locks replace, split and merge as `chunkfs/lock_ranges.py` says (as Linux);
  a change of a POSIX lock's type is atomic (a refused upgrade keeps the old lock); a flock
  conversion first drops the old lock, as Linux does.
- A blocked request waits in its inode's queue and is granted, in queue order where it can be,
  the moment a conflicting lock goes: the waiter's pending call (a long poll) is answered then.
- A POSIX wait that would close a cycle of owners waiting on each other is EDEADLK at once.
- Everything a client holds or waits for goes when its session ends (`drop_client`).
Locks live in memory: after a restart (or a standby's promotion) the clients give theirs back
(`reclaim`, during the grace period of `lock_reclaim.py`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec

from chunkfs.errors import FsError
from chunkfs.lock_ranges import HeldLock, Owner, applied
from chunkfs.protocol import records as r

log = logging.getLogger(__name__)

F_RDLCK, F_WRLCK, F_UNLCK = r.F_RDLCK, r.F_WRLCK, r.F_UNLCK
WAITER_KEPT_S = 30.0  # a waiter whose client stopped asking for it this long is dropped


@dataclass
class Waiter:
    req: r.LockReq
    owner: Owner
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    asked_at: float = field(default_factory=time.monotonic)  # when its client last asked for it


@dataclass
class InodeLocks:
    held: list[HeldLock] = field(default_factory=list)
    waiters: list[Waiter] = field(default_factory=list)  # in the order they came


class LockTable:
    def __init__(self) -> None:
        self._inodes: dict[int, InodeLocks] = {}
        self._waiters: dict[tuple[str, int], Waiter] = {}  # (client, wait id) -> its wait
        self.granted = 0  # locks granted since start (metrics)
        self.waits = 0  # requests that had to wait

    # ---- requests ---------------------------------------------------------------------------------
    def test(self, client: str, req: r.LockReq) -> r.LockInfo:
        """F_GETLK: the first lock that would block `req`, or one of type F_UNLCK."""
        found = next(self._conflicts(req, Owner(client, req.owner)), None)
        if found is None:
            return r.LockInfo(type=F_UNLCK, start=req.start, end=req.end)
        return self._info(req.ino, found, asker=client)

    def request(self, client: str, req: r.LockReq) -> Waiter | None:
        """Take or drop a lock. None: done; a Waiter: `req` waits (`req.wait`) until its
        `granted` is done. Raises EAGAIN for a conflict without `wait`, EDEADLK for a POSIX wait
        that would deadlock."""
        owner = Owner(client, req.owner)
        if req.wait_id and (client, req.wait_id) in self._waiters:  # the client asks again for its wait
            waiter = self._waiters[(client, req.wait_id)]
            waiter.asked_at = time.monotonic()
            return waiter
        locks = self._inodes.setdefault(req.ino, InodeLocks())
        changed = False
        if req.flock:
            mine = next((h for h in locks.held if h.flock and h.owner == owner), None)
            if mine is not None and mine.exclusive == (req.type == F_WRLCK):
                return None
            if mine is not None:  # a conversion is not atomic: the old lock goes first
                locks.held.remove(mine)
                changed = True
        try:
            if req.type != F_UNLCK and next(self._conflicts(req, owner), None) is not None:
                if not req.wait:
                    raise FsError(errno.EAGAIN, "the file is locked")
                if not req.flock and self._would_deadlock(owner, req):
                    raise FsError(errno.EDEADLK, "waiting for this lock would deadlock")
                waiter = Waiter(req, owner)
                if req.wait_id:
                    self._waiters[(client, req.wait_id)] = waiter
                locks.waiters.append(waiter)
                self.waits += 1
                return waiter
            self._apply(locks, owner, req)
            changed = True
            return None
        finally:
            if changed:
                self._wake(req.ino)

    def cancel(self, client: str, wait_id: int) -> bool:
        """The client's waiting call was interrupted. True if the wait was withdrawn before it
        was granted; False if it was granted (or is unknown here): the client then drops the
        lock it asked for, so an interrupted caller holds nothing new."""
        waiter = self._waiters.pop((client, wait_id), None)
        if waiter is None or waiter.granted.done():
            return False
        self._forget_waiter(waiter)
        return True

    def claimed(self, client: str, wait_id: int) -> None:
        """The client was answered that its wait was granted: the wait is over."""
        self._waiters.pop((client, wait_id), None)

    def reclaim(self, client: str, req: r.LockReq) -> bool:
        """A lock `client` held before a restart, given back to it: False if another lock
        reclaimed before conflicts with it (then it is not granted)."""
        try:
            return self.request(client, msgspec.structs.replace(req, wait=False, wait_id=0)) is None
        except FsError:
            return False

    def drop_client(self, client: str) -> int:
        """Every lock and wait of `client` goes (its session ended). Returns the locks dropped."""
        dropped = 0
        for ino, locks in list(self._inodes.items()):
            before = len(locks.held)
            locks.held = [h for h in locks.held if h.owner.client != client]
            dropped += before - len(locks.held)
            for waiter in [w for w in locks.waiters if w.owner.client == client]:
                self._forget_waiter(waiter)
            if before != len(locks.held):
                self._wake(ino)
            self._prune(ino)
        for key in [key for key in self._waiters if key[0] == client]:
            del self._waiters[key]
        return dropped

    def drop_stale_waiters(self, now: float) -> None:
        """Waits whose client stopped asking for them (it was cut off, or gave up). One granted
        while no call of its client was open, and never asked for since, is given back."""
        for key, waiter in list(self._waiters.items()):
            if now - waiter.asked_at > WAITER_KEPT_S:
                del self._waiters[key]
                if not waiter.granted.done():
                    self._forget_waiter(waiter)
                elif not waiter.granted.cancelled():
                    log.warning("client %s never took the lock it waited for on inode %d; given back",
                                waiter.owner.client, waiter.req.ino)
                    self.request(waiter.owner.client, msgspec.structs.replace(waiter.req, type=F_UNLCK, wait=False,
                                                                          wait_id=0))

    # ---- what is held ----------------------------------------------------------------------------
    def clients(self) -> set[str]:
        return {h.owner.client for locks in self._inodes.values() for h in locks.held} | {
            w.owner.client for locks in self._inodes.values() for w in locks.waiters}

    def count(self) -> int:
        return sum(len(locks.held) for locks in self._inodes.values())

    def waiting(self) -> int:
        return sum(len(locks.waiters) for locks in self._inodes.values())

    def listing(self, ino: int = 0, limit: int = 10_000) -> list[r.LockInfo]:
        """The locks held (and the waits) on `ino`, or on every inode (0), at most `limit`."""
        out: list[r.LockInfo] = []
        for i, locks in (self._inodes.items() if not ino else [(ino, self._inodes.get(ino, InodeLocks()))]):
            out.extend(self._info(i, h) for h in locks.held)
            out.extend(r.LockInfo(ino=i, client=w.owner.client, owner=w.owner.number, flock=w.req.flock,
                                  type=w.req.type, start=w.req.start, end=w.req.end, pid=w.req.pid, waiting=True)
                       for w in locks.waiters)
            if len(out) >= limit:
                break
        return out[:limit]

    # ---- inside ----------------------------------------------------------------------------------
    @staticmethod
    def _info(ino: int, lock: HeldLock, asker: str | None = None) -> r.LockInfo:
        """`asker`: the client asking (F_GETLK); a pid of another client's process means nothing
        to it (the kernel shows a remote holder as pid 0)."""
        pid = lock.pid if asker is None or asker == lock.owner.client else 0
        return r.LockInfo(ino=ino, client=lock.owner.client, owner=lock.owner.number, flock=lock.flock,
                          type=F_WRLCK if lock.exclusive else F_RDLCK, start=lock.start, end=lock.end, pid=pid)

    def _conflicts(self, req: r.LockReq, owner: Owner) -> Iterator[HeldLock]:
        locks = self._inodes.get(req.ino)
        if locks is None:
            return
        exclusive = req.type == F_WRLCK
        for held in locks.held:
            if (held.flock == req.flock and held.owner != owner and (exclusive or held.exclusive)
                    and held.overlaps(req.start, req.end)):
                yield held

    def _would_deadlock(self, owner: Owner, req: r.LockReq) -> bool:
        """Whether some holder that blocks `req` waits (through a chain of waits) for `owner`."""
        seen: set[Owner] = set()
        blockers = [h.owner for h in self._conflicts(req, owner)]
        for _ in range(10_000):
            if not blockers:
                return False
            blocker = blockers.pop()
            if blocker == owner:
                return True
            if blocker in seen:
                continue
            seen.add(blocker)
            for locks in self._inodes.values():
                for waiter in locks.waiters:
                    if waiter.owner == blocker and not waiter.req.flock:
                        blockers.extend(h.owner for h in self._conflicts(waiter.req, blocker))
        return False

    @staticmethod
    def _apply(locks: InodeLocks, owner: Owner, req: r.LockReq) -> None:
        locks.held = applied(locks.held, owner, req)

    def _wake(self, ino: int) -> None:
        """Grant, in queue order, every waiter on `ino` that nothing blocks any more."""
        locks = self._inodes.get(ino)
        if locks is None:
            return
        for waiter in list(locks.waiters):
            if waiter.granted.done():
                locks.waiters.remove(waiter)
                continue
            if next(self._conflicts(waiter.req, waiter.owner), None) is None:
                locks.waiters.remove(waiter)
                if waiter.req.flock:
                    locks.held = [h for h in locks.held if not (h.flock and h.owner == waiter.owner)]
                self._apply(locks, waiter.owner, waiter.req)
                waiter.granted.set_result(None)
                self.granted += 1
        self._prune(ino)

    def _forget_waiter(self, waiter: Waiter) -> None:
        locks = self._inodes.get(waiter.req.ino)
        if locks is not None and waiter in locks.waiters:
            locks.waiters.remove(waiter)
            self._prune(waiter.req.ino)
        if not waiter.granted.done():
            waiter.granted.cancel()

    def _prune(self, ino: int) -> None:
        locks = self._inodes.get(ino)
        if locks is not None and not locks.held and not locks.waiters:
            del self._inodes[ino]
