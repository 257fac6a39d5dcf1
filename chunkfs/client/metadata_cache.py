"""What this client knows of names and attributes, so lookups and stats need no round trip.

The kernel keeps names and attributes for `entry_timeout_s`/`attr_timeout_s`, but it drops
them on its own: after every write to a file (its attributes), under memory pressure and on
`drop_caches` (its dentries and inodes). Each of those became a metadata call: a stat of every
file just copied, every name rsync looks at again. This cache keeps the same facts for the
same time-outs, in the client (the metadata façade, `metadata.py`, keeps it), and is kept right the same way the kernel's is:

- every change this client makes updates it (the result of the call: a remove and a rename
  answer their directories' new attributes too) or drops what it changed (the parent
  directory's attributes after a create, the inode's after a setxattr);
- every change another client makes reaches it through the change feed (`forget_inode`,
  `forget_entry`), and a reset of the feed empties it;
- an answer to a call that was in flight while anything was forgotten is not stored (it may
  predate what was forgotten).

It never answers that a name does not exist: a name made on another client must be found by
an open() here as soon as that client closed the file (close-to-open), before the change feed
can say so. Only in a directory leased to this mount (leases.py), where no other client can
make a name without the lease being recalled first, is a missing name answered here.

It also keeps the layouts (chunks, or inline bytes) of files this client holds open leases on
(see chunkfs/metaserver/open_leases.py), dropped by the same forgets as their attributes; the
metadata façade trusts them only while its change feed is answered. At most `MAX_LAYOUTS`, in the
order they were granted (the metaserver keeps at least twice as many leases a client), and only
layouts of up to `MAX_LAYOUT_CHUNKS` chunks: what a small file's open and read need.

Size is bounded by `max_entries` names and as many attributes; the oldest go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from chunkfs.protocol import records as r

MAX_LAYOUTS = 10_000
MAX_LAYOUT_CHUNKS = 64


class MetadataCache:
    def __init__(self, entry_timeout_s: float, attr_timeout_s: float, max_entries: int = 200_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.entry_timeout_s, self.attr_timeout_s = entry_timeout_s, attr_timeout_s
        self.max_entries = max_entries
        self.clock = clock
        self.generation = 0  # counts forgets; a caller reads it before a call, to store its answer
        self._attrs: dict[int, tuple[r.Attr, float]] = {}  # ino -> (attributes, valid until)
        self._names: dict[tuple[int, bytes], tuple[int, float]] = {}  # (parent, name) -> (ino, valid until)
        # ino or (parent, name) -> the generation it was last forgotten at; the oldest beyond
        # max_entries are dropped, and then nothing fetched before `_floor` is stored
        self._forgotten: dict[int | tuple[int, bytes], int] = {}
        self._floor = 0
        # ino -> (leased layout, kept until), oldest grant first
        self._layouts: OrderedDict[int, tuple[r.FileLayout, float]] = OrderedDict()
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

    def layout(self, ino: int) -> r.FileLayout | None:
        """The layout of file `ino` as its open lease was granted (the caller checks the lease is
        trusted). Kept for `attr_timeout_s` at most: the lease says the file did not change, but
        its replicas may have moved (re-replication is not on the feed)."""
        held = self._layouts.get(ino)
        return held[0] if held is not None and held[1] > self.clock() else None

    @property
    def has_layouts(self) -> bool:
        return bool(self._layouts)

    def put_layout(self, layout: r.FileLayout, generation: int) -> None:
        """Keep the layout of a file opened with a lease, unless it was forgotten after `generation`."""
        ino = layout.attr.ino
        if not self.enabled or not self.unchanged_since(ino, generation) or len(layout.chunks) > MAX_LAYOUT_CHUNKS:
            return
        self._layouts.pop(ino, None)
        self._layouts[ino] = (layout, self.clock() + self.attr_timeout_s)
        if len(self._layouts) > MAX_LAYOUTS:
            self._layouts.popitem(last=False)

    def lookup(self, parent: int, name: bytes) -> r.Attr | None:
        """The attributes of `name` in `parent`, or None if this cache cannot tell."""
        now = self.clock()
        held = self._names.get((parent, name))
        if held is not None and held[1] > now:
            attr = self._attrs.get(held[0])
            if attr is not None and attr[1] > now:
                self.hits += 1
                return attr[0]
        self.misses += 1
        return None

    # ---- what calls answered -------------------------------------------------------------------
    def unchanged_since(self, key: int | tuple[int, bytes], generation: int | None) -> bool:
        """Nothing forgot `key` (an inode, or a name in a directory) after `generation`."""
        if generation is None:
            return True
        return generation >= self._floor and self._forgotten.get(key, -1) <= generation

    def put_attr(self, attr: r.Attr, generation: int | None = None) -> None:
        """Store `attr`, unless its inode was forgotten after `generation` (read before the
        call that fetched it: the answer may predate what was forgotten)."""
        if not self.enabled or not self.unchanged_since(attr.ino, generation):
            return
        self._attrs.pop(attr.ino, None)
        self._attrs[attr.ino] = (attr, self.clock() + self.attr_timeout_s)
        if len(self._attrs) > self.max_entries:
            del self._attrs[next(iter(self._attrs))]

    def put_entry(self, parent: int, name: bytes, attr: r.Attr, generation: int | None = None) -> None:
        """Store that `name` in `parent` is `attr`, unless either was forgotten after `generation`."""
        key = (parent, name)
        if not self.enabled or not self.unchanged_since(key, generation) \
                or not self.unchanged_since(attr.ino, generation):
            return
        self.put_attr(attr)
        self._names.pop(key, None)
        self._names[key] = (attr.ino, self.clock() + self.entry_timeout_s)
        if len(self._names) > self.max_entries:
            del self._names[next(iter(self._names))]

    def listed(self, ino: int, entries: list[r.DirEntry], generation: int) -> None:
        """`entries` of directory `ino`, as read from `generation` on."""
        for entry in entries:
            self.put_entry(ino, entry.name, entry.attr, generation)

    # ---- what changed ----------------------------------------------------------------------------
    def _forget(self, key: int | tuple[int, bytes]) -> None:
        self.generation += 1
        self._forgotten.pop(key, None)
        self._forgotten[key] = self.generation
        if len(self._forgotten) > self.max_entries:
            oldest = next(iter(self._forgotten))
            self._floor = self._forgotten.pop(oldest)

    def forget_inode(self, ino: int) -> None:
        """`ino`'s attributes changed (by another client, or by this one without being told
        the new ones)."""
        self._forget(ino)
        self._attrs.pop(ino, None)
        self._layouts.pop(ino, None)

    changed = forget_inode

    def forget_entry(self, parent: int, name: bytes) -> None:
        """`name` in `parent` was made, removed or now names another inode."""
        self._forget((parent, name))
        held = self._names.pop((parent, name), None)
        if held is not None:
            self.forget_inode(held[0])

    def clear(self) -> None:
        self.generation += 1
        self._floor = self.generation
        self._forgotten.clear()
        self._attrs.clear()
        self._names.clear()
        self._layouts.clear()
