"""What a lock request does to the locks held on one file, as Linux does it: shared by the
metaserver's lock table (every client's locks) and a client's record of its own (which it gives
back to a restarted metaserver, `chunkfs/metaserver/lock_reclaim.py`), so both agree lock for lock.

- POSIX: a lock replaces, merges with and splits the owner's own locks as fcntl does (a range
  unlocked in the middle of a lock leaves two; adjacent or overlapping locks of one type become
  one); it never touches another owner's locks or any flock lock.
- flock: one lock per owner on a file, over the whole file; a new one replaces the owner's old one.
"""

from __future__ import annotations

from dataclasses import dataclass

from chunkfs.protocol import records as r


@dataclass(frozen=True)
class Owner:
    client: str
    number: int  # the client's lock owner (the kernel's lock_owner)


@dataclass
class HeldLock:
    owner: Owner
    flock: bool
    exclusive: bool
    start: int
    end: int  # inclusive; r.OFFSET_MAX: to the end of the file, however long it grows
    pid: int

    def overlaps(self, start: int, end: int) -> bool:
        return self.start <= end and start <= self.end

    def as_request(self, ino: int) -> r.LockReq:
        """The request that takes this lock again (a reclaim)."""
        return r.LockReq(ino=ino, owner=self.owner.number, type=r.F_WRLCK if self.exclusive else r.F_RDLCK,
                         flock=self.flock, start=self.start, end=self.end, pid=self.pid)


def applied(held: list[HeldLock], owner: Owner, req: r.LockReq) -> list[HeldLock]:
    """The locks on a file once `req` of `owner` is granted (conflicts are the caller's to check)."""
    if req.flock:
        kept = [h for h in held if not (h.flock and h.owner == owner)]
        if req.type != r.F_UNLCK:
            kept.append(HeldLock(owner, True, req.type == r.F_WRLCK, 0, r.OFFSET_MAX, req.pid))
        return kept
    kept = []
    mine: list[HeldLock] = []
    for lock in held:
        if lock.flock or lock.owner != owner:
            kept.append(lock)
            continue
        if not lock.overlaps(req.start, req.end):
            mine.append(lock)
            continue
        if lock.start < req.start:  # the part before the new range stays
            mine.append(HeldLock(owner, False, lock.exclusive, lock.start, req.start - 1, lock.pid))
        if lock.end > req.end:  # and the part after it
            mine.append(HeldLock(owner, False, lock.exclusive, req.end + 1, lock.end, lock.pid))
    if req.type != r.F_UNLCK:
        mine.append(HeldLock(owner, False, req.type == r.F_WRLCK, req.start, req.end, req.pid))
    return kept + merged(mine)


def merged(locks: list[HeldLock]) -> list[HeldLock]:
    """One owner's POSIX locks with overlapping or adjacent ranges of one type made one."""
    out: list[HeldLock] = []
    for lock in sorted(locks, key=lambda h: (h.exclusive, h.start)):
        last = out[-1] if out else None
        if last is not None and last.exclusive == lock.exclusive and lock.start <= last.end + 1:
            last.end = max(last.end, lock.end)
        else:
            out.append(lock)
    return out
