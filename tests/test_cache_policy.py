"""Unit tests of the cache's eviction policy (segmented LRU) and the write-back bound."""

import trio

from chunkfs.mount.cache_policy import SegmentedLru
from chunkfs.mount.write_back import WriteBack


def test_new_keys_go_first_and_a_key_used_twice_outlives_a_scan():
    lru: SegmentedLru[str] = SegmentedLru(capacity_bytes=4)
    for key in "abcd":
        lru.add(key, 1)
    lru.touch("a")  # used again: protected
    evicted = [v for key in "efgh" for v in lru.add(key, 1)]  # a scan of four new keys
    assert evicted == ["b", "c", "d", "e"]
    assert "a" in lru and lru.size_bytes == 4


def test_protected_segment_keeps_its_share_and_sizes_add_up():
    lru: SegmentedLru[int] = SegmentedLru(capacity_bytes=10, protected_share=0.5)
    for key in range(5):
        lru.add(key, 2)
    for key in range(5):
        lru.touch(key)  # only 5 bytes may be protected: the older ones fall back to probation
    assert lru.keys()[:3] == [0, 1, 2]
    assert lru.add(9, 4) == [0, 1]
    assert lru.remove(3) == 2 and lru.remove(3) is None
    assert lru.size_bytes == sum(2 for _ in (2, 4)) + 4
    assert lru.add(10, 100) == [2, 9, 4]  # bigger than everything: it alone stays
    assert lru.keys() == [10]


def test_writers_wait_for_room_and_wake_the_write_back():
    class File:
        def __init__(self, bound):
            self.bound, self.written_back = bound, 0

        async def write_back(self):
            self.written_back += 1
            self.bound.add(-8)
            self.bound.buffering(self, False)

    async def main():
        bound = WriteBack(max_bytes=10)
        file = File(bound)
        bound.add(8)
        bound.buffering(file, True)
        await bound.wait_for_room()  # under the bound: at once
        bound.add(4)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bound.run)
            with trio.fail_after(5):
                await bound.wait_for_room()
            nursery.cancel_scope.cancel()
        assert file.written_back == 1 and bound.dirty_bytes == 4 and bound.waits == 1

    trio.run(main)
