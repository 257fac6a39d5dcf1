"""Who owns which chunk versions: the blocks of versions each client reserved, and which of them
it has used.

A client reserves versions in blocks (`reserve`) and uploads each new chunk version under one of
them; a commit then makes them part of a file. A commit may name only versions that its client
reserved and has not used for another file (and `discard` only those, or versions it already
discarded for the same file): naming any other version is refused with EPERM and changes nothing.
EPERM rather than EINVAL because such a request is well formed, the caller is just not entitled
to what it names (a version of someone else's file, or one whose reservation ran out), as a
writer that lost its lease is refused in HDFS. Without this check one commit could adopt or
discard another file's chunk version and have every replica of it deleted.

The blocks are kept in the metaserver's database (`reservations` table), so uploads made before
a metaserver restart can still be committed after it, and standbys have them too. A block lasts
`lifetime_s` from its last grant (the orphan grace: an upload older than that may be collected as
garbage anyway) and ends earlier with its client's session (`session_over`, the same test the
orphan collector uses). One client's consecutive blocks are merged, so a busy writer holds one
block rather than one per reservation, and a client holds at most `max_blocks_per_client` (its
oldest goes first). A used version is remembered with the inode it went to
until its block ends, so a retried commit is answered the same way as the first.

Keys: b"r" + u64(first version) -> Block; b"s" + u64(version) -> u64(inode) it was used for.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator

import msgspec
from msgspec import Struct

from chunkfs.errors import FsError
from chunkfs.metaserver.db import GroupCommitter, MetaDB, Txn, read_u64, u64

log = logging.getLogger(__name__)

SWEEP_S = 30.0
MAX_BLOCKS_PER_CLIENT = 100_000  # ~5 MB of records; a single writer's blocks merge into one
_BLOCK, _USED = b"r", b"s"


class Block(Struct, array_like=True):
    client: str
    end: int  # one past the last version of the block
    expires_at: float  # Unix time


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Block)


class VersionReservations:
    def __init__(self, db: MetaDB, lifetime_s: float, max_blocks_per_client: int = MAX_BLOCKS_PER_CLIENT) -> None:
        self.db, self.lifetime_s, self.max_blocks_per_client = db, lifetime_s, max_blocks_per_client
        self._blocks_of: dict[str, deque[int]] = {}  # client -> first versions of its blocks, oldest first
        self.session_over: Callable[[str], bool] = lambda client: False  # set by `run`
        with db.read() as txn:
            for first, block in self._blocks(txn):
                self._blocks_of.setdefault(block.client, deque()).append(first)

    # ---- granting and claiming ---------------------------------------------------------------
    def grant(self, txn: Txn, client: str, first: int, count: int) -> None:
        """Versions first .. first+count-1 are `client`'s to commit. A client holding
        `max_blocks_per_client` blocks loses its oldest (bounded however often it reserves)."""
        expires_at = time.time() + self.lifetime_s
        mine = self._blocks_of.setdefault(client, deque())
        if mine:
            raw = txn.get(_BLOCK + u64(mine[-1]), db=self.db.reservations)
            block = _dec.decode(raw) if raw else None
            if block is not None and block.client == client and block.end == first:
                txn.put(_BLOCK + u64(mine[-1]), _enc.encode(Block(client, first + count, expires_at)),
                        db=self.db.reservations)
                return
        txn.put(_BLOCK + u64(first), _enc.encode(Block(client, first + count, expires_at)), db=self.db.reservations)
        mine.append(first)
        if len(mine) > self.max_blocks_per_client:
            self._delete(txn, mine.popleft())

    def claim(self, txn: Txn, client: str, version: int, ino: int) -> bool:
        """Use `version` for file `ino`. True if it was unused; False if it was already used for
        `ino` (a retried commit); EPERM if `client` does not own it or used it for another file."""
        used = txn.get(_USED + u64(version), db=self.db.reservations)
        if used is not None:
            if read_u64(used) == ino:
                return False
            raise FsError(errno.EPERM, f"chunk version {version} belongs to another file")
        block = self._block_of(txn, version)
        if block is None or block.client != client:
            raise FsError(errno.EPERM, f"chunk version {version} is not reserved by this client "
                                       f"(or its reservation ended)")
        txn.put(_USED + u64(version), u64(ino), db=self.db.reservations)
        return True

    def _block_of(self, txn: Txn, version: int) -> Block | None:
        """The block holding `version`, if any: the one with the greatest first version <= it
        (every b"s" key sorts after every b"r" key)."""
        target = _BLOCK + u64(version)
        cursor = txn.cursor(db=self.db.reservations)
        if cursor.set_range(target):
            if cursor.key() == target:
                return _dec.decode(cursor.value())
            if not cursor.prev():
                return None
        elif not cursor.last():
            return None
        key = cursor.key()
        if not key.startswith(_BLOCK):
            return None
        block = _dec.decode(cursor.value())
        return block if version < block.end else None

    # ---- what is reserved --------------------------------------------------------------------
    def _blocks(self, txn: Txn) -> Iterator[tuple[int, Block]]:
        """(first version, block) of every live block, in order."""
        cursor = txn.cursor(db=self.db.reservations)
        if cursor.set_range(_BLOCK):
            for key, raw in cursor:
                if not key.startswith(_BLOCK):
                    return
                yield read_u64(key[1:]), _dec.decode(raw)

    def ranges(self, txn: Txn) -> list[tuple[int, int]]:
        """(first, end) of every live block, in order: versions that may still be committed."""
        return [(first, block.end) for first, block in self._blocks(txn)]

    @staticmethod
    def holds(ranges: list[tuple[int, int]], version: int) -> bool:
        i = bisect.bisect_right(ranges, (version, float("inf"))) - 1
        return i >= 0 and ranges[i][0] <= version < ranges[i][1]

    # ---- ending blocks -----------------------------------------------------------------------
    def ended(self, txn: Txn, now: float, session_over: Callable[[str], bool]) -> list[int]:
        """First versions of the blocks that have run out or whose client has gone."""
        return [first for first, block in self._blocks(txn)
                if block.expires_at < now or session_over(block.client)]

    def prune(self, txn: Txn) -> int:
        """End now (in the writer's `txn`) the blocks that ran out or whose client has gone, as
        the sweep would at its next turn; `chunkfs gc` does this first, so what such a block
        held is garbage at once rather than up to `SWEEP_S` later. How many ended."""
        gone = self.ended(txn, time.time(), self.session_over)
        if gone:
            self.drop(txn, gone)
        return len(gone)

    def drop(self, txn: Txn, firsts: list[int]) -> None:
        dropped = set(firsts)
        for client in list(self._blocks_of):
            kept = deque(f for f in self._blocks_of[client] if f not in dropped)
            if kept:
                self._blocks_of[client] = kept
            else:
                del self._blocks_of[client]
        for first in firsts:
            self._delete(txn, first)

    def _delete(self, txn: Txn, first: int) -> None:
        """The block starting at `first` and the record of which of its versions were used."""
        raw = txn.pop(_BLOCK + u64(first), db=self.db.reservations)
        if raw is None:
            return
        end = _dec.decode(raw).end
        cursor = txn.cursor(db=self.db.reservations)
        while cursor.set_range(_USED + u64(first)) and cursor.key() < _USED + u64(end):
            cursor.delete()

    async def run(self, committer: GroupCommitter, session_over: Callable[[str], bool]) -> None:
        """End blocks that ran out or whose client went away, for the life of the metaserver."""
        self.session_over = session_over
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                with self.db.read() as txn:
                    gone = self.ended(txn, time.time(), session_over)
                if gone:
                    await committer.run(self.drop, gone)
                    log.debug("ended %d chunk version reservations", len(gone))
            except Exception:
                log.exception("ending chunk version reservations failed; retrying later")
