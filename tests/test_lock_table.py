"""The metaserver's lock table alone (no daemons): what fcntl and flock do on Linux, for owners
of several clients."""

from __future__ import annotations

import asyncio
import errno

import pytest

from chunkfs.errors import FsError
from chunkfs.metaserver.locks import LockTable
from chunkfs.protocol import records as r

R, W, U = r.F_RDLCK, r.F_WRLCK, r.F_UNLCK


def req(owner: int, kind: int, start: int = 0, end: int = r.OFFSET_MAX, **more) -> r.LockReq:
    return r.LockReq(ino=7, owner=owner, type=kind, start=start, end=end, **more)


def held(table: LockTable) -> list[tuple[str, int, int, int, int]]:
    return sorted((i.client, i.owner, i.type, i.start, i.end) for i in table.listing(7) if not i.waiting)


def refused(table: LockTable, client: str, request: r.LockReq) -> int:
    with pytest.raises(FsError) as failed:
        table.request(client, request)
    return failed.value.errno


def run(test) -> None:
    asyncio.run(test())


def test_ranges_split_and_merge():
    async def test():
        t = LockTable()
        assert t.request("a", req(1, W, 0, 99)) is None
        assert t.request("a", req(1, U, 40, 59)) is None
        assert held(t) == [("a", 1, W, 0, 39), ("a", 1, W, 60, 99)]
        assert t.request("b", req(1, W, 40, 59)) is None
        assert refused(t, "b", req(1, W, 39, 40)) == errno.EAGAIN
    run(test)


def test_adjacent_locks_of_one_type_merge_and_a_type_change_splits():
    async def test():
        t = LockTable()
        t.request("a", req(1, R, 0, 9))
        t.request("a", req(1, R, 10, 19))
        assert held(t) == [("a", 1, R, 0, 19)]
        t.request("a", req(1, W, 5, 9))  # an upgrade of the middle
        assert held(t) == [("a", 1, R, 0, 4), ("a", 1, R, 10, 19), ("a", 1, W, 5, 9)]
        t.request("a", req(1, U))
        assert held(t) == []
    run(test)


def test_a_refused_upgrade_keeps_the_old_lock_but_a_flock_conversion_does_not():
    async def test():
        t = LockTable()
        t.request("a", req(1, R))
        t.request("b", req(1, R))
        assert refused(t, "a", req(1, W)) == errno.EAGAIN
        assert ("a", 1, R, 0, r.OFFSET_MAX) in held(t)  # POSIX: atomic
        t.request("a", req(2, R, flock=True))
        t.request("b", req(2, R, flock=True))
        assert refused(t, "a", req(2, W, flock=True)) == errno.EAGAIN
        assert [h for h in t.listing(7) if h.flock and h.client == "a"] == []  # flock: dropped first, as Linux
    run(test)


def test_flock_and_posix_locks_do_not_conflict():
    async def test():
        t = LockTable()
        t.request("a", req(1, W, flock=True))
        assert t.request("b", req(1, W)) is None
        assert t.test("b", req(2, W, flock=True)).type == W
    run(test)


def test_a_waiter_is_granted_when_the_holder_unlocks():
    async def test():
        t = LockTable()
        t.request("a", req(1, W))
        waiter = t.request("b", req(1, W, 10, 20, wait=True, wait_id=5))
        assert waiter is not None and not waiter.granted.done()
        assert t.waiting() == 1
        t.request("a", req(1, U, 0, 9))  # not enough
        assert not waiter.granted.done()
        t.request("a", req(1, U))
        assert waiter.granted.done() and ("b", 1, W, 10, 20) in held(t)
        assert t.request("b", req(1, W, 10, 20, wait=True, wait_id=5)) is waiter  # asked again: granted
    run(test)


def test_a_wait_closing_a_cycle_is_edeadlk_and_a_cancelled_wait_gets_nothing():
    async def test():
        t = LockTable()
        t.request("a", req(1, W, 0, 0))
        t.request("b", req(1, W, 1, 1))
        assert t.request("a", req(1, W, 1, 1, wait=True, wait_id=1)) is not None
        assert refused(t, "b", req(1, W, 0, 0, wait=True, wait_id=2)) == errno.EDEADLK
        assert t.cancel("a", 1) is True  # withdrawn before it was granted
        t.request("b", req(1, U))
        assert held(t) == [("a", 1, W, 0, 0)]
    run(test)


def test_the_locks_of_a_client_whose_session_ended_go_and_wake_waiters():
    async def test():
        t = LockTable()
        t.request("a", req(1, W))
        t.request("a", req(2, R, flock=True))
        waiter = t.request("b", req(1, R, wait=True, wait_id=1))
        assert t.drop_client("a") == 2
        assert waiter is not None and waiter.granted.done()
        assert held(t) == [("b", 1, R, 0, r.OFFSET_MAX)]
    run(test)


def test_getlk_names_the_conflict_with_a_pid_only_for_the_same_client():
    async def test():
        t = LockTable()
        t.request("a", req(1, W, 0, 99, pid=42))
        assert (t.test("a", req(2, R, 50, 50)).pid, t.test("b", req(2, R, 50, 50)).pid) == (42, 0)
        assert t.test("b", req(2, R, 100, 200)).type == U
    run(test)


def test_lock_records_refuse_what_the_kernel_cannot_send():
    with pytest.raises(FsError) as bad:
        r.LockReq(ino=1, owner=1, type=W, start=10, end=9)
    assert bad.value.errno == errno.EINVAL
    with pytest.raises(FsError) as too_big:
        r.LockReq(ino=1, owner=2**64, type=W)
    assert too_big.value.errno == errno.EINVAL


# ---- after a restart: reclaim (lock_reclaim.py) --------------------------------------------------------
def reclaims(tmp_path, grace_s: float, test) -> None:
    """Runs `test(start)`, where `start()` makes the lock state of a metaserver starting on the
    database in tmp_path (the records of clients that held locks survive; the table does not)."""
    from chunkfs.metaserver.db import GroupCommitter, MetaDB
    from chunkfs.metaserver.lock_reclaim import LockReclaim

    db = MetaDB(tmp_path / "meta", map_size_bytes=1 << 24)
    committer = GroupCommitter(db)
    starts = iter(range(1, 100))

    def start() -> tuple[LockTable, LockReclaim]:
        table = LockTable()
        return table, LockReclaim(db, committer, table, f"epoch{next(starts)}", grace_s)

    try:
        asyncio.run(test(start))
    finally:
        committer.stop()
        db.close()


def test_a_restart_gives_the_holders_their_locks_back_first(tmp_path):
    async def test(start):
        table, reclaim = start()
        assert not reclaim.in_grace()  # nobody ever held a lock: no grace at all
        for client, lock in (("a", req(1, W, 0, 99)), ("b", req(2, R, 200, 299))):
            await reclaim.record(client)
            assert table.request(client, lock) is None
        await reclaim.record("c")  # held a lock once, holds none now
        table, reclaim = start()  # a restart: the table is empty
        assert reclaim.in_grace()
        waiting = asyncio.create_task(reclaim.grace_over())  # a new lock waits...
        await asyncio.sleep(0)
        reply = await reclaim.reclaim("a", r.LockReclaimReq("epoch1", [req(1, W, 0, 99)]))
        assert reply == r.LockReclaimReply(lost=[], epoch="epoch2")
        await reclaim.reclaim("b", r.LockReclaimReq("epoch1", [req(2, R, 200, 299), req(2, W, 50, 50)]))
        assert not waiting.done()  # ...until c said it has nothing either
        assert (await reclaim.reclaim("c", r.LockReclaimReq("epoch1", []))).lost == []
        await asyncio.wait_for(waiting, 5)
        assert held(table) == [("a", 1, W, 0, 99), ("b", 2, R, 200, 299)]  # b's second one conflicted: lost
        late = await reclaim.reclaim("d", r.LockReclaimReq("epoch1", [req(4, R, 500, 500)]))
        assert late.lost == [0]  # after the grace: lost

    reclaims(tmp_path, 30.0, test)


def test_the_grace_ends_for_a_holder_that_never_comes_back(tmp_path):
    async def test(start):
        _table, reclaim = start()
        await reclaim.record("gone")
        _table, reclaim = start()
        assert reclaim.in_grace()
        await asyncio.wait_for(reclaim.grace_over(), 5)  # its grace_s: 0.2
        assert not reclaim.in_grace()

    reclaims(tmp_path, 0.2, test)


def test_a_client_whose_session_ended_is_told_its_locks_are_lost(tmp_path):
    async def test(start):
        table, reclaim = start()
        await reclaim.record("cut")
        assert table.request("cut", req(1, W)) is None
        checked = await reclaim.reclaim("cut", r.LockReclaimReq("epoch1", [req(1, W)]))
        assert checked.lost == []  # still held
        runner = asyncio.create_task(reclaim.run(lambda client: client == "cut", 0.05))
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                if not table.count():
                    break
        finally:
            runner.cancel()
        assert table.count() == 0
        assert table.request("other", req(2, W)) is None
        told = await reclaim.reclaim("cut", r.LockReclaimReq("epoch1", [req(1, W)]))
        assert told.lost == [0]
        assert (await reclaim.reclaim("cut", r.LockReclaimReq("epoch1", []))).lost == []  # told once

    reclaims(tmp_path, 30.0, test)
