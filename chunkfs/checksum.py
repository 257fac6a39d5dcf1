"""Chunk checksums, shared by the mount (end-to-end check) and the chunkservers (at rest).

A chunk's checksum is xxh3-64 of its stored bytes, as 16 hex digits. Chunkservers also keep one
xxh3-64 per `BLOCK_SIZE` block so a partial read verifies only the blocks it touches.
"""

from __future__ import annotations

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


def verify_blocks(data: memoryview | bytes, sums: bytes, first_block: int) -> int | None:
    """Check `data` (starting at block `first_block`) against stored sums; return the first bad block."""
    view = memoryview(data)
    for i, off in enumerate(range(0, len(view), BLOCK_SIZE)):
        block = first_block + i
        want = sums[block * DIGEST_SIZE : (block + 1) * DIGEST_SIZE]
        if xxhash.xxh3_64_digest(view[off : off + BLOCK_SIZE]) != want:
            return block
    return None
