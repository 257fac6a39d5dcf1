"""What this client knows of names and attributes, so lookups and stats need no round trip.

The kernel keeps names and attributes for `entry_timeout_s`/`attr_timeout_s`, but it drops
them on its own: after every write to a file (its attributes), under memory pressure and on
`drop_caches` (its dentries and inodes). Each of those became a metadata call: a stat of every
file just copied, every name rsync looks at again. This cache keeps the same facts for the
same time-outs, in the mount, and is kept right the same way the kernel's is:

- every change this client makes updates it (the result of the call) or drops what it changed
  (the parent directory's attributes after a create or remove, the inode's after a setxattr);
- every change another client makes reaches it through the change feed (`forget_inode`,
  `forget_entry`), and a reset of the feed empties it;
- an answer to a call that was in flight while anything was forgotten is not stored (it may
  predate what was forgotten).

It also knows directories whose every name it holds ("complete": made here with mkdir, or
read whole by readdir since anything in them was forgotten): a name missing there is ENOENT
without a call. That is what a negative dentry with pushed invalidation would give, and it
spares `cp -a`, `tar x` and rsync a failing lookup before each file they create.

Size is bounded by `max_entries` names and as many attributes; the oldest go first (a
directory that loses a name to eviction stops being complete).
"""

from __future__ import annotations

import errno
import stat
import time
from typing import Any, Callable

from chunkfs.errors import FsError
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import MetaClient

ABSENT = object()
"""`lookup` answer: the name is known not to exist."""


class MetadataCache:
    def __init__(self, entry_timeout_s: float, attr_timeout_s: float, max_entries: int = 200_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.entry_timeout_s, self.attr_timeout_s = entry_timeout_s, attr_timeout_s
        self.max_entries = max_entries
        self.clock = clock
        self.generation = 0  # bumped by every forget: answers fetched across one are not stored
        self._attrs: dict[int, tuple[r.Attr, float]] = {}  # ino -> (attributes, valid until)
        self._names: dict[tuple[int, bytes], tuple[int, float]] = {}  # (parent, name) -> (ino, valid until)
        self._complete: dict[int, float] = {}  # directory -> valid until: every name of it is in _names
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.entry_timeout_s > 0 and self.attr_timeout_s > 0

    # ---- answers -----------------------------------------------------------------------------
    def attr(self, ino: int) -> r.Attr | None:
        held = self._attrs.get(ino)
        if held is not None and held[1] > self.clock():
            self.hits += 1
            return held[0]
        self.misses += 1
        return None

    def lookup(self, parent: int, name: bytes) -> r.Attr | object | None:
        """The attributes of `name` in `parent`, ABSENT if it is known not to exist there, or
        None if this cache cannot tell."""
        now = self.clock()
        held = self._names.get((parent, name))
        if held is not None and held[1] > now:
            attr = self._attrs.get(held[0])
            if attr is not None and attr[1] > now:
                self.hits += 1
                return attr[0]
        elif held is None and self._complete.get(parent, 0.0) > now:
            self.hits += 1
            return ABSENT
        self.misses += 1
        return None

    # ---- what calls answered -------------------------------------------------------------------
    def put_attr(self, attr: r.Attr, generation: int | None = None) -> None:
        """Store `attr`, unless something was forgotten since `generation` was read (before the
        call that fetched it)."""
        if not self.enabled or (generation is not None and generation != self.generation):
            return
        self._attrs.pop(attr.ino, None)
        self._attrs[attr.ino] = (attr, self.clock() + self.attr_timeout_s)
        if len(self._attrs) > self.max_entries:
            del self._attrs[next(iter(self._attrs))]

    def put_entry(self, parent: int, name: bytes, attr: r.Attr, generation: int | None = None) -> None:
        """Store that `name` in `parent` is `attr` (a name this client made goes here too: a
        complete directory that cannot take it stops being complete)."""
        if not self.enabled or (generation is not None and generation != self.generation):
            self._complete.pop(parent, None)
            return
        self.put_attr(attr)
        key = (parent, name)
        self._names.pop(key, None)
        self._names[key] = (attr.ino, self.clock() + self.entry_timeout_s)
        if len(self._names) > self.max_entries:
            oldest = next(iter(self._names))
            del self._names[oldest]
            self._complete.pop(oldest[0], None)

    def changed(self, ino: int) -> None:
        """This client changed `ino` (a directory it made or removed a name in, an inode it
        linked or set an xattr on) without being told the new attributes."""
        self.generation += 1
        self._attrs.pop(ino, None)

    def created_directory(self, ino: int) -> None:
        """`ino` was just made here by mkdir: empty, so every name of it is known."""
        if self.enabled:
            self._complete[ino] = self.clock() + self.entry_timeout_s

    def listed_directory(self, ino: int, entries: list[r.DirEntry], generation: int) -> None:
        """`entries` is the whole of directory `ino`, read while nothing was forgotten."""
        if not self.enabled or generation != self.generation or len(entries) >= self.max_entries // 2:
            return
        for entry in entries:
            self.put_entry(ino, entry.name, entry.attr)
        if generation == self.generation:
            self._complete[ino] = self.clock() + self.entry_timeout_s

    # ---- what changed ----------------------------------------------------------------------------
    def forget_inode(self, ino: int) -> None:
        """`ino`'s attributes changed; if it is a directory, its names may have too."""
        self.generation += 1
        self._attrs.pop(ino, None)
        self._complete.pop(ino, None)

    def forget_entry(self, parent: int, name: bytes) -> None:
        """`name` in `parent` was made, removed or now names another inode."""
        self.generation += 1
        held = self._names.pop((parent, name), None)
        if held is not None:
            self._attrs.pop(held[0], None)
        self._complete.pop(parent, None)

    def forget_name(self, parent: int, name: bytes) -> None:
        """This client removed or renamed `name` away: it is known gone, `parent` stays complete."""
        self.generation += 1
        held = self._names.pop((parent, name), None)
        if held is not None:
            self._attrs.pop(held[0], None)
        self._attrs.pop(parent, None)

    def cached_ino(self, parent: int, name: bytes) -> int | None:
        held = self._names.get((parent, name))
        return held[0] if held is not None else None

    def clear(self) -> None:
        self.generation += 1
        self._attrs.clear()
        self._names.clear()
        self._complete.clear()


class CachingMetaClient(MetaClient):
    """The metaserver client of a mount, answering lookups and getattrs from a MetadataCache
    where it can and keeping the cache right with every change this client makes."""

    def __init__(self, *args: Any, cache: MetadataCache, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cache = cache

    # ---- reads ---------------------------------------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> r.Attr:
        known = self.cache.lookup(parent, name)
        if known is ABSENT:
            raise FsError(errno.ENOENT, "no such entry")
        if known is not None:
            return known
        generation = self.cache.generation
        attr = await super().lookup(parent, name)
        self.cache.put_entry(parent, name, attr, generation)
        return attr

    async def getattr(self, ino: int) -> r.Attr:
        known = self.cache.attr(ino)
        if known is not None:
            return known
        generation = self.cache.generation
        attr = await super().getattr(ino)
        self.cache.put_attr(attr, generation)
        return attr

    async def readdir(self, ino: int, after: bytes | None, limit: int = 1000) -> list[r.DirEntry]:
        generation = self.cache.generation
        entries = await super().readdir(ino, after, limit)
        if after is None and len(entries) < limit:
            self.cache.listed_directory(ino, entries, generation)
        else:
            for entry in entries:
                self.cache.put_entry(ino, entry.name, entry.attr, generation)
        return entries

    async def open_file(self, ino: int) -> r.FileLayout:
        generation = self.cache.generation
        layout = await super().open_file(ino)
        self.cache.put_attr(layout.attr, generation)
        return layout

    # ---- changes made here ------------------------------------------------------------------------
    async def setattr(self, req: r.SetattrReq) -> r.Attr:
        self.cache.changed(req.ino)
        generation = self.cache.generation
        attr = await super().setattr(req)
        self.cache.put_attr(attr, generation)
        return attr

    async def commit(self, req: r.CommitReq) -> r.Attr:
        self.cache.changed(req.ino)
        generation = self.cache.generation
        attr = await super().commit(req)
        self.cache.put_attr(attr, generation)
        return attr

    async def create(self, req: r.CreateReq) -> r.Attr:
        self.cache.changed(req.parent)
        try:
            attr = await super().create(req)
        finally:
            self.cache.changed(req.parent)
        self.cache.put_entry(req.parent, req.name, attr)  # a new name: nothing older to be stale
        if stat.S_ISDIR(attr.mode):
            self.cache.created_directory(attr.ino)
        return attr

    async def link(self, ino: int, parent: int, name: bytes) -> r.Attr:
        self.cache.changed(ino)
        try:
            attr = await super().link(ino, parent, name)
        finally:
            self.cache.changed(parent)
        self.cache.put_entry(parent, name, attr)
        return attr

    async def remove(self, parent: int, name: bytes, is_dir: bool, open_here: list[int] | None = None) -> int:
        try:
            ino = await super().remove(parent, name, is_dir, open_here)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                self.cache.forget_entry(parent, name)
            raise
        self.cache.forget_name(parent, name)
        self.cache.forget_inode(ino)
        return ino

    async def rename(self, req: r.RenameReq) -> list[int]:
        moved: list[int] = []
        try:
            moved = await super().rename(req)
            return moved
        finally:
            self.cache.forget_entry(req.old_parent, req.old_name)
            self.cache.forget_entry(req.new_parent, req.new_name)
            for ino in (req.old_parent, req.new_parent, *moved):
                self.cache.forget_inode(ino)

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self.cache.changed(ino)
        try:
            await super().setxattr(ino, name, value, flags)
        finally:
            self.cache.changed(ino)

    async def removexattr(self, ino: int, name: bytes) -> None:
        self.cache.changed(ino)
        try:
            await super().removexattr(ino, name)
        finally:
            self.cache.changed(ino)
