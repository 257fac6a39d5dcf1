"""Directories as a listing reads them: sorted in S3's key order, and kept for the next page.

A paginated listing (1,000 keys a page) reads the same directory once a page; a snapshot of its
entries is reused while the directory is unchanged (same inode, mtime and ctime, so no entry
was added, removed or renamed and its permissions did not change) and for at most `TTL_S`
(an entry's own size or mtime changed in place, through a mount, shows within that time). The
time-out is long enough for a 10,000-key listing's ten pages on a loaded machine: at 10 s,
one under a load of 16 on two cores read its directory again about every other page.
Snapshots are per caller (the READ check on the directory was that caller's) and bounded in
entries, the oldest dropped first.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass

from chunkfs.client import AsyncFilesystem, DirEntry
from chunkfs.client.transfers import is_staged_name

TTL_S = 30.0
MAX_ENTRIES = 200_000


@dataclass
class _Snapshot:
    stamp: tuple[int, int, int]  # inode, mtime_ns, ctime_ns of the directory when read
    taken_s: float
    entries: list[tuple[str, DirEntry]]  # (name as a key part: "name/" for a directory, entry), sorted


class DirectorySnapshots:
    def __init__(self, with_xattr: str | None = None) -> None:
        """`with_xattr`: an xattr whose value each entry brings along (read in the same calls)."""
        self._snapshots: OrderedDict[str, _Snapshot] = OrderedDict()
        self._entries = 0
        self.with_xattr = with_xattr

    async def sorted_entries(self, afs: AsyncFilesystem, path: str) -> list[tuple[str, DirEntry]]:
        """The entries of `path` (not uploads being staged) by key order, as `afs`'s caller sees them."""
        st = await afs.stat(path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._snapshots.get(path)
        if cached is not None and cached.stamp == stamp and time.monotonic() - cached.taken_s < TTL_S:
            self._snapshots.move_to_end(path)
            return cached.entries
        entries = sorted((e.name + "/" if e.is_dir() else e.name, e) for e in await afs.scandir(path, self.with_xattr)
                         if not is_staged_name(os.fsencode(e.name)))
        self._keep(path, _Snapshot(stamp, time.monotonic(), entries))
        return entries

    def _keep(self, path: str, snapshot: _Snapshot) -> None:
        old = self._snapshots.pop(path, None)
        self._entries -= len(old.entries) if old is not None else 0
        if len(snapshot.entries) > MAX_ENTRIES:
            return
        self._snapshots[path] = snapshot
        self._entries += len(snapshot.entries)
        while self._entries > MAX_ENTRIES:
            _path, dropped = self._snapshots.popitem(last=False)
            self._entries -= len(dropped.entries)
