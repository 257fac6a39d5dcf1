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
    """Write every piece of `body` into `afile` from its position (each also given to `seen`),
    a whole chunk a write where the position allows; the bytes written. A chunk is gathered in a
    turn among the `GATHERING_BODIES` (see the module's docstring)."""
    turns = _gathering_turns()
    pieces = aiter(body)
    pending = bytearray()  # grows as pieces come (a small body never makes a chunk-sized buffer)
    room = CHUNK_SIZE - afile.tell() % CHUNK_SIZE  # up to the file's next chunk boundary
    written = 0
    holding = False
    try:
        while (piece := await _next_piece(pieces, holding)) is not None:
            if not piece:
                continue
            if not holding:
                await turns.acquire()
                holding = True
            seen(piece)
            pending += piece
            while len(pending) >= room:
                with memoryview(pending) as view:
                    written += await afile.write(view[:room])
                del pending[:room]  # the writer copied what it keeps
                room = CHUNK_SIZE
            if not pending:
                turns.release()
                holding = False
        if pending:
            written += await afile.write(pending)
    finally:
        if holding:
            turns.release()
    return written


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
