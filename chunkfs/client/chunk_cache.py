"""Chunks this client read or wrote lately: the hottest in memory, more on the local disk.

Keyed by (chunk id, version, block): a whole chunk is block `WHOLE`, and a ranged read
(`read_range`) fetches (from the local disk if the chunk is there, else from a chunkserver) and
keeps only the 64 KiB blocks it needs, each one entry, counted in the same memory bound; a whole
chunk cached replaces its blocks. A version's bytes never change, so a cached entry can only be
unused, never stale: close-to-open is kept by asking for the version the metaserver names at
open. A read looks in memory, then on disk (`disk_cache`), then fetches from a chunkserver;
concurrent readers of a chunk share one lookup. Fetched chunks go to both tiers (the disk store
happens in the background). Chunks this client uploaded go to memory only, into a small share
of it (`UPLOADED_SHARE`) until they are read, so a big copy neither writes itself to the local
disk nor pushes out what readers use; that share also keeps the base of a chunk rewritten in
place (a database's) at hand. Memory is bounded by bytes, evicted by a segmented LRU
(`cache_policy`): recency and frequency both count.

A use is what promotes an entry: reads of one chunk less than `CORRELATED_S` apart count as one
use (a sequential reader takes a chunk in four 1 MiB reads; were each a use, every chunk of a scan
would be promoted, and the protected chunks of the scan would push out of probation the chunks
prefetched ahead of the reader before it gets to them, so each would be fetched again). A
prefetched chunk is unused until its first read.
"""

from __future__ import annotations

import trio

from chunkfs.checksum import BLOCK_SIZE
from chunkfs.client.cache_policy import SegmentedLru
from chunkfs.client.chunk_io import ChunkIO
from chunkfs.client.disk_cache import DiskChunkCache
from chunkfs.protocol import records as r

Key = tuple[int, int, int]  # chunk id, version, block (WHOLE: the whole chunk)
WHOLE = -1
Chunk = bytes | bytearray  # a chunk's stored bytes; a bytearray only once nothing writes to it
ENTRY_OVERHEAD_BYTES = 256
UPLOADED_SHARE = 8  # 1/8 of the memory tier holds uploaded chunks not read since
CORRELATED_S = 1.0  # reads of a chunk this close together are one use


class ChunkCache:
    def __init__(self, io: ChunkIO, max_bytes: int, disk: DiskChunkCache | None = None) -> None:
        self.io = io
        self.max_bytes = max_bytes
        self.disk = disk
        self.hits = self.misses = 0  # hits: in memory; misses: fetched from a chunkserver
        self.block_misses = 0  # ranged reads sent to a chunkserver (counted in misses too)
        self._uploaded: SegmentedLru[Key] = SegmentedLru(max_bytes // UPLOADED_SHARE)
        self._policy: SegmentedLru[Key] = SegmentedLru(max_bytes - max_bytes // UPLOADED_SHARE)
        self._entries: dict[Key, Chunk] = {}
        self._last_use: dict[Key, float] = {}  # entries read since they were added: when
        self._fetching: dict[Key, trio.Event] = {}

    @property
    def probation_bytes(self) -> int:
        """Room for chunks not used again yet (what a reader's prefetched chunks wait in), even
        when the protected segment is full."""
        return self._policy.capacity_bytes - self._policy.protected_bytes_max

    @property
    def size_bytes(self) -> int:
        return self._policy.size_bytes + self._uploaded.size_bytes

    @property
    def disk_hits(self) -> int:
        return self.disk.hits if self.disk is not None else 0

    def has(self, ref: r.ChunkRef) -> bool:
        """The whole chunk is cached in memory, or being fetched."""
        key = (ref.chunk_id, ref.version, WHOLE)
        return key in self._entries or key in self._fetching

    async def read_range(self, ref: r.ChunkRef, servers: dict[str, str], start: int, stop: int) -> bytes:
        """Bytes `start` .. `stop` of `ref`'s stored bytes (fewer past `ref.length`), fetching
        only the blocks they cover (from the local disk or a chunkserver), unless the whole chunk
        is at hand: in memory or being fetched (a prefetch)."""
        stop = min(stop, ref.length)
        if start >= stop:
            return b""
        if self.has(ref):
            return bytes(memoryview(await self.get(ref, servers))[start:stop])
        first, last = start // BLOCK_SIZE, (stop - 1) // BLOCK_SIZE
        blocks = await self._blocks(ref, servers, first, last)
        if len(blocks) == 1:
            return bytes(memoryview(blocks[0])[start - first * BLOCK_SIZE:stop - first * BLOCK_SIZE])
        joined = b"".join(blocks)
        return joined[start - first * BLOCK_SIZE:stop - first * BLOCK_SIZE]

    async def _blocks(self, ref: r.ChunkRef, servers: dict[str, str], first: int, last: int) -> list[Chunk]:
        """Blocks `first` .. `last` of `ref`, from memory or fetched (each run of missing ones in
        one ranged read; a block another reader is fetching is waited for)."""
        found: dict[int, Chunk] = {}
        for _ in range(3):
            missing, waits = [], []
            for block in range(first, last + 1):
                if block in found:
                    continue
                key = (ref.chunk_id, ref.version, block)
                data = self._entries.get(key)
                if data is not None:
                    self._used(key)
                    self.hits += 1
                    found[block] = data
                elif key in self._fetching:
                    waits.append(self._fetching[key])
                else:
                    missing.append(block)
            if missing:
                for run_first, run_last in _runs(missing):
                    found.update(await self._fetch_blocks(ref, servers, run_first, run_last))
            elif waits:
                for event in waits:
                    await event.wait()
            else:
                break
        for block in range(first, last + 1):  # still missing: another reader's fetch failed
            if block not in found:
                found.update(await self._fetch_blocks(ref, servers, block, block))
        return [found[block] for block in range(first, last + 1)]

    async def _fetch_blocks(self, ref: r.ChunkRef, servers: dict[str, str], first: int, last: int
                            ) -> dict[int, Chunk]:
        keys = [(ref.chunk_id, ref.version, block) for block in range(first, last + 1)]
        done = trio.Event()
        for key in keys:
            self._fetching[key] = done
        try:
            data = await self.disk.get_blocks(ref, first, last - first + 1) if self.disk is not None else None
            if data is None:
                self.misses += 1
                self.block_misses += 1
                data = await self.io.fetch_blocks(ref, servers, first, last - first + 1)
            view = memoryview(data)
            blocks: dict[int, Chunk] = {}
            for i, key in enumerate(keys):
                piece = bytes(view[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE])
                blocks[first + i] = piece
                if (ref.chunk_id, ref.version, WHOLE) not in self._entries:
                    self._add(self._policy, key, piece)
                    self._last_use[key] = trio.current_time()
            return blocks
        finally:
            for key in keys:
                if self._fetching.get(key) is done:
                    del self._fetching[key]
            done.set()

    async def prefetch(self, ref: r.ChunkRef, servers: dict[str, str]) -> None:
        """Have `ref` cached for a read soon; not a use of it."""
        await self.get(ref, servers, use=False)

    async def get(self, ref: r.ChunkRef, servers: dict[str, str], use: bool = True) -> Chunk:
        """The whole stored chunk."""
        key = (ref.chunk_id, ref.version, WHOLE)
        for _ in range(3):
            data = self._entries.get(key)
            if data is not None:
                if self._uploaded.remove(key) is not None:
                    self._add(self._policy, key, data)  # read at last: a chunk like any other
                if use:
                    self._used(key)
                self.hits += 1
                return data
            pending = self._fetching.get(key)
            if pending is None:
                break
            await pending.wait()
        done = self._fetching[key] = trio.Event()
        try:
            data = await self.disk.get(ref) if self.disk is not None else None
            if data is None:
                self.misses += 1
                data = await self.io.fetch(ref, servers)
                if self.disk is not None:
                    self.disk.store(ref, data)
            self.put(ref, data)
            if use:
                self._last_use[key] = trio.current_time()
            return data
        finally:
            del self._fetching[key]
            done.set()

    def _used(self, key: Key) -> None:
        """A read of a cached entry: promoted if it is a new use (see CORRELATED_S)."""
        now = trio.current_time()
        last = self._last_use.get(key)
        if last is not None and now - last >= CORRELATED_S:
            self._policy.touch(key)
        if last is None or now - last >= CORRELATED_S:
            self._last_use[key] = now

    def put(self, ref: r.ChunkRef, data: Chunk) -> None:
        key = (ref.chunk_id, ref.version, WHOLE)
        self._uploaded.remove(key)
        self._add(self._policy, key, data)
        self._forget_blocks(ref)

    def _forget_blocks(self, ref: r.ChunkRef) -> None:
        """The whole chunk is cached: its blocks are not needed (and not counted twice)."""
        for block in range((ref.length + BLOCK_SIZE - 1) // BLOCK_SIZE):
            key = (ref.chunk_id, ref.version, block)
            if self._entries.pop(key, None) is not None:
                self._policy.remove(key)
                self._last_use.pop(key, None)

    def put_uploaded(self, ref: r.ChunkRef, data: Chunk) -> None:
        """`data` was just uploaded by this client as `ref` (a bytearray is handed over: nothing
        changes it any more)."""
        key = (ref.chunk_id, ref.version, WHOLE)
        if key not in self._entries:
            self._add(self._uploaded, key, data)
            self._forget_blocks(ref)

    def _add(self, policy: SegmentedLru[Key], key: Key, data: Chunk) -> None:
        self._entries[key] = data
        self._last_use.pop(key, None)
        for victim in policy.add(key, len(data) + ENTRY_OVERHEAD_BYTES):
            del self._entries[victim]
            self._last_use.pop(victim, None)

    async def drop(self) -> None:
        """Forget every cached chunk, in memory and on disk: what `kill -USR1` on a mount does,
        like writing 3 to /proc/sys/vm/drop_caches, so a benchmark can read cold."""
        self._uploaded = SegmentedLru(self._uploaded.capacity_bytes)
        self._policy = SegmentedLru(self._policy.capacity_bytes)
        self._entries.clear()
        self._last_use.clear()
        if self.disk is not None:
            await self.disk.drop()

    def stats(self) -> r.CacheStats:
        disk = self.disk
        return r.CacheStats(memory_hits=self.hits, disk_hits=self.disk_hits, misses=self.misses,
                            memory_bytes=self.size_bytes, memory_capacity_bytes=self.max_bytes,
                            disk_bytes=disk.size_bytes if disk else 0,
                            disk_capacity_bytes=disk.capacity_bytes if disk else 0)


def _runs(blocks: list[int]) -> list[tuple[int, int]]:
    """Sorted block numbers as runs of consecutive ones: [(first, last), ...]."""
    runs: list[tuple[int, int]] = []
    for block in blocks:
        if runs and runs[-1][1] == block - 1:
            runs[-1] = (runs[-1][0], block)
        else:
            runs.append((block, block))
    return runs
