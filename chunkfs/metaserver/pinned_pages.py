"""Keeps the metadata database's pages in memory (`pin_db_in_memory`), as a metaserver that holds
all metadata in RAM does.

LMDB reads the namespace through the kernel's page cache. A page cache page that nobody touched
for a while may be reclaimed, and some hosts reclaim cold pages on purpose (proactive reclaim, e.g.
DAMON's `pageout` scheme, which runs on the machine the scale benchmark ran on). Then a getattr of a
file nobody asked about for minutes waits for the disk: in the 10M-file run the metaserver took
hundreds of major page faults in its getattr windows and the p99 rose 1.22x over the 100k run,
which took none.

So the metaserver maps its own data file a second time, read-only, and `mlock`s that mapping:
the pages it covers are the same page-cache pages LMDB's map reads, and a locked page is not
reclaimed. The file only grows (LMDB reuses freed pages and never truncates), so a thread maps
each new tail as it appears. Locking needs RLIMIT_MEMLOCK to allow the database's size
(`LimitMEMLOCK=infinity` in the systemd unit); where it does not, one warning says so and the
metaserver serves unpinned, as before.

Python's `mmap` cannot lock a mapping, hence the two libc calls through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import threading
from pathlib import Path

log = logging.getLogger("chunkfs.metaserver")

PAGE = mmap.PAGESIZE
GROWTH_STEP_BYTES = 16 << 20  # a new tail is mapped once the file grew this much past the last
CHECK_INTERVAL_S = 5.0

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = ctypes.c_void_p(-1).value


class PinnedPages:
    """Locks the pages of `data_file` in memory, following its growth until `stop`."""

    def __init__(self, data_file: Path) -> None:
        self.data_file = data_file
        self.pinned_bytes = 0
        self.failed = False
        self._mappings: list[tuple[int, int]] = []  # (address, length)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="pin-db", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for address, length in self._mappings:
            _libc.munmap(address, length)
        self._mappings.clear()

    def pin_to_end(self) -> None:
        """Maps and locks what the file holds past what is pinned already (whole pages only)."""
        size = self.data_file.stat().st_size // PAGE * PAGE
        if self.failed or size <= self.pinned_bytes:
            return
        fd = os.open(self.data_file, os.O_RDONLY)
        try:
            length = size - self.pinned_bytes
            address = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, self.pinned_bytes)
            if address in (None, MAP_FAILED):
                self._give_up("mmap", ctypes.get_errno())
                return
            if _libc.mlock(address, length) != 0:
                errno = ctypes.get_errno()
                _libc.munmap(address, length)
                self._give_up("mlock", errno)
                return
        finally:
            os.close(fd)
        self._mappings.append((address, length))
        if not self.pinned_bytes:
            log.debug("the metadata database is kept in memory (%d MiB so far)", size >> 20)
        self.pinned_bytes = size

    def _give_up(self, call: str, errno: int) -> None:
        self.failed = True
        log.warning("the metadata database is not kept in memory (%s: %s); raise the memory lock limit "
                    "(LimitMEMLOCK=infinity) or set pin_db_in_memory = false", call, os.strerror(errno))

    def _follow(self) -> None:
        while not self.failed:
            size = self.data_file.stat().st_size
            if size >= self.pinned_bytes + (GROWTH_STEP_BYTES if self.pinned_bytes else PAGE):
                self.pin_to_end()
            if self._stop.wait(CHECK_INTERVAL_S):
                return
