"""Reads of one open file: chunk by chunk through the chunk cache, with prefetch.

Promises:
- A read sees this client's own writes at once (buffered, uploading or committed): the writer
  is asked first for each chunk it holds; the rest comes from the chunk versions the metaserver
  named at open (close-to-open), from memory, the local disk or a chunkserver (`chunk_cache`).
- Prefetch (`prefetch.py`) fetches ahead in the background: a file of up to 3 chunks whole at the
  first read, a sequential reader a window growing to `prefetch_chunks`; a prefetch that fails is
  only a hint lost (the read itself reports errors).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from chunkfs import CHUNK_SIZE
from chunkfs.client.chunk_cache import ChunkCache
from chunkfs.client.prefetch import MAX_WINDOW, prefetch_window
from chunkfs.protocol import records as r

if TYPE_CHECKING:
    from chunkfs.client.open_file import OpenFile

log = logging.getLogger(__name__)


class FileReader:
    def __init__(self, file: OpenFile, cache: ChunkCache, nursery: trio.Nursery,
                 prefetch_chunks: int = MAX_WINDOW) -> None:
        """`prefetch_chunks`: most chunks fetched ahead of a sequential reader (0: no prefetch)."""
        self.file, self.cache, self.nursery = file, cache, nursery
        self.prefetch_chunks = prefetch_chunks
        self._last_read_index = -2
        self._sequential_run = 0

    async def stored_content(self, index: int) -> bytes | bytearray:
        """The bytes of chunk `index` as stored (uploaded here or committed; may be shorter
        than a chunk: the rest is zeros)."""
        file = self.file
        ref = file.writer.stored_ref(index)
        if ref is None and index == 0 and file.inline is not None:
            return file.inline
        if ref is None or ref.length == 0:
            return b""
        data = await self.cache.get(ref, file.servers)
        return data if len(data) == ref.length else data[: ref.length]

    async def content(self, index: int) -> bytes | bytearray:
        """The current bytes of chunk `index`: the writer's if it holds them, else as stored."""
        held = await self.file.writer.held_content(index)
        return held if held is not None else await self.stored_content(index)

    async def read(self, offset: int, size: int) -> bytes:
        return b"".join(await self.read_parts(offset, size))  # the one copy of the bytes read

    async def read_parts(self, offset: int, size: int) -> list[bytes | memoryview]:
        """The bytes of `read(offset, size)` as the pieces they are in, without copying them:
        views of stored chunks (nothing changes those), copies of what the writer still
        buffers (it may change or grow that buffer meanwhile), zeros past a short chunk."""
        end = min(offset + size, self.file.size)
        if offset >= end:
            return []
        first, last = offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE
        self._prefetch(first, last)
        parts: list[bytes | memoryview] = []
        for index in range(first, last + 1):
            start = max(offset, index * CHUNK_SIZE) - index * CHUNK_SIZE
            stop = min(end, (index + 1) * CHUNK_SIZE) - index * CHUNK_SIZE
            content = await self.content(index)
            piece: bytes | memoryview = memoryview(content)[start:stop]
            if index in self.file.writer.dirty:
                piece = bytes(piece)
            parts.append(piece)
            if len(piece) < stop - start:
                parts.append(bytes(stop - start - len(piece)))
        return parts

    def _prefetch(self, first: int, last: int) -> None:
        if not self.prefetch_chunks:
            return
        at_start = self._last_read_index == -2 and first == 0
        if first == self._last_read_index + 1:
            self._sequential_run += 1
        elif first != self._last_read_index:
            self._sequential_run = 0
        self._last_read_index = last
        total = (self.file.size + CHUNK_SIZE - 1) // CHUNK_SIZE
        window = prefetch_window(total, self._sequential_run, self.prefetch_chunks, at_start)
        ahead = range(total) if total <= 3 else range(last + 1, min(total, last + 1 + window))
        writer = self.file.writer
        for index in ahead:
            if writer.holds(index):
                continue
            ref = writer.stored_ref(index)
            if ref is not None and ref.length and not self.cache.has(ref):
                self.nursery.start_soon(self._prefetch_one, ref)

    async def _prefetch_one(self, ref: r.ChunkRef) -> None:
        try:
            await self.cache.prefetch(ref, self.file.servers)
        except Exception as exc:  # a prefetch is only a hint; the real read reports errors
            log.debug("prefetch of chunk %d v%d failed: %s", ref.chunk_id, ref.version, exc)
