"""How far ahead to fetch: the size rule is the floor, sequential readers earn a wider window.

The floor (from the chunker seed): a file of at most 3 chunks is fetched all at once, 4-6 chunks
with 3 in flight, more with 4 in flight. A reader that keeps reading the next chunk doubles its
window each chunk up to `MAX_WINDOW`; a reader that jumps gets no prefetch beyond the floor of
small files, so random readers do not waste transfers. A first read at offset 0 gets one chunk
ahead: it starts a sequential read as often as it reads a header before jumping (a database).
"""

from __future__ import annotations

MAX_WINDOW = 16


def floor_window(total_chunks: int) -> int:
    if total_chunks <= 3:
        return total_chunks
    if total_chunks <= 6:
        return 3
    return 4


def prefetch_window(total_chunks: int, sequential_run: int, max_window: int = MAX_WINDOW,
                    at_start: bool = False) -> int:
    """Chunks to have in flight ahead of the one being read (0 for every file when `max_window`
    is 0: prefetch off).

    `sequential_run` counts consecutive chunk-to-next-chunk steps of this reader (0 after a jump);
    `at_start`: this is the reader's first read, at offset 0.
    """
    if max_window <= 0:
        return 0
    base = floor_window(total_chunks)
    if total_chunks <= 3:
        return base
    if at_start:
        return 1
    if sequential_run <= 0:
        return 0
    return min(max_window, base << min(sequential_run - 1, 8), total_chunks)
