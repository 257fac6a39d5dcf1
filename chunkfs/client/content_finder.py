"""Dedup lookups of one client, gathered into windows: one hashing pass and one metaserver call
for many chunks.

A writer about to upload a chunk asks (`ask`) whether the cluster holds its content; the asks
of every file of this client wait together until `window` of them are gathered, then one task
hashes them all in one worker thread (BLAKE3 name and proof, `chunkfs.content_hash`, and the
xxh3 chunk checksum in the same pass, so neither the lookup nor the upload reads the bytes on
the event loop) and asks the metaserver about all of them in one call, whose pins are one
durable commit there. A window that is not full goes at once when a writer cannot wait:
`send_gathered` at a flush (close, fsync) and when the client's write-back bound is reached
(the finder holds bytes it counts: it is one of the bound's buffering holders, so a writer
waiting for room never waits on a window that nothing else would fill).

Promises: every ask is answered (the hit or None, with its name, proof and checksum) or fails
with the call's error (the writer then fails the chunk: EIO at its next write or flush); a hit
is pinned for this client's credential when it is answered (dedup.py), exactly as a lookup of
its own would be. Asks are answered in no particular order and each at most once.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field

import trio

from chunkfs.checksum import chunk_checksum
from chunkfs.client.metadata import Metadata
from chunkfs.client.write_back import WriteBack
from chunkfs.content_hash import name_and_proof
from chunkfs.errors import FsError
from chunkfs.protocol import records as r

log = logging.getLogger(__name__)

WINDOW = 16  # chunks per lookup call: 64 MiB of 4 MiB chunks


@dataclass(eq=False)
class Ask:
    """One chunk's question, then its answer."""

    data: bytes | bytearray
    content: str = ""
    proof: str = ""
    checksum: str = ""  # of `data` (chunkfs.checksum.chunk_checksum)
    hit: r.DedupHit | None = None
    error: BaseException | None = None
    answered: trio.Event = field(default_factory=trio.Event)

    async def answer(self) -> Ask:
        """This ask, once answered; raises the call's error if it failed."""
        await self.answered.wait()
        if self.error is not None:
            raise self.error
        return self


def _hash_all(asks: list[Ask]) -> None:
    """Name, proof and checksum of each ask's bytes (a worker thread: both hashes release the GIL)."""
    for ask in asks:
        ask.content, ask.proof = name_and_proof(ask.data)
        ask.checksum = chunk_checksum(ask.data)


class ContentFinder:
    def __init__(self, meta: Metadata, write_back: WriteBack | None = None, window: int = WINDOW) -> None:
        self.meta, self.write_back_bound, self.window = meta, write_back, window
        self._gathered: list[Ask] = []
        self.calls = 0  # lookup calls made
        self.asked = 0  # chunks asked about

    def ask(self, data: bytes | bytearray, nursery: trio.Nursery) -> Ask:
        """Ask about `data` (a whole chunk's bytes, not changed until answered); a full window
        is sent from `nursery`."""
        ask = Ask(data)
        self._gathered.append(ask)
        if len(self._gathered) == self.window:
            nursery.start_soon(self._send_full_windows)
        self._tell_bound()
        return ask

    async def write_back(self) -> None:
        """The client needs room: what is gathered goes now (its bytes are freed by the uploads
        or hits that follow)."""
        await self.send_gathered()

    async def send_gathered(self) -> None:
        """Hash and ask about every gathered chunk now, in calls of at most `window`."""
        while self._gathered:
            await self._send(self._take())

    async def _send_full_windows(self) -> None:
        while len(self._gathered) >= self.window:
            await self._send(self._take())

    def _take(self) -> list[Ask]:
        asks, self._gathered = self._gathered[: self.window], self._gathered[self.window:]
        self._tell_bound()
        return asks

    def _tell_bound(self) -> None:
        if self.write_back_bound is not None:
            self.write_back_bound.buffering(self, bool(self._gathered))

    async def _send(self, asks: list[Ask]) -> None:
        """Answer `asks`. Never raises but a cancellation: a failed call is each ask's answer."""
        try:
            await trio.to_thread.run_sync(_hash_all, asks)
            self.calls += 1
            self.asked += len(asks)
            hits = await self.meta.find_contents([r.DedupReq(ask.content, ask.proof) for ask in asks])
            for ask, hit in zip(asks, hits, strict=True):
                ask.hit = hit
        except Exception as exc:
            for ask in asks:
                ask.error = exc
        except BaseException:
            for ask in asks:
                ask.error = FsError(errno.EIO, "the dedup lookup was cancelled")
            raise
        finally:
            for ask in asks:
                ask.answered.set()
