"""The primary's write-set log on its own: what a standby applies makes the same database, and
the synchronous wait gives up after its time-out."""

from __future__ import annotations

import asyncio
import errno
import threading

import msgspec
import pytest

from chunkfs.errors import FsError
from chunkfs.metaserver.db import GroupCommitter, MetaDB, u64
from chunkfs.metaserver.replication_log import ReplicationLog
from chunkfs.protocol import records as r

decode = msgspec.msgpack.Decoder(r.ReplicationFeed).decode


def dump(db: MetaDB) -> dict:
    """Every table's keys and values, without the replication bookkeeping."""
    with db.read() as txn:
        return {name: [(k, v) for k, v in txn.cursor(db=handle) if not k.startswith(b"replication_")]
                for name, handle in vars(db).items() if isinstance(handle, type(db.counters))}


def apply(db: MetaDB, batches) -> None:
    with db.env.begin(write=True) as txn:
        for batch in batches:
            for table, key, value in batch.ops:
                if value is None:
                    txn.delete(key, db=getattr(db, table))
                else:
                    txn.put(key, value, db=getattr(db, table))


@pytest.fixture
def primary(tmp_path):
    db = MetaDB(tmp_path / "primary")
    with db.env.begin(write=True) as txn:
        ReplicationLog.new_history(txn, db)
    log = ReplicationLog(db, timeout_s=0.3)
    log.standby_seen()  # as the first copy of a standby does: write sets are kept from now on
    committer = GroupCommitter(db, log)
    yield db, log, committer
    committer.stop()
    db.close()


def test_the_write_sets_rebuild_the_same_database(primary, tmp_path):
    db, log, committer = primary

    def fill(txn, n):
        for i in range(n):
            txn.put(u64(i), b"inode %d" % i, db=db.inodes)
            txn.put(u64(i) + b"name", u64(i), db=db.dentries)

    def prune(txn):
        txn.delete(u64(3), db=db.inodes)
        cursor = txn.cursor(db=db.dentries)
        while cursor.set_range(u64(5)) and cursor.key() < u64(8):
            cursor.delete()

    def fails(txn):
        txn.put(u64(99), b"never", db=db.inodes)
        raise FsError(errno.EEXIST, "rolled back, and not replicated")

    async def mutate():
        await committer.run(fill, 10)
        results = await asyncio.gather(committer.run(prune), committer.run(fails), return_exceptions=True)
        assert isinstance(results[1], FsError)
        await committer.run(lambda txn: txn.get(u64(1), db=db.inodes))  # reads only: no batch
        return await log.feed("s1", log.history, 0, False, 0)

    feed = decode(asyncio.run(mutate()))
    assert [b.seq for b in feed.batches] == list(range(1, log.seq + 1)) and feed.primary_seq == log.seq
    copy = MetaDB(tmp_path / "standby")
    apply(copy, feed.batches)
    assert dump(copy) == dump(db)
    assert b"never" not in repr(dump(copy)).encode()
    copy.close()


def test_a_standby_of_another_history_or_too_far_behind_must_copy_again(primary):
    db, _log, _committer = primary
    small = ReplicationLog(db, timeout_s=0.3, keep_bytes=1)  # keeps only the last batch
    small.standby_seen()
    small_committer = GroupCommitter(db, small)

    async def run():
        for i in range(3):
            await small_committer.run(lambda txn, i=i: txn.put(u64(i), b"x" * 100, db=db.inodes))
        for history, since in (("other", 0), (small.history, small.seq + 1), (small.history, 0)):
            with pytest.raises(FsError) as info:
                await small.feed("s", history, since, False, 0)
            assert info.value.errno == errno.ESTALE
        return await small.feed("s", small.history, small.seq - 1, False, 0)

    try:
        assert [b.seq for b in decode(asyncio.run(run())).batches] == [small.seq]
    finally:
        small_committer.stop()


def test_a_silent_synchronous_standby_holds_a_batch_for_the_time_out_only(primary, monkeypatch):
    """Counted, not timed: the first commit waits for the standby's confirmation until the
    time-out (the wait returns unconfirmed), the next one does not wait at all."""
    db, log, committer = primary
    waits: list[tuple[float | None, bool]] = []
    wait_for = log._lock.wait_for

    def counted_wait_for(predicate, timeout=None):
        confirmed = wait_for(predicate, timeout)
        waits.append((timeout, confirmed))
        return confirmed

    monkeypatch.setattr(log._lock, "wait_for", counted_wait_for)

    async def run():
        await log.feed("sync", log.history, log.seq, True, 0)  # caught up: now in sync
        assert log.status()[0].in_sync
        await committer.run(lambda txn: txn.put(b"a", b"1", db=db.inodes))
        assert waits == [(log.timeout_s, False)]  # held for the whole time-out, then let go
        await committer.run(lambda txn: txn.put(b"b", b"2", db=db.inodes))
        assert waits == [(log.timeout_s, False)]  # out of sync: not waited for

    asyncio.run(run())
    assert not log.status()[0].in_sync


class HeldSyncRecord:
    """etcd's sync record (election.SyncPublisher) whose write of a standby's drop waits for the
    test's word."""

    def __init__(self) -> None:
        self.writing, self.written = threading.Event(), threading.Event()

    def joined(self) -> None:
        pass

    def dropped(self) -> bool:
        self.writing.set()
        return self.written.wait(10)


def test_a_standby_falling_behind_still_counts_until_etcd_no_longer_names_it(primary):
    """What the deleter asks (`confirmed`) before acting on a batch outside the database: a
    standby that timed out may still take over until the sync record without it is written, so
    until then a batch it has not confirmed is not on every standby that could take over."""
    db, log, committer = primary
    record = HeldSyncRecord()
    log.sync_record = record

    async def run():
        await log.feed("sync", log.history, log.seq, True, 0)  # caught up: now in sync
        commit = asyncio.ensure_future(committer.run(lambda txn: txn.put(b"a", b"1", db=db.inodes)))
        assert await asyncio.to_thread(record.writing.wait, 10)  # timed out: etcd is being told
        assert not log.status()[0].in_sync
        assert not log.confirmed(log.seq)
        record.written.set()
        await commit
        assert log.confirmed(log.seq)  # etcd no longer names it: it cannot take over

    asyncio.run(run())


def test_without_a_standby_nothing_is_kept_and_one_coming_back_copies_again(primary):
    db, log, committer = primary
    log.recording_until = 0.0  # no standby polled within idle_s

    async def run():
        since = log.seq
        for i in range(3):
            await committer.run(lambda txn, i=i: txn.put(u64(i), b"x" * 1000, db=db.inodes))
        assert log.kept_batches == 0 and log.kept_bytes == 0 and log.seq == since + 3
        with pytest.raises(FsError) as info:  # it missed batches nobody kept
            await log.feed("s", log.history, since, False, 0)
        assert info.value.errno == errno.ESTALE
        assert log.recording  # its poll turned recording on: after a new copy it can follow
        await committer.run(lambda txn: txn.put(b"k", b"v" * 5000, db=db.inodes))
        assert log.kept_batches == 1 and 5000 < log.kept_bytes < 5200
        return decode(await log.feed("s", log.history, log.seq - 1, False, 0))

    assert [b.seq for b in asyncio.run(run()).batches] == [log.seq]
