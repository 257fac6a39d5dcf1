"""Unit tests of the mount's data path: cache eviction (segmented LRU), the disk cache, the
prefetch window, the write-back bound, a chunk's write buffer and the chunkserver store's ranged
read."""

import errno
import os

import pytest
import trio
import trio.testing

from chunkfs.client.cache_policy import SegmentedLru
from chunkfs.client.prefetch import prefetch_window
from chunkfs.client.write_back import WriteBack
from chunkfs.client.writer import KEPT_PIECE_MIN_BYTES, DirtyChunk


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


def test_a_chunk_written_in_appended_pieces_holds_what_each_write_said():
    piece = KEPT_PIECE_MIN_BYTES
    a, b, c = (bytes([i]) * piece for i in (1, 2, 3))
    chunk = DirtyChunk(bytearray(), based=False)
    assert chunk.write(0, a, immutable=True) == piece  # kept as it is
    assert chunk.write(piece, memoryview(b), immutable=True) == piece
    assert chunk.length == 2 * piece and chunk.data == a + b  # joined once, when wanted
    assert chunk.write(2 * piece, c, immutable=True) == piece
    assert chunk.write(10, b"xy") == 0  # an overwrite inside: into one buffer
    assert chunk.write(3 * piece, b"tail", immutable=True) == 4  # small: copied, not kept
    expected = bytearray(a + b + c + b"tail")
    expected[10:12] = b"xy"
    assert chunk.data == expected and chunk.length == len(expected)
    assert chunk.write(3 * piece + 4, a, immutable=True) == piece  # appended after a buffer
    assert chunk.data == expected + a


def test_disk_cache_keeps_verified_chunks_across_restarts_and_one_version_per_chunk(tmp_path):
    from chunkfs.checksum import chunk_checksum
    from chunkfs.client.disk_cache import MIN_ENTRY_BYTES, CacheDirError, DiskChunkCache
    from chunkfs.protocol import records as r

    def ref(chunk_id: int, version: int, data: bytes) -> r.ChunkRef:
        return r.ChunkRef(index=0, chunk_id=chunk_id, version=version, length=len(data),
                          checksum=chunk_checksum(data), replicas=[])

    one, two, three = b"1" * 1000, b"2" * 2000, b"3" * 3000

    async def store_all(cache: DiskChunkCache, *items) -> None:
        done_before = cache.stores + cache.dropped_stores
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.run)
            for item in items:
                cache.store(*item)
            with trio.fail_after(10):
                while cache.stores + cache.dropped_stores < done_before + len(items):  # noqa: ASYNC110 (counters)
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    async def main():
        cache = DiskChunkCache(tmp_path / "c", capacity_bytes=2 * MIN_ENTRY_BYTES)
        cache.open()
        with pytest.raises(CacheDirError, match="another running mount"):
            second = DiskChunkCache(tmp_path / "c", 1 << 20)
            import chunkfs.client.disk_cache as dc
            dc.LOCK_ATTEMPTS, saved = 1, dc.LOCK_ATTEMPTS
            try:
                second.open()
            finally:
                dc.LOCK_ATTEMPTS = saved
        await store_all(cache, (ref(1, 1, one), one), (ref(2, 5, two), two))
        assert await cache.get(ref(1, 1, one)) == one
        assert await cache.get(ref(1, 2, one)) is None  # another version: a miss
        await store_all(cache, (ref(1, 3, three), three))  # chunk 1's newer version replaces v1
        assert await cache.get(ref(1, 1, one)) is None
        assert await cache.get(ref(1, 3, three)) == three
        assert cache.size_bytes == len(two) + len(three)
        cache.close()

        reopened = DiskChunkCache(tmp_path / "c", capacity_bytes=2 * MIN_ENTRY_BYTES)
        reopened.open()
        assert await reopened.get(ref(2, 5, two)) == two
        path = tmp_path / "c" / "chunks" / "01" / "1.3"
        path.write_bytes(b"X" + three[1:])  # damaged on disk: never returned
        assert await reopened.get(ref(1, 3, three)) is None and not path.exists()
        await store_all(reopened, (ref(7, 1, one), one), (ref(8, 1, one), one))  # over capacity
        # chunk 2 was read since the restart (protected): one of the new chunks goes (whichever
        # of the writers stored first), not chunk 2
        assert reopened.size_bytes == len(two) + len(one)
        assert [await reopened.get(ref(i, 1, one)) for i in (7, 8)].count(None) == 1
        assert await reopened.get(ref(2, 5, two)) == two
        reopened.close()

    trio.run(main)


def test_disk_cache_serves_blocks_each_checked_and_drops_a_damaged_file(tmp_path):
    """A random reader's blocks come from the cached file (not the whole chunk), each checked
    against the block checksums stored with it; a damaged block is never returned (the file
    goes), and a file of the older layout (no block checksums) is a miss."""
    import os

    from chunkfs.checksum import BLOCK_SIZE, chunk_checksum
    from chunkfs.client.disk_cache import DiskChunkCache
    from chunkfs.protocol import records as r

    data = os.urandom(3 * BLOCK_SIZE + 1000)
    ref = r.ChunkRef(index=0, chunk_id=9, version=2, length=len(data), checksum=chunk_checksum(data), replicas=[])
    old = b"o" * 1000
    old_ref = r.ChunkRef(index=0, chunk_id=10, version=1, length=len(old), checksum=chunk_checksum(old), replicas=[])

    async def main():
        cache = DiskChunkCache(tmp_path / "c", capacity_bytes=16 << 20)
        cache.open()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.run)
            cache.store(ref, data)
            with trio.fail_after(10):
                while not cache.holds(ref):  # noqa: ASYNC110 (the writer's index)
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert await cache.get_blocks(ref, 1, 1) == data[BLOCK_SIZE:2 * BLOCK_SIZE]
        assert await cache.get_blocks(ref, 2, 5) == data[2 * BLOCK_SIZE:]  # clipped to the chunk
        assert await cache.get(ref) == data
        assert cache.size_bytes == len(data)
        path = tmp_path / "c" / "chunks" / "09" / "9.2"
        damaged = bytearray(path.read_bytes())
        damaged[2 * BLOCK_SIZE + 5] ^= 1
        path.write_bytes(damaged)
        assert await cache.get_blocks(ref, 0, 2) == data[:2 * BLOCK_SIZE]  # the blocks still intact
        assert await cache.get_blocks(ref, 2, 1) is None and not path.exists() and not cache.holds(ref)
        cache.close()
        older = tmp_path / "c" / "chunks" / "0a" / "10.1"
        older.parent.mkdir(parents=True, exist_ok=True)
        older.write_bytes(old)  # as a mount before block checksums stored it
        reopened = DiskChunkCache(tmp_path / "c", capacity_bytes=16 << 20)
        reopened.open()
        assert await reopened.get_blocks(old_ref, 0, 1) is None and not older.exists()
        reopened.close()

    trio.run(main)


def test_prefetch_starts_small_at_offset_0_and_is_off_when_asked():
    assert prefetch_window(24, 0, at_start=True) == 1  # maybe a header: one chunk ahead only
    assert [prefetch_window(24, run) for run in (1, 2, 3, 4)] == [4, 8, 16, 16]
    assert prefetch_window(256, 3, max_window=8) == 8  # bounded by the memory cache
    assert prefetch_window(2, 0, max_window=0) == 0 and prefetch_window(24, 3, max_window=0) == 0


def test_a_sequential_scan_does_not_push_out_the_chunks_prefetched_ahead_of_it():
    """A reader takes each chunk in several reads in quick succession: one use, so the scan stays
    on probation and the chunks fetched ahead are still there when it gets to them."""
    from chunkfs import CHUNK_SIZE
    from chunkfs.client.chunk_cache import ChunkCache, ENTRY_OVERHEAD_BYTES
    from chunkfs.protocol import records as r

    class Fetcher:  # stands in for ChunkIO: counts the chunks it was asked for
        def __init__(self):
            self.fetched: list[int] = []

        async def fetch(self, ref, servers):
            self.fetched.append(ref.chunk_id)
            return bytes(CHUNK_SIZE)

    def ref(i: int) -> r.ChunkRef:
        return r.ChunkRef(index=i, chunk_id=i, version=1, length=CHUNK_SIZE, checksum="", replicas=[])

    async def main():
        fetcher = Fetcher()
        cache = ChunkCache(fetcher, 10 * (CHUNK_SIZE + ENTRY_OVERHEAD_BYTES) * 8 // 7)  # 10 chunks
        window = 4
        for i in range(window):
            await cache.prefetch(ref(i), {})
        for i in range(40):
            if i + window < 40:
                await cache.prefetch(ref(i + window), {})
            for _piece in range(4):
                await cache.get(ref(i), {})
        assert fetcher.fetched == list(range(40))  # each chunk once: none was fetched again
        await trio.sleep(1.1)  # a read a while later (on the test's clock) is a use: protected from the next scan
        await cache.get(ref(39), {})
        for i in range(100, 120):
            await cache.get(ref(i), {})
        assert cache.has(ref(39)) and not cache.has(ref(38))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_chunkservers_ranged_read_checks_its_file_against_the_versions_checksum(tmp_path):
    """The store's ranged read answers the blocks, their checksums and its header's chunk
    checksum; asked with the version's checksum from the chunk table, a file whose header holds
    another (another chunk's data, consistent in itself) is refused, never read, and not
    reported as corrupt (the checksum is the client's word)."""
    from chunkfs.checksum import BLOCK_SIZE, block_checksums, chunk_checksum
    from chunkfs.chunkserver.store import ChunkStore, CorruptChunk
    from chunkfs.errors import FsError

    store = ChunkStore(tmp_path)
    data, other = os.urandom(3 * BLOCK_SIZE + 100), os.urandom(3 * BLOCK_SIZE + 100)  # a short last block
    store.write(7, 1, data, chunk_checksum(data))
    store.write(8, 1, other, chunk_checksum(other))
    found = store.read_blocks(7, 1, 2 * BLOCK_SIZE, 4 * BLOCK_SIZE, chunk_checksum(data))
    assert found.data == data[2 * BLOCK_SIZE:]  # clipped to the chunk's end
    assert found.block_sums == block_checksums(data)[2 * 8:] and found.chunk_checksum == chunk_checksum(data)
    store.path(7, 1).write_bytes(store.path(8, 1).read_bytes())  # chunk 8's file under chunk 7's name
    with pytest.raises(FsError) as refused:
        store.read_blocks(7, 1, 0, BLOCK_SIZE, chunk_checksum(data))
    assert refused.value.errno == errno.EBADMSG and not isinstance(refused.value, CorruptChunk)  # not reported
    assert store.read_blocks(7, 1, 0, BLOCK_SIZE).chunk_checksum == chunk_checksum(other)  # the client's check
