"""The directories this mount holds leases on (see chunkfs/metaserver/leases.py), and the files it
created in them without asking the metaserver yet.

A directory this mount makes comes leased to it: nobody else reads or changes its entries until
the metaserver recalls it. So, while the lease is trusted, the mount knows every name in it:
- a lookup of a missing name is answered here (ENOENT), with no call;
- a new regular file is created here, under an inode number reserved in advance, and its create
  goes to the metaserver with the file's first commit (its close or fsync): one call a file.

Promises:
- A pending create is sent before any other request that needs it: one naming its directory or
  its inode (a readdir, a rename, an unlink, a getattr of the directory...), a recall, a lapse of
  the lease, fsyncdir. So the metaserver never answers anybody about a directory with creates
  missing, and a create is durable at the file's close or fsync, or when the directory is synced.
- The lease is trusted only until LEASE_S - LEASE_MARGIN_S after the send of the last change-feed
  poll that was answered: before the metaserver could let it run out.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from chunkfs import LEASE_S
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol.meta_client import named_inodes

if TYPE_CHECKING:
    from chunkfs.client.open_file import OpenFile
    from chunkfs.protocol.meta_client import MetaClient

log = logging.getLogger(__name__)

LEASE_MARGIN_S = 3.0
FEED_WAIT_S = 2.0  # the change-feed poll of a mount holding leases: renews them this often
MAX_LEASES = 1000  # past this many, the oldest are given back
INODE_BLOCK = 256


@dataclass
class LeasedDirectory:
    trusted_until: float  # trio time
    names: set[bytes] = field(default_factory=set)  # every name in it (it was empty when made)
    pending: dict[bytes, "OpenFile"] = field(default_factory=dict)  # created here, not yet sent
    returning: bool = False  # being given back: not used, its pending creates are being sent


class Leases:
    def __init__(self, meta: "MetaClient") -> None:
        self.meta = meta
        self.held: OrderedDict[int, LeasedDirectory] = OrderedDict()
        self.pending_files: dict[int, "OpenFile"] = {}  # inode -> file whose create is not sent
        self.nursery: trio.Nursery | None = None  # set by main: recalls are answered in it
        self._inodes = range(0)
        self._inode_lock = trio.Lock()
        self._giving_back: set[int] = set()

    # ---- trust --------------------------------------------------------------------------------
    def fed(self, poll_sent_at: float) -> None:
        """A change-feed poll sent at `poll_sent_at` (trio time) was answered: the leases held
        then were renewed by it."""
        until = poll_sent_at + LEASE_S - LEASE_MARGIN_S
        for leased in self.held.values():
            leased.trusted_until = max(leased.trusted_until, until)

    def lease(self, ino: int) -> LeasedDirectory | None:
        """The lease on directory `ino`, if this mount holds it and may trust it now."""
        leased = self.held.get(ino)
        if leased is None or leased.returning or trio.current_time() >= leased.trusted_until:
            return None
        return leased

    # ---- what this mount does in leased directories ------------------------------------------------
    def granted(self, ino: int, asked_at: float) -> None:
        """Directory `ino`, made by a call sent at `asked_at`, is leased to this mount."""
        self.held[ino] = LeasedDirectory(asked_at + LEASE_S - LEASE_MARGIN_S)
        if len(self.held) > MAX_LEASES and self.nursery is not None:
            oldest = [d for d, leased in list(self.held.items())[: MAX_LEASES // 10] if not leased.pending]
            self.nursery.start_soon(self.give_back, oldest)

    def added(self, parent: int, name: bytes) -> None:
        leased = self.held.get(parent)
        if leased is not None:
            leased.names.add(name)

    def removed(self, parent: int, name: bytes) -> None:
        leased = self.held.get(parent)
        if leased is not None:
            leased.names.discard(name)
            leased.pending.pop(name, None)

    def forget(self, ino: int) -> None:
        """Directory `ino` is gone: its lease with it."""
        self.held.pop(ino, None)

    async def inode_number(self) -> int:
        """A fresh inode number from the block reserved for this mount."""
        async with self._inode_lock:
            if not self._inodes:
                first = await self.meta.reserve_inodes(INODE_BLOCK)
                self._inodes = range(first, first + INODE_BLOCK)
            ino, self._inodes = self._inodes[0], self._inodes[1:]
            return ino

    def created_here(self, parent: int, name: bytes, open_file: "OpenFile") -> None:
        leased = self.held[parent]
        leased.names.add(name)
        leased.pending[name] = open_file
        self.pending_files[open_file.ino] = open_file

    def create_sent(self, open_file: "OpenFile") -> None:
        """`open_file`'s create reached the metaserver (or failed for good: it does not exist)."""
        self.pending_files.pop(open_file.ino, None)
        req = open_file.pending_create
        if req is None:
            return
        leased = self.held.get(req.parent)
        if leased is not None and leased.pending.get(req.name) is open_file:
            del leased.pending[req.name]

    # ---- sending pending creates ----------------------------------------------------------------------
    async def before(self, request: Any) -> None:
        """Send the pending creates `request` depends on: those in a directory it names, and
        its inode's own."""
        if not self.pending_files:
            return
        for ino in named_inodes(request):
            await self.send_pending(ino)

    async def send_pending(self, ino: int) -> None:
        """Send the create of file `ino`, or of every file pending in directory `ino`."""
        leased = self.held.get(ino)
        files = list(leased.pending.values()) if leased is not None else []
        if ino in self.pending_files:
            files.append(self.pending_files[ino])
        for open_file in files:
            await open_file.send_create()

    async def give_back(self, inodes: list[int]) -> None:
        """Stop using the leases on `inodes` at once, send their pending creates, then tell the
        metaserver (a recall, too many leases, a reset of the feed)."""
        leased = [(ino, self.held[ino]) for ino in inodes if ino in self.held]
        for _ino, directory in leased:
            directory.returning = True
        try:
            for ino, directory in leased:
                for open_file in list(directory.pending.values()):
                    await open_file.send_create()
                if self.held.get(ino) is directory:
                    del self.held[ino]
            if inodes:
                await self.meta.release_leases(list(inodes))
        except (FsError, TransportError) as exc:  # the metaserver takes them back when they run out
            log.warning("giving back %d directory leases failed: %s", len(inodes), exc)

    def recall(self, inodes: list[int]) -> bool:
        """The metaserver wants these back: answered in the background, the feed goes on.
        False if every one of them is being given back already."""
        new = [ino for ino in inodes if ino not in self._giving_back]
        if not new or self.nursery is None:
            return False
        self._giving_back.update(new)
        self.nursery.start_soon(self._answer_recall, new)
        return True

    async def _answer_recall(self, inodes: list[int]) -> None:
        try:
            await self.give_back(inodes)
        finally:
            self._giving_back.difference_update(inodes)

    async def give_back_all(self) -> None:
        await self.give_back(list(self.held))
