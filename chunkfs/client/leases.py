"""What a client knows of the directories it holds leases on (see chunkfs/metaserver/leases.py),
and the files it created in them without asking the metaserver yet. Bookkeeping only: the
metadata façade (`metadata.py`) sends the pending creates and gives leases back.

A directory this mount makes comes leased to it: nobody else reads or changes its entries until
the metaserver recalls it. So, while the lease is trusted, the client knows every name in it:
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

from collections import OrderedDict
from dataclasses import dataclass, field

import trio

from chunkfs import LEASE_S
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import MetaClient

LEASE_MARGIN_S = 3.0
FEED_WAIT_S = 2.0  # the change-feed poll of a mount holding leases: renews them this often
MAX_LEASES = 1000  # past this many, the oldest are given back
INODE_BLOCK = 256


@dataclass
class PendingCreate:
    """A regular file created here in a leased directory, its create not sent yet: the request
    to send (with the file's first commit, or before anything that needs it) and the file's
    attributes as they were made. `sent` once the metaserver has it (or refused it for good)."""

    req: r.CreateReq
    attr: r.Attr
    lock: trio.Lock = field(default_factory=trio.Lock)
    sent: bool = False


@dataclass
class LeasedDirectory:
    trusted_until: float  # trio time
    names: set[bytes] = field(default_factory=set)  # every name in it (it was empty when made)
    pending: dict[bytes, PendingCreate] = field(default_factory=dict)  # created here, not yet sent
    known: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # name -> (inode, mode) of those made here
    returning: bool = False  # being given back: not used, its pending creates are being sent


class Leases:
    def __init__(self, meta: MetaClient) -> None:
        """`meta`: the plain metaserver client (inode numbers are reserved through it)."""
        self.meta = meta
        self.held: OrderedDict[int, LeasedDirectory] = OrderedDict()
        self.pending_files: dict[int, PendingCreate] = {}  # inode -> its create, not sent yet
        self.giving_back: set[int] = set()  # recalled, being given back
        # what this mount made in a leased directory -> that directory (its only name is there)
        self.homes: dict[int, int] = {}
        self._inodes = range(0)
        self._inode_lock = trio.Lock()

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
    def granted(self, ino: int, asked_at: float) -> list[int]:
        """Directory `ino`, made by a call sent at `asked_at`, is leased to this mount. Returns
        the leases to give back now (the oldest idle ones, past MAX_LEASES)."""
        self.held[ino] = LeasedDirectory(asked_at + LEASE_S - LEASE_MARGIN_S)
        if len(self.held) <= MAX_LEASES:
            return []
        return [d for d, leased in list(self.held.items())[: MAX_LEASES // 10] if not leased.pending]

    def added(self, parent: int, name: bytes, known: tuple[int, int] | None = None) -> None:
        """`name` was made in `parent` by this mount; `known`: the (inode, mode) it names, if
        known here."""
        leased = self.held.get(parent)
        if leased is not None:
            leased.names.add(name)
            if known is not None:
                self._know(parent, leased, name, *known)

    def _know(self, parent: int, leased: LeasedDirectory, name: bytes, ino: int, mode: int) -> None:
        leased.known[name] = (ino, mode)
        self.homes[ino] = parent

    def removed(self, parent: int, name: bytes) -> None:
        leased = self.held.get(parent)
        if leased is not None:
            leased.names.discard(name)
            leased.pending.pop(name, None)
            known = leased.known.pop(name, None)
            if known is not None and self.homes.get(known[0]) == parent:
                del self.homes[known[0]]

    def linked(self, ino: int) -> None:
        """`ino` got another name: its home is not its only one any more."""
        self.homes.pop(ino, None)

    def forget(self, ino: int) -> None:
        """Directory `ino` is gone, or its lease is: what this mount knew of it with it."""
        leased = self.held.pop(ino, None)
        if leased is not None:
            for child, _mode in leased.known.values():
                if self.homes.get(child) == ino:
                    del self.homes[child]

    def known(self, parent: int, name: bytes) -> tuple[int, int] | None:
        """(inode, mode) of `name` in `parent`, if `parent`'s lease is trusted and this mount
        made that entry."""
        leased = self.lease(parent)
        return leased.known.get(name) if leased is not None else None

    def home(self, ino: int) -> int | None:
        """The directory holding the only name of `ino`, if this mount made it there and holds
        that directory's lease (nobody else can reach it then without a recall)."""
        parent = self.homes.get(ino)
        return parent if parent is not None and self.lease(parent) is not None else None

    async def inode_number(self) -> int:
        """A fresh inode number from the block reserved for this mount."""
        async with self._inode_lock:
            if not self._inodes:
                first = await self.meta.reserve_inodes(INODE_BLOCK)
                self._inodes = range(first, first + INODE_BLOCK)
            ino, self._inodes = self._inodes[0], self._inodes[1:]
            return ino

    def created_here(self, pending: PendingCreate) -> None:
        leased = self.held[pending.req.parent]
        leased.names.add(pending.req.name)
        leased.pending[pending.req.name] = pending
        self._know(pending.req.parent, leased, pending.req.name, pending.attr.ino, pending.attr.mode)
        self.pending_files[pending.attr.ino] = pending

    def create_sent(self, pending: PendingCreate) -> None:
        """`pending` reached the metaserver (or failed for good: the file does not exist)."""
        pending.sent = True
        self.pending_files.pop(pending.attr.ino, None)
        leased = self.held.get(pending.req.parent)
        if leased is not None and leased.pending.get(pending.req.name) is pending:
            del leased.pending[pending.req.name]

    def pending_in(self, ino: int) -> list[PendingCreate]:
        """The creates a request naming `ino` needs first: those in directory `ino`, or its own."""
        leased = self.held.get(ino)
        found = list(leased.pending.values()) if leased is not None else []
        if ino in self.pending_files:
            found.append(self.pending_files[ino])
        return found
