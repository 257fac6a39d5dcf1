"""Recently used chunks in memory, keyed by (chunk id, version).

A version's bytes never change, so a cached entry can only be unused, never stale: close-to-open
is kept by asking for the version the metaserver names at open. Concurrent readers of a chunk
share one fetch. Bounded by bytes; least recently used goes first.
"""

from __future__ import annotations

from collections import OrderedDict

import trio

from chunkfs.mount.chunk_io import ChunkIO
from chunkfs.protocol import records as r

Key = tuple[int, int]


class ChunkCache:
    def __init__(self, io: ChunkIO, max_bytes: int) -> None:
        self.io = io
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self.hits = self.misses = 0
        self._entries: OrderedDict[Key, bytes] = OrderedDict()
        self._fetching: dict[Key, trio.Event] = {}

    def has(self, ref: r.ChunkRef) -> bool:
        key = (ref.chunk_id, ref.version)
        return key in self._entries or key in self._fetching

    async def get(self, ref: r.ChunkRef, servers: dict[str, str]) -> bytes:
        key = (ref.chunk_id, ref.version)
        for _ in range(3):
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return data
            pending = self._fetching.get(key)
            if pending is None:
                break
            await pending.wait()
        self.misses += 1
        done = self._fetching[key] = trio.Event()
        try:
            data = await self.io.fetch(ref, servers)
            self.put(ref, data)
            return data
        finally:
            del self._fetching[key]
            done.set()

    def put(self, ref: r.ChunkRef, data: bytes) -> None:
        key = (ref.chunk_id, ref.version)
        if key in self._entries:
            self.size_bytes -= len(self._entries.pop(key))
        self._entries[key] = data
        self.size_bytes += len(data)
        while self.size_bytes > self.max_bytes and len(self._entries) > 1:
            _key, old = self._entries.popitem(last=False)
            self.size_bytes -= len(old)
