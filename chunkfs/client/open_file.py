"""One inode open on this client: what it is (attributes, committed chunks) as this client sees
it, with its writer (`writer.py`) and its reader (`reader.py`).

There is one OpenFile per inode, whatever opened it (the mount's file handles, the API's file
objects); it lives from the first open to the last release.

Promises (beside the writer's and the reader's):
- `local_attr` is the file as this client sees it: with the size, mtime and blocks of writes not
  committed yet, and the attribute changes kept for the commit.
- Mode, owner and time changes of a file this client created are kept with its content and
  committed with it (`defer_attrs`): they are as durable as its data, at close or fsync, and
  this client sees them at once; other clients see them at that commit (close-to-open).
"""

from __future__ import annotations

import errno
import time

import msgspec
import trio

from chunkfs.client.chunk_cache import ChunkCache
from chunkfs.client.chunk_io import ChunkIO
from chunkfs.client.metadata import Metadata
from chunkfs.client.prefetch import MAX_WINDOW
from chunkfs.client.reader import FileReader
from chunkfs.client.write_back import WriteBack
from chunkfs.client.writer import FileWriter
from chunkfs.errors import FsError
from chunkfs.protocol import records as r


class OpenFile:
    def __init__(self, ino: int, layout: r.FileLayout, meta: Metadata, io: ChunkIO, cache: ChunkCache,
                 nursery: trio.Nursery, *, write_back: WriteBack, prefetch_chunks: int = MAX_WINDOW,
                 max_uploads: int = 4) -> None:
        self.ino = ino
        self.open_count = 0
        self.unlinked = False  # lost its last name while open here: the last close frees it
        self.created_here = False  # made by this client and open since: see defer_attrs
        # a lock held here on it was lost (this client's session was cut, or a restarted metaserver
        # did not take it back): reads, writes and flushes fail with EIO until it is closed by all
        # (or locked again, if nothing written here waits to be committed), so nobody writes on
        # as if the lock still protected the file, and nothing written unprotected is committed
        self.locks_lost = False
        self.refresh(layout)
        self.modified = False  # content or attributes changed here since the last commit
        self.mtime_ns = self.attr.mtime_ns
        self.attr_changes: r.SetattrReq | None = None  # mode, owner, atime set since the last commit
        self.changed_ns: int | None = None  # ctime of those changes, as this client sees it
        self.xattrs_at_commit: dict[bytes, bytes] = {}  # user.* xattrs the next commit sets (set_at_commit)
        self.writer = FileWriter(self, meta, io, cache, nursery, write_back, max_uploads)
        self.reader = FileReader(self, cache, nursery, prefetch_chunks)

    def refresh(self, layout: r.FileLayout) -> None:
        """Take the committed state the metaserver gave at open (close-to-open)."""
        self.attr = layout.attr
        self.size = layout.attr.size
        self.chunks = {c.index: c for c in layout.chunks}
        self.servers = layout.servers
        self.inline = layout.inline  # the committed bytes of a small file, standing for chunk 0

    def attributes_sent(self, attr: r.Attr) -> None:
        """A mode, owner or time change of this open file went to the metaserver (or its
        write-behind queue), which answered `attr`: the next commit's answer builds on it (a
        commit answered here must not bring back a setuid bit the kernel had cleared)."""
        self.attr = msgspec.structs.replace(self.attr, mode=attr.mode, uid=attr.uid, gid=attr.gid,
                                            atime_ns=attr.atime_ns, ctime_ns=attr.ctime_ns)

    def link_count_changed(self, nlink: int) -> None:
        """This client made or removed a name of the file. `attr` answers for the changes kept
        here (`defer_attrs`) until the next commit, so its link count must follow the names, as
        a local filesystem's does: 0 once the file is an orphan (unlinked, still open)."""
        self.attr = msgspec.structs.replace(self.attr, nlink=nlink)

    def committed(self, attr: r.Attr) -> None:
        """The writer's commit made the file `attr`: nothing is changed here any more."""
        self.modified = False
        self.attr_changes = None
        self.xattrs_at_commit = {}
        self.attr = attr

    @property
    def has_local_changes(self) -> bool:
        return self.modified or self.writer.has_data

    @property
    def dirty(self) -> bool:
        """Data buffered here, not being uploaded yet."""
        return bool(self.writer.dirty)

    def local_attr(self, attr: r.Attr) -> r.Attr:
        """`attr` as this client sees it: with the size and mtime of uncommitted writes."""
        if not self.has_local_changes:
            return attr
        stored = self.writer.buffered_bytes + sum(c.length for c in self.chunks.values())
        if 0 not in self.writer.dirty and 0 not in self.chunks and self.inline:
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

    def set_at_commit(self, xattrs: dict[bytes, bytes]) -> None:
        """Set these user.* xattrs with the next commit, in its transaction: the file shows its
        new content and them together, or neither (a door storing an object with its metadata,
        in one call). Until then this client does not see them either."""
        self.xattrs_at_commit.update(xattrs)
        self.modified = True

    # ---- the writer's and the reader's --------------------------------------------------------
    def _check_locks(self) -> None:
        if self.locks_lost:
            raise FsError(errno.EIO, f"inode {self.ino}: a lock held on it was lost")

    async def read(self, offset: int, size: int) -> bytes:
        self._check_locks()
        return await self.reader.read(offset, size)

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        self._check_locks()
        return await self.writer.write(offset, data)

    async def flush(self, behind: bool = False) -> r.Attr | None:
        self._check_locks()
        return await self.writer.flush(behind)

    async def write_back(self) -> None:
        await self.writer.write_back()

    async def truncate(self, size: int, mtime_ns: int | None) -> r.Attr:
        return await self.writer.truncate(size, mtime_ns)

    def drop_buffers(self) -> None:
        """Forget what is buffered and not uploaded yet (the file is being forgotten or thrown away)."""
        self.writer.drop_buffers()
