"""One inode open on this client: its chunk table, buffered writes, uploads and commit.

Promises:
- Writes are buffered a chunk at a time; a chunk that fills up is uploaded in the background
  (at most `max_uploads` per file at once). Buffered and uploading bytes count against the
  mount's `WriteBack` bound: a write waits while the mount is over it, and `write_back()`
  starts uploading partly written chunks when the mount needs the room.
- `flush()` (close) and `fsync()` return only when every buffered chunk is stored on the disks
  of its replicas and the metaserver has durably committed the new chunk versions, size and
  mtime. An upload that failed makes the next flush/fsync fail with EIO.
- Reads see this client's own writes at once (buffered, uploading or committed).
- A file of at most INLINE_MAX_BYTES whose content is all here is committed inline: its bytes
  travel in the commit itself, so a small file costs one call and no chunk upload.
- Mode, owner and time changes of a file this client created are kept with its content and
  committed with it (`defer_attrs`): they are as durable as its data, at close or fsync, and
  this client sees them at once; other clients see them at that commit (close-to-open).
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from typing import Callable

import trio

from chunkfs import CHUNK_SIZE, INLINE_MAX_BYTES
from chunkfs.errors import FsError
from chunkfs.client.chunk_cache import ChunkCache
from chunkfs.client.chunk_io import ChunkIO
from chunkfs.client.prefetch import MAX_WINDOW, prefetch_window
from chunkfs.client.write_back import WriteBack
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import MetaClient

log = logging.getLogger(__name__)


@dataclass
class DirtyChunk:
    """A chunk being written. Until `based`, only bytes [0, len(data)) were written (a sequential
    writer from the chunk's start); the old content is merged in only when it is needed."""

    data: bytearray
    based: bool

    def write(self, offset: int, piece: bytes | memoryview) -> int:
        """Returns by how many bytes the buffer grew."""
        before = len(self.data)
        end = offset + len(piece)
        if offset > before:
            self.data.extend(bytes(offset - before))
        self.data[offset:end] = piece
        return len(self.data) - before

    def complete(self) -> bool:
        return len(self.data) == CHUNK_SIZE


class OpenFile:
    def __init__(self, ino: int, layout: r.FileLayout, meta: MetaClient, io: ChunkIO, cache: ChunkCache,
                 nursery: trio.Nursery, max_uploads: int = 4, *, write_back: WriteBack | None = None,
                 prefetch_chunks: int = MAX_WINDOW) -> None:
        """`prefetch_chunks`: most chunks fetched ahead of a sequential reader (0: no prefetch)."""
        self.ino = ino
        self.meta, self.io, self.cache, self.nursery = meta, io, cache, nursery
        self.write_back_bound = write_back if write_back is not None else WriteBack(1 << 62)
        self.prefetch_chunks = prefetch_chunks
        self.open_count = 0
        self.unlinked = False  # lost its last name while open here: the last close frees it
        self.lock = trio.Lock()
        self.refresh(layout)
        self.dirty: dict[int, DirtyChunk] = {}
        self.uploading: dict[int, bytes | bytearray] = {}
        self.uploaded: dict[int, r.ChunkRef] = {}
        self.superseded: list[r.ChunkRef] = []
        self.modified = False
        self.mtime_ns = self.attr.mtime_ns
        self.created_here = False  # set by the mount's create: see defer_attrs
        self.pending_create: r.CreateReq | None = None  # made in a leased directory, not sent yet
        self.create_sent: Callable[["OpenFile"], None] = lambda f: None  # told when it is (or failed)
        self._create_lock = trio.Lock()
        self.attr_changes: r.SetattrReq | None = None  # mode, owner, atime set since the last commit
        self.changed_ns: int | None = None  # ctime of those changes, as this client sees it
        self.error: BaseException | None = None
        self._upload_slots = trio.Semaphore(max_uploads)
        self._inflight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._last_read_index = -2
        self._sequential_run = 0

    # ---- state ----------------------------------------------------------------------------
    def refresh(self, layout: r.FileLayout) -> None:
        """Take the committed state the metaserver gave at open (close-to-open)."""
        self.attr = layout.attr
        self.size = layout.attr.size
        self.chunks = {c.index: c for c in layout.chunks}
        self.servers = layout.servers
        self.inline = layout.inline  # the committed bytes of a small file, standing for chunk 0

    @property
    def has_local_changes(self) -> bool:
        return self.modified or bool(self.dirty or self.uploading or self.uploaded)

    def local_attr(self, attr: r.Attr) -> r.Attr:
        """`attr` as this client sees it: with the size and mtime of uncommitted writes."""
        if not self.has_local_changes:
            return attr
        stored = sum(len(d.data) for d in self.dirty.values()) + sum(c.length for c in self.chunks.values())
        if 0 not in self.dirty and 0 not in self.chunks and self.inline:
            stored += len(self.inline)
        local = {"size": self.size, "mtime_ns": self.mtime_ns, "blocks": (stored + 511) // 512}
        changes = self.attr_changes
        if changes is not None:
            if changes.mode is not None:
                local["mode"] = (attr.mode & ~0o7777) | (changes.mode & 0o7777)
            local.update({f: getattr(changes, f) for f in ("uid", "gid", "atime_ns") if getattr(changes, f) is not None})
            local["ctime_ns"] = max(attr.ctime_ns, self.changed_ns or 0)
        return r.Attr(**{**{f: getattr(attr, f) for f in attr.__struct_fields__}, **local})

    def defer_attrs(self, req: r.SetattrReq) -> r.Attr:
        """Keep `req` (no size change) for the next commit instead of sending it now, and answer
        the attributes as they are now here. Only for a file this client created and has open:
        nobody else is working on it, and tools that build files (cp -a, tar, rsync) set mode,
        owner and times on the open file right before they close it."""
        changes = self.attr_changes or r.SetattrReq(ino=self.ino)
        for name in ("mode", "uid", "gid", "atime_ns"):
            value = getattr(req, name)
            if value is not None:
                setattr(changes, name, value)
        if req.mtime_ns is not None:
            self.mtime_ns = req.mtime_ns
        self.attr_changes = changes
        self.changed_ns = time.time_ns()
        self.modified = True
        return self.local_attr(self.attr)

    def _committed_ref(self, index: int) -> r.ChunkRef | None:
        return self.uploaded.get(index) or self.chunks.get(index)

    async def _content(self, index: int) -> bytes | bytearray:
        """The current logical bytes of chunk `index` (may be shorter than a chunk: the rest is zeros)."""
        dirty = self.dirty.get(index)
        if dirty is not None:
            await self._ensure_based(index, dirty)
            return dirty.data
        snapshot = self.uploading.get(index)
        if snapshot is not None:
            return snapshot
        ref = self._committed_ref(index)
        if ref is None and index == 0 and self.inline is not None:
            return self.inline
        if ref is None or ref.length == 0:
            return b""
        data = await self.cache.get(ref, self.servers)
        return data if len(data) == ref.length else data[: ref.length]

    async def _old_length(self, index: int) -> int:
        if index in self.uploading:
            return len(self.uploading[index])
        ref = self._committed_ref(index)
        if ref is None and index == 0 and self.inline is not None:
            return len(self.inline)
        return ref.length if ref else 0

    async def _ensure_based(self, index: int, dirty: DirtyChunk) -> None:
        if dirty.based:
            return
        old_length = await self._old_length(index)
        if old_length > len(dirty.data):
            del self.dirty[index]  # read the committed content, not this buffer
            try:
                base = bytearray(await self._content(index))
            finally:
                self.dirty[index] = dirty
            base[: len(dirty.data)] = dirty.data
            self.write_back_bound.add(len(base) - len(dirty.data))
            dirty.data = base
        dirty.based = True

    # ---- reads ----------------------------------------------------------------------------
    async def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        first, last = offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE
        self._prefetch(first, last)
        parts = []
        for index in range(first, last + 1):
            start = max(offset, index * CHUNK_SIZE) - index * CHUNK_SIZE
            stop = min(end, (index + 1) * CHUNK_SIZE) - index * CHUNK_SIZE
            content = await self._content(index)
            piece = bytes(memoryview(content)[start:stop])  # one copy, if content is a bytearray too
            parts.append(piece if len(piece) == stop - start else bytes(piece) + bytes(stop - start - len(piece)))
        return b"".join(parts)

    def _prefetch(self, first: int, last: int) -> None:
        if not self.prefetch_chunks:
            return
        at_start = self._last_read_index == -2 and first == 0
        if first == self._last_read_index + 1:
            self._sequential_run += 1
        elif first != self._last_read_index:
            self._sequential_run = 0
        self._last_read_index = last
        total = (self.size + CHUNK_SIZE - 1) // CHUNK_SIZE
        window = prefetch_window(total, self._sequential_run, self.prefetch_chunks, at_start)
        ahead = range(0, total) if total <= 3 else range(last + 1, min(total, last + 1 + window))
        for index in ahead:
            if index in self.dirty or index in self.uploading:
                continue
            ref = self._committed_ref(index)
            if ref is not None and ref.length and not self.cache.has(ref):
                self.nursery.start_soon(self._prefetch_one, ref)

    async def _prefetch_one(self, ref: r.ChunkRef) -> None:
        try:
            await self.cache.prefetch(ref, self.servers)
        except Exception as exc:  # a prefetch is only a hint; the real read reports errors
            log.debug("prefetch of chunk %d v%d failed: %s", ref.chunk_id, ref.version, exc)

    # ---- writes ---------------------------------------------------------------------------
    async def write(self, offset: int, data: bytes) -> int:
        await self.write_back_bound.wait_for_room()
        async with self.lock:
            self._raise_pending_error()
            view = memoryview(data)
            pos = 0
            while pos < len(view):
                index, within = divmod(offset + pos, CHUNK_SIZE)
                n = min(CHUNK_SIZE - within, len(view) - pos)
                dirty = self.dirty.get(index)
                if dirty is None:
                    dirty = self.dirty[index] = DirtyChunk(bytearray(), based=False)
                if not dirty.based and within > len(dirty.data):
                    await self._ensure_based(index, dirty)
                self.write_back_bound.add(dirty.write(within, view[pos : pos + n]))
                pos += n
                if dirty.complete():
                    await self._start_upload(index)
            self.size = max(self.size, offset + len(view))
            self.modified = True
            self.mtime_ns = time.time_ns()
            self.write_back_bound.buffering(self, bool(self.dirty))
        return len(view)

    async def write_back(self) -> None:
        """Start uploading every buffered chunk, partly written ones too (the mount needs room)."""
        async with self.lock:
            for index in sorted(self.dirty):
                await self._start_upload(index)
            self.write_back_bound.buffering(self, bool(self.dirty))

    def drop_buffers(self) -> None:
        """This OpenFile is being forgotten: what it still buffers (after a failed flush) is
        lost, and no longer counts against the mount's bound."""
        self.write_back_bound.add(-sum(len(d.data) for d in self.dirty.values()))
        self.dirty.clear()
        self.write_back_bound.buffering(self, False)

    async def _start_upload(self, index: int) -> None:
        dirty = self.dirty[index]
        await self._ensure_based(index, dirty)
        existing = self._committed_ref(index)
        slot = await self.io.reservations.slot(existing.chunk_id if existing else None, self.attr.goal)
        await self._upload_slots.acquire()
        del self.dirty[index]
        snapshot = dirty.data  # handed over: the DirtyChunk is gone, nothing writes to it again
        self.uploading[index] = snapshot
        if self._inflight == 0:
            self._idle = trio.Event()
        self._inflight += 1
        self.nursery.start_soon(self._upload, index, snapshot, slot)

    async def _upload(self, index: int, snapshot: bytes | bytearray, slot) -> None:
        try:
            ref = await self.io.upload(self.ino, index, snapshot, slot)
            current = self.uploaded.get(index)
            if current is None or ref.version > current.version:
                if current is not None:
                    self.superseded.append(current)
                self.uploaded[index] = ref
                self.cache.put_uploaded(ref, snapshot)
            else:
                self.superseded.append(ref)
        except BaseException as exc:
            log.error("upload of chunk %d of inode %d failed: %s", index, self.ino, exc)
            self.error = exc
            if isinstance(exc, trio.Cancelled):
                raise
        finally:
            if self.uploading.get(index) is snapshot:
                del self.uploading[index]
            self.write_back_bound.add(-len(snapshot))
            self._upload_slots.release()
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _raise_pending_error(self) -> None:
        if self.error is not None:
            exc, self.error = self.error, None
            if isinstance(exc, FsError):
                raise FsError(exc.errno, f"an earlier write failed: {exc.message}")
            raise FsError(errno.EIO, f"an earlier write failed: {exc}")

    async def send_create(self) -> None:
        """Send this file's pending create on its own (someone needs it before the commit)."""
        async with self._create_lock:
            if self.pending_create is None:
                return
            try:
                await self.meta.create(self.pending_create)
            except FsError:  # it will never exist: the commit must not try again
                self._created()
                raise
            self._created()

    def _created(self) -> None:
        self.create_sent(self)
        self.pending_create = None

    async def _commit(self, req: r.CommitReq) -> r.Attr:
        """The commit, carrying the file's create if that is still pending."""
        async with self._create_lock:
            req.create = self.pending_create
            try:
                attr = await self.meta.commit(req)
            except FsError:
                if req.create is not None:
                    self._created()
                raise
            if req.create is not None:
                self._created()
            return attr

    async def _inline_content(self) -> bytes | None:
        """The whole content of a small file whose only change is buffered here, or None."""
        if self.size > INLINE_MAX_BYTES or list(self.dirty) != [0] or self.uploading or self.uploaded:
            return None
        dirty = self.dirty[0]
        await self._ensure_based(0, dirty)
        return bytes(dirty.data)

    async def flush(self) -> r.Attr | None:
        """Upload everything buffered and commit it; returns the committed attributes."""
        async with self.lock:
            inline = await self._inline_content()
            if inline is None:
                for index in sorted(self.dirty):
                    await self._start_upload(index)
            self.write_back_bound.buffering(self, False)
            await self._idle.wait()
            self._raise_pending_error()
            if not self.modified and not self.uploaded and not self.superseded:
                return None
            attr = await self._commit(r.CommitReq(self.ino, self.size, self.mtime_ns,
                                                  list(self.uploaded.values()), self.superseded,
                                                  inline=inline, attrs=self.attr_changes))
            if inline is not None:
                self.write_back_bound.add(-len(self.dirty.pop(0).data))
                self.chunks.clear()
                self.inline = inline
            elif 0 in self.uploaded:
                self.inline = None
            self.chunks.update(self.uploaded)
            self.uploaded.clear()
            self.superseded.clear()
            self.modified = False
            self.attr_changes = None
            self.attr = attr
            return attr

    async def truncate(self, size: int, mtime_ns: int | None) -> r.Attr:
        """Commit what is buffered, then cut the file at `size` on the metaserver."""
        await self.flush()
        async with self.lock:
            attr = await self.meta.setattr(r.SetattrReq(ino=self.ino, size=size, mtime_ns=mtime_ns))
            self.refresh(await self.meta.open_file(self.ino))
            self.mtime_ns = self.attr.mtime_ns
            return attr
