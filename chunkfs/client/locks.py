"""The file locks of this client (flock and POSIX record locks): asked of the metaserver, which
keeps every client's (`chunkfs/metaserver/locks.py`), so they hold between clients.

An owner is a number this client picks for whoever holds locks: the kernel's lock_owner for the
mount (a process's file table for POSIX locks, an open file for flock), an open file of the API.

Promises:
- A blocking request waits until granted, in long polls of the metaserver (which answers one
  the moment the lock is granted); cancelled (the caller was interrupted: EINTR), its wait is
  withdrawn, and a lock granted in the meantime is given back, so the caller holds nothing new.
- `drop_posix` (a close) asks the metaserver only where this client took a POSIX lock for that
  owner on that file: a close of a file never locked costs no call.
"""

from __future__ import annotations

import itertools
import logging

import trio

from chunkfs.errors import FsError, TransportError
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import MetaClient

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 10.0


class FileLocks:
    def __init__(self, server: MetaClient) -> None:
        self.server = server
        self._wait_ids = itertools.count(1)
        self._posix_owners: set[tuple[int, int]] = set()  # (inode, owner) that took POSIX locks here

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
        if not req.flock:
            if req.type != r.F_UNLCK:
                self._posix_owners.add((req.ino, req.owner))
            elif req.start == 0 and req.end == r.OFFSET_MAX:
                self._posix_owners.discard((req.ino, req.owner))
        return reply

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
        if (ino, owner) in self._posix_owners:
            await self.lock(r.LockReq(ino=ino, owner=owner, type=r.F_UNLCK))

    async def drop_flock(self, ino: int, owner: int) -> None:
        """The flock lock of `owner` on `ino` goes (the last close of its open file)."""
        await self.lock(r.LockReq(ino=ino, owner=owner, type=r.F_UNLCK, flock=True))
