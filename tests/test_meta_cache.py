"""The mount's cache of names and attributes, and the change feed that keeps it right: what is
answered without a call, and that every way a fact goes stale makes it forgotten."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from chunkfs.metaserver.changes import ChangeFeed
from chunkfs.client.metadata_cache import MetadataCache
from chunkfs.protocol import records as r


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def attr(ino: int, mode: int = 0o100644, size: int = 0) -> r.Attr:
    return r.Attr(ino=ino, mode=mode, nlink=1, uid=0, gid=0, rdev=0, size=size, blocks=0,
                  atime_ns=0, mtime_ns=0, ctime_ns=0)


def cache(**kwargs) -> tuple[MetadataCache, Clock]:
    clock = Clock()
    return MetadataCache(60.0, 60.0, clock=clock, **kwargs), clock


def test_answers_what_it_was_told_until_the_timeout():
    c, clock = cache()
    c.put_entry(1, b"a", attr(5))
    assert c.lookup(1, b"a").ino == 5 and c.attr(5).ino == 5
    assert c.lookup(1, b"b") is None  # unknown, not absent: the directory was never listed
    clock.now += 61
    assert c.lookup(1, b"a") is None and c.attr(5) is None


def test_never_answers_that_a_name_is_missing():
    c, _ = cache()
    c.listed(9, [r.DirEntry(b"x", attr(10))], c.generation)
    assert c.lookup(9, b"x").ino == 10
    assert c.lookup(9, b"y") is None  # made on another client, maybe: close-to-open wants a call


def test_another_clients_change_is_forgotten():
    c, _ = cache()
    c.put_entry(7, b"f", attr(8))
    c.forget_entry(7, b"f")  # another client replaced 7/f
    assert c.lookup(7, b"f") is None and c.attr(8) is None
    c.put_entry(7, b"f", attr(8))
    c.forget_inode(8)
    assert c.attr(8) is None and c.lookup(7, b"f") is None
    c.put_entry(7, b"f", attr(8))
    c.clear()  # the feed was reset
    assert c.lookup(7, b"f") is None


def test_an_answer_fetched_across_a_forget_is_not_kept():
    c, _ = cache()
    generation = c.generation
    c.forget_inode(5)  # arrives while the getattr of 5 is in flight
    c.put_attr(attr(5), generation)
    assert c.attr(5) is None
    c.put_attr(attr(6), generation)  # another inode's answer is still good
    assert c.attr(6).ino == 6
    generation = c.generation
    c.forget_entry(7, b"f")  # while the lookup of 7/f is in flight
    c.put_entry(7, b"f", attr(8), generation)
    assert c.lookup(7, b"f") is None


def test_when_forgets_are_too_many_to_remember_old_answers_are_not_kept():
    c, _ = cache(max_entries=3)
    generation = c.generation
    for ino in range(10, 20):
        c.forget_inode(ino)
    c.put_attr(attr(5), generation)
    assert c.attr(5) is None
    c.put_attr(attr(5), c.generation)
    assert c.attr(5).ino == 5


def test_eviction_bounds_the_cache():
    c, _ = cache(max_entries=3)
    for i in range(5):
        c.put_entry(7, b"f%d" % i, attr(10 + i))
    assert c.lookup(7, b"f0") is None
    assert c.lookup(7, b"f4").ino == 14
    assert len(c._names) <= 3 and len(c._attrs) <= 3


def test_zero_timeouts_cache_nothing():
    c = MetadataCache(0.0, 0.0)
    c.put_entry(7, b"f", attr(8))
    assert c.lookup(7, b"f") is None and c.attr(8) is None


class Decoded:
    """A change feed as a mount receives it: its replies through JSON."""

    def __init__(self, feed: ChangeFeed) -> None:
        self.feed = feed

    async def since(self, *args, **kwargs) -> r.ChangeBatch:
        sent = msgspec.json.encode(await self.feed.since(*args, **kwargs))
        return msgspec.json.decode(sent, type=r.ChangeBatch)

    def publish(self, *args) -> None:
        self.feed.publish(*args)


def test_change_feed_leaves_out_the_askers_own_changes():
    async def scenario():
        feed = Decoded(ChangeFeed(capacity=10))
        for i in range(5):
            feed.publish("a", [i], [])
        batch = await feed.since(0, 0, "b")
        assert batch.seq == 5 and [c.seq for c in batch.changes] == [1, 2, 3, 4, 5]
        batch = await feed.since(2, 0, "a")
        assert batch.seq == 5 and batch.changes == [] and not batch.reset

        async def later():
            # durations, not waits: published while a's poll waits (more likely so), its own
            # change wakes it and it waits again; the answer is the same either way
            await asyncio.sleep(0.02)
            feed.publish("a", [9], [])  # its own: does not end a's wait
            await asyncio.sleep(0.02)
            feed.publish("b", [10], [])

        task = asyncio.get_running_loop().create_task(later())
        batch = await feed.since(5, 5.0, "a")
        await task
        assert batch.seq == 7 and [c.seq for c in batch.changes] == [7]
        for i in range(20):
            feed.publish("b", [i], [])
        assert (await feed.since(3, 0, "a")).reset  # fell out of the buffer

    asyncio.run(scenario())


def test_change_feed_sends_a_stream_of_changes_in_batches_and_loses_none():
    async def scenario():
        feed = Decoded(ChangeFeed())
        feed.publish("a", [1], [])
        assert [c.seq for c in (await feed.since(0, 5.0, "b")).changes] == [1]  # the first: at once

        async def stream():
            for i in range(2, 6):  # while b's next poll holds back, each joins its answer
                feed.publish("a", [i], [])
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(stream())
        batch = await feed.since(1, 5.0, "b")  # answered moments ago: held for WAKE_GAP_S
        await task
        assert [c.seq for c in batch.changes] == [2, 3, 4, 5] and batch.seq == 5
        feed.publish("a", [6], [])
        assert [c.seq for c in (await feed.since(5, 5.0, "b")).changes] == [6]  # after the hold: nothing lost
        assert [c.seq for c in (await feed.since(0, 0, "c")).changes] == [1, 2, 3, 4, 5, 6]  # others: at once

    asyncio.run(scenario())


def test_change_feed_resets_a_mount_that_asks_with_another_epoch():
    """Seqs start from 1 at every metaserver start: only the epoch tells a restarted feed that
    has already published as many changes as the mount had seen."""
    async def scenario():
        before, after = ChangeFeed().epoch, Decoded(ChangeFeed())
        assert before != after.feed.epoch
        for i in range(5):
            after.publish("b", [i], [])
        batch = await after.since(3, 5.0, "a", epoch=before)  # at once, not after the wait
        assert batch.reset and batch.seq == 5 and batch.epoch == after.feed.epoch
        batch = await after.since(3, 0, "a", epoch=after.feed.epoch)
        assert not batch.reset and [c.seq for c in batch.changes] == [4, 5] and batch.epoch == after.feed.epoch
        assert (await after.since(0, 0, "a")).epoch == after.feed.epoch  # a mount's first poll: no epoch yet

    asyncio.run(scenario())


def test_a_leased_layout_is_forgotten_with_its_inode_and_kept_at_most_the_attribute_time_out():
    c, clock = cache()
    layout = r.FileLayout(attr(5), [], {}, inline=b"small", leased=True)
    generation = c.generation
    c.put_layout(layout, generation)
    assert c.layout(5) is layout
    c.forget_inode(5)  # changed elsewhere (the feed) or here
    assert c.layout(5) is None
    c.put_layout(layout, generation)  # fetched before that change: not kept
    assert c.layout(5) is None
    c.put_layout(layout, c.generation)
    clock.now += 61  # replicas may have moved meanwhile: ask again
    assert c.layout(5) is None
    c.put_layout(layout, c.generation)
    c.clear()  # the feed was reset
    assert c.layout(5) is None and not c.has_layouts


def test_a_change_is_answered_once_every_other_holder_of_an_open_lease_applied_it():
    from chunkfs import LEASE_S, OPEN_TRUST_S
    from chunkfs.metaserver.open_leases import OpenLeases

    async def scenario() -> None:
        leases = OpenLeases()
        leases.hold_until -= OPEN_TRUST_S  # past the hold-off after a start
        assert leases.grant("b", 7, seq=1)
        settled = asyncio.ensure_future(leases.settle("a", [7], 2))
        await asyncio.sleep(0.05)
        leases.polled("b", 1)  # b follows its feed, but has not got to change 2
        await asyncio.sleep(0.05)
        assert not settled.done()
        leases.polled("b", 2)
        await asyncio.wait_for(settled, 1)
        await asyncio.wait_for(leases.settle("a", [7], 3), 1)  # b's lease ended with change 2
        leases.grant("a", 8, 3)
        await asyncio.wait_for(leases.settle("a", [8], 4), 1)  # a's own change waits for nobody
        leases.grant("b", 9, 4)
        leases._holders["b"].polled_at -= LEASE_S  # b stopped following its feed: not waited for
        await asyncio.wait_for(leases.settle("a", [9], 5), 1)

    asyncio.run(scenario())


class Clocks:
    """Stands in for the `time` module of the unit under test: its monotonic and wall clocks
    move only when the test moves them, so the hold-offs below are exact, not bands."""

    def __init__(self) -> None:
        self.mono, self.wall = 5_000.0, 1_700_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def sleep_s(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def test_a_clean_stop_tells_the_next_metaserver_when_the_trust_it_gave_ends(tmp_path, monkeypatch):
    """After a crash a new metaserver holds mutations off OPEN_TRUST_S; after a clean stop only
    until the last lease the process before gave is no longer trusted; the record is used once."""
    from chunkfs import OPEN_TRUST_S
    from chunkfs.metaserver import open_leases
    from chunkfs.metaserver.open_leases import OpenLeases

    clocks = Clocks()
    monkeypatch.setattr(open_leases, "time", clocks)
    record = tmp_path / "open-leases-trust-end"
    crashed = OpenLeases()
    crashed.resume(record)  # no record: as after a crash
    assert crashed.hold_until - clocks.mono == OPEN_TRUST_S

    idle = OpenLeases()  # nobody holds a lease: the next one need not wait at all
    idle.save_trust_end(record)
    after_idle = OpenLeases()
    after_idle.resume(record)
    assert after_idle.hold_until == clocks.mono and not record.exists()

    busy = OpenLeases()
    busy.grant("b", 7, seq=1)
    busy._holders["b"].polled_at = clocks.mono - 1.0  # b's last poll came a second ago
    busy.save_trust_end(record)
    clocks.sleep_s(0.5)  # the restart took half a second
    after_busy = OpenLeases()
    after_busy.resume(record)
    assert after_busy.hold_until - clocks.mono == pytest.approx(OPEN_TRUST_S - 1.5, abs=0.002)  # record: ms
    again = OpenLeases()
    again.resume(record)  # used: a crash after that start must wait the whole time again
    assert again.hold_until - clocks.mono == OPEN_TRUST_S

    busy.save_trust_end(record)
    clocks.sleep_s(OPEN_TRUST_S + 60)  # down longer than any mount trusts a lease
    late = OpenLeases()
    late.resume(record)
    assert late.hold_until == clocks.mono
