"""Chunk checksums, shared by the mount (end-to-end check) and the chunkservers (at rest).

A chunk's checksum is xxh3-64 of its stored bytes, as 16 hex digits. Chunkservers also keep one
xxh3-64 per `BLOCK_SIZE` block so a partial read verifies only the blocks it touches.
"""

from __future__ import annotations

from collections.abc import Sequence

import xxhash

BLOCK_SIZE = 64 * 1024
DIGEST_SIZE = 8


def chunk_checksum(data: bytes | bytearray | memoryview) -> str:
    return xxhash.xxh3_64_hexdigest(data)


def block_checksums(data: bytes | bytearray | memoryview) -> bytes:
    view = memoryview(data)
    return b"".join(
        xxhash.xxh3_64_digest(view[off : off + BLOCK_SIZE]) for off in range(0, len(view), BLOCK_SIZE)
    )


def checksums_of_pieces(pieces: Sequence[bytes | bytearray | memoryview]) -> tuple[str, bytes]:
    """(`chunk_checksum`, `block_checksums`) of the pieces laid end to end, without joining them
    (a chunk arrives in pieces of any size)."""
    whole = xxhash.xxh3_64()
    block = xxhash.xxh3_64()
    in_block = 0
    sums = []
    for piece in pieces:
        view = memoryview(piece)
        whole.update(view)
        pos = 0
        while pos < len(view):
            take = min(BLOCK_SIZE - in_block, len(view) - pos)
            if in_block == 0 and take == BLOCK_SIZE:
                sums.append(xxhash.xxh3_64_digest(view[pos : pos + take]))
            else:
                block.update(view[pos : pos + take])
                in_block += take
                if in_block == BLOCK_SIZE:
                    sums.append(block.digest())
                    block.reset()
                    in_block = 0
            pos += take
    if in_block:
        sums.append(block.digest())
    return whole.hexdigest(), b"".join(sums)


def verify_blocks(data: memoryview | bytes, sums: bytes, first_block: int) -> int | None:
    """Check `data` (starting at block `first_block`) against stored sums; return the first bad block."""
    view = memoryview(data)
    for i, off in enumerate(range(0, len(view), BLOCK_SIZE)):
        block = first_block + i
        want = sums[block * DIGEST_SIZE : (block + 1) * DIGEST_SIZE]
        if xxhash.xxh3_64_digest(view[off : off + BLOCK_SIZE]) != want:
            return block
    return None
