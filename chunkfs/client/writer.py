"""Writes of one open file: buffering, parallel chunk uploads, inline small files, the commit.

Promises:
- Writes are buffered a chunk at a time; a chunk that fills up is uploaded in the background
  (at most `max_uploads` per file at once) to `goal` replicas in parallel, a spare taking over
  from a replica that fails (`chunk_io`). A chunk dedup looks up first (`content_finder`: a
  window of chunks, of every file, in one call) is uploaded only if the cluster does not hold
  its content; up to `max_lookups` per file are looked up at once (two windows: one fills
  while the other is asked about; at least one, or a writer could wait for a window it fills). Buffered and uploading bytes count against the
  client's `WriteBack` bound: a write waits while the client is over it, and `write_back()`
  starts uploading partly written chunks when the client needs the room.
- `flush()` (close, fsync) returns only when every buffered chunk is stored on the disks of its
  replicas and the metaserver has durably committed the new chunk versions, size and mtime (and
  the file's create, if it was made in a leased directory and is still pending: the metadata
  façade attaches it). An upload that failed makes the next write or flush fail (EIO, ENOSPC).
- A file of at most INLINE_MAX_BYTES whose content is all here is committed inline: its bytes
  travel in the commit itself, so a small file costs one call and no chunk upload.
- `flush(behind=True)` (a close, with write-behind on) of such a file made here in a directory
  leased here does not wait: its commit is queued (`write_behind.py`) and the file is answered
  as it will be; the next durability point (fsync, fsyncdir, the time bound) makes it durable.
- A write that grows a file past a directory quota's hard limit on bytes fails with EDQUOT
  (nothing of it is taken); a commit the quota refuses drops what it carried. The limit is asked for once the file grows past its first chunk (a
  small file costs no call) and again when a write would pass it; the metaserver's check at
  the commit is the one that counts (another writer may have used the room meanwhile).
- What this writer holds (buffered or uploading) is what readers of the file see (`held_content`).
"""

from __future__ import annotations

import errno
import logging
import time
from typing import TYPE_CHECKING

import msgspec
import trio

from chunkfs import CHUNK_SIZE, INLINE_MAX_BYTES
from chunkfs.client.chunk_cache import ChunkCache
from chunkfs.client.chunk_io import ChunkIO, PendingSlot
from chunkfs.client.content_finder import WINDOW as LOOKUP_WINDOW, Ask
from chunkfs.client.metadata import Metadata
from chunkfs.client.write_back import WriteBack
from chunkfs.errors import FsError
from chunkfs.protocol import records as r

if TYPE_CHECKING:
    from chunkfs.client.open_file import OpenFile

log = logging.getLogger(__name__)

KEPT_PIECE_MIN_BYTES = 64 * 1024  # smaller appended writes are copied into the chunk's buffer


class DirtyChunk:
    """A chunk being written. Until `based`, only bytes [0, length) were written (a sequential
    writer from the chunk's start); the old content is merged in only when it is needed.
    Its content is `data` (bytes when the chunk was written whole in one write, see
    `FileWriter.write`: uploaded as it is, turned into a bytearray only if written to again)
    and then the pieces appended since: writes that each went on where the content ended, held
    as the caller's bytes (nothing changes them) and joined once, when the bytes are wanted in
    one piece (the upload, a reader), so a chunk written in 1 MiB FUSE writes is copied once
    here, not once per write and again for the upload."""

    def __init__(self, data: bytearray | bytes, based: bool) -> None:
        self._data = data
        self._pieces: list[bytes | memoryview] = []
        self.length = len(data)
        self.based = based

    @property
    def data(self) -> bytearray | bytes:
        if self._pieces:
            if not self._data:
                self._data = b"".join(self._pieces)
            else:  # in place, so a reader of a chunk being appended to costs no copy of all of it each time
                if isinstance(self._data, bytes):
                    self._data = bytearray(self._data)
                for piece in self._pieces:
                    self._data += piece
            self._pieces.clear()
        return self._data

    @data.setter
    def data(self, value: bytearray | bytes) -> None:
        self._pieces.clear()
        self._data = value
        self.length = len(value)

    def write(self, offset: int, piece: bytes | memoryview, immutable: bool = False) -> int:
        """Returns by how many bytes the buffer grew. `immutable`: nothing changes `piece`'s bytes
        (bytes, or a view of bytes), so a piece that goes on where the content ends is kept as it
        is (if it is not so small that holding it would cost more than copying it)."""
        before = self.length
        if immutable and offset == before and len(piece) >= KEPT_PIECE_MIN_BYTES:
            self._pieces.append(piece)
            self.length += len(piece)
            return len(piece)
        data = self.data
        if isinstance(data, bytes):
            data = self._data = bytearray(data)
        end = offset + len(piece)
        if offset > before:
            data.extend(bytes(offset - before))
        data[offset:end] = piece
        self.length = len(data)
        return self.length - before

    def complete(self) -> bool:
        return self.length == CHUNK_SIZE


def _whole_chunk(data: bytes | bytearray | memoryview, view: memoryview, pos: int) -> bytes:
    """The chunk at `pos` of a write that covers it whole, as bytes that nothing changes: `data`
    itself if it is exactly that chunk (no copy: `chunkfs put`, an API write of a chunk), else
    one copy (the caller may reuse its buffer), which is also the copy the upload needs."""
    if type(data) is bytes and pos == 0 and len(data) == CHUNK_SIZE:
        return data
    return bytes(view[pos : pos + CHUNK_SIZE])


class FileWriter:
    def __init__(self, file: OpenFile, meta: Metadata, io: ChunkIO, cache: ChunkCache, nursery: trio.Nursery,
                 write_back: WriteBack, max_uploads: int = 4, max_lookups: int = 2 * LOOKUP_WINDOW) -> None:
        self.file = file
        self.meta, self.io, self.cache, self.nursery = meta, io, cache, nursery
        self.write_back_bound = write_back
        self.lock = trio.Lock()
        self.dirty: dict[int, DirtyChunk] = {}
        self.uploading: dict[int, bytes | bytearray] = {}
        self.uploaded: dict[int, r.ChunkRef] = {}
        self._upload_order: dict[int, int] = {}  # index -> the write number of what `uploaded` holds
        self._uploads_started = 0  # numbers the uploads in write order: the newest write of a chunk wins
        self.superseded: list[r.ChunkRef] = []
        self.error: BaseException | None = None
        self._upload_slots = trio.Semaphore(max_uploads)  # chunks sending bytes at once
        # chunks being looked up (dedup) at once, and any upload after
        self._lookup_slots = trio.Semaphore(max(max_lookups, io.finder.window))
        self._inflight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._size_limit: int | None = None  # under the quotas above the file (-1: none), once asked

    # ---- what it holds ------------------------------------------------------------------------
    @property
    def has_data(self) -> bool:
        """Anything written here and not committed yet (buffered, uploading or uploaded)."""
        return bool(self.dirty or self.uploading or self.uploaded)

    @property
    def buffered_bytes(self) -> int:
        return sum(d.length for d in self.dirty.values())

    def holds(self, index: int) -> bool:
        """Chunk `index` is buffered or uploading here: its stored version is not its content."""
        return index in self.dirty or index in self.uploading

    def stored_ref(self, index: int) -> r.ChunkRef | None:
        """The newest stored version of chunk `index`: uploaded here, else committed."""
        return self.uploaded.get(index) or self.file.chunks.get(index)

    async def held_content(self, index: int) -> bytes | bytearray | None:
        """The bytes of chunk `index` if this writer holds them (None: read what is stored)."""
        dirty = self.dirty.get(index)
        if dirty is not None:
            await self._ensure_based(index, dirty)
            return dirty.data
        return self.uploading.get(index)

    def _stored_length(self, index: int) -> int:
        if index in self.uploading:
            return len(self.uploading[index])
        ref = self.stored_ref(index)
        if ref is None and index == 0 and self.file.inline is not None:
            return len(self.file.inline)
        return ref.length if ref else 0

    async def _ensure_based(self, index: int, dirty: DirtyChunk) -> None:
        """Merge the chunk's old content under what was written of it, once it is needed."""
        if dirty.based:
            return
        if self._stored_length(index) > dirty.length:
            snapshot = self.uploading.get(index)
            base = bytearray(snapshot if snapshot is not None else await self.file.reader.stored_content(index))
            if dirty.based:  # merged by another caller meanwhile
                return
            base[: dirty.length] = dirty.data
            self.write_back_bound.add(len(base) - dirty.length)
            dirty.data = base
        dirty.based = True

    # ---- writes ---------------------------------------------------------------------------
    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        end = offset + len(data)
        if end > max(self.file.size, CHUNK_SIZE):
            await self._check_quota(end)
        await self.write_back_bound.wait_for_room()
        file = self.file
        async with self.lock:
            self._raise_pending_error()
            view = memoryview(data)
            immutable = isinstance(data, bytes)  # FUSE's: its pieces are kept, not copied (DirtyChunk)
            pos = 0
            while pos < len(view):
                index, within = divmod(offset + pos, CHUNK_SIZE)
                n = min(CHUNK_SIZE - within, len(view) - pos)
                dirty = self.dirty.get(index)
                if dirty is None and n == CHUNK_SIZE:
                    dirty = self.dirty[index] = DirtyChunk(_whole_chunk(data, view, pos), based=True)
                    self.write_back_bound.add(CHUNK_SIZE)
                else:
                    if dirty is None:
                        dirty = self.dirty[index] = DirtyChunk(bytearray(), based=False)
                    if not dirty.based and within > dirty.length:
                        await self._ensure_based(index, dirty)
                    piece = data if isinstance(data, bytes) and pos == 0 and n == len(view) else view[pos : pos + n]
                    self.write_back_bound.add(dirty.write(within, piece, immutable))
                pos += n
                if dirty.complete():
                    await self._start_upload(index)
            file.size = max(file.size, offset + len(view))
            file.modified = True
            file.mtime_ns = time.time_ns()
            self.write_back_bound.buffering(self, bool(self.dirty))
        return len(view)

    async def write_back(self) -> None:
        """Start uploading every buffered chunk, partly written ones too (the client needs room)."""
        async with self.lock:
            for index in sorted(self.dirty):
                await self._start_upload(index)
            self.write_back_bound.buffering(self, bool(self.dirty))

    async def _check_quota(self, end: int) -> None:
        """EDQUOT if growing the file to `end` bytes passes a quota's hard limit on bytes."""
        if self._size_limit is not None and (self._size_limit < 0 or end <= self._size_limit):
            return
        self._size_limit = await self.meta.quota_size_limit(self.file.ino)
        if 0 <= self._size_limit < end:
            raise FsError(errno.EDQUOT, f"a directory quota lets inode {self.file.ino} grow to "
                                        f"{self._size_limit} bytes, not {end}")

    def drop_buffers(self) -> None:
        """The file is being forgotten: what it still buffers (after a failed flush) is lost,
        and no longer counts against the client's bound."""
        self.write_back_bound.add(-self.buffered_bytes)
        self.dirty.clear()
        self.write_back_bound.buffering(self, False)

    async def _start_upload(self, index: int) -> None:
        dirty = self.dirty[index]
        await self._ensure_based(index, dirty)
        existing = self.stored_ref(index)
        slot = PendingSlot(self.io.reservations, existing.chunk_id if existing else None, self.file.attr.goal)
        looked_up = self.io.looks_up(dirty.length, not self.file.attr.no_dedup)
        if not looked_up:
            await slot.take()  # here, so a full cluster's ENOSPC fails this write itself
        gate = self._lookup_slots if looked_up else self._upload_slots
        await gate.acquire()
        del self.dirty[index]
        # handed over as bytes (the DirtyChunk is gone, nothing writes to it again): the upload
        # sends bytes as they are, so a chunk in flight is held once, as the bound counts it
        snapshot = dirty.data if isinstance(dirty.data, bytes) else bytes(dirty.data)
        self.uploading[index] = snapshot
        ask = self.io.finder.ask(snapshot, self.nursery) if looked_up else None
        if self._inflight == 0:
            self._idle = trio.Event()
        self._inflight += 1
        self._uploads_started += 1
        self.nursery.start_soon(self._upload, index, snapshot, slot, ask, gate, self._uploads_started)

    async def _store(self, index: int, snapshot: bytes | bytearray, slot: PendingSlot, ask: Ask | None
                     ) -> r.ChunkRef:
        """Chunk `index` holding `snapshot`, durable: the version the cluster holds with this
        content if it was asked about (`ask`) and found (nothing uploaded, no slot taken: a full
        cluster does not refuse it), else uploaded. Lookups are many at once (`max_lookups`,
        gathered into calls of a window of chunks: `content_finder`), so a copy of stored data is
        not held to `max_uploads` round trips at a time; uploads `max_uploads`."""
        if ask is None:
            return await self.io.upload(self.file.ino, index, snapshot, await slot.take())
        lookup = self.io.found(self.file.ino, index, await ask.answer())
        if lookup.stored is not None:
            return lookup.stored
        async with self._upload_slots:
            ref = await self.io.upload(self.file.ino, index, snapshot, await slot.take(), lookup.checksum)
        ref.content, ref.proof = lookup.content, lookup.proof
        return ref

    async def _upload(self, index: int, snapshot: bytes | bytearray, slot: PendingSlot, ask: Ask | None,
                      gate: trio.Semaphore, order: int) -> None:
        try:
            ref = await self._store(index, snapshot, slot, ask)
            # the newest write of the chunk wins, whichever upload ends first (versions do not
            # tell: a shared ref's is an old one, and a slot is taken only when a lookup missed)
            if order > self._upload_order.get(index, 0):
                current = self.uploaded.get(index)
                if current is not None:
                    self._supersede(current)
                self.uploaded[index] = ref
                self._upload_order[index] = order
                self.cache.put_uploaded(ref, snapshot)
            else:
                self._supersede(ref)
        except BaseException as exc:
            log.error("upload of chunk %d of inode %d failed: %s", index, self.file.ino, exc)
            self.error = exc
            if isinstance(exc, trio.Cancelled):
                raise
        finally:
            if self.uploading.get(index) is snapshot:
                del self.uploading[index]
            self.write_back_bound.add(-len(snapshot))
            gate.release()
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _supersede(self, ref: r.ChunkRef) -> None:
        """`ref` was replaced before its commit: its version is discarded with the commit (a
        shared one is other files' too: nothing of it is this writer's to discard)."""
        if not ref.shared:
            self.superseded.append(ref)

    def _raise_pending_error(self) -> None:
        if self.error is not None:
            exc, self.error = self.error, None
            if isinstance(exc, FsError):
                raise FsError(exc.errno, f"an earlier write failed: {exc.message}")
            raise FsError(errno.EIO, f"an earlier write failed: {exc}")

    # ---- the commit -------------------------------------------------------------------------
    async def _inline_content(self) -> bytes | None:
        """The whole content of a small file whose only change is buffered here, or None."""
        if self.file.size > INLINE_MAX_BYTES or list(self.dirty) != [0] or self.uploading or self.uploaded:
            return None
        dirty = self.dirty[0]
        await self._ensure_based(0, dirty)
        return bytes(dirty.data)

    async def flush(self, behind: bool = False) -> r.Attr | None:
        """Upload everything buffered and commit it; returns the committed attributes (None if
        there was nothing to commit). `behind`: a small file's commit may be queued (see above)."""
        file = self.file
        async with self.lock:
            inline = await self._inline_content()
            if inline is None:
                for index in sorted(self.dirty):
                    await self._start_upload(index)
                await self.io.finder.send_gathered()  # a window not full goes now: nothing else may fill it
            self.write_back_bound.buffering(self, False)
            await self._idle.wait()
            self._raise_pending_error()
            if not file.modified and not self.uploaded and not self.superseded:
                return None
            req = r.CommitReq(file.ino, file.size, file.mtime_ns, list(self.uploaded.values()), self.superseded,
                              inline=inline, attrs=file.attr_changes, xattrs=list(file.xattrs_at_commit.items()))
            queued = None
            empty = file.size == 0 and not self.uploaded and not file.chunks and not file.inline
            if behind and (inline is not None or empty) and not self.superseded and not req.xattrs:
                queued = await self.meta.commit_behind(req, self._committed_here(inline or b""))
            try:
                attr = queued if queued is not None else await self.meta.commit(req)
            except FsError as exc:
                if exc.errno == errno.EDQUOT:
                    self._forget_refused()
                raise
            if inline is not None:
                self.write_back_bound.add(-self.dirty.pop(0).length)
                file.chunks.clear()
                file.inline = inline
            elif 0 in self.uploaded:
                file.inline = None
            file.chunks.update(self.uploaded)
            self.uploaded.clear()
            self._upload_order.clear()
            self.superseded.clear()
            file.committed(attr)
            return attr

    def _committed_here(self, inline: bytes) -> r.Attr:
        """The file as the metaserver will make it by committing `inline` (ctime its own clock's)."""
        attr = self.file.local_attr(self.file.attr)
        return msgspec.structs.replace(attr, size=self.file.size, mtime_ns=self.file.mtime_ns,
                                       ctime_ns=max(attr.ctime_ns, time.time_ns()), blocks=(len(inline) + 511) // 512)

    def _forget_refused(self) -> None:
        """A quota refused the commit: what it carried is dropped, as a local filesystem drops a
        write refused with EDQUOT. The file is back at its committed size; its uploads are
        discarded by the next commit (which carries no growth, so the quota lets it through,
        with any attribute changes still waiting)."""
        for ref in self.uploaded.values():
            self._supersede(ref)
        self.uploaded.clear()
        self._upload_order.clear()
        self.drop_buffers()
        self.file.size = self.file.attr.size
        self.file.mtime_ns = self.file.attr.mtime_ns

    async def truncate(self, size: int, mtime_ns: int | None) -> r.Attr:
        """Commit what is buffered, then cut the file at `size` on the metaserver."""
        await self.flush()
        file = self.file
        async with self.lock:
            attr = await self.meta.setattr(r.SetattrReq(ino=file.ino, size=size, mtime_ns=mtime_ns))
            file.refresh(await self.meta.open_file(file.ino))
            file.mtime_ns = file.attr.mtime_ns
            return attr
