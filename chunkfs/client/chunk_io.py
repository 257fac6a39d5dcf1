"""Moving whole chunks between this client and the chunkservers.

Reads go to the first replica that answers with bytes matching the chunk's checksum (a replica
that is down, lacks the version or returns bad bytes is skipped at once, within the request).
When every replica answers that it does not hold the version, the version was deleted (another
client removed or rewrote the file): the reader gets ESTALE, as NFS gives for a removed file;
any other failure of every replica is EIO.
This check is where reads are verified: chunkservers send chunks to the mount without checking
their block checksums (sendfile), and check them only when the mount asks again after a
mismatch; their scrubbers re-verify every chunk at rest. A ranged read (`fetch_blocks`: some
64 KiB blocks of a chunk) is verified twice: by the chunkserver against its block checksums
before it answers (a corrupt block is reported there, and the answer is an error: the next
replica is tried, as for a whole chunk), and here against the block checksums sent with it.
Those block checksums are tied to the chunk table: the request names the version's checksum
and the answer the one in the header the block checksums came from; a chunkserver refuses to serve a
file whose header holds another (it does not report it: a client's word must not take a copy
out of the cluster), and so does this client (see reader.py for why a
corrupt block is never served).
Every request to a chunkserver carries a chunk token (`chunkfs.chunk_tokens`): a read the one
that came with the file's layout, a write the one of its reservation; it is signed with this
client's token key, asked for once (a token serves only the client it was issued to). A token about to expire
(by this client's clock) or that a chunkserver calls expired is renewed from the metaserver
first (`tokens`, once per chunk version and expiry).
Dedup (`finder`, `found`): before a chunk of at least DEDUP_MIN_BYTES is uploaded, its content
name and proof (`chunkfs.content_hash`) are sent to the metaserver (gathered with other chunks'
into one call: `content_finder`); if the cluster holds that content for
this client's credential (and the stored checksum is this chunk's), nothing is uploaded and the
stored version is committed instead (a `shared` ChunkRef); the writer (writer.py) does the
rest. `dedup=False` (the mount option) turns it off: no hash, no call.
Writes go to all target replicas in parallel; a replica that fails is replaced by a spare, and
the write succeeds as long as one replica stored it (the chunk is then under goal). A server that
answers ENOSPC goes last for uploads for a while (until the metaserver stops offering it); if
every server tried was full, the writer gets ENOSPC rather than EIO.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from chunkfs import chunk_tokens
from chunkfs.checksum import BLOCK_SIZE, DIGEST_SIZE, chunk_checksum, verify_blocks
from chunkfs.client.content_finder import Ask, ContentFinder
from chunkfs.errors import FsError, TransportError
from chunkfs.placement import weighted_order
from chunkfs.protocol import records as r
from chunkfs.protocol.chunk_client import ChunkClient
from chunkfs.client.metadata import Metadata

log = logging.getLogger(__name__)
T = TypeVar("T")
DEDUP_MIN_BYTES = 1 << 20  # a smaller chunk (a small file's) is uploaded without asking: a call costs more


class ChunkIO:
    def __init__(self, meta: Metadata, chunks: ChunkClient, replica_retry_s: float = 2.0,
                 suspect_s: float = 10.0, replica_timeout_s: float = 10.0, dedup: bool = True,
                 finder: ContentFinder | None = None) -> None:
        self.meta = meta
        self.dedup = dedup
        self.finder = finder if finder is not None else ContentFinder(meta)
        self.chunks = chunks
        self.reservations = Reservations(meta)
        self.replica_retry_s = replica_retry_s
        self.suspect_s = suspect_s
        self.replica_timeout_s = replica_timeout_s
        self._suspect_until: dict[str, float] = {}  # address -> when to trust it again
        self._full_until: dict[str, float] = {}  # address -> when to offer it uploads again
        self.bytes_read = 0
        self.bytes_written = 0
        self.bytes_deduplicated = 0  # chunk bytes not uploaded: the cluster held them
        self._presenting_tokens = False  # self.chunks signs token calls with this client's token key

    async def _present_tokens(self) -> None:
        """Before the first chunk call: the token key from the metaserver (once)."""
        if not self._presenting_tokens:
            self.chunks = self.chunks.presenting_tokens_as(await self.meta.token_credential())
            self._presenting_tokens = True

    def _healthy_first(self, addresses: list[str]) -> list[str]:
        """Servers that failed us lately go last, so one dead server costs one failed attempt,
        not one per chunk, until the metaserver notices it is gone."""
        now = trio.current_time()
        return sorted(addresses, key=lambda a: self._suspect_until.get(a, 0.0) > now)

    def _suspect(self, address: str) -> None:
        self._suspect_until[address] = trio.current_time() + self.suspect_s

    async def _within_timeout(self, request: Awaitable[T]) -> T:
        """A replica that has not answered within `replica_timeout_s` counts as unreachable: over
        a cut or lossy link, a request would otherwise hang for the transport's whole time-out
        (60 s) before the next replica or a spare is tried."""
        try:
            with trio.fail_after(self.replica_timeout_s):
                return await request
        except trio.TooSlowError:
            raise TransportError(f"no answer within {self.replica_timeout_s:.0f} s") from None

    async def fetch(self, ref: r.ChunkRef, servers: dict[str, str]) -> bytes | bytearray:
        """The stored bytes of `ref` (callers clip to `ref.length`)."""
        return await self._from_replicas(ref, servers, lambda address, retry_s: self._fetch_verified(address, ref, retry_s))

    async def fetch_blocks(self, ref: r.ChunkRef, servers: dict[str, str], first_block: int, blocks: int
                           ) -> bytes | bytearray:
        """Blocks `first_block` .. `first_block + blocks - 1` of `ref` (clipped to `ref.length`),
        each verified against its block checksum: a ranged read."""
        offset = first_block * BLOCK_SIZE
        length = min(blocks * BLOCK_SIZE, ref.length - offset)
        if length <= 0:
            return b""

        async def one(address: str, retry_s: float) -> bytes | bytearray | None:
            answer = await self.chunks.get_blocks(address, ref.chunk_id, ref.version, offset, length, retry_s,
                                                  token=ref.token, checksum=ref.checksum)
            data, sums = answer.data, answer.block_sums
            if sums is None or answer.chunk_checksum is None:
                # an older chunkserver: the whole chunk (sent, or fetched now) checked as a whole
                whole = data if sums is None and chunk_checksum(data) == ref.checksum \
                    else await self._fetch_verified(address, ref, retry_s)
                return None if whole is None else whole[offset:offset + length]
            if answer.chunk_checksum != ref.checksum:
                log.warning("chunk %d v%d from %s: its block checksums are another chunk's (checksum %s, not %s)",
                            ref.chunk_id, ref.version, address, answer.chunk_checksum, ref.checksum)
                return None
            if len(data) == length and len(sums) == DIGEST_SIZE * ((length + BLOCK_SIZE - 1) // BLOCK_SIZE) \
                    and verify_blocks(memoryview(data), sums, 0) is None:
                return data
            log.warning("chunk %d v%d from %s: blocks from %d do not match their checksums (damaged on the way)",
                        ref.chunk_id, ref.version, address, first_block)
            return None

        return await self._from_replicas(ref, servers, one)

    async def _from_replicas(self, ref: r.ChunkRef, servers: dict[str, str],
                             fetch_one: Callable[[str, float], Awaitable[bytes | bytearray | None]]
                             ) -> bytes | bytearray:
        """What `fetch_one(address, retry_s)` gets (verified bytes, or None if they failed their
        check) from the first replica of `ref` that answers. Every replica is tried once at once;
        only if none answered are they tried again, with retries."""
        candidates = self._healthy_first([servers[s] for s in ref.replicas if s in servers])
        if not candidates:
            raise FsError(errno.EIO, f"chunk {ref.chunk_id} v{ref.version}: no replica is alive")
        await self._present_tokens()
        if chunk_tokens.expires_at(ref.token) < time.time() + chunk_tokens.REFRESH_MARGIN_S:
            await self._renew_token(ref)
        problems = []
        gone_everywhere = True  # every replica said it does not hold the version (no other error)
        for retry_s in (0.0, self.replica_retry_s):
            unreachable = False
            for address in candidates:
                try:
                    try:
                        data = await self._within_timeout(fetch_one(address, retry_s))
                    except FsError as exc:
                        if exc.errno != errno.EKEYEXPIRED:
                            raise
                        await self._renew_token(ref)  # expired by the chunkserver's clock: once more
                        data = await self._within_timeout(fetch_one(address, retry_s))
                except TransportError as exc:
                    self._suspect(address)
                    unreachable, gone_everywhere = True, False
                    problems.append(f"{address}: {exc}")
                    continue
                except FsError as exc:
                    gone_everywhere = gone_everywhere and exc.errno == errno.ENOENT
                    problems.append(f"{address}: {exc}")
                    continue
                if data is None:
                    gone_everywhere = False
                    problems.append(f"{address}: checksum mismatch")
                    continue
                self.bytes_read += len(data)
                return data
            if not unreachable:
                break
        if gone_everywhere:  # deleted: the file was removed (or rewritten) by another client
            raise FsError(errno.ESTALE, f"chunk {ref.chunk_id} v{ref.version}: no replica holds it any more")
        log.error("chunk %d v%d unreadable: %s", ref.chunk_id, ref.version, "; ".join(problems))
        raise FsError(errno.EIO, f"chunk {ref.chunk_id} v{ref.version}: no replica could serve it")

    async def _renew_token(self, ref: r.ChunkRef) -> None:
        """A new read token for `ref` (ESTALE if no file has its version any more)."""
        (ref.token,) = await self.meta.read_tokens([(ref.chunk_id, ref.version)])

    async def _fetch_verified(self, address: str, ref: r.ChunkRef, retry_s: float) -> bytes | bytearray | None:
        """The chunk from one server, checked here against its checksum (None if it does not
        match). The server sends it unverified; only bytes that fail here are asked for again
        with the server's own block checks, which finds and reports a corrupt copy (it answers
        an error then) or tells a transfer that went wrong from bad data on its disk."""
        data = await self.chunks.get(address, ref.chunk_id, ref.version, retry_s=retry_s, client_verifies=True,
                                     token=ref.token)
        if chunk_checksum(data) == ref.checksum:
            return data
        log.warning("chunk %d v%d from %s does not match its checksum; asking again, verified there",
                    ref.chunk_id, ref.version, address)
        data = await self.chunks.get(address, ref.chunk_id, ref.version, retry_s=retry_s, token=ref.token)
        return data if chunk_checksum(data) == ref.checksum else None

    def looks_up(self, length: int, dedup: bool) -> bool:
        """Whether a chunk of `length` bytes is looked up (`finder`) before it is uploaded
        (`dedup`: the file's setting, `chunkfs dedup`; off also when this client's is)."""
        return dedup and self.dedup and length >= DEDUP_MIN_BYTES

    def found(self, ino: int, index: int, ask: Ask) -> Lookup:
        """What an answered dedup `ask` (`ContentFinder`) about chunk `index` of `ino` found:
        the stored version with its content, as a `shared` ref to commit instead of an upload
        (pinned for this client's credential until that commit), if there is one and its stored
        checksum is this chunk's."""
        hit = ask.hit
        if hit is not None and hit.length == len(ask.data) and hit.checksum == ask.checksum:
            self.bytes_deduplicated += len(ask.data)
            return Lookup(ask.content, ask.proof, ask.checksum, r.ChunkRef(
                index=index, chunk_id=hit.chunk_id, version=hit.version, length=hit.length, checksum=hit.checksum,
                replicas=hit.replicas, token=hit.token, content=ask.content, proof=ask.proof, shared=True))
        if hit is not None:
            log.warning("chunk %d v%d is named as holding the content of chunk %d of inode %d but its checksum "
                        "differs: uploaded instead", hit.chunk_id, hit.version, index, ino)
        return Lookup(ask.content, ask.proof, ask.checksum, None)

    async def upload(self, ino: int, index: int, data: bytes | bytearray, slot: UploadSlot, checksum: str = ""
                     ) -> r.ChunkRef:
        """Store `data` as version `slot.version` of chunk `index`; returns once it is durable on
        every replica that took it (at least one, else EIO). `checksum`: `data`'s, if known."""
        await self._present_tokens()
        checksum = checksum or chunk_checksum(data)
        if not isinstance(data, bytes):
            data = bytes(data)  # once: the HTTP layer would copy a bytearray for each replica
        weighted = weighted_order(slot.servers, [s.free_bytes for s in slot.servers])
        healthy = self._healthy_first([s.address for s in weighted])
        now = trio.current_time()
        order = sorted(weighted, key=lambda s: (self._full_until.get(s.address, 0.0) > now,
                                                healthy.index(s.address)))
        spares = iter(order[slot.goal:])
        stored: list[str] = []
        full: list[str] = []
        failed: list[str] = []

        async def one_replica(server: r.ServerChoice | None) -> None:
            while server is not None:
                try:
                    await self._within_timeout(self.chunks.put(
                        server.address, slot.chunk_id, slot.version, data, checksum, retry_s=self.replica_retry_s,
                        token=slot.token))
                    stored.append(server.id)
                    return
                except (FsError, TransportError) as exc:
                    failed.append(server.address)
                    if isinstance(exc, TransportError):
                        self._suspect(server.address)
                    elif exc.errno == errno.ENOSPC:
                        full.append(server.address)
                        self._full_until[server.address] = trio.current_time() + self.suspect_s
                    log.warning("chunk %d v%d: %s failed (%s); trying a spare",
                                slot.chunk_id, slot.version, server.address, exc)
                    server = next(spares, None)

        async with trio.open_nursery() as nursery:
            for server in order[: slot.goal]:
                nursery.start_soon(one_replica, server)
        if not stored:
            if full and len(full) == len(failed):
                raise FsError(errno.ENOSPC, f"chunk {index} of inode {ino}: every chunkserver tried is full")
            raise FsError(errno.EIO, f"chunk {index} of inode {ino}: no chunkserver stored it")
        self.bytes_written += len(data) * len(stored)
        return r.ChunkRef(index=index, chunk_id=slot.chunk_id, version=slot.version,
                          length=len(data), checksum=checksum, replicas=stored, token=slot.token)


@dataclass
class UploadSlot:
    """What one chunk upload writes: its chunk id and version, how many copies, where."""

    chunk_id: int
    version: int
    goal: int
    servers: list[r.ServerChoice]
    token: str = ""  # the reservation's (chunkfs.chunk_tokens): writes and reads of its versions


@dataclass
class Lookup:
    """What `ChunkIO.found` made of a chunk's answered dedup ask: its content name and proof (an
    upload of it carries both, so later writers find it), its checksum (the upload's, computed
    once) and the stored version holding it, a `shared` ref (None: upload it)."""

    content: str
    proof: str
    checksum: str  # of the bytes (chunkfs.checksum.chunk_checksum)
    stored: r.ChunkRef | None


@dataclass
class PendingSlot:
    """The slot of an upload that may not happen (a dedup hit stores nothing): taken from the
    reservations on first `take`, so a write of content the cluster holds reserves nothing (a
    reservation is refused with ENOSPC when no chunkserver has room)."""

    reservations: Reservations
    existing_chunk_id: int | None
    goal: int
    slot: UploadSlot | None = None

    async def take(self) -> UploadSlot:
        if self.slot is None:
            self.slot = await self.reservations.slot(self.existing_chunk_id, self.goal)
        return self.slot


class Reservations:
    """Versions, chunk ids and writable servers reserved from the metaserver in blocks, so an
    upload costs no metadata round trip of its own. Slots are handed out in call order, so a
    chunk written later on this client always gets the higher version."""

    def __init__(self, meta: Metadata, block: int = 64) -> None:
        self.meta = meta
        self.block = block
        self._lock = trio.Lock()
        self._reservation: r.Reservation | None = None
        self._used = 0
        self._taken_at = 0.0

    async def slot(self, existing_chunk_id: int | None, goal: int) -> UploadSlot:
        async with self._lock:
            res = self._reservation
            if res is None or self._used >= res.count or trio.current_time() - self._taken_at > res.valid_s:
                res = self._reservation = await self.meta.reserve(self.block)
                self._used = 0
                self._taken_at = trio.current_time()
            i = self._used
            self._used += 1
        chunk_id = existing_chunk_id if existing_chunk_id is not None else res.first_chunk_id + i
        return UploadSlot(chunk_id, res.first_version + i, max(1, goal), res.servers, res.token)
