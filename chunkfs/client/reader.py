"""Reads of one open file: chunk by chunk through the chunk cache, with prefetch.

Promises:
- A read sees this client's own writes at once (buffered, uploading or committed): the writer
  is asked first for each chunk it holds; the rest comes from the chunk versions the metaserver
  named at open (close-to-open), from memory, the local disk or a chunkserver (`chunk_cache`).
- A sequential reader gets whole chunks; a read that jumps (a random reader) fetches only the
  64 KiB blocks it covers, verified block by block, cached by block (`ChunkCache.read_range`).
- A corrupt block is never served. Every byte a reader gets was checked against a checksum tied
  to the chunk table's checksum of that version: a whole chunk against that checksum itself
  (`chunk_io`); a block from a chunkserver against the block checksums in the chunk file's
  header, after the chunkserver and then this client checked that the header's chunk checksum
  is the chunk table's, and the chunkserver checked
  the block against them too (a mismatch there is reported, here it is damage on the way: either
  way the next replica is asked, block by block as for chunks). The chunkserver wrote that header
  in one step with block checksums it computed from the very bytes it had just checked against
  the chunk checksum (`ChunkStore.write`), so later damage to a block, to its checksum or to the
  header shows as a mismatch, and a file holding another chunk's data (consistent with its own
  header) is refused by its header's checksum. Blocks from the local disk cache are checked
  against block checksums this client computed from a whole chunk it had verified
  (`disk_cache`). What passes is a block damaged together with its checksum so that they still
  agree: a chance of 2^-64 for random damage.
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

SEQUENTIAL_SLACK_BYTES = 2 << 20  # two of the kernel's read-ahead requests (read_ahead_kb 1024)


class FileReader:
    def __init__(self, file: OpenFile, cache: ChunkCache, nursery: trio.Nursery,
                 prefetch_chunks: int = MAX_WINDOW) -> None:
        """`prefetch_chunks`: most chunks fetched ahead of a sequential reader (0: no prefetch)."""
        self.file, self.cache, self.nursery = file, cache, nursery
        self.prefetch_chunks = prefetch_chunks
        self._last_read_index = -2
        self._sequential_run = 0
        self._next_offset = -1  # where the last read ended (-1: no read yet)
        self._last_continued = False  # the last read continued the one before it
        self._reading_in_order = False  # what `_sequential` answered last

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
        whole = self._sequential(offset, end)
        self._prefetch(first, last, whole)
        parts: list[bytes | memoryview] = []
        for index in range(first, last + 1):
            start = max(offset, index * CHUNK_SIZE) - index * CHUNK_SIZE
            stop = min(end, (index + 1) * CHUNK_SIZE) - index * CHUNK_SIZE
            piece = await self._piece(index, start, stop, whole)
            parts.append(piece)
            if len(piece) < stop - start:
                parts.append(bytes(stop - start - len(piece)))
        return parts

    async def _piece(self, index: int, start: int, stop: int, whole: bool) -> bytes | memoryview:
        """Bytes `start` .. `stop` of chunk `index` as this client sees it (fewer where the chunk
        is shorter: the rest reads as zeros). A stored chunk is fetched whole for a sequential
        reader, else only the blocks the read covers (`ChunkCache.read_range`). Not copied but
        what the writer still buffers (it may change or grow that buffer meanwhile)."""
        writer = self.file.writer
        held = await writer.held_content(index)
        if held is not None and index in writer.dirty:
            return bytes(memoryview(held)[start:stop])
        if held is None:
            ref = writer.stored_ref(index)
            if ref is not None and ref.length and not whole:
                return await self.cache.read_range(ref, self.file.servers, start, stop)
            held = await self.stored_content(index)
        return memoryview(held)[start:stop]

    def _sequential(self, offset: int, end: int) -> bool:
        """Whether this reader reads in order: whole chunks then; else a read fetches only its
        blocks. A read continues the last one when it starts within SEQUENTIAL_SLACK_BYTES of
        its end (the kernel's read-ahead has several reads in flight, which may arrive out of
        order). A reader reads in order from a first read at offset 0, or once two reads in a
        row continued the one before, until a read does not: a random reader lands that close
        to its last read now and then (one read in 256 in a 1 GiB file), and one such read must
        not fetch a whole chunk (with 4 fio jobs, those were a quarter of the bytes sent)."""
        if self._next_offset < 0:
            continues, in_order = False, offset == 0
        else:
            continues = abs(offset - self._next_offset) <= SEQUENTIAL_SLACK_BYTES
            in_order = continues and (self._reading_in_order or self._last_continued)
        self._last_continued, self._reading_in_order = continues, in_order
        self._next_offset = end
        return in_order

    def _prefetch(self, first: int, last: int, sequential: bool) -> None:
        """`sequential`: this read continues the last one (`_sequential`); only such a step into
        the next chunk widens the window: a random reader lands in the chunk after its last one
        now and then (one read in 256 in a 1 GiB file), which must not fetch 4 chunks ahead."""
        if not self.prefetch_chunks:
            return
        at_start = self._last_read_index == -2 and first == 0
        if first == self._last_read_index + 1 and sequential:
            self._sequential_run += 1
        elif first != self._last_read_index or not sequential:
            self._sequential_run = 0
        self._last_read_index = last
        total = (self.file.size + CHUNK_SIZE - 1) // CHUNK_SIZE
        window = prefetch_window(total, self._sequential_run, self.prefetch_chunks, at_start)
        self._fetch_ahead(range(total) if total <= 3 else range(last + 1, min(total, last + 1 + window)))

    def will_need(self, offset: int, end: int) -> None:
        """Fetch the chunks after the one holding `offset`, up to the one holding `end` (at most
        `prefetch_chunks` of them), in the background: a reader that knows what it will read
        tells it up front, as posix_fadvise(WILLNEED), and reads the first chunk at once itself
        (a prefetch of it would race that read and fetch it twice). A ranged GET does: several
        of them at once in one file (an S3 client's parallel download) make no sequential
        reader here, so nothing would be fetched ahead of any of them."""
        if not self.prefetch_chunks or offset >= min(end, self.file.size):
            return
        first, last = offset // CHUNK_SIZE, (min(end, self.file.size) - 1) // CHUNK_SIZE
        self._fetch_ahead(range(first + 1, min(last + 1, first + 1 + self.prefetch_chunks)))

    def _fetch_ahead(self, ahead: range) -> None:
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
