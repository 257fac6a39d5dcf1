"""glibc's allocator, told to give the memory of freed chunk buffers back to the kernel.

A daemon that moves data holds many chunk-sized buffers (4 MiB) for a short time each. glibc
serves an allocation at or above its mmap threshold with a mapping of its own, unmapped when
freed; but that threshold is dynamic: each such buffer freed raises it to its size (up to 32
MiB on 64-bit), so after the first few chunks every chunk buffer comes from the heap, where freed
memory stays in the process (fragmented between live buffers, in one heap per arena that
threads touched) and the resident size can climb past what is live. (On the gateway, 8
uploads at once peaked at about the same RSS with and without this, at the rates a loaded
2-core machine gave: the README's gateway section. It bounds what a faster run could strand.)

`give_back_big_buffers` fixes the threshold (which also stops its dynamic growth) and caps the
arenas, as `MALLOC_MMAP_THRESHOLD_` and `MALLOC_ARENA_MAX` in the environment would; a value
set in the environment is left as it is. Nothing happens off glibc.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt(3) parameter numbers, from glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20  # a chunk (4 MiB) and a gathered 1 MiB piece are each a mapping of their own
ARENA_MAX = 2


def give_back_big_buffers(mmap_threshold_bytes: int = MMAP_THRESHOLD_BYTES, arena_max: int = ARENA_MAX) -> bool:
    """Set glibc's mmap threshold and arena count for this process (before its buffers are made);
    False where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    settings = {"MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, mmap_threshold_bytes),
                "MALLOC_ARENA_MAX": (M_ARENA_MAX, arena_max)}
    for variable, (parameter, value) in settings.items():
        if variable in os.environ:
            continue
        if libc.mallopt(parameter, value) != 1:
            log.warning("mallopt(%d, %d) was refused", parameter, value)
            return False
    return True
