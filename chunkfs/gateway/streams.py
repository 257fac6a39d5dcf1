"""Bodies in and out of the gateway, for both doors: a request body written into a file, a
file (or a byte range of it) streamed out, and Range headers.

Writes are gathered into whole chunks before they reach the writer (an HTTP server hands a
body over in pieces of ~64 KiB, and each write takes the file's lock): one buffer per body,
filled and handed over a chunk at a time, which the writer copies once into the bytes it
uploads and keeps nothing of, so an upload holds its buffer and its chunks in flight, no
half-built copy beside them. Reads go out a chunk at a time, so the reader's prefetch keeps the
next chunks coming.

Those gathering buffers are bounded for the whole gateway: at most `GATHERING_BODIES` bodies
hold one at a time (each up to a chunk, taken at a body's first byte of a chunk and given back
when the chunk is handed over); the others wait for a turn before they read on, and TCP slows
their clients. Without it, 8 `aws s3 cp` of 2 GiB each (80 part uploads at once, each gathering
its 4 MiB) took the gateway to 395 MiB RSS, against 141 MiB for 8 streamed PUTs; the client
core's `max_dirty_mb` bounds only what has been handed to the writer. A body that holds a turn
and sends nothing for `STALLED_BODY_S` is cut (S3's RequestTimeout), so stalled clients cannot
keep the turns from the others.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio
from trio.lowlevel import RunVar

from chunkfs import CHUNK_SIZE
from chunkfs.client import AsyncFile
from chunkfs.gateway.s3_errors import S3Error

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
GATHERING_BODIES = 16  # bodies that may hold a gathering buffer at once: 64 MiB at most
STALLED_BODY_S = 30.0  # as the daemons' body_timeout_s
_gathering: RunVar[trio.Semaphore] = RunVar("gathering")


def _gathering_turns() -> trio.Semaphore:
    try:
        return _gathering.get()
    except LookupError:
        turns = trio.Semaphore(GATHERING_BODIES)
        _gathering.set(turns)
        return turns


class RangeNotSatisfiable(ValueError):
    """A Range that selects no byte of the file (416 in both doors)."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range a Range header asks for, None for the whole file (no header, or one
    this does not understand, such as several ranges: RFC 9110 lets a server ignore it)."""
    if not header:
        return None
    match = RANGE.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(max(0, size - length), size - 1)
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or (last != "" and int(last) < start):
        raise RangeNotSatisfiable(header)
    return ByteRange(start, end)


async def write_body(afile: AsyncFile, body: AsyncIterator[bytes], seen: Callable[[bytes], None]) -> int:
    """Write every piece of `body` into `afile` from its position (each byte also given to
    `seen`, in order), a whole chunk a write where the position allows; the bytes written. A
    chunk is gathered in a turn among the `GATHERING_BODIES` (see the module's docstring).

    The pieces are kept as they come and joined once into the chunk's bytes, which the writer
    keeps as they are (one copy of each byte here). `seen` (the body's digests) runs on each
    chunk in a worker thread, one chunk after the other, while the next chunk is received and
    this one uploaded: hashlib and zlib let go of the GIL, so the digests take the other core."""
    turns = _gathering_turns()
    pieces = aiter(body)
    room = CHUNK_SIZE - afile.tell() % CHUNK_SIZE  # up to the file's next chunk boundary
    try:
        async with trio.open_nursery() as nursery:
            digests = _DigestChain(seen, nursery)
            written = await _write_gathered(afile, pieces, digests, turns, room)
    except BaseExceptionGroup as group:  # the body's own error (S3Error, an OSError...), as it came
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return written


async def _write_gathered(afile: AsyncFile, pieces: AsyncIterator[bytes], digests: _DigestChain,
                          turns: trio.Semaphore, room: int) -> int:
    """`write_body`'s loop: gather in a turn, write a chunk at a time, digest each chunk written."""
    gathered = _Gathered()
    written = 0
    holding = False
    try:
        while (piece := await _next_piece(pieces, holding)) is not None:
            if not piece:
                continue
            if not holding:
                await turns.acquire()
                holding = True
            gathered.add(piece)
            while gathered.size >= room:
                chunk = gathered.take(room)
                await digests.add(chunk)
                written += await afile.write(chunk)
                room = CHUNK_SIZE
            if not gathered.size:
                turns.release()
                holding = False
        if gathered.size:
            rest = gathered.take(gathered.size)
            await digests.add(rest)
            written += await afile.write(rest)
    finally:
        if holding:
            turns.release()
    return written


class _Gathered:
    """Pieces of a body not written yet, joined only when a chunk's worth is taken."""

    def __init__(self) -> None:
        self.pieces: list[bytes | memoryview] = []
        self.size = 0

    def add(self, piece: bytes) -> None:
        self.pieces.append(piece)
        self.size += len(piece)

    def take(self, size: int) -> bytes:
        """The first `size` bytes (at most `self.size`), as one bytes object."""
        taken: list[bytes | memoryview] = []
        needed = size
        while needed:
            piece = self.pieces[0]
            if len(piece) <= needed:
                taken.append(self.pieces.pop(0))
                needed -= len(piece)
            else:
                view = memoryview(piece)
                taken.append(view[:needed])
                self.pieces[0] = view[needed:]
                needed = 0
        self.size -= size
        return taken[0] if len(taken) == 1 and type(taken[0]) is bytes else b"".join(taken)


DIGEST_IN_THREAD_BYTES = 256 * 1024  # smaller pieces are digested on the event loop (a thread hop costs more)


DIGESTS_BEHIND = 2  # chunks a body's digests may lag behind its writes (each held until digested)


class _DigestChain:
    """`seen` given each piece in order, in a worker thread for big ones, each after the one
    before it: the caller goes on meanwhile (the nursery waits for the last), unless the
    digests are `DIGESTS_BEHIND` pieces behind."""

    def __init__(self, seen: Callable[[bytes], None], nursery: trio.Nursery) -> None:
        self.seen, self.nursery = seen, nursery
        self.behind: list[trio.Event] = []

    async def add(self, data: bytes) -> None:
        while len(self.behind) >= DIGESTS_BEHIND:
            await self.behind[0].wait()
            self.behind.pop(0)
        before = self.behind[-1] if self.behind else None
        done = trio.Event()
        self.behind.append(done)
        self.nursery.start_soon(self._digest, before, done, data)

    async def _digest(self, before: trio.Event | None, done: trio.Event, data: bytes) -> None:
        if before is not None:
            await before.wait()
        try:
            if len(data) >= DIGEST_IN_THREAD_BYTES:
                await trio.to_thread.run_sync(self.seen, data)
            else:
                self.seen(data)
        finally:
            done.set()


async def read_if_small(pieces: AsyncIterator[bytes], limit_bytes: int) -> tuple[bytes, bool]:
    """The body's first bytes, read until more than `limit_bytes` came or it ended, and whether
    it ended (then they are the whole body). A stalled client is cut after `STALLED_BODY_S`, as
    in `write_body`."""
    head = bytearray()
    while len(head) <= limit_bytes:
        with trio.move_on_after(STALLED_BODY_S):
            piece = await anext(pieces, None)
            if piece is None:
                return bytes(head), True
            head += piece
            continue
        raise S3Error("RequestTimeout", f"no byte of the request body came for {STALLED_BODY_S:.0f} s")
    return bytes(head), False


async def _next_piece(pieces: AsyncIterator[bytes], holding_a_turn: bool) -> bytes | None:
    """The body's next piece, None at its end; one that holds a turn must come within
    `STALLED_BODY_S`."""
    if not holding_a_turn:
        return await anext(pieces, None)
    with trio.move_on_after(STALLED_BODY_S):
        return await anext(pieces, None)
    raise S3Error("RequestTimeout", f"no byte of the request body came for {STALLED_BODY_S:.0f} s")


async def read_body(afile: AsyncFile, byte_range: ByteRange | None, counted: Callable[[int], None] | None = None
                    ) -> AsyncIterator[bytes]:
    """The file's bytes (or `byte_range` of them), a chunk at a time; the file is closed at the
    end, also when the client goes away mid-way."""
    try:
        position = 0 if byte_range is None else byte_range.start
        remaining = afile.size - position if byte_range is None else byte_range.length
        await afile.seek(position)
        if byte_range is not None:  # a part of a parallel download, most likely: its chunks fetched at once
            afile.will_need(remaining)
        while remaining > 0:
            data = await afile.read(min(CHUNK_SIZE - position % CHUNK_SIZE, remaining))
            if not data:
                break
            remaining -= len(data)
            position += len(data)
            if counted is not None:
                counted(len(data))
            yield data
    finally:
        with trio.CancelScope(shield=True):
            await afile.aclose()
